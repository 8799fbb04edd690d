//! Unix-domain streams for tokio: [`UnixListener`] and [`UnixStream`] with
//! tokio's methods and halves, probed like their TCP counterparts.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};
use tokio::net::unix::SocketAddr;

use super::socket::{self, socket_traits, Socket};
use super::stream::stream_surface;

/// A listening Unix socket whose accepts fire `eventer-accept-entry/return`
/// (one probe pair per `accept4`, as [`TcpListener`](super::TcpListener)).
///
/// ```
/// use eventloop_probes::tokio::{UnixListener, UnixStream};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let dir = std::env::temp_dir().join(format!("evloop-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("unix-listener.sock");
/// let _ = std::fs::remove_file(&path);
/// let listener = UnixListener::bind(&path)?;
/// let mut client = UnixStream::connect(&path).await?;
/// let (mut server, _peer) = listener.accept().await?;
/// client.write_all(b"hi").await?;
/// let mut got = [0u8; 2];
/// server.read_exact(&mut got).await?;
/// assert_eq!(&got, b"hi");
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct UnixListener {
    sock: Socket<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds to `path` and listens, as tokio's `UnixListener::bind`.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        // std's bind and backlog, as mio's; the extra FIONBIO is setup only.
        UnixListener::from_std(std::os::unix::net::UnixListener::bind(path)?)
    }

    /// Wraps a listening std socket, making it non-blocking.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        listener.set_nonblocking(true)?;
        Ok(UnixListener {
            sock: Socket::new(listener, Interest::READABLE)?,
        })
    }

    /// The std listener, deregistered and still non-blocking; its accepts
    /// and close are no longer probed.
    pub fn into_std(self) -> io::Result<std::os::unix::net::UnixListener> {
        Ok(self.sock.into_inner())
    }

    /// Accepts a connection, waiting until one arrives.
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for a connection: one `accept4` while the listener is marked
    /// readable; after an `EAGAIN` (probed) it waits for the next event.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(UnixStream, SocketAddr)>> {
        self.sock.poll_accept(cx, socket::unix_addr).map(|res| {
            let (fd, peer) = res?;
            let stream = UnixStream::from_nonblocking(std::os::unix::net::UnixStream::from(fd))?;
            Ok((stream, peer.into()))
        })
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().local_addr().map(Into::into)
    }

    /// Reads and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.get_ref().take_error()
    }
}

socket_traits!(UnixListener, std::os::unix::net::UnixListener);

/// A Unix-domain stream whose reads and writes fire `eventer-read-*` and
/// `eventer-write-*`, and whose drop fires `eventer-close-*`, with the
/// readiness rules and methods of [`TcpStream`](super::TcpStream).
///
/// ```
/// use eventloop_probes::tokio::UnixStream;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let (mut a, b) = UnixStream::pair()?;
/// let (mut rb, mut wb) = b.into_split();
/// a.write_all(b"ping").await?;
/// let mut got = [0u8; 4];
/// rb.read_exact(&mut got).await?;
/// wb.write_all(&got).await?;
/// a.read_exact(&mut got).await?;
/// assert_eq!(&got, b"ping");
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct UnixStream {
    sock: Socket<std::os::unix::net::UnixStream>,
}

impl UnixStream {
    /// Connects to the socket at `path`, as tokio's `connect`: a
    /// non-blocking `connect`, then the wait for writability and `SO_ERROR`.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let (sun, len) = socket::unix_sockaddr(path.as_ref())?;
        let fd = socket::new_socket(libc::AF_UNIX, libc::SOCK_STREAM)?;
        socket::connect(fd.raw(), &sun as *const _ as *const libc::sockaddr, len)?;
        let stream = UnixStream::from_nonblocking(std::os::unix::net::UnixStream::from(fd.take()))?;
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        Ok(stream)
    }

    /// A connected pair (`socketpair(2)`), both registered.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a)?, UnixStream::from_std(b)?))
    }

    /// Wraps a connected std stream, making it non-blocking.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        stream.set_nonblocking(true)?;
        UnixStream::from_nonblocking(stream)
    }

    fn from_nonblocking(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        let interest = Interest::READABLE.add(Interest::WRITABLE);
        Ok(UnixStream {
            sock: Socket::new(stream, interest)?,
        })
    }

    /// The std stream, deregistered and still non-blocking; its I/O and
    /// close are no longer probed.
    pub fn into_std(self) -> io::Result<std::os::unix::net::UnixStream> {
        Ok(self.sock.into_inner())
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().local_addr().map(Into::into)
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().peer_addr().map(Into::into)
    }
}

stream_surface!(UnixStream, std::os::unix::net::UnixStream, SocketAddr);
