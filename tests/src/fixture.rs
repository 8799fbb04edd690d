//! Probed socket calls for the fixture binaries (`src/bin/*-fixture.rs`):
//! each syscall between its eventer probes, as the drop-in sockets fire
//! them, so a tracer sees a correct program.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use usdt_provider::{mask, Accept, Close};

/// `accept4` on `listener` between the accept probes, with `closure` as
/// the probes' registration id.
pub fn accept(listener: &TcpListener, closure: u64) -> std::io::Result<TcpStream> {
    let args = Accept {
        fd: listener.as_raw_fd(),
        addr: 0,
        addrlen: 0,
        mask: mask::READ,
        closure,
    };
    usdt_provider::accept_entry(|| args);
    let accepted = listener.accept();
    let rv = accepted
        .as_ref()
        .map_or(-1, |(s, _)| i64::from(s.as_raw_fd()));
    usdt_provider::accept_return(|| (args, rv));
    accepted.map(|(s, _)| s)
}

/// `close(fd)` between the close probes (not a drop, which the probes
/// would not see); the caller gives up `fd`. Returns close's rv.
pub fn close(fd: RawFd, closure: u64) -> i32 {
    let args = Close {
        fd,
        mask: mask::READ,
        closure,
    };
    usdt_provider::close_entry(|| args);
    // SAFETY: the caller gives up `fd`.
    let rv = unsafe { libc::close(fd) };
    usdt_provider::close_return(|| (args, i64::from(rv)));
    rv
}
