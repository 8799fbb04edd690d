// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* `portsnoop count`'s kernel side: every syscall entered, counted in a
 * per-CPU hash keyed by (process, thread name, syscall[, fd]). Nothing per
 * syscall leaves the kernel; the consumer reads the table once, at the end.
 *
 * Per-CPU values: a count is a plain add to this CPU's slot, no atomic and
 * no cache line bouncing between CPUs when one process's threads make the
 * same call on several CPUs at once. The table is bounded (max_entries,
 * set before load): an insert that fails is counted in `uncounted`, which
 * the consumer reports, so a full table is never a silent undercount.
 *
 * The thread's name is part of the key, taken at the call, like the seed's
 * execname(): a process that exits before the end is still named, a
 * thread that names itself (a runtime's workers) gets its own rows, and a
 * process that execs has a row per image. */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "count.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* 0: every process. Else only this tgid (in the pid namespace below when
 * in_pid_ns). */
const volatile __u32 target_tgid = 0;
/* Set when portsnoop runs in a pid namespace other than the initial one:
 * pids are filtered and reported as that namespace sees them, and tasks
 * outside it are not counted (they have no pid there). */
const volatile __u32 in_pid_ns = 0;
const volatile __u64 pid_ns_dev = 0;
const volatile __u64 pid_ns_ino = 0;
/* --by-fd: key by the first argument too, for the syscalls whose first
 * argument is an fd (fd_first, filled by the consumer from its syscall
 * table). Others keep fd -1. Rodata, so that without it the verifier drops
 * the register read. */
const volatile __u32 by_fd = 0;
const volatile __u8 fd_first[COUNT_FD_FIRST_MAX] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240); /* set by the consumer before load */
	__type(key, struct count_key);
	__type(value, __u64);
} counts SEC(".maps");

/* Syscalls whose row could not be inserted (the table was full, or the
 * kernel refused the insert), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} uncounted SEC(".maps");

/* Where the first syscall argument is in the struct pt_regs the raw
 * sys_enter tracepoint hands over (as portsnoop.bpf.c reads them). */
#if defined(__TARGET_ARCH_x86)
#define ARG0_OFFSET 112 /* di */
/* A 32-bit call (int 0x80, or a 32-bit process's sysenter/syscall) comes
 * with the i386 numbering (20 is getpid there, writev here): the kernel
 * marks the thread TS_COMPAT from its entry until its return to user
 * mode. Read through the task's BTF (CO-RE, one load: no helper). */
#define TS_COMPAT 0x0002
struct thread_info {
	__u32 status;
} __attribute__((preserve_access_index));
struct task_struct {
	struct thread_info thread_info;
	char comm[COUNT_COMM_LEN];
} __attribute__((preserve_access_index));

static __always_inline __u32 call_abi(struct task_struct *task)
{
	return task->thread_info.status & TS_COMPAT ? COUNT_ABI_IA32 : COUNT_ABI_NATIVE;
}
#elif defined(__TARGET_ARCH_arm64)
#define ARG0_OFFSET 0 /* x0 */
struct task_struct {
	char comm[COUNT_COMM_LEN];
} __attribute__((preserve_access_index));

/* AArch32 tasks' calls are not told apart (yet): named by the arm64 table. */
static __always_inline __u32 call_abi(struct task_struct *task)
{
	return COUNT_ABI_NATIVE;
}
#else
#error "portsnoop count: syscall argument registers unknown for this architecture"
#endif

#ifndef EEXIST
#define EEXIST 17
#endif

/* sys_enter(struct pt_regs *regs, long id). */
SEC("raw_tracepoint/sys_enter")
int count_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct count_key key = {};

	if (in_pid_ns) {
		struct bpf_pidns_info ns;

		if (bpf_get_ns_current_pid_tgid(pid_ns_dev, pid_ns_ino, &ns, sizeof(ns)))
			return 0;
		key.tgid = ns.tgid;
	} else {
		key.tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	}
	if (target_tgid && key.tgid != target_tgid)
		return 0;
	long id = (long)ctx->args[1];

	struct task_struct *task = bpf_get_current_task_btf();

	key.nr = (__u32)id;
	key.abi = call_abi(task);
	key.fd = -1;
	if (by_fd && key.abi == COUNT_ABI_NATIVE && id >= 0 && id < COUNT_FD_FIRST_MAX && fd_first[id]) {
		__u64 arg0;

		if (!bpf_probe_read_kernel(&arg0, sizeof(arg0), (void *)(ctx->args[0] + ARG0_OFFSET)))
			key.fd = (__s32)arg0;
	}
	/* Two loads through the task's BTF, not bpf_get_current_comm (a
	 * helper call and a byte-wise copy: a quarter of this program's time
	 * on the target machine). Unlocked, as the helper is: a rename racing
	 * with the call can only tear this one name. The kernel pads a name
	 * with NULs (strscpy_pad); were a tail ever left, the consumer cuts
	 * the name at its NUL and merges the rows. */
	__builtin_memcpy(key.comm, task->comm, sizeof(key.comm));

	__u64 *n = bpf_map_lookup_elem(&counts, &key);
	if (n) {
		*n += 1;
		return 0;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);
	if (!err)
		return 0;
	/* Another CPU inserted the same row since the lookup: the slot of
	 * this CPU is there now, at zero. */
	if (err == -EEXIST) {
		n = bpf_map_lookup_elem(&counts, &key);
		if (n) {
			*n += 1;
			return 0;
		}
	}
	__u32 zero = 0;
	__u64 *u = bpf_map_lookup_elem(&uncounted, &zero);
	if (u)
		*u += 1;
	return 0;
}
