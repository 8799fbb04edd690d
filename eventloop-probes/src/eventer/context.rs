//! What a callback gets: its fd's I/O, each call bracketed by probes, and
//! ways to change the loop (register, add timers, stop).

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use usdt_provider::{Accept, Close, Io};

use super::event_loop::StopHandle;
use super::source::{not_for, Source};
use super::Callback;
use crate::fire;

/// A change a callback asked for, applied once it returns (the loop's
/// tables are borrowed while it runs).
pub(crate) enum Pending {
    Register {
        source: Source,
        name: Cow<'static, str>,
        mask: i32,
        callback: Callback,
    },
    Timer {
        name: Cow<'static, str>,
        after: Duration,
        repeat: Option<Duration>,
        callback: Callback,
    },
}

/// The context a callback runs in: its own source, and the loop.
pub struct Ctx<'a> {
    pub(crate) source: &'a mut Option<Source>,
    pub(crate) registry: &'a mio::Registry,
    pub(crate) pending: &'a mut Vec<Pending>,
    pub(crate) stop: &'a StopHandle,
    pub(crate) closure: u64,
    pub(crate) mask: i32,
}

impl Ctx<'_> {
    /// The fd this callback is for; -1 for timers and after [`Ctx::close`].
    pub fn fd(&self) -> RawFd {
        self.source.as_ref().map_or(-1, Source::fd)
    }

    /// The mask the callback was called with.
    pub fn mask(&self) -> i32 {
        self.mask
    }

    /// Accepts one connection on a [`Source::TcpListener`] (one `accept4`),
    /// bracketed by `eventer-accept-entry/return`; `rv` is the new fd.
    pub fn accept(&mut self) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        let args = Accept {
            fd: self.fd(),
            addr: 0,
            addrlen: 0,
            mask: self.mask,
            closure: self.closure,
        };
        match self.source.as_mut() {
            Some(Source::TcpListener(l)) => {
                fire::accept(args, || l.accept(), |(s, _)| s.as_raw_fd())
            }
            _ => Err(not_for("accept", "this source")),
        }
    }

    /// Reads once (one `recvfrom`/`read`), bracketed by
    /// `eventer-read-entry/return`; `rv` is the byte count or `-errno`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (ptr, len) = fire::buf_args(buf);
        let io = Io {
            fd: self.fd(),
            buf: ptr,
            len,
            mask: self.mask,
            closure: self.closure,
        };
        match self.source.as_mut() {
            Some(s) => fire::read(io, || s.read(buf)),
            None => Err(not_for("read", "a closed or timer event")),
        }
    }

    /// Writes once (one `sendto`/`write`), bracketed by
    /// `eventer-write-entry/return`; `rv` is the byte count or `-errno`.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (ptr, len) = fire::buf_args(buf);
        let io = Io {
            fd: self.fd(),
            buf: ptr,
            len,
            mask: self.mask,
            closure: self.closure,
        };
        match self.source.as_mut() {
            Some(s) => fire::write(io, || s.write(buf)),
            None => Err(not_for("write", "a closed or timer event")),
        }
    }

    /// Deregisters and closes the source (one `close`), bracketed by
    /// `eventer-close-entry/return`. The callback should then return 0.
    pub fn close(&mut self) -> io::Result<()> {
        match self.source.take() {
            Some(source) => close_source(self.registry, source, self.mask, self.closure),
            None => Err(not_for("close", "a closed or timer event")),
        }
    }

    /// Registers a new source once this callback returns.
    pub fn register<F>(
        &mut self,
        source: Source,
        name: impl Into<Cow<'static, str>>,
        mask: i32,
        callback: F,
    ) where
        F: FnMut(&mut Ctx<'_>, i32) -> i32 + 'static,
    {
        self.pending.push(Pending::Register {
            source,
            name: name.into(),
            mask,
            callback: Box::new(callback),
        });
    }

    /// Adds a timer once this callback returns; see [`super::Eventer::add_timer`].
    pub fn add_timer<F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        after: Duration,
        repeat: Option<Duration>,
        callback: F,
    ) where
        F: FnMut(&mut Ctx<'_>, i32) -> i32 + 'static,
    {
        self.pending.push(Pending::Timer {
            name: name.into(),
            after,
            repeat,
            callback: Box::new(callback),
        });
    }

    /// Stops the loop after this round of callbacks.
    pub fn stop(&self) {
        self.stop.stop();
    }
}

/// The one way a source is closed, by a callback or by the loop when a
/// callback returns 0, so both fire the same probes.
pub(crate) fn close_source(
    registry: &mio::Registry,
    mut source: Source,
    mask: i32,
    closure: u64,
) -> io::Result<()> {
    // close(2) would drop the fd from epoll anyway; mio asks for the
    // deregister, and it keeps epoll_ctl(DEL) visible to portsnoop.
    let _ = registry.deregister(source.as_mio());
    let fd = source.into_raw_fd();
    fire::close(Close { fd, mask, closure })
}
