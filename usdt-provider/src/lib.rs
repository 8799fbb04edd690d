//! The `evloop` USDT provider: libmtev's eventer probes for Rust event loops.
//!
//! Tracers see a provider named `evloop` with eleven probes:
//!
//! | probe | arguments |
//! | --- | --- |
//! | `eventer-accept-entry` | fd, addr, addrlen, mask, closure |
//! | `eventer-accept-return` | fd, addr, addrlen, mask, closure, rv |
//! | `eventer-read-entry` | fd, buf, len, mask, closure |
//! | `eventer-read-return` | fd, buf, len, mask, closure, rv |
//! | `eventer-write-entry` | fd, buf, len, mask, closure |
//! | `eventer-write-return` | fd, buf, len, mask, closure, rv |
//! | `eventer-close-entry` | fd, mask, closure |
//! | `eventer-close-return` | fd, mask, closure, rv |
//! | `eventer-callback-entry` | closure, event, name, fd, mask, newmask |
//! | `eventer-callback-return` | closure, event, name, rv |
//! | `log` | facility, file, line, msg |
//!
//! Pointer-like arguments (`addr`, `buf`, `closure`, `event`) are plain
//! integers (`u64`): the `usdt` crate would mark a Rust pointer for
//! dereference, and libmtev's scripts treat these as opaque addresses.
//! `rv` is the byte count (or new fd) on success and `-errno` on failure.
//!
//! Every function here takes a closure that builds the arguments. The closure
//! runs only while a tracer has the probe enabled, so a disabled probe costs
//! one load of its semaphore and a branch.
//!
//! ```
//! use usdt_provider::{self as probes, mask, Io};
//!
//! let buf = [0u8; 16];
//! let io = Io { fd: 7, buf: buf.as_ptr() as u64, len: buf.len() as u64, mask: mask::READ, closure: 1 };
//! probes::read_entry(|| io);
//! let rv: i64 = -11; // -EAGAIN
//! probes::read_return(|| (io, rv));
//! ```

#![deny(missing_docs)]

mod cstr;
pub use cstr::MAX_STRING_BYTES;

/// The event masks, with libmtev's values.
pub mod mask {
    /// The fd is readable (`EVENTER_READ`).
    pub const READ: i32 = 0x01;
    /// The fd is writable (`EVENTER_WRITE`).
    pub const WRITE: i32 = 0x02;
    /// An error or hang-up on the fd (`EVENTER_EXCEPTION`).
    pub const EXCEPTION: i32 = 0x04;
    /// A timer event; its fd is -1 (`EVENTER_TIMER`).
    pub const TIMER: i32 = 0x08;
}

// Probe names are the function names with `__` turned into `-` by `usdt`.
// The argument types are part of the contract with every script out there:
// change them only together with `evloop.d`, which a test keeps equal.
#[usdt::provider]
mod evloop {
    fn eventer__accept__entry(fd: i32, addr: u64, addrlen: i32, mask: i32, closure: u64) {}
    fn eventer__accept__return(fd: i32, addr: u64, addrlen: i32, mask: i32, closure: u64, rv: i64) {
    }
    fn eventer__read__entry(fd: i32, buf: u64, len: u64, mask: i32, closure: u64) {}
    fn eventer__read__return(fd: i32, buf: u64, len: u64, mask: i32, closure: u64, rv: i64) {}
    fn eventer__write__entry(fd: i32, buf: u64, len: u64, mask: i32, closure: u64) {}
    fn eventer__write__return(fd: i32, buf: u64, len: u64, mask: i32, closure: u64, rv: i64) {}
    fn eventer__close__entry(fd: i32, mask: i32, closure: u64) {}
    fn eventer__close__return(fd: i32, mask: i32, closure: u64, rv: i64) {}
    // String arguments are addresses of NUL-terminated copies staged by
    // `cstr` (the spec is the same `8@` as a `&str` argument's; see there
    // for why the usdt crate's own `&str` passing is not used).
    fn eventer__callback__entry(
        closure: u64,
        event: u64,
        name: u64,
        fd: i32,
        mask: i32,
        newmask: i32,
    ) {
    }
    fn eventer__callback__return(closure: u64, event: u64, name: u64, rv: i32) {}
    fn log(facility: u64, file: u64, line: i32, msg: u64) {}
}

/// Registers the probes with the tracer's kernel module.
///
/// DTrace platforms (illumos, macOS) need this once at start-up; on Linux the
/// probes live in the binary's ELF notes and this does nothing. Call it
/// anyway so the same code is traceable everywhere.
///
/// ```
/// usdt_provider::register().expect("registering the evloop probes");
/// ```
// Inline: calling it must not link in this crate's code, where the probe
// sites and their notes are (a binary with its probes compiled out has none).
#[inline]
pub fn register() -> Result<(), usdt::Error> {
    usdt::register_probes()
}

/// Arguments of `eventer-accept-*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// The listening fd.
    pub fd: i32,
    /// Address of the buffer that receives the peer address (0 if none).
    pub addr: u64,
    /// Size of that buffer.
    pub addrlen: i32,
    /// The mask the callback was called with.
    pub mask: i32,
    /// The registration's id (libmtev passes the event's closure).
    pub closure: u64,
}

/// Arguments of `eventer-read-*` and `eventer-write-*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// The fd read from or written to.
    pub fd: i32,
    /// Address of the buffer.
    pub buf: u64,
    /// Length of the buffer in bytes.
    pub len: u64,
    /// The mask the callback was called with.
    pub mask: i32,
    /// The registration's id.
    pub closure: u64,
}

/// Arguments of `eventer-close-*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Close {
    /// The fd being closed.
    pub fd: i32,
    /// The mask the callback was called with.
    pub mask: i32,
    /// The registration's id.
    pub closure: u64,
}

/// Arguments of `eventer-callback-entry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callback<'a> {
    /// The registration's id; the same value every time this callback runs.
    pub closure: u64,
    /// The event's id (libmtev passes the `eventer_t`).
    pub event: u64,
    /// The callback's name, as operators will filter on it.
    pub name: &'a str,
    /// The fd the event is for, or -1 for timers.
    pub fd: i32,
    /// The mask that made the event ready.
    pub mask: i32,
    /// The mask the event was registered with before this call.
    pub newmask: i32,
}

// Each probe has exactly one site, a non-generic function of its own that
// takes the built arguments, and every one of those functions is kept alive
// by `SITES`. A probe's note is written wherever its site's asm is emitted;
// expanded in the generic wrappers below (as it once was), every
// monomorphized copy had a note, and the linker dropped the unused copies'
// code but kept their notes, pointing near address 0: bpftrace and bcc
// warned "invalid address" for each, libbpf refused the whole probe. With
// one site per probe, reached only through `SITES`, no note can outlive its
// code.
//
// The site is the usdt macro expanded once, in an `#[inline(never)]`
// function: a 1-byte `nop`. Built with `--cfg evloop_nop5` on Linux x86-64,
// it is `nop5_site`'s naked function instead, a 5-byte nop Linux 6.18 turns
// into a call to a trampoline rather than a trap. Not the default: that
// call enters the kernel by a syscall, which every raw syscall tracepoint
// on the machine sees, portsnoop's included, and under portsnoop a fire
// costs more than the trap (measured by bench/site-form.sh; README).
//
// The wrappers read the probe's semaphore themselves (the same load the usdt
// macro does, on the same symbol) and build the arguments only when it is
// set; a disabled probe still costs a load and a branch, and never a call.
#[cfg(all(target_os = "linux", target_arch = "x86_64", evloop_nop5))]
#[macro_use]
mod nop5_site;

macro_rules! sites {
    ($($field:ident => $probe:ident $name:literal ($($arg:ident: $ty:ident),*);)*) => {
        /// The probe sites, one function per probe.
        mod site {
            $(
                #[cfg(all(target_os = "linux", target_arch = "x86_64", evloop_nop5))]
                nop5_site!($field, $probe, $name, ($($arg: $ty),*));

                /// The one site of this probe. `extern "C"`: its arguments
                /// arrive in the registers the note names, so the site is
                /// the asm alone.
                #[cfg(not(all(target_os = "linux", target_arch = "x86_64", evloop_nop5)))]
                #[inline(never)]
                pub(super) extern "C" fn $field($($arg: $ty),*) {
                    crate::evloop::$probe!(|| ($($arg),*));
                }
            )*

            /// Every site, by probe.
            pub(super) struct Sites {
                $(pub(super) $field: extern "C" fn($($ty),*),)*
            }

            /// Referenced by every enabled fire (a volatile read, so the
            /// reference survives optimization): a binary that fires any
            /// probe keeps all eleven sites, so no note is left without its
            /// code. Calling through it also keeps the compiler from
            /// specializing a site for constant arguments (a second site).
            /// Not `#[used]`: a binary that fires no probe (its probes
            /// compiled out) must not link the sites in, nor their notes.
            pub(super) static SITES: Sites = Sites { $($field,)* };
        }
    };
}

// The probe names as tracers see them are the usdt crate's: the function
// names with `__` turned into `-`.
sites! {
    accept_entry => eventer__accept__entry "eventer-accept-entry" (fd: i32, addr: u64, addrlen: i32, mask: i32, closure: u64);
    accept_return => eventer__accept__return "eventer-accept-return" (fd: i32, addr: u64, addrlen: i32, mask: i32, closure: u64, rv: i64);
    read_entry => eventer__read__entry "eventer-read-entry" (fd: i32, buf: u64, len: u64, mask: i32, closure: u64);
    read_return => eventer__read__return "eventer-read-return" (fd: i32, buf: u64, len: u64, mask: i32, closure: u64, rv: i64);
    write_entry => eventer__write__entry "eventer-write-entry" (fd: i32, buf: u64, len: u64, mask: i32, closure: u64);
    write_return => eventer__write__return "eventer-write-return" (fd: i32, buf: u64, len: u64, mask: i32, closure: u64, rv: i64);
    close_entry => eventer__close__entry "eventer-close-entry" (fd: i32, mask: i32, closure: u64);
    close_return => eventer__close__return "eventer-close-return" (fd: i32, mask: i32, closure: u64, rv: i64);
    callback_entry => eventer__callback__entry "eventer-callback-entry" (closure: u64, event: u64, name: u64, fd: i32, mask: i32, newmask: i32);
    callback_return => eventer__callback__return "eventer-callback-return" (closure: u64, event: u64, name: u64, rv: i32);
    log => log "log" (facility: u64, file: u64, line: i32, msg: u64);
}

/// Whether the probe whose semaphore is `$sema` is enabled: on Linux, one
/// load of the semaphore the usdt crate defines at the probe's site
/// (`__usdt_sema_<provider>_<probe>`). Elsewhere the site itself checks, as
/// the usdt macro does there.
#[cfg(target_os = "linux")]
macro_rules! enabled {
    ($sema:ident) => {{
        unsafe extern "C" {
            static $sema: u16;
        }
        // SAFETY: the semaphore is a u16 the site's asm defines (in
        // `.probes`); tracers change it from outside, hence volatile.
        unsafe { (&raw const $sema).read_volatile() != 0 }
    }};
}
#[cfg(not(target_os = "linux"))]
macro_rules! enabled {
    ($sema:ident) => {
        true
    };
}

/// The site of probe `$field`, read from [`site::SITES`].
macro_rules! site {
    ($field:ident) => {
        // SAFETY: a plain read of an immutable static's field; volatile only
        // so the reference to `SITES` stays.
        unsafe { core::ptr::read_volatile(&site::SITES.$field) }
    };
}

/// Fires `eventer-accept-entry` if enabled.
#[inline(always)]
pub fn accept_entry(args: impl FnOnce() -> Accept) {
    if enabled!(__usdt_sema_evloop_eventer__accept__entry) {
        let a = args();
        site!(accept_entry)(a.fd, a.addr, a.addrlen, a.mask, a.closure);
    }
}

/// Fires `eventer-accept-return` if enabled; `rv` is the new fd or `-errno`.
#[inline(always)]
pub fn accept_return(args: impl FnOnce() -> (Accept, i64)) {
    if enabled!(__usdt_sema_evloop_eventer__accept__return) {
        let (a, rv) = args();
        site!(accept_return)(a.fd, a.addr, a.addrlen, a.mask, a.closure, rv);
    }
}

/// Fires `eventer-read-entry` if enabled.
#[inline(always)]
pub fn read_entry(args: impl FnOnce() -> Io) {
    if enabled!(__usdt_sema_evloop_eventer__read__entry) {
        let a = args();
        site!(read_entry)(a.fd, a.buf, a.len, a.mask, a.closure);
    }
}

/// Fires `eventer-read-return` if enabled; `rv` is bytes read or `-errno`.
#[inline(always)]
pub fn read_return(args: impl FnOnce() -> (Io, i64)) {
    if enabled!(__usdt_sema_evloop_eventer__read__return) {
        let (a, rv) = args();
        site!(read_return)(a.fd, a.buf, a.len, a.mask, a.closure, rv);
    }
}

/// Fires `eventer-write-entry` if enabled.
#[inline(always)]
pub fn write_entry(args: impl FnOnce() -> Io) {
    if enabled!(__usdt_sema_evloop_eventer__write__entry) {
        let a = args();
        site!(write_entry)(a.fd, a.buf, a.len, a.mask, a.closure);
    }
}

/// Fires `eventer-write-return` if enabled; `rv` is bytes written or `-errno`.
#[inline(always)]
pub fn write_return(args: impl FnOnce() -> (Io, i64)) {
    if enabled!(__usdt_sema_evloop_eventer__write__return) {
        let (a, rv) = args();
        site!(write_return)(a.fd, a.buf, a.len, a.mask, a.closure, rv);
    }
}

/// Fires `eventer-close-entry` if enabled.
#[inline(always)]
pub fn close_entry(args: impl FnOnce() -> Close) {
    if enabled!(__usdt_sema_evloop_eventer__close__entry) {
        let a = args();
        site!(close_entry)(a.fd, a.mask, a.closure);
    }
}

/// Fires `eventer-close-return` if enabled; `rv` is 0 or `-errno`.
#[inline(always)]
pub fn close_return(args: impl FnOnce() -> (Close, i64)) {
    if enabled!(__usdt_sema_evloop_eventer__close__return) {
        let (a, rv) = args();
        site!(close_return)(a.fd, a.mask, a.closure, rv);
    }
}

/// Fires `eventer-callback-entry` if enabled.
///
/// The name is copied (NUL-terminated, at most [`MAX_STRING_BYTES`]) only
/// while the probe is enabled; a name with an interior NUL is seen by
/// tracers up to that NUL.
///
/// ```
/// use usdt_provider::{callback_entry, callback_return, mask, Callback};
///
/// let cb = Callback { closure: 1, event: 1, name: "echo", fd: 5, mask: mask::READ, newmask: mask::READ };
/// callback_entry(|| cb);
/// callback_return(|| (cb, mask::READ));
/// ```
#[inline(always)]
pub fn callback_entry<'a>(args: impl FnOnce() -> Callback<'a>) {
    if enabled!(__usdt_sema_evloop_eventer__callback__entry) {
        let a = args();
        let name = cstr::stage(0, a.name);
        site!(callback_entry)(a.closure, a.event, name, a.fd, a.mask, a.newmask);
    }
}

/// Fires `eventer-callback-return` if enabled; `rv` is the callback's new
/// mask (0: the event is done). Takes the same [`Callback`] as the entry so
/// both probes always name the callback alike.
#[inline(always)]
pub fn callback_return<'a>(args: impl FnOnce() -> (Callback<'a>, i32)) {
    if enabled!(__usdt_sema_evloop_eventer__callback__return) {
        let (a, rv) = args();
        let name = cstr::stage(0, a.name);
        site!(callback_return)(a.closure, a.event, name, rv);
    }
}

/// Fires `log` if enabled. The message closure runs only while a tracer has
/// `log` enabled, so formatting costs nothing otherwise. See also
/// [`evloop_log!`].
///
/// ```
/// usdt_provider::log("http", file!(), line!(), || format!("served {} bytes", 42));
/// ```
#[inline(always)]
pub fn log<M: AsRef<str>>(facility: &str, file: &str, line: u32, msg: impl FnOnce() -> M) {
    if enabled!(__usdt_sema_evloop_log) {
        let line = i32::try_from(line).unwrap_or(i32::MAX);
        let msg = msg();
        site!(log)(
            cstr::stage(0, facility),
            cstr::stage(1, file),
            line,
            cstr::stage(2, msg.as_ref()),
        );
    }
}

/// Fires `log` with a `format!`-style message, formatted only while a tracer
/// has `log` enabled.
///
/// ```
/// let bytes = 42;
/// usdt_provider::evloop_log!("http", "served {bytes} bytes");
/// ```
#[macro_export]
macro_rules! evloop_log {
    ($facility:expr, $($fmt:tt)+) => {
        $crate::log($facility, file!(), line!(), || format!($($fmt)+))
    };
}

#[cfg(test)]
mod tests {
    /// `(probe fn name, [(arg, type)])` of every `fn` in `text`.
    fn fns(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut out = Vec::new();
        for part in text.split("fn ").skip(1) {
            let (name, rest) = part.split_once('(').unwrap();
            let args = rest.split_once(')').unwrap().0;
            let args = args
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| {
                    let (n, t) = a.split_once(':').unwrap();
                    (n.trim().to_string(), t.trim().to_string())
                })
                .collect();
            out.push((name.trim().to_string(), args));
        }
        out
    }

    /// The `#[usdt::provider]` declaration (what DTrace platforms and
    /// aarch64 get) and the `sites!` table (what Linux x86-64's own sites
    /// are made from) declare the same probes with the same arguments.
    #[test]
    fn the_provider_declaration_and_the_sites_table_agree() {
        let src = include_str!("lib.rs");
        let decl = src.split("mod evloop {").nth(1).unwrap();
        let decl = &decl[..decl.find("\n}\n").unwrap()];
        let declared = fns(decl);
        let table = src.split("\nsites! {").nth(1).unwrap();
        let table = &table[..table.find("\n}\n").unwrap()];
        let rows: Vec<_> = table
            .lines()
            .filter_map(|l| l.split_once("=> "))
            .map(|(_, row)| {
                let (probe, rest) = row.split_once(' ').unwrap();
                let (name, args) = rest.split_once(" (").unwrap();
                // The probe name tracers see: the usdt crate's rule.
                assert_eq!(name.trim_matches('"'), probe.replace("__", "-"));
                fns(&format!("fn {probe}({args}")).pop().unwrap()
            })
            .collect();
        assert_eq!(declared.len(), 11);
        assert_eq!(rows, declared);
    }
}
