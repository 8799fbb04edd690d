//! TCP for tokio: [`TcpListener`] and [`TcpStream`] with tokio's methods,
//! whose every accept, read, write and close is one syscall bracketed by its
//! `eventer-*` probes, made when tokio's own sockets would make it (see
//! `socket.rs`), and the stream's [`ReadHalf`]/[`WriteHalf`] (borrowed) and
//! [`OwnedReadHalf`]/[`OwnedWriteHalf`] halves.
//!
//! ```
//! use eventloop_probes::tokio::{TcpListener, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let mut client = TcpStream::connect(listener.local_addr()?).await?;
//! let (server, _) = listener.accept().await?;
//!
//! // Owned halves move to their own tasks; dropping the write half shuts
//! // the write side down, as tokio's does.
//! let (mut reader, mut writer) = server.into_split();
//! let echo = tokio::spawn(async move { tokio::io::copy(&mut reader, &mut writer).await });
//!
//! // Borrowed halves stay in one task.
//! let (mut r, mut w) = client.split();
//! let (sent, got) = tokio::join!(
//!     async {
//!         w.write_all(b"hi").await?;
//!         w.shutdown().await
//!     },
//!     async {
//!         let mut got = Vec::new();
//!         r.read_to_end(&mut got).await.map(|_| got)
//!     },
//! );
//! sent?;
//! assert_eq!(got?, b"hi");
//! assert_eq!(echo.await.unwrap()?, 2);
//! # Ok::<_, std::io::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};

use super::socket::{self, socket_traits, Socket};
use super::stream::stream_surface;

/// A listening TCP socket whose accepts fire `eventer-accept-entry/return`.
///
/// Each `accept4` attempt is one probe pair: `fd` is the listening socket,
/// `addr`/`addrlen` the buffer the peer address is written to, `mask` is
/// `READ`, `closure` the [`Instrumented`](super::Instrumented) task doing
/// the accept (0 outside one), and `rv` the new fd or `-errno` (-11 when
/// there was nothing to accept). Dropping it closes the fd with the close
/// probes.
///
/// ```
/// use eventloop_probes::tokio::{TcpListener, TcpStream};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let client = TcpStream::connect(addr).await?;
/// let (server_side, peer) = listener.accept().await?;
/// assert_eq!(peer, client.local_addr()?);
/// assert_eq!(server_side.peer_addr()?, client.local_addr()?);
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct TcpListener {
    sock: Socket<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` as [`tokio::net::TcpListener::bind`] does: each
    /// resolved address in turn, `SO_REUSEADDR`, a backlog of 1024.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<TcpListener> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match TcpListener::bind_addr(addr) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_address))
    }

    fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
        let fd = socket::new_socket(socket::domain_of(&addr), libc::SOCK_STREAM)?;
        socket::setsockopt(
            fd.raw(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            1 as libc::c_int,
        )?;
        let (sa, len) = socket::sockaddr_of(&addr);
        // SAFETY: sa/len is a valid sockaddr.
        socket::cvt(unsafe {
            libc::bind(fd.raw(), &sa as *const _ as *const libc::sockaddr, len)
        })?;
        // SAFETY: plain syscall. tokio's backlog.
        socket::cvt(unsafe { libc::listen(fd.raw(), 1024) })?;
        Ok(TcpListener {
            sock: Socket::new(std::net::TcpListener::from(fd.take()), Interest::READABLE)?,
        })
    }

    /// Wraps a bound and listening std socket, making it non-blocking.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            sock: Socket::new(listener, Interest::READABLE)?,
        })
    }

    /// The std listener, deregistered and still non-blocking; its accepts
    /// and close are no longer probed.
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        Ok(self.sock.into_inner())
    }

    /// Accepts a connection, waiting until one arrives.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for a connection: one `accept4` while the listener is marked
    /// readable; after an `EAGAIN` (probed) it waits for the next event.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        self.sock.poll_accept(cx, socket::socket_addr).map(|res| {
            let (fd, peer) = res?;
            Ok((
                TcpStream::from_nonblocking(std::net::TcpStream::from(fd))?,
                peer,
            ))
        })
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().local_addr()
    }

    /// Sets `IP_TTL` for the sockets it accepts.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.get_ref().set_ttl(ttl)
    }

    /// The `IP_TTL` setting.
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.get_ref().ttl()
    }

    /// Reads and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.get_ref().take_error()
    }
}

socket_traits!(TcpListener, std::net::TcpListener);

/// The error of a name that resolved to nothing.
pub(super) fn no_address() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any address",
    )
}

/// A TCP connection whose reads and writes fire `eventer-read-*` and
/// `eventer-write-*`, and whose drop fires `eventer-close-*`.
///
/// Each `recv`/`send`/`readv`/`writev` is one probe pair: `fd` is the
/// socket, `buf` and `len` the caller's buffer (for vectored I/O, the first
/// slice and the total of all), `mask` `READ` or `WRITE`, `closure` the
/// [`Instrumented`](super::Instrumented) task doing the I/O (0 outside one),
/// and `rv` the byte count or `-errno` (-11 when the socket was not ready).
/// The syscalls are the ones tokio's `TcpStream` makes for the same calls:
/// a read that returns less than the buffer's room waits for the next
/// readiness event instead of trying again, and `poll_write_vectored` is one
/// `writev`. The fd is closed, with its probes, when the stream and all its
/// halves are dropped; `mask` is 0 then.
///
/// Use it through [`tokio::io::AsyncReadExt`] and [`tokio::io::AsyncWriteExt`]
/// or the `readable`/`try_read` family; `AsyncWriteExt::shutdown` shuts the
/// write side down (no probe: the fd stays open).
///
/// ```
/// use eventloop_probes::tokio::{TcpListener, TcpStream};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let mut client = TcpStream::connect(listener.local_addr()?).await?;
/// let (mut server, _) = listener.accept().await?;
///
/// client.write_all(b"ping").await?;
/// client.shutdown().await?;
/// let mut got = Vec::new();
/// server.read_to_end(&mut got).await?;
/// assert_eq!(got, b"ping");
///
/// // tokio's readiness API: wait, then try without blocking.
/// server.write_all(b"pong").await?;
/// let mut buf = [0u8; 4];
/// let n = loop {
///     client.readable().await?;
///     match client.try_read(&mut buf) {
///         Ok(n) => break n,
///         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
///         Err(e) => return Err(e),
///     }
/// };
/// assert_eq!(&buf[..n], &b"pong"[..n]);
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct TcpStream {
    sock: Socket<std::net::TcpStream>,
}

impl TcpStream {
    /// Connects to `addr` as [`tokio::net::TcpStream::connect`] does: each
    /// resolved address in turn, a non-blocking `connect`, then the wait
    /// for writability and `SO_ERROR`.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match TcpStream::connect_addr(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_address))
    }

    async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
        let fd = socket::new_socket(socket::domain_of(&addr), libc::SOCK_STREAM)?;
        let (sa, len) = socket::sockaddr_of(&addr);
        socket::connect(fd.raw(), &sa as *const _ as *const libc::sockaddr, len)?;
        let stream = TcpStream::from_nonblocking(std::net::TcpStream::from(fd.take()))?;
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        Ok(stream)
    }

    /// Wraps a connected std socket, making it non-blocking.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        TcpStream::from_nonblocking(stream)
    }

    fn from_nonblocking(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        let interest = Interest::READABLE.add(Interest::WRITABLE);
        Ok(TcpStream {
            sock: Socket::new(stream, interest)?,
        })
    }

    /// The std stream, deregistered and still non-blocking; its I/O and
    /// close are no longer probed.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        Ok(self.sock.into_inner())
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().local_addr()
    }

    /// Receives into `buf` without taking the bytes off the queue: one
    /// `recv(MSG_PEEK)` per readiness, probed as a read.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::READABLE, || socket::recv(fd, buf, libc::MSG_PEEK))
            .await
    }

    /// Polls [`Self::peek`] into `buf`, returning the count peeked.
    pub fn poll_peek(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        let fd = self.sock.fd();
        self.sock
            .poll_read_io(cx, || socket::recv_into(fd, buf, libc::MSG_PEEK))
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.sock.get_ref().set_nodelay(nodelay)
    }

    /// The `TCP_NODELAY` setting.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.sock.get_ref().nodelay()
    }

    /// Sets `SO_LINGER` (whole seconds; `None` turns it off). With a linger,
    /// the close on drop can block the thread that drops it.
    pub fn set_linger(&self, dur: Option<Duration>) -> io::Result<()> {
        socket::set_linger(self.sock.fd(), dur)
    }

    /// The `SO_LINGER` setting.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        socket::linger(self.sock.fd())
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.get_ref().set_ttl(ttl)
    }

    /// The `IP_TTL` setting.
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.get_ref().ttl()
    }
}

stream_surface!(TcpStream, std::net::TcpStream, SocketAddr);

impl ReadHalf<'_> {
    /// See [`TcpStream::peek`].
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.peek(buf).await
    }

    /// See [`TcpStream::poll_peek`].
    pub fn poll_peek(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_peek(cx, buf)
    }
}

impl OwnedReadHalf {
    /// See [`TcpStream::peek`].
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.peek(buf).await
    }

    /// See [`TcpStream::poll_peek`].
    pub fn poll_peek(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_peek(cx, buf)
    }
}
