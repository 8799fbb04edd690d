//! UDP for tokio: [`UdpSocket`] with tokio's methods, whose every
//! `recv`/`recvfrom` is probed as a read, every `send`/`sendto` as a write,
//! and whose drop fires the close probes.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tokio::io::{Interest, ReadBuf, Ready};

use super::socket::{self, socket_traits, Socket};
use super::tcp::no_address;

/// A UDP socket whose receives fire `eventer-read-*`, sends
/// `eventer-write-*`, and drop `eventer-close-*`.
///
/// One probe pair per `recv`/`recvfrom`/`send`/`sendto` attempt, `EAGAIN`
/// included, with `buf`/`len` the caller's buffer and `rv` the datagram's
/// size or `-errno`. As in tokio, a datagram socket's readiness is cleared
/// only by an `EAGAIN` (one datagram per syscall, whatever the buffer's room).
///
/// ```
/// use eventloop_probes::tokio::UdpSocket;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let server = UdpSocket::bind("127.0.0.1:0").await?;
/// let client = UdpSocket::bind("127.0.0.1:0").await?;
/// client.connect(server.local_addr()?).await?;
///
/// client.send(b"ping").await?;
/// let mut buf = [0u8; 16];
/// let (n, from) = server.recv_from(&mut buf).await?;
/// assert_eq!((&buf[..n], from), (&b"ping"[..], client.local_addr()?));
/// server.send_to(&buf[..n], from).await?;
/// let n = client.recv(&mut buf).await?;
/// assert_eq!(&buf[..n], b"ping");
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct UdpSocket {
    sock: Socket<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds to `addr` (each resolved address in turn), as tokio's `bind`.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<UdpSocket> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match UdpSocket::bind_addr(addr) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_address))
    }

    fn bind_addr(addr: SocketAddr) -> io::Result<UdpSocket> {
        let fd = socket::new_socket(socket::domain_of(&addr), libc::SOCK_DGRAM)?;
        let (sa, len) = socket::sockaddr_of(&addr);
        // SAFETY: sa/len is a valid sockaddr.
        socket::cvt(unsafe {
            libc::bind(fd.raw(), &sa as *const _ as *const libc::sockaddr, len)
        })?;
        UdpSocket::from_nonblocking(std::net::UdpSocket::from(fd.take()))
    }

    /// Wraps a bound std socket, making it non-blocking.
    ///
    /// Panics outside a tokio runtime with I/O enabled.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        UdpSocket::from_nonblocking(socket)
    }

    fn from_nonblocking(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        let interest = Interest::READABLE.add(Interest::WRITABLE);
        Ok(UdpSocket {
            sock: Socket::new(socket, interest)?,
        })
    }

    /// The std socket, deregistered and still non-blocking; its I/O and
    /// close are no longer probed.
    pub fn into_std(self) -> io::Result<std::net::UdpSocket> {
        Ok(self.sock.into_inner())
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().local_addr()
    }

    /// The address given to [`Self::connect`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.get_ref().peer_addr()
    }

    /// Sets the default destination for [`Self::send`] and the only source
    /// [`Self::recv`] accepts (the first resolved address that works).
    pub async fn connect(&self, addr: impl tokio::net::ToSocketAddrs) -> io::Result<()> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match self.sock.get_ref().connect(addr) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_address))
    }

    /// Waits until the socket is ready for any of `interest` (no syscall).
    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        self.sock.ready(interest).await
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.sock.ready(Interest::READABLE).await.map(drop)
    }

    /// Waits until the socket is writable.
    pub async fn writable(&self) -> io::Result<()> {
        self.sock.ready(Interest::WRITABLE).await.map(drop)
    }

    /// Polls for read readiness.
    pub fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sock.poll_read_ready(cx)
    }

    /// Polls for write readiness.
    pub fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sock.poll_write_ready(cx)
    }

    /// Sends `buf` to the connected peer: one `send` per readiness.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::WRITABLE, || socket::send(fd, buf, 0))
            .await
    }

    /// Polls [`Self::send`].
    pub fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let fd = self.sock.fd();
        self.sock.poll_write_io(cx, || socket::send(fd, buf, 0))
    }

    /// One `send` if the socket is marked writable, else `WouldBlock`
    /// with no syscall.
    pub fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .try_io(Interest::WRITABLE, || socket::send(fd, buf, 0))
    }

    /// Receives one datagram from the connected peer into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::READABLE, || socket::recv(fd, buf, 0))
            .await
    }

    /// Polls [`Self::recv`] into `buf`'s unfilled part.
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let fd = self.sock.fd();
        self.sock
            .poll_read_io(cx, || socket::recv_into(fd, buf, 0))
            .map_ok(drop)
    }

    /// One `recv` if the socket is marked readable, else `WouldBlock` with
    /// no syscall.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .try_io(Interest::READABLE, || socket::recv(fd, buf, 0))
    }

    /// Sends `buf` to `target` (its first resolved address).
    pub async fn send_to(
        &self,
        buf: &[u8],
        target: impl tokio::net::ToSocketAddrs,
    ) -> io::Result<usize> {
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(no_address)?;
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::WRITABLE, || socket::send_to(fd, buf, &target))
            .await
    }

    /// Polls a `sendto` of `buf` to `target`.
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let fd = self.sock.fd();
        self.sock
            .poll_write_io(cx, || socket::send_to(fd, buf, &target))
    }

    /// One `sendto` if the socket is marked writable, else `WouldBlock`
    /// with no syscall.
    pub fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let fd = self.sock.fd();
        self.sock
            .try_io(Interest::WRITABLE, || socket::send_to(fd, buf, &target))
    }

    /// Receives one datagram into `buf`, with its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::READABLE, || socket::recv_from(fd, buf, 0))
            .await
    }

    /// Polls [`Self::recv_from`] into `buf`'s unfilled part.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<SocketAddr>> {
        let fd = self.sock.fd();
        self.sock
            .poll_read_io(cx, || socket::recv_from_into(fd, buf, 0))
            .map_ok(|(_, from)| from)
    }

    /// One `recvfrom` if the socket is marked readable, else `WouldBlock`
    /// with no syscall.
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let fd = self.sock.fd();
        self.sock
            .try_io(Interest::READABLE, || socket::recv_from(fd, buf, 0))
    }

    /// Like [`Self::recv_from`] but leaves the datagram queued
    /// (`MSG_PEEK`); probed as a read.
    pub async fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let fd = self.sock.fd();
        self.sock
            .async_io(Interest::READABLE, || {
                socket::recv_from(fd, buf, libc::MSG_PEEK)
            })
            .await
    }

    /// Polls [`Self::peek_from`].
    pub fn poll_peek_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<SocketAddr>> {
        let fd = self.sock.fd();
        self.sock
            .poll_read_io(cx, || socket::recv_from_into(fd, buf, libc::MSG_PEEK))
            .map_ok(|(_, from)| from)
    }

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.sock.get_ref().set_broadcast(on)
    }

    /// The `SO_BROADCAST` setting.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.sock.get_ref().broadcast()
    }

    /// Sets `IP_TTL`.
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

socket_traits!(UdpSocket, std::net::UdpSocket);
