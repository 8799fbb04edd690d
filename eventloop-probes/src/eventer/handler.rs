//! A registration's source and callback behind one object-safe trait, so
//! the loop can hold sources of any type in one table while each callback
//! still gets a context typed by its own source.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::context::{close_source, Ctx, LoopRef};
use super::source::Source;
use super::Mask;

pub(crate) trait Handler {
    /// Runs the callback with the ready mask; returns its new mask.
    fn call(&mut self, lp: LoopRef<'_>, closure: u64, ready: Mask) -> Mask;
    /// The source's fd; -1 for a timer or once closed.
    fn fd(&self) -> RawFd;
    /// The source to (re)register with epoll; `None` for a timer or once closed.
    fn mio_source(&mut self) -> Option<&mut dyn mio::event::Source>;
    /// Deregisters and closes the source through the probes; `None` if
    /// there is none (a timer, or the callback closed it).
    fn close(
        &mut self,
        registry: &mio::Registry,
        mask: Mask,
        closure: u64,
    ) -> Option<io::Result<()>>;
}

pub(crate) struct Sourced<S, F> {
    /// Some until closed.
    pub(crate) source: Option<S>,
    pub(crate) callback: F,
}

impl<S, F> Handler for Sourced<S, F>
where
    S: Source,
    F: FnMut(&mut Ctx<'_, S>, Mask) -> Mask + 'static,
{
    fn call(&mut self, lp: LoopRef<'_>, closure: u64, ready: Mask) -> Mask {
        let fd = self.fd();
        let mut ctx = Ctx {
            source: &mut self.source,
            lp,
            closure,
            fd,
            mask: ready,
        };
        (self.callback)(&mut ctx, ready)
    }

    fn fd(&self) -> RawFd {
        self.source.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn mio_source(&mut self) -> Option<&mut dyn mio::event::Source> {
        self.source
            .as_mut()
            .map(|s| s as &mut dyn mio::event::Source)
    }

    fn close(
        &mut self,
        registry: &mio::Registry,
        mask: Mask,
        closure: u64,
    ) -> Option<io::Result<()>> {
        let source = self.source.take()?;
        Some(close_source(registry, source, mask, closure))
    }
}

pub(crate) struct Timed<F> {
    pub(crate) callback: F,
}

impl<F> Handler for Timed<F>
where
    F: FnMut(&mut Ctx<'_>, Mask) -> Mask + 'static,
{
    fn call(&mut self, lp: LoopRef<'_>, closure: u64, ready: Mask) -> Mask {
        let mut no_source = None;
        let mut ctx = Ctx {
            source: &mut no_source,
            lp,
            closure,
            fd: -1,
            mask: ready,
        };
        (self.callback)(&mut ctx, ready)
    }

    fn fd(&self) -> RawFd {
        -1
    }

    fn mio_source(&mut self) -> Option<&mut dyn mio::event::Source> {
        None
    }

    fn close(&mut self, _: &mio::Registry, _: Mask, _: u64) -> Option<io::Result<()>> {
        None
    }
}
