//! The one place that decides whether probes exist: every probe site in this
//! crate goes through these helpers, which bracket exactly one real syscall
//! with its entry and return probes. Without the `probes` feature they are
//! the bare call, so the uninstrumented build is the same code minus probes.

use std::io;

use usdt_provider::{Accept, Callback, Close, Io};

/// The probe `rv` of an I/O result: the count on success, `-errno` on
/// failure (`WouldBlock` is `-EAGAIN`, as the kernel said).
#[cfg(any(feature = "probes", test))]
#[inline]
pub(crate) fn rv_of<T>(res: &io::Result<T>, ok: impl FnOnce(&T) -> i64) -> i64 {
    match res {
        Ok(v) => ok(v),
        Err(e) => {
            -(e.raw_os_error()
                .unwrap_or(if e.kind() == io::ErrorKind::WouldBlock {
                    libc::EAGAIN
                } else {
                    libc::EIO
                }) as i64)
        }
    }
}

/// Brackets a read with `eventer-read-entry/return`.
#[inline(always)]
pub(crate) fn read(io: Io, f: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
    #[cfg(feature = "probes")]
    {
        usdt_provider::read_entry(|| io);
        let res = f();
        usdt_provider::read_return(|| (io, rv_of(&res, |n| *n as i64)));
        res
    }
    #[cfg(not(feature = "probes"))]
    {
        let _ = io;
        f()
    }
}

/// Brackets a write with `eventer-write-entry/return`.
#[inline(always)]
pub(crate) fn write(io: Io, f: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
    #[cfg(feature = "probes")]
    {
        usdt_provider::write_entry(|| io);
        let res = f();
        usdt_provider::write_return(|| (io, rv_of(&res, |n| *n as i64)));
        res
    }
    #[cfg(not(feature = "probes"))]
    {
        let _ = io;
        f()
    }
}

/// Brackets an accept with `eventer-accept-entry/return`; `new_fd` tells
/// the accepted fd, which is the probe's `rv`.
#[inline(always)]
pub(crate) fn accept<T>(
    args: Accept,
    f: impl FnOnce() -> io::Result<T>,
    new_fd: impl FnOnce(&T) -> i32,
) -> io::Result<T> {
    #[cfg(feature = "probes")]
    {
        usdt_provider::accept_entry(|| args);
        let res = f();
        usdt_provider::accept_return(|| (args, rv_of(&res, |t| new_fd(t) as i64)));
        res
    }
    #[cfg(not(feature = "probes"))]
    {
        let _ = (args, new_fd);
        f()
    }
}

/// Closes `fd` with one `close(2)`, bracketed by `eventer-close-entry/return`.
/// The caller must own `fd` and not use it again.
#[inline(always)]
pub(crate) fn close(args: Close) -> io::Result<()> {
    let do_close = || {
        // SAFETY: the caller gave up ownership of args.fd (into_raw_fd).
        if unsafe { libc::close(args.fd) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    #[cfg(feature = "probes")]
    {
        usdt_provider::close_entry(|| args);
        let res = do_close();
        usdt_provider::close_return(|| (args, rv_of(&res, |_| 0)));
        res
    }
    #[cfg(not(feature = "probes"))]
    {
        do_close()
    }
}

/// Brackets a callback (or a task poll) with `eventer-callback-entry/return`;
/// `f` returns the new mask, which is the return probe's `rv`.
#[inline(always)]
pub(crate) fn callback<'a>(args: impl Fn() -> Callback<'a>, f: impl FnOnce() -> i32) -> i32 {
    #[cfg(feature = "probes")]
    {
        usdt_provider::callback_entry(&args);
        let rv = f();
        usdt_provider::callback_return(|| (args(), rv));
        rv
    }
    #[cfg(not(feature = "probes"))]
    {
        let _ = args;
        f()
    }
}

/// Fires `eventer-callback-entry` alone: for a frame whose return fires
/// later, from a guard's drop (`mio::Callback`).
#[inline(always)]
pub(crate) fn callback_entry<'a>(args: impl FnOnce() -> Callback<'a>) {
    #[cfg(feature = "probes")]
    usdt_provider::callback_entry(args);
    #[cfg(not(feature = "probes"))]
    let _ = args;
}

/// Fires `eventer-callback-return` alone; `rv` is the new mask.
#[inline(always)]
pub(crate) fn callback_return<'a>(args: impl FnOnce() -> (Callback<'a>, i32)) {
    #[cfg(feature = "probes")]
    usdt_provider::callback_return(args);
    #[cfg(not(feature = "probes"))]
    let _ = args;
}

/// Fires `log`, formatting only while a tracer listens.
#[inline(always)]
pub(crate) fn log<M: AsRef<str>>(facility: &str, file: &str, line: u32, msg: impl FnOnce() -> M) {
    #[cfg(feature = "probes")]
    usdt_provider::log(facility, file, line, msg);
    #[cfg(not(feature = "probes"))]
    let _ = (facility, file, line, msg);
}

/// The address and length of a buffer, as the probes carry them.
#[inline(always)]
pub(crate) fn buf_args(buf: &[u8]) -> (u64, u64) {
    (buf.as_ptr() as u64, buf.len() as u64)
}
