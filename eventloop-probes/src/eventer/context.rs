//! What a callback gets: its source's I/O, each call bracketed by probes,
//! and ways to change the loop (register, add timers, stop).

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use usdt_provider::{Accept, Close, Io};

use super::event_loop::StopHandle;
use super::handler::{Handler, Sourced, Timed};
use super::source::{unsupported, Listener, Source};
use super::Mask;
use crate::fire;

/// A change a callback asked for, applied once it returns (the loop's
/// tables are borrowed while it runs).
pub(crate) enum Pending {
    Register {
        handler: Box<dyn Handler>,
        name: Cow<'static, str>,
        mask: Mask,
    },
    Timer {
        handler: Box<dyn Handler>,
        name: Cow<'static, str>,
        after: Duration,
        repeat: Option<Duration>,
    },
}

/// The parts of the loop a callback may touch.
pub(crate) struct LoopRef<'a> {
    pub(crate) registry: &'a mio::Registry,
    pub(crate) pending: &'a mut Vec<Pending>,
    pub(crate) stop: &'a StopHandle,
}

/// The context a callback runs in: its own source of type `S` (`()` for a
/// timer), and the loop.
pub struct Ctx<'a, S = ()> {
    pub(crate) source: &'a mut Option<S>,
    pub(crate) lp: LoopRef<'a>,
    pub(crate) closure: u64,
    pub(crate) fd: RawFd,
    pub(crate) mask: Mask,
}

impl<S> Ctx<'_, S> {
    /// The fd this callback is for; -1 for timers and after [`Ctx::close`].
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The mask the callback was called with.
    pub fn mask(&self) -> Mask {
        self.mask
    }

    /// The source itself (e.g. for `peer_addr`); `None` for timers and
    /// after [`Ctx::close`]. I/O done on it directly is not traced.
    pub fn source(&mut self) -> Option<&mut S> {
        self.source.as_mut()
    }

    /// Registers `source` once this callback returns; see
    /// [`Eventer::register`](super::Eventer::register).
    pub fn register<T, F>(
        &mut self,
        source: T,
        name: impl Into<Cow<'static, str>>,
        mask: Mask,
        callback: F,
    ) where
        T: Source,
        F: FnMut(&mut Ctx<'_, T>, Mask) -> Mask + 'static,
    {
        self.lp.pending.push(Pending::Register {
            handler: Box::new(Sourced {
                source: Some(source),
                callback,
            }),
            name: name.into(),
            mask,
        });
    }

    /// Adds a timer once this callback returns; see
    /// [`Eventer::add_timer`](super::Eventer::add_timer).
    pub fn add_timer<F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        after: Duration,
        repeat: Option<Duration>,
        callback: F,
    ) where
        F: FnMut(&mut Ctx<'_>, Mask) -> Mask + 'static,
    {
        self.lp.pending.push(Pending::Timer {
            handler: Box::new(Timed { callback }),
            name: name.into(),
            after,
            repeat,
        });
    }

    /// Stops the loop after this round of callbacks.
    pub fn stop(&self) {
        self.lp.stop.stop();
    }

    fn io(&self, buf: &[u8]) -> Io {
        let (ptr, len) = fire::buf_args(buf);
        Io {
            fd: self.fd,
            buf: ptr,
            len,
            mask: self.mask.bits(),
            closure: self.closure,
        }
    }
}

impl<S: Source> Ctx<'_, S> {
    /// Reads once ([`Source::read`]: one syscall), bracketed by
    /// `eventer-read-entry/return`; `rv` is the byte count or `-errno`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let io = self.io(buf);
        match self.source.as_mut() {
            Some(s) => fire::read(io, || s.read(buf)),
            None => Err(unsupported("read after close")),
        }
    }

    /// Writes once ([`Source::write`]: one syscall), bracketed by
    /// `eventer-write-entry/return`; `rv` is the byte count or `-errno`.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let io = self.io(buf);
        match self.source.as_mut() {
            Some(s) => fire::write(io, || s.write(buf)),
            None => Err(unsupported("write after close")),
        }
    }

    /// Deregisters and closes the source (one `close`), bracketed by
    /// `eventer-close-entry/return`. The callback should then return
    /// [`Mask::NONE`].
    pub fn close(&mut self) -> io::Result<()> {
        match self.source.take() {
            Some(source) => {
                self.fd = -1;
                close_source(self.lp.registry, source, self.mask, self.closure)
            }
            None => Err(unsupported("close after close")),
        }
    }
}

impl<L: Listener> Ctx<'_, L> {
    /// Accepts one connection ([`Listener::accept`]: one `accept4`),
    /// bracketed by `eventer-accept-entry/return`; `rv` is the new fd.
    pub fn accept(&mut self) -> io::Result<(L::Conn, L::Addr)> {
        let args = Accept {
            fd: self.fd,
            addr: 0,
            addrlen: 0,
            mask: self.mask.bits(),
            closure: self.closure,
        };
        match self.source.as_mut() {
            Some(l) => fire::accept(args, || l.accept(), |(c, _)| c.as_raw_fd()),
            None => Err(unsupported("accept after close")),
        }
    }
}

/// The one way a source is closed, by a callback or by the loop when a
/// callback returns NONE, so both fire the same probes.
pub(crate) fn close_source<S: Source>(
    registry: &mio::Registry,
    mut source: S,
    mask: Mask,
    closure: u64,
) -> io::Result<()> {
    // close(2) would drop the fd from epoll anyway; mio asks for the
    // deregister, and it keeps epoll_ctl(DEL) visible to portsnoop.
    let _ = registry.deregister(&mut source);
    let fd: OwnedFd = source.into();
    fire::close(Close {
        fd: fd.into_raw_fd(),
        mask: mask.bits(),
        closure,
    })
}
