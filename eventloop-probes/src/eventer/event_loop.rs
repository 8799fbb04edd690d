//! The loop: wait, dispatch each ready callback between its probes, apply
//! what the callbacks asked for, repeat.

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use usdt_provider::Callback as CallbackArgs;

use super::context::{Ctx, LoopRef, Pending};
use super::handler::{Handler, Sourced, Timed};
use super::source::Source;
use super::timer::Timers;
use super::Mask;
use crate::fire;

const WAKER: Token = Token(usize::MAX);

/// Stops a running [`Eventer`] from any thread (e.g. a signal handler's
/// thread).
#[derive(Clone, Debug)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to return from [`Eventer::run`] after the current round.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        // A failed wake only delays the stop to the next event or timer.
        let _ = self.waker.wake();
    }

    fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

struct Registration {
    /// Stable for the registration's life: the probes' `closure`.
    id: u64,
    name: Cow<'static, str>,
    mask: Mask,
    handler: Box<dyn Handler>,
    /// Timers have no fd; they come due in `Timers`.
    is_timer: bool,
    /// For timers: the re-arm period, if recurrent.
    repeat: Option<Duration>,
}

/// A libmtev-style event loop on one thread. See the [module docs](super).
pub struct Eventer {
    poll: Poll,
    /// Filled by each wait and read in place: no allocation per round.
    events: Events,
    core: Core,
}

/// Everything a dispatch changes, apart from `poll` and `events`, so a
/// round can walk the events while callbacks change the tables.
struct Core {
    slots: Vec<Option<Registration>>,
    free: Vec<usize>,
    timers: Timers,
    /// What callbacks asked for this round; applied after it, and its
    /// capacity kept for the next.
    pending: Vec<Pending>,
    stop: StopHandle,
    next_id: u64,
}

impl Eventer {
    /// A new loop with its own epoll instance.
    pub fn new() -> io::Result<Eventer> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Eventer {
            poll,
            events: Events::with_capacity(1024),
            core: Core {
                slots: Vec::new(),
                free: Vec::new(),
                timers: Timers::default(),
                pending: Vec::new(),
                stop: StopHandle {
                    flag: Arc::new(AtomicBool::new(false)),
                    waker,
                },
                next_id: 1,
            },
        })
    }

    /// A handle that stops [`Eventer::run`] from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.core.stop.clone()
    }

    /// Watches `source` for `mask` (READ and/or WRITE; EXCEPTION always
    /// comes) and calls `callback` with the ready mask; its return is the
    /// new mask ([`Mask::NONE`]: the eventer closes the source). `name` is
    /// what the callback probes carry.
    pub fn register<S, F>(
        &mut self,
        source: S,
        name: impl Into<Cow<'static, str>>,
        mask: Mask,
        callback: F,
    ) -> io::Result<()>
    where
        S: Source,
        F: FnMut(&mut Ctx<'_, S>, Mask) -> Mask + 'static,
    {
        let handler = Box::new(Sourced {
            source: Some(source),
            callback,
        });
        self.core
            .insert_source(self.poll.registry(), handler, name.into(), mask)
    }

    /// Calls `callback` with [`Mask::TIMER`] (fd -1) after `after`, then
    /// every `repeat` for as long as it returns non-empty.
    pub fn add_timer<F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        after: Duration,
        repeat: Option<Duration>,
        callback: F,
    ) where
        F: FnMut(&mut Ctx<'_>, Mask) -> Mask + 'static,
    {
        self.core
            .insert_timer(Box::new(Timed { callback }), name.into(), after, repeat);
    }

    /// How many sources and timers are registered.
    pub fn len(&self) -> usize {
        self.core.slots.len() - self.core.free.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs until stopped. Errors only if waiting itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.core.stop.is_stopped() {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Waits once (at most `max_wait`, or until the next timer) and runs
    /// every ready callback and due timer. Allocates nothing itself: the
    /// events buffer and the tables are reused round after round.
    pub fn run_once(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let until_timer = self
            .core
            .timers
            .next_deadline()
            .map(|at| at.saturating_duration_since(now));
        let timeout = match (until_timer, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let registry = self.poll.registry();
        // Callbacks cannot add or free slots while the round runs (their
        // changes wait in `pending`), so every token still names its slot.
        for e in self.events.iter() {
            if e.token() != WAKER {
                self.core.dispatch(registry, e.token().0, Mask::of_event(e));
            }
        }
        let now = Instant::now();
        while let Some(id) = self.core.timers.pop_due(now) {
            if let Some(slot) = self.core.slot_of_timer(id) {
                self.core.dispatch(registry, slot, Mask::TIMER);
            }
        }
        self.core.apply_pending(registry);
        Ok(())
    }
}

impl Core {
    fn slot_of_timer(&self, id: u64) -> Option<usize> {
        // Timers are few; a scan beats keeping a second index in sync.
        self.slots
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.id == id && r.is_timer))
    }

    fn dispatch(&mut self, registry: &mio::Registry, slot: usize, ready: Mask) {
        let Some(reg) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return; // closed earlier in this round
        };
        let ready = if reg.is_timer {
            ready & Mask::TIMER
        } else {
            ready & (reg.mask | Mask::EXCEPTION)
        };
        if ready.is_empty() {
            return;
        }
        let Registration {
            id,
            name,
            mask,
            handler,
            ..
        } = reg;
        let (id, old_mask) = (*id, *mask);
        let fd = handler.fd();
        let name: &str = name;
        let lp = LoopRef {
            registry,
            pending: &mut self.pending,
            stop: &self.stop,
        };
        let args = || CallbackArgs {
            closure: id,
            event: slot as u64,
            name,
            fd,
            mask: ready.bits(),
            newmask: old_mask.bits(),
        };
        let new_mask = fire::callback(args, || handler.call(lp, id, ready).bits());
        self.after_callback(registry, slot, Mask::from_bits(new_mask));
    }

    fn after_callback(&mut self, registry: &mio::Registry, slot: usize, new_mask: Mask) {
        let Some(reg) = self.slots[slot].as_mut() else {
            return;
        };
        if reg.is_timer {
            match reg.repeat {
                Some(every) if !new_mask.is_empty() => {
                    self.timers.schedule(Instant::now() + every, reg.id)
                }
                _ => self.remove(slot),
            }
            return;
        }
        if new_mask.is_empty() || reg.handler.fd() < 0 {
            if let Some(Err(e)) = reg.handler.close(registry, reg.mask, reg.id) {
                fire::log("eventer", file!(), line!(), || {
                    format!("close of {} failed: {e}", reg.name)
                });
            }
            self.remove(slot);
            return;
        }
        if new_mask != reg.mask {
            reg.mask = new_mask;
            let source = reg.handler.mio_source().expect("open: checked above");
            if let Err(e) = registry.reregister(source, Token(slot), interest(new_mask)) {
                fire::log("eventer", file!(), line!(), || {
                    format!("reregister of {} failed: {e}", reg.name)
                });
            }
        }
    }

    fn apply_pending(&mut self, registry: &mio::Registry) {
        if self.pending.is_empty() {
            return;
        }
        // Drained from a vector taken out and put back, so its capacity
        // serves the next round.
        let mut pending = std::mem::take(&mut self.pending);
        for p in pending.drain(..) {
            match p {
                Pending::Register {
                    handler,
                    name,
                    mask,
                } => {
                    if let Err(e) = self.insert_source(registry, handler, name, mask) {
                        fire::log("eventer", file!(), line!(), || {
                            format!("register failed: {e}")
                        });
                    }
                }
                Pending::Timer {
                    handler,
                    name,
                    after,
                    repeat,
                } => self.insert_timer(handler, name, after, repeat),
            }
        }
        self.pending = pending;
    }

    fn insert_source(
        &mut self,
        registry: &mio::Registry,
        mut handler: Box<dyn Handler>,
        name: Cow<'static, str>,
        mask: Mask,
    ) -> io::Result<()> {
        let slot = self.free_slot();
        let source = handler.mio_source().expect("a new source is open");
        if let Err(e) = registry.register(source, Token(slot), interest(mask)) {
            self.free.push(slot);
            return Err(e);
        }
        let id = self.new_id();
        self.slots[slot] = Some(Registration {
            id,
            name,
            mask,
            handler,
            is_timer: false,
            repeat: None,
        });
        Ok(())
    }

    fn insert_timer(
        &mut self,
        handler: Box<dyn Handler>,
        name: Cow<'static, str>,
        after: Duration,
        repeat: Option<Duration>,
    ) {
        let slot = self.free_slot();
        let id = self.new_id();
        self.slots[slot] = Some(Registration {
            id,
            name,
            mask: Mask::TIMER,
            handler,
            is_timer: true,
            repeat,
        });
        self.timers.schedule(Instant::now() + after, id);
    }

    fn free_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn remove(&mut self, slot: usize) {
        if self.slots[slot].take().is_some() {
            self.free.push(slot);
        }
    }
}

impl Drop for Eventer {
    fn drop(&mut self) {
        // Close what is still open through the probes, so a trace shows
        // every fd's end.
        let registry = self.poll.registry();
        for reg in self.core.slots.iter_mut().flatten() {
            let _ = reg.handler.close(registry, reg.mask, reg.id);
        }
    }
}

/// mio cannot wait for nothing: a mask without READ or WRITE (EXCEPTION
/// alone) waits for READABLE, and `dispatch` hands the callback only the
/// bits it asked for (and EXCEPTION).
fn interest(mask: Mask) -> Interest {
    mask.interest().unwrap_or(Interest::READABLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::rc::Rc;

    #[test]
    fn recurrent_timer_runs_until_it_returns_zero() {
        let mut ev = Eventer::new().unwrap();
        let runs = Rc::new(RefCell::new(0));
        let r = Rc::clone(&runs);
        ev.add_timer(
            "tick",
            Duration::from_millis(1),
            Some(Duration::from_millis(1)),
            move |ctx, mask| {
                assert_eq!(mask, Mask::TIMER);
                assert_eq!(ctx.fd(), -1);
                *r.borrow_mut() += 1;
                if *r.borrow() == 3 {
                    Mask::NONE
                } else {
                    Mask::TIMER
                }
            },
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ev.is_empty() && Instant::now() < deadline {
            ev.run_once(Some(Duration::from_millis(50))).unwrap();
        }
        assert_eq!(*runs.borrow(), 3);
        assert!(ev.is_empty());
    }

    #[test]
    fn echo_over_loopback_and_mask_zero_closes() {
        let mut ev = Eventer::new().unwrap();
        let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let saw_eagain = Rc::new(RefCell::new(false));
        let eagain = Rc::clone(&saw_eagain);
        ev.register(listener, "accept", Mask::READ, move |ctx, _| loop {
            match ctx.accept() {
                Ok((conn, _)) => {
                    let eagain = Rc::clone(&eagain);
                    ctx.register(conn, "echo", Mask::READ, move |ctx, _| {
                        let mut buf = [0u8; 64];
                        loop {
                            match ctx.read(&mut buf) {
                                Ok(0) => return Mask::NONE,
                                Ok(n) => {
                                    ctx.write(&buf[..n]).unwrap();
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    *eagain.borrow_mut() = true;
                                    return Mask::READ;
                                }
                                Err(_) => return Mask::NONE,
                            }
                        }
                    });
                }
                Err(_) => return Mask::READ,
            }
        })
        .unwrap();
        // The client stays connected until told, so the server's read after
        // the echo finds nothing (EAGAIN) rather than the hang-up.
        let (hang_up, may_hang_up) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            s.read_exact(&mut back).unwrap();
            let _ = may_hang_up.recv_timeout(Duration::from_secs(10));
            back
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*saw_eagain.borrow() && Instant::now() < deadline {
            ev.run_once(Some(Duration::from_millis(20))).unwrap();
        }
        hang_up.send(()).unwrap();
        assert_eq!(&client.join().unwrap(), b"hello");
        assert!(
            *saw_eagain.borrow(),
            "an edge-triggered read loop ends on WouldBlock"
        );
        // The client hung up: the echo callback reads 0 and returns 0, so the
        // eventer closes it and only the listener is left.
        while ev.len() > 1 && Instant::now() < deadline {
            ev.run_once(Some(Duration::from_millis(20))).unwrap();
        }
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn unix_listener_and_pipe_are_sources_too() {
        let mut ev = Eventer::new().unwrap();
        let dir = std::env::temp_dir().join(format!("evloop-uds-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = mio::net::UnixListener::bind(&dir).unwrap();
        let (sender, receiver) = mio::unix::pipe::new().unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = Rc::clone(&got);
        // Accepts one Unix connection, then writes its bytes into the pipe
        // (a Sender is a write-only source).
        let mut sender = Some(sender);
        ev.register(listener, "uds-accept", Mask::READ, move |ctx, _| {
            while let Ok((conn, _peer)) = ctx.accept() {
                let mut pipe_out = sender.take().expect("one connection");
                ctx.register(conn, "uds-read", Mask::READ, move |ctx, _| {
                    let mut buf = [0u8; 16];
                    loop {
                        match ctx.read(&mut buf) {
                            Ok(0) => return Mask::NONE,
                            Ok(n) => {
                                std::io::Write::write_all(&mut pipe_out, &buf[..n]).unwrap();
                            }
                            Err(_) => return Mask::READ,
                        }
                    }
                });
            }
            Mask::READ
        })
        .unwrap();
        ev.register(receiver, "pipe-read", Mask::READ, move |ctx, _| {
            let mut buf = [0u8; 16];
            while let Ok(n @ 1..) = ctx.read(&mut buf) {
                g.borrow_mut().extend_from_slice(&buf[..n]);
            }
            // A pipe's read end cannot be written: no syscall, Unsupported.
            assert_eq!(
                ctx.write(b"x").unwrap_err().kind(),
                io::ErrorKind::Unsupported
            );
            Mask::READ
        })
        .unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&dir).unwrap();
        client.write_all(b"via uds").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.borrow().len() < 7 && Instant::now() < deadline {
            ev.run_once(Some(Duration::from_millis(20))).unwrap();
        }
        let _ = std::fs::remove_file(&dir);
        assert_eq!(&got.borrow()[..], b"via uds");
    }

    #[test]
    fn would_block_maps_to_minus_eagain() {
        let res: io::Result<usize> = Err(io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(fire::rv_of(&res, |n| *n as i64), -(libc::EAGAIN as i64));
        let res: io::Result<usize> = Err(io::ErrorKind::WouldBlock.into());
        assert_eq!(fire::rv_of(&res, |n| *n as i64), -(libc::EAGAIN as i64));
        let res: io::Result<usize> = Ok(7);
        assert_eq!(fire::rv_of(&res, |n| *n as i64), 7);
    }
}
