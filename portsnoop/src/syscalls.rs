//! Syscall numbers as names, and which calls take an fd first (for
//! `portsnoop count --by-fd` and the syscalls of a stall).
//!
//! The names are generated at build time from the kernel's UAPI header for
//! the target architecture (`asm/unistd_64.h`, from linux-libc-dev; see
//! `build.rs`), so they are the numbering the BPF side is built for. A
//! number the header does not name (a newer kernel's call, an x32 call,
//! or `-1` from a call a tracer skipped) is shown as `syscall_N`.
//!
//! A 32-bit call on x86-64 (a 32-bit program, or `int 0x80`) has the
//! i386 numbering (its 20 is `getpid`, x86-64's is `writev`): the kernel
//! side tells them apart ([`Abi`]), and they are named from
//! `asm/unistd_32.h` with an `i386:` prefix (`i386:getpid`), so that they
//! never merge with the 64-bit calls of the same name.

use std::borrow::Cow;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));
}
use generated::{SYSCALL_NAMES, SYSCALL_NAMES_IA32};

/// Which numbering a call came with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Abi {
    /// The architecture's own (x86-64, arm64).
    Native,
    /// A 32-bit call on x86-64: the i386 numbering.
    Ia32,
}

/// The name of syscall `nr` of `abi`, or `syscall_N` (N as the kernel's
/// signed `long` would read it) for a number the header does not name;
/// `i386:` before a 32-bit call's.
pub fn name(abi: Abi, nr: u32) -> Cow<'static, str> {
    let known = match abi {
        Abi::Native => native_name(nr),
        Abi::Ia32 => lookup(SYSCALL_NAMES_IA32, nr),
    };
    match (abi, known) {
        (Abi::Native, Some(name)) => Cow::Borrowed(name),
        (Abi::Native, None) => Cow::Owned(format!("syscall_{}", nr as i32)),
        (Abi::Ia32, Some(name)) => Cow::Owned(format!("i386:{name}")),
        (Abi::Ia32, None) => Cow::Owned(format!("i386:syscall_{}", nr as i32)),
    }
}

/// The name of native syscall `nr`, if the header names it.
pub fn native_name(nr: u32) -> Option<&'static str> {
    lookup(SYSCALL_NAMES, nr)
}

fn lookup(table: &[(u32, &'static str)], nr: u32) -> Option<&'static str> {
    table
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| table[i].1)
}

/// The number of native syscall `name`, if this architecture has it.
pub fn number(name: &str) -> Option<u32> {
    SYSCALL_NAMES
        .iter()
        .find(|&&(_, n)| n == name)
        .map(|&(nr, _)| nr)
}

/// The syscalls whose first argument is an open fd the call works on:
/// I/O, sockets, epoll, and the calls that query or change an open file.
/// Not the `*at` calls (their first argument is a directory to resolve a
/// path from, mostly `AT_FDCWD`), nor `mmap` (its fd is the fifth).
/// Knowledge of the calls, not a table to keep in step with the kernel: a
/// name this architecture lacks is skipped ([`fd_first_numbers`]), and a
/// call missing here is counted with no fd, never wrongly.
pub const FD_FIRST: &[&str] = &[
    // I/O
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "close",
    "dup",
    "dup2",
    "dup3",
    "lseek",
    "getdents",
    "getdents64",
    "ioctl",
    "fcntl",
    "flock",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "fstat",
    "fstatfs",
    "fchmod",
    "fchown",
    "fchdir",
    "fgetxattr",
    "fsetxattr",
    "flistxattr",
    "fremovexattr",
    "readahead",
    // sockets
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "shutdown",
    "getsockname",
    "getpeername",
    "setsockopt",
    "getsockopt",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    // readiness and event fds
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "timerfd_settime",
    "timerfd_gettime",
    "inotify_add_watch",
    "inotify_rm_watch",
    "fanotify_mark",
    "io_uring_enter",
    "io_uring_register",
];

/// [`FD_FIRST`] as the numbers this architecture gives them.
pub fn fd_first_numbers() -> impl Iterator<Item = u32> {
    FD_FIRST.iter().filter_map(|n| number(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_header() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(name(Abi::Native, 0), "read");
            assert_eq!(name(Abi::Native, 1), "write");
            assert_eq!(name(Abi::Native, 231), "exit_group");
            assert_eq!(number("epoll_pwait2"), Some(441));
            assert_eq!(name(Abi::Native, 20), "writev");
            assert_eq!(name(Abi::Ia32, 20), "i386:getpid");
            assert_eq!(name(Abi::Ia32, 3), "i386:read");
            assert!(SYSCALL_NAMES_IA32.windows(2).all(|w| w[0].0 < w[1].0));
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(name(Abi::Native, 63), "read");
            assert_eq!(name(Abi::Native, 64), "write");
            assert_eq!(name(Abi::Native, 25), "fcntl");
        }
        assert!(SYSCALL_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn unknown_numbers_are_named_by_number() {
        assert_eq!(name(Abi::Native, 100_000), "syscall_100000");
        assert_eq!(name(Abi::Native, u32::MAX), "syscall_-1");
        assert_eq!(name(Abi::Ia32, 100_000), "i386:syscall_100000");
    }

    #[test]
    fn fd_first_calls_exist_here_and_fit_the_kernel_side() {
        let nrs: Vec<u32> = fd_first_numbers().collect();
        // Those every architecture has.
        for must in ["read", "write", "close", "sendmsg", "epoll_ctl", "ioctl"] {
            assert!(nrs.contains(&number(must).unwrap()), "{must}");
        }
        assert!(nrs
            .iter()
            .all(|&nr| (nr as usize) < crate::count::kernel::FD_FIRST_MAX));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(nrs.len(), FD_FIRST.len(), "every name is an x86-64 syscall");
    }
}
