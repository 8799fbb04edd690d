//! NUL-terminated copies of string arguments, for tracers to read.
//!
//! Why not the usdt crate's own `&str` arguments: it copies the string into
//! a temporary and hands the asm its address, but the asm is declared
//! `nomem`, so in optimized builds LLVM may drop the copy as never read —
//! tracers then see empty or stale bytes (seen with usdt 0.6, release
//! builds). Staging into a per-thread buffer that outlives the probe makes
//! the bytes observable, and, as a bonus, stops allocating on every fire.

use std::cell::RefCell;

/// Longest string argument handed to tracers, in bytes; longer ones are cut
/// (tracers cut far shorter: bpftrace reads 64 bytes by default).
pub const MAX_STRING_BYTES: usize = 1024;

/// Slots per thread: a probe has at most three string arguments (`log`).
const SLOTS: usize = 3;

thread_local! {
    static STAGED: [RefCell<Vec<u8>>; SLOTS] = Default::default();
}

/// Copies `s` (cut to [`MAX_STRING_BYTES`]) plus a NUL into this thread's
/// slot `slot` and returns its address, valid until the slot is staged
/// again on this thread.
#[inline(never)]
pub(crate) fn stage(slot: usize, s: &str) -> u64 {
    STAGED.with(|slots| {
        let mut buf = slots[slot % SLOTS].borrow_mut();
        buf.clear();
        let bytes = s.as_bytes();
        buf.extend_from_slice(&bytes[..bytes.len().min(MAX_STRING_BYTES)]);
        buf.push(0);
        // The asm that reads this address claims not to read memory; make
        // sure the copy is never optimized away.
        std::hint::black_box(&*buf);
        buf.as_ptr() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_c(addr: u64) -> Vec<u8> {
        // SAFETY: `stage` returned a NUL-terminated buffer still alive in TLS.
        unsafe { std::ffi::CStr::from_ptr(addr as *const std::ffi::c_char) }
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn stages_nul_terminated_and_cut() {
        assert_eq!(read_c(stage(0, "echo")), b"echo");
        assert_eq!(
            read_c(stage(1, "a\0b")),
            b"a",
            "tracers stop at an interior NUL"
        );
        let huge = "x".repeat(64 * 1024);
        assert_eq!(read_c(stage(2, &huge)).len(), MAX_STRING_BYTES);
        assert_eq!(read_c(stage(0, "")), b"");
    }

    #[test]
    fn slots_are_independent() {
        let a = stage(0, "facility");
        let b = stage(1, "file.rs");
        assert_eq!(read_c(a), b"facility");
        assert_eq!(read_c(b), b"file.rs");
    }
}
