//! What TCP and Unix streams share, written once: the readiness and `try_*`
//! methods, `AsyncRead`/`AsyncWrite`, fd access, and the borrowed and owned
//! halves with tokio's names and behaviour (dropping an [`OwnedWriteHalf`]
//! shuts the write side down unless it was `forget`-ed).
//!
//! A macro rather than a generic type so that each stream stays its own
//! concrete type with tokio's method names, as an app calls them.
//!
//! [`OwnedWriteHalf`]: super::tcp::OwnedWriteHalf

/// The methods and traits of a stream type `$stream` whose field `sock` is
/// a `Socket<$std>`, and its halves. `$addr` is what `peer_addr` returns.
macro_rules! stream_surface {
    ($stream:ident, $std:ty, $addr:ty) => {
        impl $stream {
            /// Waits until the stream is ready for any of `interest`, like
            /// tokio's `ready`. No syscall is made; the result may be a false
            /// positive, and the next `try_*` call then says `WouldBlock`.
            pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
                self.sock.ready(interest).await
            }

            /// Waits until the stream is readable (see [`Self::ready`]).
            pub async fn readable(&self) -> io::Result<()> {
                self.sock.ready(Interest::READABLE).await.map(drop)
            }

            /// Waits until the stream is writable (see [`Self::ready`]).
            pub async fn writable(&self) -> io::Result<()> {
                self.sock.ready(Interest::WRITABLE).await.map(drop)
            }

            /// Polls for read readiness (registers `cx`'s waker if not ready).
            pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.sock.poll_read_ready(cx)
            }

            /// Polls for write readiness (registers `cx`'s waker if not ready).
            pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.sock.poll_write_ready(cx)
            }

            /// One `recv` if the stream is marked readable, else
            /// `WouldBlock` with no syscall; an `EAGAIN` clears readiness.
            /// Probed as a read.
            pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                let fd = self.sock.fd();
                self.sock.try_io(Interest::READABLE, || socket::recv(fd, buf, 0))
            }

            /// Like [`Self::try_read`] with one `readv` into `bufs`, probed
            /// as one read whose `len` is all the buffers' room.
            pub fn try_read_vectored(&self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                let fd = self.sock.fd();
                self.sock.try_io(Interest::READABLE, || socket::readv(fd, bufs))
            }

            /// One `send` if the stream is marked writable, else
            /// `WouldBlock` with no syscall. Probed as a write.
            pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                let fd = self.sock.fd();
                self.sock.try_io(Interest::WRITABLE, || socket::send(fd, buf, 0))
            }

            /// Like [`Self::try_write`] with one `writev` of `bufs`, probed
            /// as one write whose `len` is all the buffers' bytes.
            pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                let fd = self.sock.fd();
                self.sock.try_io(Interest::WRITABLE, || socket::writev(fd, bufs))
            }

            /// Reads and clears the socket's pending error (`SO_ERROR`).
            pub fn take_error(&self) -> io::Result<Option<io::Error>> {
                self.sock.get_ref().take_error()
            }

            /// Splits into a reading and a writing half that borrow the
            /// stream, for use in one task (`tokio::join!`, `select!`).
            pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
                (ReadHalf(&*self), WriteHalf(&*self))
            }

            /// Splits into halves that can move to different tasks. The fd
            /// is closed (with its probes) when both are dropped; dropping
            /// the write half shuts the write side down, as tokio's does,
            /// unless it was [`OwnedWriteHalf::forget`]-ed.
            pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
                let arc = Arc::new(self);
                let read = OwnedReadHalf {
                    inner: Arc::clone(&arc),
                };
                let write = OwnedWriteHalf {
                    inner: arc,
                    shutdown_on_drop: true,
                };
                (read, write)
            }

            fn shutdown_std(&self, how: Shutdown) -> io::Result<()> {
                self.sock.get_ref().shutdown(how)
            }
        }

        impl AsyncRead for $stream {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.sock.poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $stream {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.sock.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.sock.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                // send(2) hands the bytes to the kernel; nothing to flush.
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                // shutdown(2) is traced by portsnoop as its own op; the fd
                // stays open, so there is no close probe.
                Poll::Ready(self.shutdown_std(Shutdown::Write))
            }
        }

        super::socket::socket_traits!($stream, $std);

        #[doc = concat!("The reading half of a [`", stringify!($stream), "`] borrowed by [`", stringify!($stream), "::split`].")]
        #[derive(Debug)]
        pub struct ReadHalf<'a>(&'a $stream);

        #[doc = concat!("The writing half of a [`", stringify!($stream), "`] borrowed by [`", stringify!($stream), "::split`]. `shutdown` shuts the stream's write side down.")]
        #[derive(Debug)]
        pub struct WriteHalf<'a>(&'a $stream);

        #[doc = concat!("The reading half of a [`", stringify!($stream), "`], from [`", stringify!($stream), "::into_split`].")]
        #[derive(Debug)]
        pub struct OwnedReadHalf {
            inner: Arc<$stream>,
        }

        #[doc = concat!("The writing half of a [`", stringify!($stream), "`], from [`", stringify!($stream), "::into_split`]. Dropping it shuts the write side down (`shutdown(2)`), as tokio's does, unless [`OwnedWriteHalf::forget`] is called.")]
        #[derive(Debug)]
        pub struct OwnedWriteHalf {
            inner: Arc<$stream>,
            shutdown_on_drop: bool,
        }

        /// The halves given to `reunite` came from different streams.
        #[derive(Debug)]
        pub struct ReuniteError(pub OwnedReadHalf, pub OwnedWriteHalf);

        impl fmt::Display for ReuniteError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "tried to reunite halves that are not from the same socket")
            }
        }

        impl std::error::Error for ReuniteError {}

        impl OwnedReadHalf {
            /// Puts the stream back together with its write half.
            pub fn reunite(self, other: OwnedWriteHalf) -> Result<$stream, ReuniteError> {
                reunite(self, other)
            }
        }

        impl OwnedWriteHalf {
            /// Puts the stream back together with its read half.
            pub fn reunite(self, other: OwnedReadHalf) -> Result<$stream, ReuniteError> {
                reunite(other, self)
            }

            /// Drops the half without shutting the write side down.
            pub fn forget(mut self) {
                self.shutdown_on_drop = false;
                drop(self);
            }
        }

        impl Drop for OwnedWriteHalf {
            fn drop(&mut self) {
                if self.shutdown_on_drop {
                    // As tokio: the peer sees EOF even if the read half lives on.
                    let _ = self.inner.shutdown_std(Shutdown::Write);
                }
            }
        }

        fn reunite(read: OwnedReadHalf, mut write: OwnedWriteHalf) -> Result<$stream, ReuniteError> {
            if Arc::ptr_eq(&read.inner, &write.inner) {
                write.shutdown_on_drop = false;
                drop(read);
                let inner = Arc::clone(&write.inner);
                drop(write);
                Ok(Arc::try_unwrap(inner).expect("both halves were given and dropped"))
            } else {
                Err(ReuniteError(read, write))
            }
        }

        $crate::tokio::stream::half_common!(ReadHalf<'_>, $stream, $addr, |h| h.0);
        $crate::tokio::stream::half_common!(WriteHalf<'_>, $stream, $addr, |h| h.0);
        $crate::tokio::stream::half_common!(OwnedReadHalf, $stream, $addr, |h| &*h.inner);
        $crate::tokio::stream::half_common!(OwnedWriteHalf, $stream, $addr, |h| &*h.inner);
        $crate::tokio::stream::read_half!(ReadHalf<'_>, |h| h.0);
        $crate::tokio::stream::read_half!(OwnedReadHalf, |h| &*h.inner);
        $crate::tokio::stream::write_half!(WriteHalf<'_>, |h| h.0, |_h| {});
        $crate::tokio::stream::write_half!(OwnedWriteHalf, |h| &*h.inner, |h| h.shutdown_on_drop = false);
    };
}

/// What every half has: addresses, readiness, fd access, `AsRef`.
macro_rules! half_common {
    ($half:ty, $stream:ident, $addr:ty, |$h:ident| $get:expr) => {
        impl $half {
            /// The remote address.
            pub fn peer_addr(&self) -> io::Result<$addr> {
                let $h = self;
                $get.peer_addr()
            }

            /// The local address.
            pub fn local_addr(&self) -> io::Result<$addr> {
                let $h = self;
                $get.local_addr()
            }

            /// Waits until the stream is ready for any of `interest`.
            pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
                let $h = self;
                $get.ready(interest).await
            }
        }

        impl AsRef<$stream> for $half {
            fn as_ref(&self) -> &$stream {
                let $h = self;
                $get
            }
        }

        impl AsRawFd for $half {
            fn as_raw_fd(&self) -> RawFd {
                let $h = self;
                $get.as_raw_fd()
            }
        }

        impl AsFd for $half {
            fn as_fd(&self) -> BorrowedFd<'_> {
                let $h = self;
                $get.as_fd()
            }
        }
    };
}

/// A reading half: `AsyncRead` and the read-side `try_*`.
macro_rules! read_half {
    ($half:ty, |$h:ident| $get:expr) => {
        impl $half {
            /// Waits until the stream is readable.
            pub async fn readable(&self) -> io::Result<()> {
                let $h = self;
                $get.readable().await
            }

            /// See the stream's `try_read`.
            pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                let $h = self;
                $get.try_read(buf)
            }

            /// See the stream's `try_read_vectored`.
            pub fn try_read_vectored(&self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                let $h = self;
                $get.try_read_vectored(bufs)
            }
        }

        impl AsyncRead for $half {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let $h = &*self;
                $get.sock.poll_read(cx, buf)
            }
        }
    };
}

/// A writing half: `AsyncWrite` and the write-side `try_*`. `$on_shutdown`
/// runs after a successful `shutdown` (the owned half then need not shut
/// down again on drop).
macro_rules! write_half {
    ($half:ty, |$h:ident| $get:expr, |$m:ident| $on_shutdown:expr) => {
        impl $half {
            /// Waits until the stream is writable.
            pub async fn writable(&self) -> io::Result<()> {
                let $h = self;
                $get.writable().await
            }

            /// See the stream's `try_write`.
            pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                let $h = self;
                $get.try_write(buf)
            }

            /// See the stream's `try_write_vectored`.
            pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                let $h = self;
                $get.try_write_vectored(bufs)
            }
        }

        impl AsyncWrite for $half {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let $h = &*self;
                $get.sock.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let $h = &*self;
                $get.sock.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                let res = {
                    let $h = &*self;
                    $get.shutdown_std(Shutdown::Write)
                };
                if res.is_ok() {
                    let $m = Pin::into_inner(self);
                    $on_shutdown;
                }
                Poll::Ready(res)
            }
        }
    };
}

pub(super) use {half_common, read_half, stream_surface, write_half};
