/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The one layout `portsnoop count`'s kernel side and its consumer share:
 * the key of a row of the counts table. Mirrored by count/kernel.rs, which
 * asserts the size and reads the fields at these offsets. */
#ifndef PORTSNOOP_COUNT_H
#define PORTSNOOP_COUNT_H

#include <linux/types.h>

#define COUNT_COMM_LEN 16
/* Syscall numbers below this can be marked as taking an fd first. */
#define COUNT_FD_FIRST_MAX 1024

#define COUNT_ABI_NATIVE 0
#define COUNT_ABI_IA32 1

struct count_key {
	__u32 tgid;  /* offset 0 */
	__u32 nr;    /* offset 4: the syscall number sys_enter got */
	__s32 fd;    /* offset 8: -1 unless --by-fd and the call's first argument is an fd */
	__u32 abi;   /* offset 12: COUNT_ABI_NATIVE, or COUNT_ABI_IA32 (a 32-bit call on x86-64: its own numbering) */
	char comm[COUNT_COMM_LEN]; /* offset 16: the calling thread's name, NUL-padded */
};

#endif
