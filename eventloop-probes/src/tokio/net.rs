//! TCP sockets for tokio whose every accept, read, write and close is one
//! syscall bracketed by its `eventer-*` probes.
//!
//! Tokio's own sockets hide attempts: `TcpListener::poll_accept` retries
//! after `EAGAIN` inside one call, and `try_read` answers `WouldBlock`
//! without a syscall when tokio thinks the socket is not ready. So these
//! types register the fd with tokio's reactor through [`AsyncFd`] and issue
//! the syscalls themselves: one `accept4`, `recv`, `send` or `close` per
//! probe pair, including the attempts that fail with `EAGAIN` (rv -11).
//! A reader keeps reading until `EAGAIN`, like a libmtev callback does; that
//! costs one `recv` per wake-up more than tokio's `TcpStream`, which stops
//! after a short read.

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use usdt_provider::{mask, Accept, Close, Io};

use super::task::current_closure;
use crate::fire;

/// An fd registered with tokio's reactor that fires the close probes when
/// it is dropped.
struct Socket<T: AsRawFd + IntoRawFd> {
    // Some until Drop takes it out to close the fd itself.
    io: Option<AsyncFd<T>>,
}

impl<T: AsRawFd + IntoRawFd> Socket<T> {
    /// Registers `inner`, which must already be non-blocking. On failure the
    /// fd is closed through the probes too, so every fd an accept probe
    /// reported gets its close. Panics outside a tokio runtime with I/O.
    fn new(inner: T, interest: Interest) -> io::Result<Socket<T>> {
        // SAFETY: T is a std socket that owns its fd; nothing swaps or closes
        // that fd while the AsyncFd holds it (Drop takes it out first).
        match unsafe { AsyncFd::register_with_interest(inner, interest) } {
            Ok(io) => Ok(Socket { io: Some(io) }),
            Err(e) => {
                let (inner, err) = e.into_parts();
                close_fd(inner.into_raw_fd());
                Err(err)
            }
        }
    }

    fn io(&self) -> &AsyncFd<T> {
        self.io.as_ref().expect("only Drop takes the fd")
    }

    fn fd(&self) -> RawFd {
        self.io().as_raw_fd()
    }
}

impl<T: AsRawFd + IntoRawFd> Drop for Socket<T> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            // Deregistering first keeps the epoll_ctl out of the bracket, so
            // the probes surround exactly the close(2).
            close_fd(io.into_inner().into_raw_fd());
        }
    }
}

/// Closes an fd we own with the close probes around it. An error cannot be
/// returned from Drop; the return probe carries it as `rv`.
fn close_fd(fd: RawFd) {
    let closure = current_closure();
    let _res = fire::close(Close {
        fd,
        mask: 0,
        closure,
    });
    #[cfg(test)]
    super::tests::record("close", fd, closure, &_res, |_| 0);
}

/// The result of recv(2)/send(2).
fn byte_count(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A listening TCP socket whose accepts fire `eventer-accept-entry/return`.
///
/// Each `accept4` attempt is one probe pair: `fd` is the listening socket,
/// `addr`/`addrlen` the buffer the peer address is written to, `mask` is
/// `READ`, `closure` the [`Instrumented`](super::Instrumented) task doing
/// the accept (0 outside one), and `rv` the new fd or `-errno` (-11 when
/// there was nothing to accept).
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
    /// Binds to `addr` the way [`tokio::net::TcpListener::bind`] does
    /// (`SO_REUSEADDR`, each resolved address tried in turn).
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<TcpListener> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        TcpListener::from_std(listener.into_std()?)
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

    /// Accepts a connection, waiting until one arrives.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for a connection: one `accept4` per readiness, returning
    /// `Pending` (after its `EAGAIN` probe pair) when there is none.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let io = self.sock.io();
        let fd = io.as_raw_fd();
        loop {
            let mut guard = ready!(io.poll_read_ready(cx))?;
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let args = Accept {
                fd,
                addr: &storage as *const _ as u64,
                addrlen: len as i32,
                mask: mask::READ,
                closure: current_closure(),
            };
            let attempt = guard.try_io(|_| {
                fire::accept(
                    args,
                    || {
                        let res = accept4(fd, &mut storage, &mut len);
                        #[cfg(test)]
                        super::tests::record("accept", fd, args.closure, &res, |n| {
                            n.as_raw_fd().into()
                        });
                        res
                    },
                    |new| new.as_raw_fd(),
                )
            });
            match attempt {
                Ok(Ok(new)) => {
                    let peer = socket_addr(&storage, len);
                    let stream = TcpStream::from_nonblocking(std::net::TcpStream::from(new));
                    return Poll::Ready(stream.and_then(|s| Ok((s, peer?))));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // EAGAIN: the guard cleared readiness; the next poll of it
                // registers the waker.
                Err(_would_block) => continue,
            }
        }
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io().get_ref().local_addr()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd()
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.sock.fd())
            .finish()
    }
}

/// One `accept4(2)`: non-blocking and close-on-exec from the start, so no
/// further syscall on the new fd sits outside the probes.
fn accept4(
    fd: RawFd,
    storage: &mut libc::sockaddr_storage,
    len: &mut libc::socklen_t,
) -> io::Result<OwnedFd> {
    // SAFETY: storage and len describe a writable sockaddr buffer.
    let new = unsafe {
        libc::accept4(
            fd,
            storage as *mut _ as *mut libc::sockaddr,
            len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: accept4 just returned this fd, nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }
}

/// The peer address accept4 wrote.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family and length say so).
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family and length say so).
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Ok(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("accept4 returned address family {family} ({len} bytes)"),
        )),
    }
}

/// A TCP connection whose reads and writes fire `eventer-read-*` and
/// `eventer-write-*`, and whose drop fires `eventer-close-*`.
///
/// Each `recv`/`send` attempt is one probe pair: `fd` is the socket, `buf`
/// and `len` the caller's buffer, `mask` `READ` or `WRITE`, `closure` the
/// [`Instrumented`](super::Instrumented) task doing the I/O (0 outside one),
/// and `rv` the byte count or `-errno` (-11 when the socket was not ready,
/// after which the task waits for readiness). The fd is closed, with its
/// probes, when the stream and all its halves are dropped; `mask` is 0 then.
///
/// Use it through [`tokio::io::AsyncReadExt`] and [`tokio::io::AsyncWriteExt`];
/// `AsyncWriteExt::shutdown` shuts the write side down (no probe: the fd
/// stays open).
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
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct TcpStream {
    sock: Arc<Socket<std::net::TcpStream>>,
}

impl TcpStream {
    /// Connects to `addr` the way [`tokio::net::TcpStream::connect`] does.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> io::Result<TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        TcpStream::from_nonblocking(stream.into_std()?)
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
            sock: Arc::new(Socket::new(stream, interest)?),
        })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io().get_ref().peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io().get_ref().local_addr()
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.sock.io().get_ref().set_nodelay(nodelay)
    }

    /// Splits into halves that can move to different tasks. The fd is
    /// closed when both are dropped. Unlike tokio's halves, dropping the
    /// write half does not shut the write side down: call
    /// `AsyncWriteExt::shutdown` on it.
    ///
    /// ```
    /// use eventloop_probes::tokio::{TcpListener, TcpStream};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let listener = TcpListener::bind("127.0.0.1:0").await?;
    /// let client = TcpStream::connect(listener.local_addr()?).await?;
    /// let (server, _) = listener.accept().await?;
    ///
    /// let (mut reader, mut writer) = client.into_split();
    /// let (mut server_reader, mut server_writer) = server.into_split();
    /// writer.write_all(b"hi").await?;
    /// let mut got = [0u8; 2];
    /// server_reader.read_exact(&mut got).await?;
    /// server_writer.write_all(&got).await?;
    /// reader.read_exact(&mut got).await?;
    /// assert_eq!(&got, b"hi");
    /// # Ok::<_, std::io::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let read = OwnedReadHalf {
            sock: Arc::clone(&self.sock),
        };
        (read, OwnedWriteHalf { sock: self.sock })
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd()
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.sock.fd())
            .finish()
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.sock, cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.sock, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // send(2) hands the bytes to the kernel; there is nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.sock.io().get_ref().shutdown(Shutdown::Write))
    }
}

/// The reading half of a [`TcpStream`], from [`TcpStream::into_split`].
pub struct OwnedReadHalf {
    sock: Arc<Socket<std::net::TcpStream>>,
}

/// The writing half of a [`TcpStream`], from [`TcpStream::into_split`].
pub struct OwnedWriteHalf {
    sock: Arc<Socket<std::net::TcpStream>>,
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.sock, cx, buf)
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.sock, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.sock.io().get_ref().shutdown(Shutdown::Write))
    }
}

macro_rules! half_accessors {
    ($half:ty) => {
        impl $half {
            /// The remote address.
            pub fn peer_addr(&self) -> io::Result<SocketAddr> {
                self.sock.io().get_ref().peer_addr()
            }

            /// The local address.
            pub fn local_addr(&self) -> io::Result<SocketAddr> {
                self.sock.io().get_ref().local_addr()
            }
        }

        impl AsRawFd for $half {
            fn as_raw_fd(&self) -> RawFd {
                self.sock.fd()
            }
        }

        impl fmt::Debug for $half {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($half))
                    .field("fd", &self.sock.fd())
                    .finish()
            }
        }
    };
}

half_accessors!(OwnedReadHalf);
half_accessors!(OwnedWriteHalf);

/// Reads until one `recv` returns data, EOF or an error; an `EAGAIN` makes
/// tokio wait for the next readiness.
fn poll_read(
    sock: &Socket<std::net::TcpStream>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let io = sock.io();
    let fd = io.as_raw_fd();
    loop {
        let mut guard = ready!(io.poll_read_ready(cx))?;
        // SAFETY: recv only writes into these bytes, and only the ones it
        // reports are marked initialized below.
        let unfilled = unsafe { buf.unfilled_mut() };
        let (ptr, len) = (unfilled.as_mut_ptr() as *mut u8, unfilled.len());
        let args = Io {
            fd,
            buf: ptr as u64,
            len: len as u64,
            mask: mask::READ,
            closure: current_closure(),
        };
        let attempt = guard.try_io(|_| {
            fire::read(args, || {
                // SAFETY: ptr/len is the caller's unfilled buffer.
                let res = byte_count(unsafe { libc::recv(fd, ptr.cast(), len, 0) });
                #[cfg(test)]
                super::tests::record("read", fd, args.closure, &res, |n| *n as i64);
                res
            })
        });
        match attempt {
            Ok(Ok(n)) => {
                // SAFETY: recv initialized the first n unfilled bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Poll::Ready(Err(e)),
            Err(_would_block) => continue,
        }
    }
}

/// Writes with one `send` per readiness; `EAGAIN` makes tokio wait.
fn poll_write(
    sock: &Socket<std::net::TcpStream>,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let io = sock.io();
    let fd = io.as_raw_fd();
    loop {
        let mut guard = ready!(io.poll_write_ready(cx))?;
        let (ptr, len) = fire::buf_args(buf);
        let args = Io {
            fd,
            buf: ptr,
            len,
            mask: mask::WRITE,
            closure: current_closure(),
        };
        let attempt = guard.try_io(|_| {
            fire::write(args, || {
                // SAFETY: buf is a valid slice; MSG_NOSIGNAL turns a closed
                // peer into EPIPE instead of killing the process.
                let res = byte_count(unsafe {
                    libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                });
                #[cfg(test)]
                super::tests::record("write", fd, args.closure, &res, |n| *n as i64);
                res
            })
        });
        match attempt {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(res) => return Poll::Ready(res),
            Err(_would_block) => continue,
        }
    }
}
