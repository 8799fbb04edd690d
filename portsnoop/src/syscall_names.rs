//! Syscall numbers to names, for the syscalls stall tracking reports (any
//! syscall a callback made, not only the traced fd syscalls).
//!
//! The table is generated at build time from the target architecture's UAPI
//! header (`build/syscall_names.rs`); this one function is all the rest of
//! the crate sees of it.

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// The name of syscall `nr` on this architecture (`"nanosleep"`), if known.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    generated_syscall_name(nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn knows_x86_64_numbers() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(35), Some("nanosleep"));
        assert_eq!(syscall_name(74), Some("fsync"));
        assert_eq!(syscall_name(202), Some("futex"));
        assert_eq!(syscall_name(230), Some("clock_nanosleep"));
        assert_eq!(syscall_name(257), Some("openat"));
        assert_eq!(syscall_name(100_000), None);
    }
}
