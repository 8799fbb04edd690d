//! What the eventer can watch: an open trait, implemented here for mio's
//! sockets and pipes and by you for anything else with an fd.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// An fd the eventer watches and does I/O on.
///
/// The eventer brackets each call of [`read`](Source::read) and
/// [`write`](Source::write) with the `eventer-read-*`/`eventer-write-*`
/// probes, and closes the source itself (one `close(2)` between the
/// `eventer-close-*` probes) after taking its fd with `Into<OwnedFd>`.
///
/// # Implementing `Source`
///
/// Like mio's [`event::Source`](mio::event::Source), which it builds on,
/// this trait is open: implement it for any fd epoll can watch (a
/// UnixListener, a pipe, a timerfd, an eventfd, a device). The contract:
///
/// * `read` and `write` make **at most one syscall** on
///   [`as_raw_fd`](AsRawFd::as_raw_fd) and return what it returned
///   (`WouldBlock` for `EAGAIN`): portsnoop pairs the probes around each
///   call with the one syscall inside them, and reports an op with none, or
///   with a syscall of another kind, as a mismatch. Leave them out and they
///   fail with [`io::ErrorKind::Unsupported`] without a syscall.
/// * The fd is non-blocking: the eventer is edge-triggered (mio's
///   readiness), so callbacks read until `WouldBlock`.
/// * `Into<OwnedFd>` gives up the fd without closing it (mio's types and
///   std's do; for your own type, `impl From<MyType> for OwnedFd`).
///
/// A timerfd, as an example, with `libc`:
///
/// ```
/// use std::io;
/// use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
/// use eventloop_probes::eventer::Source;
/// use mio::{event, unix::SourceFd, Interest, Registry, Token};
///
/// struct TimerFd(OwnedFd);
///
/// impl TimerFd {
///     fn every_ms(ms: i64) -> io::Result<TimerFd> {
///         let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
///         if fd < 0 { return Err(io::Error::last_os_error()); }
///         let fd = unsafe { OwnedFd::from_raw_fd(fd) };
///         let t = libc::timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
///         let spec = libc::itimerspec { it_interval: t, it_value: t };
///         if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
///             return Err(io::Error::last_os_error());
///         }
///         Ok(TimerFd(fd))
///     }
/// }
///
/// impl AsRawFd for TimerFd {
///     fn as_raw_fd(&self) -> RawFd { self.0.as_raw_fd() }
/// }
///
/// impl event::Source for TimerFd {
///     fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
///         SourceFd(&self.0.as_raw_fd()).register(r, t, i)
///     }
///     fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
///         SourceFd(&self.0.as_raw_fd()).reregister(r, t, i)
///     }
///     fn deregister(&mut self, r: &Registry) -> io::Result<()> {
///         SourceFd(&self.0.as_raw_fd()).deregister(r)
///     }
/// }
///
/// impl From<TimerFd> for OwnedFd {
///     fn from(t: TimerFd) -> OwnedFd { t.0 }
/// }
///
/// impl Source for TimerFd {
///     // One read(2) of the 8-byte expiration count.
///     fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
///         let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
///         if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
///     }
/// }
///
/// use eventloop_probes::eventer::{Eventer, Mask};
/// let mut ev = Eventer::new()?;
/// let stop = ev.stop_handle();
/// ev.register(TimerFd::every_ms(1)?, "tick", Mask::READ, move |ctx, _ready| {
///     let mut expirations = [0u8; 8];
///     while ctx.read(&mut expirations).is_ok() {}
///     stop.stop();
///     Mask::READ
/// })?;
/// ev.run()?;
/// # Ok::<(), io::Error>(())
/// ```
pub trait Source: mio::event::Source + AsRawFd + Into<OwnedFd> + 'static {
    /// One read syscall into `buf`; see the [trait docs](Source).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        Err(unsupported("read"))
    }

    /// One write syscall from `buf`; see the [trait docs](Source).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        Err(unsupported("write"))
    }
}

/// A source that accepts connections: [`Ctx::accept`](super::Ctx::accept)
/// brackets each call with `eventer-accept-*`, whose `rv` is the new fd.
///
/// Same contract as [`Source`]: one `accept4` per call, non-blocking.
pub trait Listener: Source {
    /// An accepted connection.
    type Conn: Source;
    /// The peer's address.
    type Addr;

    /// One accept syscall.
    fn accept(&mut self) -> io::Result<(Self::Conn, Self::Addr)>;
}

/// Unsupported operations fail without a syscall (portsnoop then shows the
/// op with no syscall inside: the app asked for something the fd cannot do).
pub(crate) fn unsupported(op: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("cannot {op} on this source"),
    )
}

impl Source for mio::net::TcpListener {}

impl Listener for mio::net::TcpListener {
    type Conn = mio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn accept(&mut self) -> io::Result<(Self::Conn, Self::Addr)> {
        mio::net::TcpListener::accept(self)
    }
}

impl Source for mio::net::UnixListener {}

impl Listener for mio::net::UnixListener {
    type Conn = mio::net::UnixStream;
    type Addr = std::os::unix::net::SocketAddr;
    fn accept(&mut self) -> io::Result<(Self::Conn, Self::Addr)> {
        mio::net::UnixListener::accept(self)
    }
}

/// Streams read and write with one `recvfrom`/`sendto` (mio's `Read`/`Write`).
macro_rules! stream_source {
    ($($t:ty),*) => {$(
        impl Source for $t {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                Read::read(self, buf)
            }
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Write::write(self, buf)
            }
        }
    )*};
}
stream_source!(mio::net::TcpStream, mio::net::UnixStream);

/// Connected datagram sockets: read is one `recv`, write one `send`.
macro_rules! datagram_source {
    ($($t:ty),*) => {$(
        impl Source for $t {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.recv(buf)
            }
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.send(buf)
            }
        }
    )*};
}
datagram_source!(mio::net::UdpSocket, mio::net::UnixDatagram);

/// The read end of a pipe: one `read(2)`.
impl Source for mio::unix::pipe::Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
}

/// The write end of a pipe: one `write(2)`.
impl Source for mio::unix::pipe::Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }
}
