//! Drop-in wrappers for mio sockets that fire the `evloop` probes.
//!
//! An existing mio app switches by changing an import: each wrapper has the
//! wrapped type's methods that do I/O and implements the same traits
//! (`Read`, `Write`, `mio::event::Source`, `AsRawFd`), and brackets every
//! accept, read, write and close (on drop) with its probes. `closure` is a
//! per-socket id; `mask` is READ for reads and accepts, WRITE for writes,
//! 0 for closes (the wrapper does not know what woke the app).
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

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use mio::{event, Interest, Registry, Token};
use usdt_provider::mask::{READ, WRITE};
use usdt_provider::{Accept, Close, Io};

use crate::fire;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
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
