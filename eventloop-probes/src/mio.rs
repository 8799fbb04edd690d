//! Drop-in wrappers for mio sockets that fire the `evloop` probes.
//!
//! An existing mio app switches by changing an import: each wrapper has the
//! wrapped type's methods that do I/O and implements the same traits
//! (`Read`, `Write`, `mio::event::Source`, `AsRawFd`), and brackets every
//! accept, read, write and close (on drop) with its probes. `closure` is a
//! per-socket id; `mask` is READ for reads and accepts, WRITE for writes,
//! 0 for closes (the wrapper does not know what woke the app).
//!
//! What the wrappers cannot see is where the app's callbacks begin and end:
//! frame each event's handling with [`Callback`] (a guard) or [`callback`]
//! (a closure), and the trace shows `eventer-callback-entry/return` around
//! the I/O, named, as the eventer's callbacks are:
//!
//! ```no_run
//! # use eventloop_probes::mio::{Mask, TcpStream};
//! # fn handle(conn: &mut TcpStream, event: &mio::event::Event) -> std::io::Result<bool> { Ok(false) }
//! # fn on_event(conn: &mut TcpStream, event: &mio::event::Event) -> std::io::Result<()> {
//! let mut cb = conn.callback("echo", event); // callback-entry: fd, ready mask
//! let done = handle(conn, event)?;           // its reads and writes, framed
//! cb.set_mask(if done { Mask::NONE } else { Mask::READ });
//! // callback-return (rv: the mask set) when `cb` drops, on `?` too
//! # Ok(()) }
//! ```
//!
//! ```
//! use std::io::{Read, Write};
//! use eventloop_probes::mio::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
//! client.write_all(b"hi")?;
//! let (mut conn, _peer) = loop {
//!     match listener.accept() {
//!         Ok(pair) => break pair,
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
//!         Err(e) => return Err(e),
//!     }
//! };
//! let mut buf = [0u8; 2];
//! loop {
//!     match conn.read(&mut buf) {
//!         Ok(n) => { assert_eq!(&buf[..n], b"hi"); break; }
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use mio::{event, Interest, Registry, Token};
use usdt_provider::mask::{READ, WRITE};
use usdt_provider::{Accept, Close, Io};

pub use crate::eventer::Mask;
use crate::fire;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One callback's frame: `eventer-callback-entry` when entered,
/// `eventer-callback-return` when dropped, with the mask last given to
/// [`set_mask`](Callback::set_mask) as `rv` (the ready mask if none was:
/// "unchanged"; [`Mask::NONE`] says the app is done with the fd).
///
/// portsnoop pairs the wrappers' accepts, reads, writes and closes inside
/// the frame with it (the callback's name on each op). The frame is
/// per thread and must not be held across another frame on the same thread.
/// While the probes are disabled it costs a few stores and two
/// semaphore checks; the name is copied only while a tracer listens.
///
/// ```
/// use eventloop_probes::mio::{Callback, Mask};
///
/// let mut cb = Callback::enter(7, "timer-check", -1, Mask::TIMER);
/// // ... the callback's work ...
/// cb.set_mask(Mask::NONE); // done
/// drop(cb);                // callback-return fires here
/// ```
#[derive(Debug)]
#[must_use = "the frame ends (callback-return fires) when the guard drops"]
pub struct Callback<'n> {
    closure: u64,
    name: &'n str,
    fd: RawFd,
    ready: Mask,
    rv: Mask,
}

impl<'n> Callback<'n> {
    /// Fires `eventer-callback-entry` for the callback `name` on `fd` (-1
    /// for none), woken with `ready`; `closure` is the same id every time
    /// this callback runs (a wrapper's [`probe_id`](TcpStream::probe_id)).
    #[inline]
    pub fn enter(closure: u64, name: &'n str, fd: RawFd, ready: Mask) -> Callback<'n> {
        let cb = Callback {
            closure,
            name,
            fd,
            ready,
            rv: ready,
        };
        fire::callback_entry(|| cb.args());
        cb
    }

    /// The mask the callback returns: what it waits for next, or
    /// [`Mask::NONE`] when it is done with the fd.
    #[inline]
    pub fn set_mask(&mut self, mask: Mask) {
        self.rv = mask;
    }

    fn args(&self) -> usdt_provider::Callback<'n> {
        usdt_provider::Callback {
            closure: self.closure,
            // libmtev passes the event; a wrapper's id names it as well.
            event: self.closure,
            name: self.name,
            fd: self.fd,
            mask: self.ready.bits(),
            newmask: self.ready.bits(),
        }
    }
}

impl Drop for Callback<'_> {
    #[inline]
    fn drop(&mut self) {
        fire::callback_return(|| (self.args(), self.rv.bits()));
    }
}

/// Runs `f` framed as callback `name` (see [`Callback`]); `f` returns the
/// new mask, which is the return probe's `rv`.
///
/// ```
/// use eventloop_probes::mio::{callback, Mask};
///
/// let next = callback(1, "tick", -1, Mask::TIMER, || Mask::TIMER);
/// assert_eq!(next, Mask::TIMER);
/// ```
#[inline]
pub fn callback(
    closure: u64,
    name: &str,
    fd: RawFd,
    ready: Mask,
    f: impl FnOnce() -> Mask,
) -> Mask {
    let mut cb = Callback::enter(closure, name, fd, ready);
    let next = f();
    cb.set_mask(next);
    next
}

/// The parts every wrapper shares: the socket (taken on drop, to close it
/// through the probes), its id, `Source`, fd access and the traced close.
macro_rules! wrapper {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            // Some until dropped.
            inner: Option<$inner>,
            id: u64,
        }

        impl $name {
            fn wrap(inner: $inner) -> $name {
                $name { inner: Some(inner), id: new_id() }
            }

            fn get(&self) -> &$inner {
                self.inner.as_ref().expect("present until drop")
            }

            // Listeners do no reads or writes.
            #[allow(dead_code)]
            fn io(&self, buf: &[u8], mask: i32) -> Io {
                let (ptr, len) = fire::buf_args(buf);
                Io { fd: self.as_raw_fd(), buf: ptr, len, mask, closure: self.id }
            }

            /// The id the probes carry as `closure`.
            pub fn probe_id(&self) -> u64 {
                self.id
            }

            /// The wrapped mio socket (its I/O is not traced).
            pub fn get_ref(&self) -> &$inner {
                self.get()
            }

            /// Frames the handling of `event` on this socket as callback
            /// `name`: see [`Callback::enter`] (`closure` is
            /// [`probe_id`](Self::probe_id), the ready mask `event`'s).
            pub fn callback<'n>(&self, name: &'n str, event: &mio::event::Event) -> Callback<'n> {
                Callback::enter(self.id, name, self.as_raw_fd(), Mask::of_event(event))
            }
        }

        impl event::Source for $name {
            fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
                self.inner.as_mut().expect("present until drop").register(registry, token, interests)
            }
            fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
                self.inner.as_mut().expect("present until drop").reregister(registry, token, interests)
            }
            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                self.inner.as_mut().expect("present until drop").deregister(registry)
            }
        }

        impl AsRawFd for $name {
            fn as_raw_fd(&self) -> RawFd {
                self.get().as_raw_fd()
            }
        }

        impl AsFd for $name {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.get().as_fd()
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                if let Some(inner) = self.inner.take() {
                    // Errors from close(2) cannot be handed to anyone here;
                    // the close-return probe shows them.
                    let _ = fire::close(Close { fd: inner.into_raw_fd(), mask: 0, closure: self.id });
                }
            }
        }
    };
}

/// Read and Write for a stream wrapper and for a shared reference to it,
/// as mio provides them.
macro_rules! stream_io {
    ($name:ident) => {
        impl Read for $name {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self).read(buf)
            }
        }

        impl Read for &$name {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let io = self.io(buf, READ);
                let mut inner = self.get();
                fire::read(io, || inner.read(buf))
            }
        }

        impl Write for $name {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                (&*self).write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                (&*self).flush()
            }
        }

        impl Write for &$name {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let io = self.io(buf, WRITE);
                let mut inner = self.get();
                fire::write(io, || inner.write(buf))
            }
            fn flush(&mut self) -> io::Result<()> {
                let mut inner = self.get();
                inner.flush()
            }
        }
    };
}

wrapper!(
    /// A [`mio::net::TcpListener`] whose accepts fire `eventer-accept-*`.
    TcpListener,
    mio::net::TcpListener
);
wrapper!(
    /// A [`mio::net::TcpStream`] whose reads, writes and close fire the
    /// eventer probes.
    TcpStream,
    mio::net::TcpStream
);
wrapper!(
    /// A [`mio::net::UdpSocket`]: receives fire `eventer-read-*`, sends
    /// `eventer-write-*`.
    UdpSocket,
    mio::net::UdpSocket
);
wrapper!(
    /// A [`mio::net::UnixStream`] whose reads, writes and close fire the
    /// eventer probes.
    UnixStream,
    mio::net::UnixStream
);
stream_io!(TcpStream);
stream_io!(UnixStream);

impl TcpListener {
    /// See [`mio::net::TcpListener::bind`].
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        mio::net::TcpListener::bind(addr).map(TcpListener::wrap)
    }

    /// See [`mio::net::TcpListener::from_std`].
    pub fn from_std(listener: std::net::TcpListener) -> TcpListener {
        TcpListener::wrap(mio::net::TcpListener::from_std(listener))
    }

    /// One `accept4`, bracketed by `eventer-accept-*` (`rv`: the new fd).
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let args = Accept {
            fd: self.as_raw_fd(),
            addr: 0,
            addrlen: 0,
            mask: READ,
            closure: self.id,
        };
        fire::accept(args, || self.get().accept(), |(s, _)| s.as_raw_fd())
            .map(|(s, a)| (TcpStream::wrap(s), a))
    }

    /// See [`mio::net::TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get().local_addr()
    }

    /// See [`mio::net::TcpListener::take_error`].
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.get().take_error()
    }
}

impl TcpStream {
    /// See [`mio::net::TcpStream::connect`].
    pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        mio::net::TcpStream::connect(addr).map(TcpStream::wrap)
    }

    /// See [`mio::net::TcpStream::from_std`].
    pub fn from_std(stream: std::net::TcpStream) -> TcpStream {
        TcpStream::wrap(mio::net::TcpStream::from_std(stream))
    }

    /// See [`mio::net::TcpStream::peer_addr`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get().peer_addr()
    }

    /// See [`mio::net::TcpStream::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get().local_addr()
    }

    /// See [`mio::net::TcpStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.get().shutdown(how)
    }

    /// See [`mio::net::TcpStream::set_nodelay`].
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.get().set_nodelay(nodelay)
    }

    /// See [`mio::net::TcpStream::take_error`].
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.get().take_error()
    }
}

impl UdpSocket {
    /// See [`mio::net::UdpSocket::bind`].
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        mio::net::UdpSocket::bind(addr).map(UdpSocket::wrap)
    }

    /// See [`mio::net::UdpSocket::connect`].
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.get().connect(addr)
    }

    /// One `sendto`, bracketed by `eventer-write-*`.
    pub fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        fire::write(self.io(buf, WRITE), || self.get().send_to(buf, target))
    }

    /// One `recvfrom`, bracketed by `eventer-read-*`.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let io = self.io(buf, READ);
        let mut from = None;
        let n = fire::read(io, || {
            self.get().recv_from(buf).map(|(n, a)| {
                from = Some(a);
                n
            })
        })?;
        Ok((n, from.expect("set on success")))
    }

    /// One `send` on a connected socket, bracketed by `eventer-write-*`.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        fire::write(self.io(buf, WRITE), || self.get().send(buf))
    }

    /// One `recv` on a connected socket, bracketed by `eventer-read-*`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let io = self.io(buf, READ);
        fire::read(io, || self.get().recv(buf))
    }

    /// See [`mio::net::UdpSocket::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get().local_addr()
    }

    /// See [`mio::net::UdpSocket::peer_addr`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get().peer_addr()
    }
}

impl UnixStream {
    /// See [`mio::net::UnixStream::connect`].
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<UnixStream> {
        mio::net::UnixStream::connect(path).map(UnixStream::wrap)
    }

    /// See [`mio::net::UnixStream::pair`].
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        mio::net::UnixStream::pair().map(|(a, b)| (UnixStream::wrap(a), UnixStream::wrap(b)))
    }

    /// See [`mio::net::UnixStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.get().shutdown(how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn tcp_accept_read_write_and_would_block() {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = retry(|| listener.accept());
        assert_ne!(conn.probe_id(), listener.probe_id());
        assert_eq!(
            conn.read(&mut [0u8; 8]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 8];
        let n = retry(|| conn.read(&mut buf));
        assert_eq!(&buf[..n], b"ping");
        conn.write_all(b"pong").unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
        drop(conn); // closes through the probes
        assert_eq!(
            client.read(&mut back).unwrap(),
            0,
            "the peer sees the close"
        );
    }

    #[test]
    fn udp_and_unix_round_trips() {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        a.send_to(b"hello", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = retry(|| b.recv_from(&mut buf));
        assert_eq!((&buf[..n], from), (&b"hello"[..], a.local_addr().unwrap()));

        let (mut x, mut y) = UnixStream::pair().unwrap();
        x.write_all(b"unix").unwrap();
        let n = retry(|| y.read(&mut buf));
        assert_eq!(&buf[..n], b"unix");
    }
}
