//! The loop: wait, dispatch each ready callback between its probes, apply
//! what the callbacks asked for, repeat.

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use usdt_provider::Callback as CallbackArgs;

use super::context::{close_source, Ctx, Pending};
use super::source::Source;
use super::timer::Timers;
use super::{Callback, EXCEPTION, READ, TIMER, WRITE};
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
    mask: i32,
    source: Option<Source>,
    /// Taken out while the callback runs.
    callback: Option<Callback>,
    /// For timers: the re-arm period, if recurrent.
    repeat: Option<Duration>,
}

/// A libmtev-style event loop on one thread. See the [module docs](super).
pub struct Eventer {
    poll: Poll,
    events: Events,
    slots: Vec<Option<Registration>>,
    free: Vec<usize>,
    timers: Timers,
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
            slots: Vec::new(),
            free: Vec::new(),
            timers: Timers::default(),
            pending: Vec::new(),
            stop: StopHandle {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            next_id: 1,
        })
    }

    /// A handle that stops [`Eventer::run`] from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Watches `source` for `mask` (READ/WRITE/EXCEPTION) and calls
    /// `callback` with the ready mask; its return is the new mask (0: close).
    pub fn register<F>(
        &mut self,
        source: Source,
        name: impl Into<Cow<'static, str>>,
        mask: i32,
        callback: F,
    ) -> io::Result<()>
    where
        F: FnMut(&mut Ctx<'_>, i32) -> i32 + 'static,
    {
        self.insert_source(source, name.into(), mask, Box::new(callback))
    }

    /// Calls `callback` with mask TIMER (fd -1) after `after`, then every
    /// `repeat` for as long as it returns non-zero.
    pub fn add_timer<F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        after: Duration,
        repeat: Option<Duration>,
        callback: F,
    ) where
        F: FnMut(&mut Ctx<'_>, i32) -> i32 + 'static,
    {
        self.insert_timer(name.into(), after, repeat, Box::new(callback));
    }

    /// How many sources and timers are registered.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs until stopped. Errors only if waiting itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stop.is_stopped() {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Waits once (at most `max_wait`, or until the next timer) and runs
    /// every ready callback and due timer.
    pub fn run_once(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let until_timer = self
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
        let ready: Vec<(usize, i32)> = self
            .events
            .iter()
            .filter(|e| e.token() != WAKER)
            .map(|e| (e.token().0, ready_mask(e)))
            .collect();
        for (slot, mask) in ready {
            self.dispatch(slot, mask);
        }
        let now = Instant::now();
        while let Some(id) = self.timers.pop_due(now) {
            if let Some(slot) = self.slot_of_timer(id) {
                self.dispatch(slot, TIMER);
            }
        }
        self.apply_pending();
        Ok(())
    }

    fn slot_of_timer(&self, id: u64) -> Option<usize> {
        // Timers are few; a scan beats keeping a second index in sync.
        self.slots
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.id == id && r.source.is_none()))
    }

    fn dispatch(&mut self, slot: usize, ready: i32) {
        let Some(reg) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return; // closed earlier in this round
        };
        let Some(mut callback) = reg.callback.take() else {
            return;
        };
        let ready = if ready == TIMER {
            TIMER
        } else {
            ready & (reg.mask | EXCEPTION)
        };
        if ready == 0 {
            reg.callback = Some(callback);
            return;
        }
        let Registration {
            id,
            name,
            mask,
            source,
            ..
        } = reg;
        let (id, old_mask) = (*id, *mask);
        let fd = source.as_ref().map_or(-1, Source::fd);
        let name: &str = name;
        let mut ctx = Ctx {
            source,
            registry: self.poll.registry(),
            pending: &mut self.pending,
            stop: &self.stop,
            closure: id,
            mask: ready,
        };
        let args = || CallbackArgs {
            closure: id,
            event: slot as u64,
            name,
            fd,
            mask: ready,
            newmask: old_mask,
        };
        let new_mask = fire::callback(args, || callback(&mut ctx, ready));
        reg.callback = Some(callback);
        self.after_callback(slot, new_mask);
    }

    fn after_callback(&mut self, slot: usize, new_mask: i32) {
        let Some(reg) = self.slots[slot].as_mut() else {
            return;
        };
        let is_timer = reg.source.is_none() && reg.mask == TIMER;
        if is_timer {
            match (reg.repeat, new_mask) {
                (Some(every), m) if m != 0 => self.timers.schedule(Instant::now() + every, reg.id),
                _ => self.remove(slot),
            }
            return;
        }
        if new_mask == 0 || reg.source.is_none() {
            if let Some(source) = reg.source.take() {
                let (mask, id) = (reg.mask, reg.id);
                if let Err(e) = close_source(self.poll.registry(), source, mask, id) {
                    fire::log("eventer", file!(), line!(), || {
                        format!("close of {} failed: {e}", reg.name)
                    });
                }
            }
            self.remove(slot);
            return;
        }
        if new_mask != reg.mask {
            reg.mask = new_mask;
            let source = reg.source.as_mut().expect("checked above");
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(source.as_mio(), Token(slot), interest(new_mask))
            {
                fire::log("eventer", file!(), line!(), || {
                    format!("reregister of {} failed: {e}", reg.name)
                });
            }
        }
    }

    fn apply_pending(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Register {
                    source,
                    name,
                    mask,
                    callback,
                } => {
                    if let Err(e) = self.insert_source(source, name, mask, callback) {
                        fire::log("eventer", file!(), line!(), || {
                            format!("register failed: {e}")
                        });
                    }
                }
                Pending::Timer {
                    name,
                    after,
                    repeat,
                    callback,
                } => self.insert_timer(name, after, repeat, callback),
            }
        }
    }

    fn insert_source(
        &mut self,
        mut source: Source,
        name: Cow<'static, str>,
        mask: i32,
        callback: Callback,
    ) -> io::Result<()> {
        let slot = self.free_slot();
        self.poll
            .registry()
            .register(source.as_mio(), Token(slot), interest(mask))?;
        let id = self.new_id();
        self.slots[slot] = Some(Registration {
            id,
            name,
            mask,
            source: Some(source),
            callback: Some(callback),
            repeat: None,
        });
        Ok(())
    }

    fn insert_timer(
        &mut self,
        name: Cow<'static, str>,
        after: Duration,
        repeat: Option<Duration>,
        callback: Callback,
    ) {
        let slot = self.free_slot();
        let id = self.new_id();
        self.slots[slot] = Some(Registration {
            id,
            name,
            mask: TIMER,
            source: None,
            callback: Some(callback),
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
        for slot in 0..self.slots.len() {
            if let Some(Registration {
                source: Some(source),
                mask,
                id,
                ..
            }) = self.slots[slot].take()
            {
                let _ = close_source(self.poll.registry(), source, mask, id);
            }
        }
    }
}

fn interest(mask: i32) -> Interest {
    match (mask & READ != 0, mask & WRITE != 0) {
        (_, false) => Interest::READABLE,
        (false, true) => Interest::WRITABLE,
        (true, true) => Interest::READABLE | Interest::WRITABLE,
    }
}

fn ready_mask(e: &mio::event::Event) -> i32 {
    let mut m = 0;
    if e.is_readable() || e.is_read_closed() {
        m |= READ;
    }
    if e.is_writable() || e.is_write_closed() {
        m |= WRITE;
    }
    if e.is_error() {
        m |= EXCEPTION;
    }
    m
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
                assert_eq!(mask, TIMER);
                assert_eq!(ctx.fd(), -1);
                *r.borrow_mut() += 1;
                if *r.borrow() == 3 {
                    0
                } else {
                    TIMER
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
        ev.register(
            Source::TcpListener(listener),
            "accept",
            READ,
            move |ctx, _| loop {
                match ctx.accept() {
                    Ok((conn, _)) => {
                        let eagain = Rc::clone(&eagain);
                        ctx.register(Source::TcpStream(conn), "echo", READ, move |ctx, _| {
                            let mut buf = [0u8; 64];
                            loop {
                                match ctx.read(&mut buf) {
                                    Ok(0) => return 0,
                                    Ok(n) => {
                                        ctx.write(&buf[..n]).unwrap();
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                        *eagain.borrow_mut() = true;
                                        return READ;
                                    }
                                    Err(_) => return 0,
                                }
                            }
                        });
                    }
                    Err(_) => return READ,
                }
            },
        )
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
    fn would_block_maps_to_minus_eagain() {
        let res: io::Result<usize> = Err(io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(fire::rv_of(&res, |n| *n as i64), -(libc::EAGAIN as i64));
        let res: io::Result<usize> = Err(io::ErrorKind::WouldBlock.into());
        assert_eq!(fire::rv_of(&res, |n| *n as i64), -(libc::EAGAIN as i64));
        let res: io::Result<usize> = Ok(7);
        assert_eq!(fire::rv_of(&res, |n| *n as i64), 7);
    }
}
