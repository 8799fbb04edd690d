//! The plumbing every socket of this module shares: an fd registered with
//! tokio's reactor that closes through the probes, tokio's readiness rules,
//! and the probed syscalls themselves.
//!
//! Tokio's own sockets (`PollEvented`) decide when to make a syscall from
//! readiness the reactor reports; these do the same through [`AsyncFd`], so an
//! app makes the same syscalls with either, and the only thing added is the
//! probe pair around each one:
//!
//! - `AsyncRead`/`AsyncWrite` on streams ([`Socket::poll_read`],
//!   [`Socket::poll_write`]): a `recv` that fills less than the buffer's room,
//!   or a `send` that takes less than it was given, shows the socket drained
//!   (or full) on an edge-triggered epoll, so readiness is cleared and the next
//!   call waits for an event instead of trying a syscall that would say
//!   `EAGAIN` (tokio's `PollEvented::poll_read`/`poll_write` on Linux).
//! - Everything else (`poll_recv`, `peek`, datagrams, vectored I/O) clears
//!   readiness only after `EAGAIN` (tokio's `poll_read_io`/`poll_write_io`).
//! - `try_*` makes no syscall while tokio thinks the socket is not ready and
//!   answers `WouldBlock` (tokio's `Registration::try_io`).
//!
//! Each probed syscall here is exactly one syscall between its entry and
//! return probe; `EAGAIN` attempts are probed too (rv -11).

use std::ffi::OsStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf, Ready};
use usdt_provider::{mask, Accept, Close, Io};

use super::task::current_closure;
use crate::fire;

/// An fd registered with tokio's reactor that fires the close probes when
/// it is dropped.
pub(super) struct Socket<T: AsRawFd + IntoRawFd> {
    // Some until Drop (or into_inner) takes it out.
    io: Option<AsyncFd<T>>,
}

impl<T: AsRawFd + IntoRawFd> Socket<T> {
    /// Registers `inner`, which must already be non-blocking. On failure the
    /// fd is closed through the probes too, so every fd an accept probe
    /// reported gets its close. Panics outside a tokio runtime with I/O.
    pub(super) fn new(inner: T, interest: Interest) -> io::Result<Socket<T>> {
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

    pub(super) fn io(&self) -> &AsyncFd<T> {
        self.io
            .as_ref()
            .expect("only Drop and into_inner take the fd")
    }

    pub(super) fn get_ref(&self) -> &T {
        self.io().get_ref()
    }

    pub(super) fn fd(&self) -> RawFd {
        self.io().as_raw_fd()
    }

    /// Deregisters and hands the socket back without closing it (the
    /// `into_std` of every type): from then on its I/O is the caller's and
    /// untraced, like the close of its fd.
    pub(super) fn into_inner(mut self) -> T {
        self.io
            .take()
            .expect("only Drop and into_inner take the fd")
            .into_inner()
    }

    /// `AsyncRead::poll_read` of a stream: one `recv` per try, a short read
    /// clears read readiness (tokio's `PollEvented::poll_read`).
    pub(super) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let fd = self.fd();
        loop {
            let mut guard = ready!(self.io().poll_read_ready(cx))?;
            let room = buf.remaining();
            match recv_into(fd, buf, 0) {
                Ok(n) => {
                    // On an edge-triggered epoll a partly filled buffer shows
                    // the socket's receive queue is empty: without this, the
                    // next read would be a recv that says EAGAIN (one more
                    // syscall per wake-up than tokio makes). n == 0 is EOF,
                    // which stays readable.
                    if 0 < n && n < room {
                        guard.clear_ready();
                    } else {
                        guard.retain_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => guard.retain_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `AsyncWrite::poll_write` of a stream: one `send` per try, a short
    /// write clears write readiness (tokio's `PollEvented::poll_write`).
    pub(super) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let fd = self.fd();
        loop {
            let mut guard = ready!(self.io().poll_write_ready(cx))?;
            match send(fd, buf, 0) {
                Ok(n) => {
                    // A short write means the send buffer is full.
                    if 0 < n && n < buf.len() {
                        guard.clear_ready();
                    } else {
                        guard.retain_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => guard.retain_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `AsyncWrite::poll_write_vectored` of a stream: one `writev`, probed as
    /// one write of all the slices' bytes. Readiness is cleared as in
    /// [`Socket::poll_write`]: a short write means a full send buffer
    /// whatever the syscall (tokio clears only after `EAGAIN` here, so this
    /// makes at most as many syscalls as tokio).
    pub(super) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let fd = self.fd();
        loop {
            let mut guard = ready!(self.io().poll_write_ready(cx))?;
            match writev(fd, bufs) {
                Ok(n) => {
                    if 0 < n && n < total {
                        guard.clear_ready();
                    } else {
                        guard.retain_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => guard.retain_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Waits for read readiness, then tries `f` (one syscall); `EAGAIN`
    /// clears readiness and waits again (tokio's `poll_read_io`).
    pub(super) fn poll_read_io<R>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut() -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            let mut guard = ready!(self.io().poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|_| f()) {
                return Poll::Ready(res);
            }
        }
    }

    /// [`Socket::poll_read_io`] for writes (tokio's `poll_write_io`).
    pub(super) fn poll_write_io<R>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut() -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            let mut guard = ready!(self.io().poll_write_ready(cx))?;
            if let Ok(res) = guard.try_io(|_| f()) {
                return Poll::Ready(res);
            }
        }
    }

    /// Waits for `interest`, then tries `f`, until `f` does not say
    /// `EAGAIN` (tokio's `async_io`).
    pub(super) async fn async_io<R>(
        &self,
        interest: Interest,
        mut f: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        self.io().async_io(interest, |_| f()).await
    }

    /// Tries `f` once if tokio thinks the socket is ready for `interest`,
    /// else answers `WouldBlock` with no syscall (tokio's `try_io`).
    pub(super) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        self.io().try_io(interest, |_| f())
    }

    /// Waits until the socket is ready for any of `interest`.
    pub(super) async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        let mut guard = self.io().ready(interest).await?;
        let ready = guard.ready();
        // Only a syscall saying EAGAIN may clear readiness.
        guard.retain_ready();
        Ok(ready)
    }

    /// Polls for read readiness without consuming it.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.io().poll_read_ready(cx))?.retain_ready();
        Poll::Ready(Ok(()))
    }

    /// Polls for write readiness without consuming it.
    pub(super) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.io().poll_write_ready(cx))?.retain_ready();
        Poll::Ready(Ok(()))
    }

    /// Accepts one connection with `accept4`, probed (tokio's
    /// `poll_accept`: `EAGAIN` clears readiness and waits).
    pub(super) fn poll_accept<A>(
        &self,
        cx: &mut Context<'_>,
        addr: impl Fn(&libc::sockaddr_storage, libc::socklen_t) -> io::Result<A>,
    ) -> Poll<io::Result<(OwnedFd, A)>> {
        let fd = self.fd();
        self.poll_read_io(cx, || {
            let (new, storage, len) = accept4(fd)?;
            match addr(&storage, len) {
                Ok(a) => Ok((new, a)),
                Err(e) => {
                    // The accept probe reported this fd: close it through
                    // the probes too.
                    close_fd(new.into_raw_fd());
                    Err(e)
                }
            }
        })
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
pub(super) fn close_fd(fd: RawFd) {
    let closure = current_closure();
    let _res = fire::close(Close {
        fd,
        mask: 0,
        closure,
    });
    #[cfg(test)]
    super::tests::record("close", fd, closure, &_res, |_| 0);
}

/// An fd this module created, closed through the probes if it is dropped
/// before a [`Socket`] owns it (a failed bind or connect).
pub(super) struct NewFd(Option<OwnedFd>);

impl NewFd {
    pub(super) fn raw(&self) -> RawFd {
        self.0.as_ref().expect("present until taken").as_raw_fd()
    }

    pub(super) fn take(mut self) -> OwnedFd {
        self.0.take().expect("present until taken")
    }
}

impl Drop for NewFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            close_fd(fd.into_raw_fd());
        }
    }
}

/// `socket(2)`, non-blocking and close-on-exec from the start (as mio
/// creates them), so no `fcntl` follows.
pub(super) fn new_socket(domain: libc::c_int, ty: libc::c_int) -> io::Result<NewFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this fd; nobody else owns it.
    Ok(NewFd(Some(unsafe { OwnedFd::from_raw_fd(fd) })))
}

/// The result of a syscall returning 0 or -1.
pub(super) fn cvt(rv: libc::c_int) -> io::Result<()> {
    if rv < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The result of a syscall returning a count or -1.
fn byte_count(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `connect(2)` on a non-blocking socket: done, or in progress (the caller
/// then waits for writability and reads `SO_ERROR`, as mio and tokio do).
pub(super) fn connect(
    fd: RawFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> io::Result<()> {
    // SAFETY: addr/len describe a sockaddr the caller built.
    match cvt(unsafe { libc::connect(fd, addr, len) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        res => res,
    }
}

/// `setsockopt(2)` of an int-sized or struct option.
pub(super) fn setsockopt<V>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: V,
) -> io::Result<()> {
    // SAFETY: value is a live V of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const V as *const libc::c_void,
            mem::size_of::<V>() as libc::socklen_t,
        )
    })
}

/// `getsockopt(2)` of an option that is a plain C value.
pub(super) fn getsockopt<V: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<V> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut len = mem::size_of::<V>() as libc::socklen_t;
    // SAFETY: value/len describe a writable V.
    cvt(unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: zeroed and then written by the kernel; V is plain C data.
    Ok(unsafe { value.assume_init() })
}

/// `SO_LINGER`: `None` is off, `Some(d)` lingers up to `d` (whole seconds).
pub(super) fn set_linger(fd: RawFd, dur: Option<Duration>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: dur.is_some() as libc::c_int,
        l_linger: dur.map_or(0, |d| {
            d.as_secs().min(libc::c_int::MAX as u64) as libc::c_int
        }),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, linger)
}

/// The `SO_LINGER` setting.
pub(super) fn linger(fd: RawFd) -> io::Result<Option<Duration>> {
    let l: libc::linger = getsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER)?;
    Ok((l.l_onoff != 0).then(|| Duration::from_secs(l.l_linger as u64)))
}

/// What a read or write probe carries for `len` bytes at `ptr` on `fd`.
fn io_args(fd: RawFd, ptr: *const u8, len: usize, mask: i32) -> Io {
    Io {
        fd,
        buf: ptr as u64,
        len: len as u64,
        mask,
        closure: current_closure(),
    }
}

/// One read syscall `f` between the read probes.
#[inline(always)]
fn probed_read(args: Io, f: impl FnOnce() -> isize) -> io::Result<usize> {
    fire::read(args, || {
        let res = byte_count(f());
        #[cfg(test)]
        super::tests::record("read", args.fd, args.closure, &res, |n| *n as i64);
        res
    })
}

/// One write syscall `f` between the write probes.
#[inline(always)]
fn probed_write(args: Io, f: impl FnOnce() -> isize) -> io::Result<usize> {
    fire::write(args, || {
        let res = byte_count(f());
        #[cfg(test)]
        super::tests::record("write", args.fd, args.closure, &res, |n| *n as i64);
        res
    })
}

/// `recv(2)` into `buf`'s unfilled part, which it fills and advances by the
/// count read.
pub(super) fn recv_into(fd: RawFd, buf: &mut ReadBuf<'_>, flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: recv only writes into these bytes, and only the ones it
    // reports are marked initialized below.
    let unfilled = unsafe { buf.unfilled_mut() };
    let (ptr, len) = (unfilled.as_mut_ptr() as *mut u8, unfilled.len());
    // SAFETY: ptr/len is the caller's unfilled buffer.
    let n = probed_read(io_args(fd, ptr, len, mask::READ), || unsafe {
        libc::recv(fd, ptr.cast(), len, flags)
    })?;
    // SAFETY: recv initialized the first n unfilled bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// `recv(2)` into `buf`.
pub(super) fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    let (ptr, len) = (buf.as_mut_ptr(), buf.len());
    // SAFETY: ptr/len is a writable slice.
    probed_read(io_args(fd, ptr, len, mask::READ), || unsafe {
        libc::recv(fd, ptr.cast(), len, flags)
    })
}

/// `send(2)` of `buf`. `MSG_NOSIGNAL` turns a closed peer into `EPIPE`
/// instead of killing the process (std's `TcpStream::write` does the same).
pub(super) fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is a valid slice.
    probed_write(
        io_args(fd, buf.as_ptr(), buf.len(), mask::WRITE),
        || unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        },
    )
}

/// `readv(2)` into `bufs`, probed as one read: `buf` the first slice,
/// `len` all the slices' room.
pub(super) fn readv(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let total = bufs.iter().map(|b| b.len()).sum();
    let first = bufs.first().map_or(std::ptr::null(), |b| b.as_ptr());
    let cnt = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: IoSliceMut is ABI-compatible with iovec; each is writable.
    probed_read(io_args(fd, first, total, mask::READ), || unsafe {
        libc::readv(fd, bufs.as_ptr().cast(), cnt)
    })
}

/// `writev(2)` of `bufs`, probed as one write: `buf` the first slice, `len`
/// all the slices' bytes. Like tokio (std's `write_vectored`), writev has no
/// `MSG_NOSIGNAL`: Rust programs ignore `SIGPIPE` from `main` on.
pub(super) fn writev(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let total = bufs.iter().map(|b| b.len()).sum();
    let first = bufs.first().map_or(std::ptr::null(), |b| b.as_ptr());
    let cnt = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: IoSlice is ABI-compatible with iovec.
    probed_write(io_args(fd, first, total, mask::WRITE), || unsafe {
        libc::writev(fd, bufs.as_ptr().cast(), cnt)
    })
}

/// `recvfrom(2)` into `buf`'s unfilled part, returning the count and the
/// sender's raw address.
pub(super) fn recv_from_into(
    fd: RawFd,
    buf: &mut ReadBuf<'_>,
    flags: libc::c_int,
) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: as in recv_into.
    let unfilled = unsafe { buf.unfilled_mut() };
    let (n, addr) = recv_from_raw(fd, unfilled.as_mut_ptr() as *mut u8, unfilled.len(), flags)?;
    // SAFETY: recvfrom initialized the first n unfilled bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok((n, addr))
}

/// `recvfrom(2)` into `buf`.
pub(super) fn recv_from(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, SocketAddr)> {
    recv_from_raw(fd, buf.as_mut_ptr(), buf.len(), flags)
}

fn recv_from_raw(
    fd: RawFd,
    ptr: *mut u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut alen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ptr/len is writable; storage/alen describe a sockaddr buffer.
    let n = probed_read(io_args(fd, ptr, len, mask::READ), || unsafe {
        libc::recvfrom(
            fd,
            ptr.cast(),
            len,
            flags,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut alen,
        )
    })?;
    Ok((n, socket_addr(&storage, alen)?))
}

/// `sendto(2)` of `buf` to `target`.
pub(super) fn send_to(fd: RawFd, buf: &[u8], target: &SocketAddr) -> io::Result<usize> {
    let (storage, alen) = sockaddr_of(target);
    // SAFETY: buf is a valid slice; storage/alen a valid sockaddr.
    probed_write(
        io_args(fd, buf.as_ptr(), buf.len(), mask::WRITE),
        || unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
                &storage as *const _ as *const libc::sockaddr,
                alen,
            )
        },
    )
}

/// One `accept4(2)` between the accept probes: non-blocking and
/// close-on-exec from the start, so no further syscall on the new fd sits
/// outside the probes.
fn accept4(fd: RawFd) -> io::Result<(OwnedFd, libc::sockaddr_storage, libc::socklen_t)> {
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
    let new = fire::accept(
        args,
        || {
            // SAFETY: storage and len describe a writable sockaddr buffer.
            let new = unsafe {
                libc::accept4(
                    fd,
                    &mut storage as *mut _ as *mut libc::sockaddr,
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            let res = if new < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: accept4 just returned this fd, nobody else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(new) })
            };
            #[cfg(test)]
            super::tests::record("accept", fd, args.closure, &res, |n| n.as_raw_fd().into());
            res
        },
        |new| new.as_raw_fd(),
    )?;
    Ok((new, storage, len))
}

/// The address family of `addr`.
pub(super) fn domain_of(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// `addr` as the kernel takes it.
pub(super) fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address the kernel wrote (accept4, recvfrom).
pub(super) fn socket_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<SocketAddr> {
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
            format!("the kernel returned address family {family} ({len} bytes)"),
        )),
    }
}

/// The offset of `sun_path` in `sockaddr_un`.
fn sun_path_offset() -> usize {
    mem::offset_of!(libc::sockaddr_un, sun_path)
}

/// A filesystem path as a `sockaddr_un`.
pub(super) fn unix_sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "paths must not contain interior null bytes",
        ));
    }
    // One byte stays for the terminating NUL.
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path must be shorter than SUN_LEN",
        ));
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = sun_path_offset() + bytes.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// The Unix address accept4 wrote: a path, an abstract name or unnamed.
pub(super) fn unix_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: sockaddr_storage is large enough; the kernel wrote a sockaddr_un.
    let sun = unsafe { &*(storage as *const _ as *const libc::sockaddr_un) };
    let path_len = (len as usize)
        .saturating_sub(sun_path_offset())
        .min(sun.sun_path.len());
    // SAFETY: c_char and u8 have the same layout.
    let path: &[u8] =
        unsafe { &*(&sun.sun_path[..path_len] as *const [libc::c_char] as *const [u8]) };
    match path {
        // An abstract name starts with a NUL.
        [0, name @ ..] => std::os::unix::net::SocketAddr::from_abstract_name(name),
        // Unnamed (len == offset): from_pathname("") makes the same.
        _ => {
            let path = path.strip_suffix(&[0]).unwrap_or(path);
            let path = path.split(|&b| b == 0).next().unwrap_or(&[]);
            std::os::unix::net::SocketAddr::from_pathname(Path::new(OsStr::from_bytes(path)))
        }
    }
}

/// `AsRawFd`, `AsFd`, `Debug` (its fd) and `TryFrom<$std>` (its `from_std`)
/// for a socket type `$ty` whose field `sock` is a `Socket<$std>`: the same
/// for every socket type, written once.
macro_rules! socket_traits {
    ($ty:ident, $std:ty) => {
        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.sock.fd()
            }
        }

        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.sock.get_ref())
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("fd", &self.sock.fd())
                    .finish()
            }
        }

        impl TryFrom<$std> for $ty {
            type Error = std::io::Error;

            /// Same as `from_std`.
            fn try_from(socket: $std) -> std::io::Result<$ty> {
                $ty::from_std(socket)
            }
        }
    };
}

pub(super) use socket_traits;
