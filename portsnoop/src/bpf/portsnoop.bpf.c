// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* portsnoop's kernel side: the target's fd syscalls and epoll calls (from
 * syscall tracepoints) and its evloop USDT probes, as records in one ring
 * buffer.
 *
 * Cost rules, measured on the target machine (see the notes): filter by
 * tgid first thing, since syscall tracepoints fire for every process; join
 * enter and exit here so a syscall is one record; never wake the consumer
 * per record (it polls on a timer) except when the buffer fills up; count
 * every record that did not fit. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <linux/types.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "event.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 target_tgid = 0;
/* Wake the consumer only once this much is waiting. */
const volatile __u64 wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by the engine before load */
} events SEC(".maps");

/* Per CPU: [0] records dropped in all, [1] dropped and not yet reported
 * in-band with an EV_LOST record. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* A syscall between its enter and exit, by thread. */
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
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Layouts from /sys/kernel/tracing/events/syscalls/sys_{enter,exit}_* /format:
 * 8 bytes of common fields, the syscall number, then the arguments. */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

/* struct epoll_event is packed on x86-64 only. */
#if defined(__TARGET_ARCH_x86)
#define EPOLL_EVENT_SIZE 12
#else
#define EPOLL_EVENT_SIZE 16
#endif

static __always_inline bool is_target(__u32 *tid)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)(id >> 32) != target_tgid)
		return false;
	*tid = (__u32)id;
	return true;
}

static __always_inline void count_drop(void)
{
	__u32 total = 0, pending = 1;
	__u64 *n = bpf_map_lookup_elem(&dropped, &total);
	__u64 *p = bpf_map_lookup_elem(&dropped, &pending);

	if (n)
		*n += 1;
	if (p)
		*p += 1;
}

/* Before this CPU's next record, say how many it lost. */
static __always_inline void report_drops(__u32 tid, __u64 ts)
{
	__u32 pending = 1;
	__u64 *p = bpf_map_lookup_elem(&dropped, &pending);

	if (!p || !*p)
		return;
	struct ev_lost *l = bpf_ringbuf_reserve(&events, sizeof(*l), 0);
	if (!l)
		return; /* still full: stays pending */
	l->h.type = EV_LOST;
	l->h.tid = tid;
	l->h.ts_ns = ts;
	l->count = *p;
	*p = 0;
	bpf_ringbuf_submit(l, 0);
}

static __always_inline __u64 submit_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
}

static __always_inline void *reserve(__u64 size, __u32 type, __u32 tid, __u64 ts)
{
	report_drops(tid, ts);
	struct ev_header *h = bpf_ringbuf_reserve(&events, size, 0);

	if (!h) {
		count_drop();
		return 0;
	}
	h->type = type;
	h->tid = tid;
	h->ts_ns = ts;
	return h;
}

static __always_inline int on_enter(struct sys_enter_ctx *ctx, __u32 kind, __u64 arg)
{
	__u32 tid;

	if (!is_target(&tid))
		return 0;
	struct inflight v = {
		.ts_ns = bpf_ktime_get_ns(),
		.kind = kind,
		.fd = (__s32)ctx->args[0],
		.arg = arg,
	};
	/* Only touch the arguments a syscall has: the kernel refuses to attach
	 * a program that reads past its tracepoint's record (close has one). */
	if (kind >= SC_EPOLL_WAIT)
		v.ptr = ctx->args[1];
	if (kind == SC_EPOLL_CTL) {
		v.ctl_op = (__s32)ctx->args[1];
		v.ctl_fd = (__s32)ctx->args[2];
		if (ctx->args[3]) {
			bpf_probe_read_user(&v.ctl_events, sizeof(v.ctl_events), (void *)ctx->args[3]);
			bpf_probe_read_user(&v.ctl_data, sizeof(v.ctl_data),
					    (void *)(ctx->args[3] + EPOLL_EVENT_SIZE - 8));
		}
	}
	bpf_map_update_elem(&inflight, &tid, &v, BPF_ANY);
	return 0;
}

static __always_inline int on_exit(struct sys_exit_ctx *ctx)
{
	__u32 tid;

	if (!is_target(&tid))
		return 0;
	struct inflight *v = bpf_map_lookup_elem(&inflight, &tid);
	if (!v)
		return 0; /* entered before we attached */
	__u64 now = bpf_ktime_get_ns();
	__u64 ts = v->ts_ns;
	__u32 kind = v->kind;

	if (kind == SC_EPOLL_CTL) {
		struct ev_epoll_ctl *e = reserve(sizeof(*e), EV_EPOLL_CTL, tid, ts);
		if (e) {
			e->epfd = v->fd;
			e->op = v->ctl_op;
			e->fd = v->ctl_fd;
			e->events = v->ctl_events;
			e->data = v->ctl_data;
			e->rv = ctx->ret;
			e->dur_ns = now - ts;
			bpf_ringbuf_submit(e, submit_flags());
		}
	} else if (kind >= SC_EPOLL_WAIT) {
		struct ev_epoll_wait *e = reserve(sizeof(*e), EV_EPOLL_WAIT, tid, ts);
		if (e) {
			__s64 rv = ctx->ret;
			__u32 n = rv > WAIT_MAX_EVENTS ? WAIT_MAX_EVENTS : (rv > 0 ? (__u32)rv : 0);
			__u64 base = v->ptr;

			e->kind = kind;
			e->epfd = v->fd;
			e->rv = rv;
			e->dur_ns = now - ts;
			e->nready = n;
			for (__u32 i = 0; i < WAIT_MAX_EVENTS; i++) {
				if (i >= n)
					break;
				__u64 at = base + (__u64)i * EPOLL_EVENT_SIZE;
				bpf_probe_read_user(&e->ready[i].events, 4, (void *)at);
				bpf_probe_read_user(&e->ready[i].data, 8, (void *)(at + EPOLL_EVENT_SIZE - 8));
			}
			bpf_ringbuf_submit(e, submit_flags());
		}
	} else {
		struct ev_syscall *e = reserve(sizeof(*e), EV_SYSCALL, tid, ts);
		if (e) {
			e->kind = kind;
			e->fd = v->fd;
			e->rv = ctx->ret;
			e->dur_ns = now - ts;
			e->arg = v->arg;
			bpf_ringbuf_submit(e, submit_flags());
		}
	}
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

/* One enter/exit pair per syscall; ARG is the size-like argument kept. */
#define SYSCALL(name, kind, ARG)                                                   \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                \
	int enter_##name(struct sys_enter_ctx *ctx) { return on_enter(ctx, kind, ARG); } \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                 \
	int exit_##name(struct sys_exit_ctx *ctx) { return on_exit(ctx); }

SYSCALL(read, SC_READ, ctx->args[2])
SYSCALL(readv, SC_READV, ctx->args[2])
SYSCALL(recvfrom, SC_RECVFROM, ctx->args[2])
SYSCALL(recvmsg, SC_RECVMSG, 0)
SYSCALL(write, SC_WRITE, ctx->args[2])
SYSCALL(writev, SC_WRITEV, ctx->args[2])
SYSCALL(sendto, SC_SENDTO, ctx->args[2])
SYSCALL(sendmsg, SC_SENDMSG, 0)
SYSCALL(accept, SC_ACCEPT, 0)
SYSCALL(accept4, SC_ACCEPT4, 0)
SYSCALL(connect, SC_CONNECT, 0)
SYSCALL(shutdown, SC_SHUTDOWN, ctx->args[1])
SYSCALL(close, SC_CLOSE, 0)
SYSCALL(epoll_ctl, SC_EPOLL_CTL, 0)
SYSCALL(epoll_wait, SC_EPOLL_WAIT, ctx->args[2])
SYSCALL(epoll_pwait, SC_EPOLL_PWAIT, ctx->args[2])
SYSCALL(epoll_pwait2, SC_EPOLL_PWAIT2, ctx->args[2])

SEC("tracepoint/sched/sched_process_exec")
int on_exec(void *ctx)
{
	__u32 tid;

	if (!is_target(&tid))
		return 0;
	struct ev_exec *e = reserve(sizeof(*e), EV_EXEC, tid, bpf_ktime_get_ns());
	if (e)
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

/* USDT sites, attached one uprobe per valid site by the engine (not with
 * libbpf's attach_usdt, which gives up on a whole probe when the linker
 * left a note for code it discarded). The cookie is the probe id. The usdt
 * crate passes argument i in the i-th C argument register, which the
 * engine checks against each note's spec; it also sign-extends from the
 * spec, so here the registers are taken whole. */
SEC("uprobe")
int evloop_site(struct pt_regs *ctx)
{
	__u32 tid;

	if (!is_target(&tid))
		return 0;
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	__u64 ts = bpf_ktime_get_ns();
	__u64 a0 = PT_REGS_PARM1(ctx), a1 = PT_REGS_PARM2(ctx), a2 = PT_REGS_PARM3(ctx);
	__u64 a3 = PT_REGS_PARM4(ctx), a4 = PT_REGS_PARM5(ctx), a5 = PT_REGS_PARM6(ctx);

	if (probe == PR_LOG) {
		struct ev_log *e = reserve(sizeof(*e), EV_LOG, tid, ts);
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
	struct ev_probe *e = reserve(sizeof(*e), EV_PROBE, tid, ts);
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
	e->name[0] = 0;
	if (probe == PR_CALLBACK_ENTRY || probe == PR_CALLBACK_RETURN)
		bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)a2);
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}
