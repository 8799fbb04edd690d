// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* portsnoop's kernel side: the target's fd syscalls and epoll calls (from
 * the raw sys_enter/sys_exit tracepoints) and its evloop USDT probes, as
 * records in one ring buffer.
 *
 * Cost rules, measured on the target machine (see the notes): filter by
 * tgid first thing, since the syscall tracepoints fire for every process;
 * join enter and exit here so a syscall is one record; never wake the
 * consumer per record (it polls on a timer) except when the buffer fills
 * up; count every record that did not fit.
 *
 * Raw tracepoints, not the per-syscall syscalls:sys_enter_* events: those
 * go through perf's tracepoint glue (a record built and copied per hit
 * before the program runs), which on the target machine cost the traced
 * server more per syscall than the whole raw program does. */
#include <asm/unistd.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "event.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never read or written: one instance of every record and constant set in
 * event.h, so that their BTF is in the object and the skeleton generates
 * the Rust side of the layout from it (engine/raw.rs). */
struct {
	struct ev_header header;
	struct ev_syscall syscall;
	struct ev_epoll_ctl epoll_ctl;
	struct ev_epoll_wait epoll_wait;
	struct ev_probe probe;
	struct ev_log log;
	struct ev_lost lost;
	struct ev_close_enter close_enter;
	struct ev_exec exec;
	struct ev_fork fork;
	struct ev_exit exit;
	struct ev_slow_syscall slow_syscall;
	struct ev_off_cpu off_cpu;
	struct ev_sock sock;
	struct ev_tcp tcp;
	enum ev_type type;
	enum sc_kind sc_kind;
	enum probe_id probe_id;
	enum ev_limit limit;
	enum tcp_ev_kind tcp_ev_kind;
} layout;

const volatile __u32 target_tgid = 0;
/* Set when portsnoop runs in a pid namespace other than the initial one:
 * target_tgid is then a pid of that namespace (dev and ino of its nsfs
 * file), and so are the thread ids reported. Otherwise the global ids are
 * the ones portsnoop's user sees, read without the namespace lookup. */
const volatile __u32 in_pid_ns = 0;
const volatile __u64 pid_ns_dev = 0;
const volatile __u64 pid_ns_ino = 0;
/* Set by the engine once every program and probe site is attached, cleared
 * again while it re-attaches after an exec. Until then nothing is recorded:
 * uprobes attach one at a time, so an entry probe could fire while its
 * return probe does not exist yet, and the consumer would see ops that the
 * app never got wrong. What was under way when it flips is the consumer's
 * to treat as begun before the trace. */
volatile __u32 ready = 0;
/* -f: trace the processes in `traced` (the target, and what it and its
 * followed children fork) instead of target_tgid alone. A rodata flag, so
 * that without -f the verifier drops the map lookup and the filter stays
 * one compare. Not with in_pid_ns (refused by the engine): a child's tgid
 * read from its task_struct is a global pid. */
const volatile __u32 follow = 0;
/* Wake the consumer only once this much is waiting. */
const volatile __u64 wakeup_bytes = 1 << 20;
/* --stall: know, per thread, whether it is inside a callback (the callback
 * probes count the depth), and while it is, submit the syscalls of any
 * kind that last at least stall_syscall_min_ns (ev_slow_syscall) and count
 * its time off-CPU at callback boundaries (ev_off_cpu, from the
 * scheduler's accounting). A rodata flag: without it the verifier drops
 * all of it. */
const volatile __u32 stall_track = 0;
const volatile __u64 stall_syscall_min_ns = 10000;

/* -f: the traced processes, by tgid; the value is that process's own
 * `ready` (see above): 0 from its fork or exec until the engine has
 * attached its image's sites, so a child's or a re-exec'd image's half
 * attached probes are never recorded, while the other processes go on
 * being recorded. The engine scans it, so it follows a fork or an exec
 * even if its record was dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} traced SEC(".maps");

/* The fields of a task the fork and exit programs read, relocated by
 * libbpf against the kernel's BTF (CO-RE): no vmlinux.h needed. */
/* The scheduler's own accounting of a thread's time (stall tracking):
 * exec_start is when its current stretch on the CPU began being counted,
 * sum_exec_runtime its time on the CPU up to then, both in the run
 * queue's task clock. */
struct sched_entity {
	__u64 exec_start;
	__u64 sum_exec_runtime;
	struct cfs_rq *cfs_rq;
} __attribute__((preserve_access_index));

/* A CPU's run queue clocks: clock is sched_clock at its last update, one
 * time base for all CPUs; clock_task is clock less the IRQ and (in a VM)
 * steal time this CPU has accounted, so each CPU's differs. */
struct rq {
	__u64 clock;
	__u64 clock_task;
} __attribute__((preserve_access_index));

/* With group scheduling (most distributions' kernels), the run queue a
 * thread's fair-class entity is queued on points to its CPU's rq. */
struct cfs_rq {
	struct rq *rq;
} __attribute__((preserve_access_index));

/* CONFIG_SCHED_INFO: run_delay is the thread's time runnable and waiting
 * for a CPU, on sched_clock. */
struct sched_info {
	unsigned long long run_delay;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct files_struct *files;
	struct sched_entity se;
	struct sched_info sched_info;
	unsigned long nvcsw;  /* context switches because it blocked */
	unsigned long nivcsw; /* ... because it was preempted */
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by the engine before load */
} events SEC(".maps");

/* Records dropped in all, per CPU (summed by the engine). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Records dropped and not yet reported in-band, for all CPUs together: the
 * next record from any CPU reports them. Per CPU, a thread that lost a
 * record on one CPU and went on on another could be seen there before the
 * loss was reported: its next syscall would look like one with no op
 * around it, when its op's entry was what got lost. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unreported SEC(".maps");

/* A syscall between its enter and exit (ts_ns 0: none), by thread. */
struct inflight {
	__u64 ts_ns;
	__u32 kind;
	__s32 fd;
	__u64 arg;
	__u64 ptr; /* epoll_wait: the user's event array */
	__s32 ctl_op;
	__s32 ctl_fd;
	__u32 ctl_events;
	__u32 pad;
	__u64 ctl_data;
	/* Stall tracking (stall_track only). */
	__u32 cb_depth;       /* callbacks the thread is inside */
	__u32 other_nr;       /* an untraced syscall in flight (other_ts != 0) */
	__u64 other_ts;
	__u64 other_arg0;
	__u64 off_cpu_inside;   /* off-CPU ns inside callbacks, running total */
	__u64 off_cpu_reported; /* the total last submitted (ev_off_cpu) */
	/* The last off_cpu_sample(): what each measure said then. */
	__u64 mark_away;      /* away_so_far() */
	__u64 mark_run_delay; /* sched_info.run_delay */
	__u64 mark_nvcsw;     /* nvcsw */
	__u64 mark_nivcsw;    /* nivcsw */
};

/* Task storage, not a hash keyed by tid: the slot hangs off the thread
 * itself, so enter and exit find it without hashing and nothing is
 * inserted or deleted per syscall (the hash's update and delete were half
 * of the syscall programs' time), there is no cap on threads, and a slot
 * goes away with its thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Sockets: who holds one, read with CO-RE from the fd table. Only the
 * fields used are declared; libbpf relocates them against the kernel's
 * BTF (anonymous unions in sock_common are looked through). */
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
	struct file *file;
} __attribute__((preserve_access_index));

struct ps_in6 {
	__u8 b[16];
};

struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct ps_in6 skc_v6_daddr;
	struct ps_in6 skc_v6_rcv_saddr;
	unsigned char skc_state;
	unsigned long skc_flags;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	__u16 sk_protocol;
	__u16 sk_type;
	__u8 sk_shutdown;
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct ps_sun {
	unsigned short sun_family;
	char sun_path[SOCK_PATH_LEN];
};

struct unix_address {
	int len;
	struct ps_sun name[0];
} __attribute__((preserve_access_index));

struct unix_sock {
	struct unix_address *addr;
	struct sock *peer;
} __attribute__((preserve_access_index));

#define PS_AF_UNIX 1
#define PS_AF_INET 2
#define PS_AF_INET6 10
#define PS_IPPROTO_TCP 6
#define PS_TCP_CLOSE 7
#define PS_S_IFMT 0170000
#define PS_S_IFSOCK 0140000
#define PS_SEND_SHUTDOWN 2
#define PS_SOCK_DONE 1
#define PS_EINPROGRESS 115

/* Who holds a TCP socket: the traced process and fd that accepted or
 * connected it (or held it when the trace began). */
struct sock_owner {
	__u32 pid;
	__s32 fd;
};

/* TCP sockets of the traced processes, by struct sock address. TCP events
 * fire in softirq on any CPU, often in no traced task, and after the fd is
 * closed (LAST_ACK -> CLOSE): they are filtered by socket, not by tgid.
 * An entry goes when its socket is destroyed (tcp_destroy_sock); a full map is counted in
 * sock_map_full (never silent), and that socket's TCP events are missed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sock_owner);
} socks SEC(".maps");

/* Sockets open before the trace, by inode (from /proc/PID/fd), filled by
 * the engine: the first TCP event of such a socket moves it to socks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sock_map_full SEC(".maps");

/* Set by the engine once it has put sockets in sock_inodes: until then a
 * TCP event of an unknown socket costs one hash lookup, not two. */
volatile __u32 have_sock_inodes = 0;

/* The raw tracepoints' arguments: sys_enter(struct pt_regs *regs, long id)
 * and sys_exit(struct pt_regs *regs, long ret). The syscall's own
 * arguments are read from regs, in the registers the syscall ABI puts them
 * in; portsnoop needs the first four. */
#if defined(__TARGET_ARCH_x86)
/* struct pt_regs from r10 to rdi: r10 r9 r8 ax cx dx si di. */
#define REGS_FROM 56
#define REGS_LEN 8
#define ARG0 7
#define ARG1 6
#define ARG2 5
#define ARG3 0
#elif defined(__TARGET_ARCH_arm64)
/* struct pt_regs starts with x0..x30; x0..x3 hold the first four. */
#define REGS_FROM 0
#define REGS_LEN 4
#define ARG0 0
#define ARG1 1
#define ARG2 2
#define ARG3 3
#else
#error "portsnoop: syscall argument registers unknown for this architecture"
#endif

static __always_inline int syscall_args(__u64 regs, __u64 a[4])
{
	__u64 r[REGS_LEN];

	if (bpf_probe_read_kernel(r, sizeof(r), (void *)(regs + REGS_FROM)))
		return -1;
	a[0] = r[ARG0];
	a[1] = r[ARG1];
	a[2] = r[ARG2];
	a[3] = r[ARG3];
	return 0;
}

/* The traced syscalls, as SC_* kinds; -1 for the rest. Some do not exist
 * on every architecture (arm64 has no epoll_wait). */
static __always_inline int kind_of(long id)
{
	switch (id) {
#ifdef __NR_read
	case __NR_read: return SC_READ;
#endif
	case __NR_readv: return SC_READV;
	case __NR_recvfrom: return SC_RECVFROM;
	case __NR_recvmsg: return SC_RECVMSG;
	case __NR_write: return SC_WRITE;
	case __NR_writev: return SC_WRITEV;
	case __NR_sendto: return SC_SENDTO;
	case __NR_sendmsg: return SC_SENDMSG;
	case __NR_accept: return SC_ACCEPT;
	case __NR_accept4: return SC_ACCEPT4;
	case __NR_connect: return SC_CONNECT;
	case __NR_shutdown: return SC_SHUTDOWN;
	case __NR_close: return SC_CLOSE;
	case __NR_epoll_ctl: return SC_EPOLL_CTL;
#ifdef __NR_epoll_wait
	case __NR_epoll_wait: return SC_EPOLL_WAIT;
#endif
	case __NR_epoll_pwait: return SC_EPOLL_PWAIT;
	case __NR_epoll_pwait2: return SC_EPOLL_PWAIT2;
	default: return -1;
	}
}

/* struct epoll_event is packed on x86-64 only. */
#if defined(__TARGET_ARCH_x86)
#define EPOLL_EVENT_SIZE 12
#else
#define EPOLL_EVENT_SIZE 16
#endif

static __always_inline bool is_target(__u32 *pid, __u32 *tid)
{
	if (in_pid_ns) {
		struct bpf_pidns_info ns;

		/* Fails for a task outside the namespace: not the target. */
		if (bpf_get_ns_current_pid_tgid(pid_ns_dev, pid_ns_ino, &ns, sizeof(ns)) ||
		    ns.tgid != target_tgid || !ready)
			return false;
		*pid = ns.tgid;
		*tid = ns.pid;
		return true;
	}
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = (__u32)(id >> 32);

	if (follow) {
		__u32 *recording = bpf_map_lookup_elem(&traced, &tgid);

		if (!recording || !*recording || !ready)
			return false;
	} else if (tgid != target_tgid || !ready) {
		return false;
	}
	*pid = tgid;
	*tid = (__u32)id;
	return true;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&dropped, &zero);
	__u64 *p = bpf_map_lookup_elem(&unreported, &zero);

	if (n)
		*n += 1;
	if (p)
		__sync_fetch_and_add(p, 1);
}

/* Before the next record (from any CPU), say how many were lost. False
 * if drops are unreported and still cannot be: then the record must be
 * dropped too, or it would arrive after a gap nobody announced (the
 * consumer can free room between the two reserves). */
static __always_inline bool report_drops(__u32 pid, __u32 tid, __u64 ts)
{
	__u32 zero = 0;
	__u64 *p = bpf_map_lookup_elem(&unreported, &zero);

	if (!p || !*p)
		return true;
	struct ev_lost *l = bpf_ringbuf_reserve(&events, sizeof(*l), 0);
	if (!l)
		return false;
	/* Claimed atomically: two CPUs must not report the same drops. */
	__u64 n = __sync_lock_test_and_set(p, 0);
	if (!n) {
		bpf_ringbuf_discard(l, 0);
		return true;
	}
	l->h.type = EV_LOST;
	l->h.tid = tid;
	l->h.ts_ns = ts;
	l->h.pid = pid;
	l->h.pad = 0;
	l->count = n;
	bpf_ringbuf_submit(l, 0);
	return true;
}

static __always_inline __u64 submit_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
}

static __always_inline void *reserve(__u64 size, __u32 type, __u32 pid, __u32 tid, __u64 ts)
{
	struct ev_header *h = report_drops(pid, tid, ts) ? bpf_ringbuf_reserve(&events, size, 0) : 0;

	if (!h) {
		count_drop();
		return 0;
	}
	h->type = type;
	h->tid = tid;
	h->ts_ns = ts;
	h->pid = pid;
	h->pad = 0;
	return h;
}

static __always_inline struct sock *sock_of_fd(int fd, struct inode **inode)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	*inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(*inode, i_mode) & PS_S_IFMT) != PS_S_IFSOCK)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	return so ? BPF_CORE_READ(so, sk) : 0;
}

static __always_inline void own_sock(struct sock *sk, __u32 pid, int fd)
{
	__u64 key = (__u64)sk;
	struct sock_owner o = { .pid = pid, .fd = fd };

	if (bpf_map_update_elem(&socks, &key, &o, BPF_ANY)) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&sock_map_full, &zero);

		if (n)
			__sync_fetch_and_add(n, 1);
	}
}

/* A Unix socket's bound path: sun_path's bytes (len minus the family). */
static __always_inline __u16 unix_path(struct sock *sk, char *out)
{
	struct unix_sock *u = (struct unix_sock *)sk;
	struct unix_address *a = sk ? BPF_CORE_READ(u, addr) : 0;
	int len;

	if (!a)
		return 0;
	len = BPF_CORE_READ(a, len) - 2;
	if (len <= 0)
		return 0;
	if (len > SOCK_PATH_LEN)
		len = SOCK_PATH_LEN;
	if (bpf_probe_read_kernel(out, SOCK_PATH_LEN, __builtin_preserve_access_index(&a->name[0].sun_path)))
		return 0;
	return (__u16)len;
}

/* The identity of the socket `fd` now holds, as an ev_sock record; a TCP
 * socket is also made known to the TCP programs. */
static __always_inline void submit_sock(__u32 pid, __u32 tid, __u64 ts, int fd, __u32 kind)
{
	struct inode *inode = 0;
	struct sock *sk = sock_of_fd(fd, &inode);

	if (!sk)
		return;
	struct ev_sock *e = reserve(sizeof(*e), EV_SOCK, pid, tid, ts);
	if (!e)
		return;
	__builtin_memset((char *)e + sizeof(e->h), 0, sizeof(*e) - sizeof(e->h));
	e->fd = fd;
	e->kind = kind;
	e->sk = (__u64)sk;
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->sock_type = BPF_CORE_READ(sk, sk_type);
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	if (e->family == PS_AF_INET || e->family == PS_AF_INET6) {
		e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		e->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
		/* Sized by hand: BPF_CORE_READ_INTO would read one element
		 * of the byte arrays. */
		if (e->family == PS_AF_INET) {
			bpf_core_read(e->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_core_read(e->raddr, 4, &sk->__sk_common.skc_daddr);
		} else {
			bpf_core_read(e->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
			bpf_core_read(e->raddr, 16, &sk->__sk_common.skc_v6_daddr);
		}
	} else if (e->family == PS_AF_UNIX) {
		struct unix_sock *u = (struct unix_sock *)sk;

		e->lpath_len = unix_path(sk, e->lpath);
		e->rpath_len = unix_path(BPF_CORE_READ(u, peer), e->rpath);
	}
	bool tcp = e->protocol == PS_IPPROTO_TCP &&
		   (e->family == PS_AF_INET || e->family == PS_AF_INET6);
	bpf_ringbuf_submit(e, submit_flags());
	if (tcp)
		own_sock(sk, pid, fd);
}

/* The thread's time away from its code since it began: exec_start -
 * sum_exec_runtime, from the scheduler's accounting, read in loads instead
 * of a program on every context switch of the machine. Whenever the
 * scheduler counts a running thread's time, exec_start and
 * sum_exec_runtime move on together; when the thread gets a CPU back,
 * exec_start jumps to that moment. exec_start is in its CPU's clock_task,
 * which leaves out that CPU's IRQ and steal time: a thread woken on
 * another CPU would jump by the difference between two CPUs' clocks (19 ms
 * measured instead of 50 in a VM). Adding the running CPU's clock -
 * clock_task (its rq found through its entity's cfs_rq: the per-CPU
 * runqueues symbol needs KALLSYMS_ALL) puts it on sched_clock, which all
 * CPUs share. What that leaves in is the IRQ and steal time while the
 * thread held the CPU: on a VM whose host is busy, 9 ms of a 33 ms
 * callback that was switched out for 7. off_cpu_sample() keeps that out.
 * A kernel without group scheduling has no cfs_rq->rq: there the raw
 * difference is taken, exact unless the thread changed CPUs. */
static __always_inline __u64 away_so_far(struct task_struct *task)
{
	__u64 start = task->se.exec_start;

	if (bpf_core_field_exists(((struct cfs_rq *)0)->rq)) {
		struct rq *rq = task->se.cfs_rq->rq;

		if (rq)
			start += rq->clock - rq->clock_task;
	}
	return start - task->se.sum_exec_runtime;
}

/* --stall: the thread's off-CPU time, sampled at callback boundaries and
 * at every syscall's entry and exit inside a callback, goes into its
 * running total between two samples by what took it off the CPU:
 * - nothing (no context switch): nothing, exactly, whatever the steal;
 * - preemption only: run_delay's growth, exactly its wait for a CPU (a
 *   thread preempted just as it was going to sleep is not counted as
 *   waiting, but it then blocks in that same syscall: the next case);
 * - it blocked, which only happens inside a syscall (or a page fault):
 *   the growth of away_so_far(), whose steal is then that of one
 *   syscall's few microseconds on the CPU, not the whole callback's.
 * Between callbacks nothing is added: a loop thread blocks there all the
 * time. Direct loads through the BTF task pointer, not probe reads: this
 * runs at every traced syscall inside a callback. */
static __always_inline void off_cpu_sample(struct inflight *v)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 away = away_so_far(task);
	__u64 run_delay = 0;
	__u64 nvcsw = task->nvcsw, nivcsw = task->nivcsw;

	if (bpf_core_field_exists(task->sched_info))
		run_delay = task->sched_info.run_delay;
	if (v->cb_depth) {
		if (nvcsw != v->mark_nvcsw)
			v->off_cpu_inside += away > v->mark_away ? away - v->mark_away : 0;
		else if (nivcsw != v->mark_nivcsw)
			v->off_cpu_inside += run_delay - v->mark_run_delay;
	}
	v->mark_away = away;
	v->mark_run_delay = run_delay;
	v->mark_nvcsw = nvcsw;
	v->mark_nivcsw = nivcsw;
}

/* --stall: an untraced syscall entered. Timed only inside a callback:
 * elsewhere (the loop's own waits, other threads) it explains no stall. */
static __always_inline void slow_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct inflight *v = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
	__u64 a[4];

	if (!v)
		return;
	if (!v->cb_depth) {
		/* One whose exit was never seen (an exec's, while the new
		 * image waited to be attached) must not be taken for this. */
		if (v->other_ts)
			v->other_ts = 0;
		return;
	}
	off_cpu_sample(v);
	v->other_ts = bpf_ktime_get_ns();
	v->other_nr = (__u32)ctx->args[1];
	v->other_arg0 = syscall_args(ctx->args[0], a) ? 0 : a[0];
}

/* --stall: the untraced syscall returned; submitted only if it lasted long
 * enough to matter (see stall_syscall_min_ns), so a callback that stalls
 * nothing costs no records. */
static __always_inline void slow_exit(struct inflight *v, __u32 pid, __u32 tid, __s64 ret)
{
	__u64 ts = v->other_ts;
	__u64 dur = bpf_ktime_get_ns() - ts;

	v->other_ts = 0;
	if (dur < stall_syscall_min_ns)
		return;
	struct ev_slow_syscall *e = reserve(sizeof(*e), EV_SLOW_SYSCALL, pid, tid, ts);
	if (!e)
		return;
	e->nr = v->other_nr;
	e->pad = 0;
	e->arg0 = v->other_arg0;
	e->rv = ret;
	e->dur_ns = dur;
	bpf_ringbuf_submit(e, submit_flags());
}

/* --stall: a callback entry or return. Counts the depth, and says the
 * thread's off-CPU total first if it changed since it last did: the
 * consumer takes a callback's off-CPU time as the difference between its
 * entry and its return. Most callbacks never leave the CPU, so most
 * boundaries submit nothing. */
static __always_inline void callback_boundary(bool entry, __u32 pid, __u32 tid, __u64 ts)
{
	struct inflight *v = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!v)
		return;
	off_cpu_sample(v);
	if (entry)
		v->cb_depth += 1;
	else if (v->cb_depth)
		v->cb_depth -= 1;
	__u64 total = v->off_cpu_inside;
	if (total == v->off_cpu_reported)
		return;
	struct ev_off_cpu *e = reserve(sizeof(*e), EV_OFF_CPU, pid, tid, ts);
	if (!e)
		return; /* counted as lost: the callback is incomplete */
	e->total_ns = total;
	bpf_ringbuf_submit(e, submit_flags());
	v->off_cpu_reported = total;
}

SEC("raw_tracepoint/sys_enter")
int sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 pid, tid;
	__u64 a[4];

	if (!is_target(&pid, &tid))
		return 0;
	int kind = kind_of((long)ctx->args[1]);
	if (kind < 0) {
		if (stall_track)
			slow_enter(ctx);
		return 0;
	}
	if (syscall_args(ctx->args[0], a))
		return 0;
	struct inflight *v = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!v)
		return 0;
	if (stall_track && v->cb_depth)
		off_cpu_sample(v);
	/* Field by field, not a compound literal: the stall fields (callback
	 * depth, off-CPU totals) outlive the syscall. */
	v->ts_ns = bpf_ktime_get_ns();
	v->kind = kind;
	v->fd = (__s32)a[0];
	v->arg = 0;
	v->ptr = 0;
	v->ctl_op = 0;
	v->ctl_fd = 0;
	v->ctl_events = 0;
	v->pad = 0;
	v->ctl_data = 0;
	v->other_ts = 0;
	/* The size-like argument kept: the buffer length, shutdown's how,
	 * epoll_wait's maxevents. */
	switch (kind) {
	case SC_READ:
	case SC_READV:
	case SC_RECVFROM:
	case SC_WRITE:
	case SC_WRITEV:
	case SC_SENDTO:
	case SC_EPOLL_WAIT:
	case SC_EPOLL_PWAIT:
	case SC_EPOLL_PWAIT2:
		v->arg = a[2];
		break;
	case SC_SHUTDOWN:
		v->arg = a[1];
		break;
	}
	if (kind >= SC_EPOLL_WAIT)
		v->ptr = a[1];
	/* The kernel frees a closing fd's number early in close(2), and a
	 * socket's close can take a hundred microseconds more: another thread
	 * can accept the same number and have its record in the buffer before
	 * this close's. Said at entry, the end of the fd's life is in the
	 * stream before any reuse of its number can be. */
	if (kind == SC_CLOSE) {
		struct ev_close_enter *c = reserve(sizeof(*c), EV_CLOSE_ENTER, pid, tid, v->ts_ns);
		if (c) {
			c->fd = v->fd;
			c->pad = 0;
			bpf_ringbuf_submit(c, submit_flags());
		}
	}
	/* A connect's SYN_SENT and, on loopback, its ESTABLISHED come before
	 * it returns: its TCP socket is known to the TCP programs from here. */
	if (kind == SC_CONNECT) {
		struct inode *inode = 0;
		struct sock *sk = sock_of_fd(v->fd, &inode);

		if (sk && BPF_CORE_READ(sk, sk_protocol) == PS_IPPROTO_TCP)
			own_sock(sk, pid, v->fd);
	}
	if (kind == SC_EPOLL_CTL) {
		v->ctl_op = (__s32)a[1];
		v->ctl_fd = (__s32)a[2];
		if (a[3]) {
			bpf_probe_read_user(&v->ctl_events, sizeof(v->ctl_events), (void *)a[3]);
			bpf_probe_read_user(&v->ctl_data, sizeof(v->ctl_data),
					    (void *)(a[3] + EPOLL_EVENT_SIZE - 8));
		}
	}
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 pid, tid;

	if (!is_target(&pid, &tid))
		return 0;
	struct inflight *v = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
	if (!v)
		return 0;
	if (stall_track && v->cb_depth)
		off_cpu_sample(v);
	if (stall_track && v->other_ts) {
		slow_exit(v, pid, tid, (__s64)ctx->args[1]);
		return 0;
	}
	if (!v->ts_ns)
		return 0; /* not traced, or entered before we attached */
	__s64 ret = (__s64)ctx->args[1];
	__u64 now = bpf_ktime_get_ns();
	__u64 ts = v->ts_ns;
	__u32 kind = v->kind;

	if (kind == SC_EPOLL_CTL) {
		struct ev_epoll_ctl *e = reserve(sizeof(*e), EV_EPOLL_CTL, pid, tid, ts);
		if (e) {
			e->epfd = v->fd;
			e->op = v->ctl_op;
			e->fd = v->ctl_fd;
			e->events = v->ctl_events;
			e->data = v->ctl_data;
			e->rv = ret;
			e->dur_ns = now - ts;
			bpf_ringbuf_submit(e, submit_flags());
		}
	} else if (kind >= SC_EPOLL_WAIT) {
		struct ev_epoll_wait *e = reserve(sizeof(*e), EV_EPOLL_WAIT, pid, tid, ts);
		if (e) {
			__s64 rv = ret;
			__u32 n = rv > WAIT_MAX_EVENTS ? WAIT_MAX_EVENTS : (rv > 0 ? (__u32)rv : 0);
			__u64 base = v->ptr;

			e->kind = kind;
			e->epfd = v->fd;
			e->rv = rv;
			e->dur_ns = now - ts;
			e->nready = 0;
			for (__u32 i = 0; i < WAIT_MAX_EVENTS; i++) {
				if (i >= n)
					break;
				/* One read per event, not one per field: helper calls
				 * are most of this loop's cost. */
				__u8 raw[EPOLL_EVENT_SIZE];

				if (bpf_probe_read_user(raw, sizeof(raw),
							(void *)(base + (__u64)i * EPOLL_EVENT_SIZE)))
					break;
				__builtin_memcpy(&e->ready[i].events, raw, 4);
				__builtin_memcpy(&e->ready[i].data, raw + EPOLL_EVENT_SIZE - 8, 8);
				e->nready = i + 1;
			}
			bpf_ringbuf_submit(e, submit_flags());
		}
	} else {
		/* The new or connected socket's identity, just before the
		 * syscall's record, so the consumer has it when the syscall
		 * comes. */
		if ((kind == SC_ACCEPT || kind == SC_ACCEPT4) && ret >= 0)
			submit_sock(pid, tid, ts, (int)ret, kind);
		else if (kind == SC_CONNECT && (ret == 0 || ret == -PS_EINPROGRESS))
			submit_sock(pid, tid, ts, v->fd, kind);
		struct ev_syscall *e = reserve(sizeof(*e), EV_SYSCALL, pid, tid, ts);
		if (e) {
			e->kind = kind;
			e->fd = v->fd;
			e->rv = ret;
			e->dur_ns = now - ts;
			e->arg = v->arg;
			bpf_ringbuf_submit(e, submit_flags());
		}
	}
	v->ts_ns = 0;
	return 0;
}

/* Raw, like the syscalls: no tracefs needed, no perf glue. */
SEC("raw_tracepoint/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 pid, tid;

	if (!is_target(&pid, &tid))
		return 0;
	struct ev_exec *e = reserve(sizeof(*e), EV_EXEC, pid, tid, bpf_ktime_get_ns());
	if (e)
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	/* The old image's callbacks are gone with it. */
	if (stall_track) {
		struct inflight *v =
			bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
		if (v) {
			/* The consumer starts the thread afresh too. */
			v->cb_depth = 0;
			v->off_cpu_inside = 0;
			v->off_cpu_reported = 0;
			v->other_ts = 0;
		}
	}
	/* Nothing more until the engine has attached the new image's sites
	 * (its loader must finish first): a record of the new image before
	 * that would be one of half its probes. The engine sees the flag
	 * cleared, so it follows the exec even if this record was dropped.
	 * With -f only this process's flag: the others go on recording. */
	if (follow) {
		__u32 paused = 0;

		bpf_map_update_elem(&traced, &pid, &paused, BPF_EXIST);
	} else {
		ready = 0;
	}
	return 0;
}

/* -f: sched_process_fork(struct task_struct *parent, struct task_struct
 * *child), in the parent. A new thread shares its process's tgid, which
 * is already traced: only a new process is added. Not recorded until the
 * engine has attached its sites (value 0): uprobes are per process, and
 * the parent's do not fire in the child. */
SEC("raw_tracepoint/sched_process_fork")
int on_fork(struct bpf_raw_tracepoint_args *ctx)
{
	if (!follow)
		return 0;
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (ptgid == ctgid || !bpf_map_lookup_elem(&traced, &ptgid))
		return 0;
	__u32 paused = 0;

	if (bpf_map_update_elem(&traced, &ctgid, &paused, BPF_NOEXIST))
		return 0; /* the map is full: the child is not followed */
	struct ev_fork *e = reserve(sizeof(*e), EV_FORK, ptgid, (__u32)bpf_get_current_pid_tgid(),
				    bpf_ktime_get_ns());
	if (e) {
		e->child = ctgid;
		e->pad = 0;
		/* The child waits unrecorded until the engine attaches it. */
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	return 0;
}

/* -f: sched_process_exit, in the exiting thread. The group leader's exit
 * ends a followed process (a leader that leaves by itself while its other
 * threads run on ends it early: rare, and then only its trace is cut
 * short). The main target's end the session sees itself, with its wait
 * status. */
SEC("raw_tracepoint/sched_process_exit")
int on_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	if (!follow)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = (__u32)(id >> 32);

	if ((__u32)id != tgid || tgid == target_tgid || bpf_map_delete_elem(&traced, &tgid))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct ev_exit *e = reserve(sizeof(*e), EV_EXIT, tgid, tgid, bpf_ktime_get_ns());
	if (e) {
		e->code = BPF_CORE_READ(task, exit_code);
		e->pad = 0;
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	return 0;
}

/* TCP events, filtered by socket (see socks). */
static __always_inline struct sock_owner *owner_of(struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);

	if (o || !have_sock_inodes || !sk)
		return o;
	struct socket *so = BPF_CORE_READ(sk, sk_socket);
	struct file *f = so ? BPF_CORE_READ(so, file) : 0;
	if (!f)
		return 0;
	__u64 ino = BPF_CORE_READ(f, f_inode, i_ino);
	struct sock_owner *pre = bpf_map_lookup_elem(&sock_inodes, &ino);
	if (!pre)
		return 0;
	own_sock(sk, pre->pid, pre->fd);
	bpf_map_delete_elem(&sock_inodes, &ino);
	return bpf_map_lookup_elem(&socks, &key);
}

static __always_inline void submit_tcp(struct sock *sk, __u32 event, int from, int to)
{
	struct sock_owner *o = owner_of(sk);

	if (!o)
		return;
	__u32 pid = o->pid;
	__s32 fd = o->fd;
	__u64 id = bpf_get_current_pid_tgid();
	/* Softirq runs in whatever task was there: a tid only if it is one
	 * of the holder's (without a pid namespace, where ids are global). */
	__u32 tid = (!in_pid_ns && (__u32)(id >> 32) == pid) ? (__u32)id : 0;
	struct ev_tcp *e = reserve(sizeof(*e), EV_TCP, pid, tid, bpf_ktime_get_ns());

	if (e) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		unsigned long flags = bpf_core_field_exists(sk->__sk_common.skc_flags)
					      ? BPF_CORE_READ(sk, __sk_common.skc_flags)
					      : BPF_CORE_READ(sk, sk_flags);

		e->fd = fd;
		e->event = event;
		e->sk = (__u64)sk;
		e->from = from;
		e->to = to;
		e->bytes_received = BPF_CORE_READ(tp, bytes_received);
		e->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
		e->fin_received = (flags >> PS_SOCK_DONE) & 1;
		e->fin_acked = (BPF_CORE_READ(sk, sk_shutdown) & PS_SEND_SHUTDOWN) &&
			       BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq);
		e->pad1 = 0;
		e->pad2 = 0;
		bpf_ringbuf_submit(e, submit_flags());
	}
}

/* The current state, for the events that are not state changes. */
static __always_inline int state_of(struct sock *sk)
{
	return BPF_CORE_READ((struct sock_common *)sk, skc_state);
}

/* inet_sock_set_state(const struct sock *sk, int oldstate, int newstate):
 * fires for every protocol; only sockets in socks (TCP) are recorded. */
SEC("raw_tracepoint/inet_sock_set_state")
int on_sock_state(struct bpf_raw_tracepoint_args *ctx)
{
	submit_tcp((struct sock *)ctx->args[0], TCP_EV_STATE, (int)ctx->args[1], (int)ctx->args[2]);
	return 0;
}

/* tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...) */
SEC("raw_tracepoint/tcp_retransmit_skb")
int on_tcp_retransmit(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int st = sk ? state_of(sk) : 0;

	if (sk)
		submit_tcp(sk, TCP_EV_RETRANSMIT, st, st);
	return 0;
}

/* tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, ...):
 * sk is NULL for a reset that answers no socket. */
SEC("raw_tracepoint/tcp_send_reset")
int on_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int st = sk ? state_of(sk) : 0;

	if (sk)
		submit_tcp(sk, TCP_EV_RESET_SENT, st, st);
	return 0;
}

/* tcp_destroy_sock(struct sock *sk): the socket is freed, after its CLOSE
 * (a close with unread data sets CLOSE, then sends its reset: the entry
 * must outlive CLOSE). Its address may be reused from here on. */
SEC("raw_tracepoint/tcp_destroy_sock")
int on_tcp_destroy(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 key = ctx->args[0];

	bpf_map_delete_elem(&socks, &key);
	return 0;
}

/* tcp_receive_reset(struct sock *sk) */
SEC("raw_tracepoint/tcp_receive_reset")
int on_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int st = sk ? state_of(sk) : 0;

	if (sk)
		submit_tcp(sk, TCP_EV_RESET_RECEIVED, st, st);
	return 0;
}

/* USDT sites, attached one uprobe per valid site by the engine (not with
 * libbpf's attach_usdt, which gives up on a whole probe when the linker
 * left a note for code it discarded). The cookie is the probe id. The usdt
 * crate passes argument i in the i-th C argument register, which the
 * engine checks against each note's spec; it also sign-extends from the
 * spec, so here the registers are taken whole. */
static __always_inline int site_fired(struct pt_regs *ctx)
{
	__u32 pid, tid;

	if (!is_target(&pid, &tid))
		return 0;
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	__u64 ts = bpf_ktime_get_ns();
	__u64 a0 = PT_REGS_PARM1(ctx), a1 = PT_REGS_PARM2(ctx), a2 = PT_REGS_PARM3(ctx);
	__u64 a3 = PT_REGS_PARM4(ctx), a4 = PT_REGS_PARM5(ctx), a5 = PT_REGS_PARM6(ctx);

	if (probe == PR_LOG) {
		struct ev_log *e = reserve(sizeof(*e), EV_LOG, pid, tid, ts);
		if (!e)
			return 0;
		e->args[0] = a0;
		e->args[1] = a1;
		e->args[2] = a2;
		e->args[3] = a3;
		bpf_probe_read_user_str(e->facility, sizeof(e->facility), (void *)a0);
		bpf_probe_read_user_str(e->file, sizeof(e->file), (void *)a1);
		bpf_probe_read_user_str(e->msg, sizeof(e->msg), (void *)a3);
		bpf_ringbuf_submit(e, submit_flags());
		return 0;
	}
	/* Only the callback probes carry a name: the others' records stop
	 * before it, half the bytes through the ring buffer and both caches. */
	bool named = probe == PR_CALLBACK_ENTRY || probe == PR_CALLBACK_RETURN;
	if (stall_track && named)
		callback_boundary(probe == PR_CALLBACK_ENTRY, pid, tid, ts);
	struct ev_probe *e = named ? reserve(sizeof(*e), EV_PROBE, pid, tid, ts)
				   : reserve(__builtin_offsetof(struct ev_probe, name), EV_PROBE, pid, tid, ts);
	if (!e)
		return 0;
	e->probe = probe;
	e->pad = 0;
	e->args[0] = a0;
	e->args[1] = a1;
	e->args[2] = a2;
	e->args[3] = a3;
	e->args[4] = a4;
	e->args[5] = a5;
	if (named && bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)a2) < 0)
		e->name[0] = 0;
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}

/* One link per site: the fallback when a kernel has no uprobe_multi
 * links, or one of the image's sites cannot take them (see attach_sites
 * in the engine). */
SEC("uprobe")
int evloop_site(struct pt_regs *ctx)
{
	return site_fired(ctx);
}

/* All of an image's sites in one link: the kernel waits out an RCU grace
 * period (about 100 ms here) when a uprobe link closes, once per link, so
 * per-site links made a session's end take a tenth of a second per site. */
SEC("uprobe.multi")
int evloop_site_multi(struct pt_regs *ctx)
{
	return site_fired(ctx);
}
