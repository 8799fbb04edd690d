/*
 * The evloop provider in D, for DTrace users: the same probes, in the same
 * order and with the same argument types, as the #[usdt::provider] module in
 * src/lib.rs (a test in tests/tests/provider.rs keeps the two equal).
 *
 * Where libmtev passes pointers (the accept address, the I/O buffer, the
 * closure and the event), evloop passes the address as a plain integer:
 * the usdt crate would mark a pointer argument for dereference, and
 * scripts use these values as opaque ids anyway.
 *
 * rv is the byte count (or the new fd) on success and -errno on failure.
 * Masks: READ 0x01, WRITE 0x02, EXCEPTION 0x04, TIMER 0x08.
 */
provider evloop {
	probe eventer__accept__entry(int32_t fd, uint64_t addr, int32_t addrlen, int32_t mask, uint64_t closure);
	probe eventer__accept__return(int32_t fd, uint64_t addr, int32_t addrlen, int32_t mask, uint64_t closure, int64_t rv);
	probe eventer__read__entry(int32_t fd, uint64_t buf, uint64_t len, int32_t mask, uint64_t closure);
	probe eventer__read__return(int32_t fd, uint64_t buf, uint64_t len, int32_t mask, uint64_t closure, int64_t rv);
	probe eventer__write__entry(int32_t fd, uint64_t buf, uint64_t len, int32_t mask, uint64_t closure);
	probe eventer__write__return(int32_t fd, uint64_t buf, uint64_t len, int32_t mask, uint64_t closure, int64_t rv);
	probe eventer__close__entry(int32_t fd, int32_t mask, uint64_t closure);
	probe eventer__close__return(int32_t fd, int32_t mask, uint64_t closure, int64_t rv);
	probe eventer__callback__entry(uint64_t closure, uint64_t event, char *name, int32_t fd, int32_t mask, int32_t newmask);
	probe eventer__callback__return(uint64_t closure, uint64_t event, char *name, int32_t rv);
	probe log(char *facility, char *file, int32_t line, char *msg);
};
