//! Pure correlation: events in, lined-up records out. No I/O, no clock.
//!
//! Per thread, an `eventer-X-entry` probe opens an operation on an fd; the
//! syscalls that thread makes on that fd until `eventer-X-return` belong to
//! it. The finished [`Op`] carries both sides and says where they disagree.
//! Callbacks frame the ops inside them. Epoll waits are resolved to fds via
//! the `epoll_ctl` calls seen before them.
//!
//! Disagreements are named in [`Op::mismatch`]: rv differs, no syscall, a
//! syscall of another kind, a return without entry, an entry without
//! return, an fd closed or handed out again by accept while an op on it
//! was open (a close ends an fd's life when it is entered; no op ever holds
//! two lives' syscalls). A syscall outside any op is shown as an op of its
//! own only on an fd the eventer uses, and only for kinds the eventer has
//! probes for: an app without probes, or a `shutdown`, is not a
//! disagreement.
//!
//! Fds are per process: with `-f` several processes are traced, forked from
//! one image and so handing out the same numbers. Everything keyed by fd
//! (the eventer's fds, fd lives, closes and accepts, epoll maps, orphans)
//! is keyed by (pid, fd), and every op carries its `pid`. Thread ids are
//! unique across processes, so per-thread state stays keyed by tid. A
//! process's exit or exec ends only its own ops.
//!
//! A mismatch is only ever what the app and the kernel really disagreed
//! on. What the trace cannot see whole is [`Op::incomplete`] instead, with
//! the reason, and never a mismatch:
//! - **Began before the trace.** A thread that existed when tracing
//!   started ([`Correlator::threads_before_trace`]) may have been inside an
//!   op or callbacks whose entries fired before anything was recorded. Until
//!   it fires an entry probe, its returns without entry and its syscalls
//!   outside ops are incomplete; a callback return without entry on it
//!   always is, since callbacks nest and the depth it was at is unknown.
//! - **Events lost.** A loss ends every open op as incomplete, and puts every
//!   thread (seen or not yet seen) into the same unknown state as above; a
//!   disagreement seen just before a loss (another CPU's records can arrive
//!   ahead of the loss report) is folded into the incomplete reason.
//! - **The end**: the trace ended, or the process exited or exec'd, with ops
//!   still open. A disagreement an op already had is kept.
//!
//! An fd's life ends when a thread *enters* `close(2)` ([`Event::CloseEnter`]),
//! where the kernel frees the number. A close whose entry is missing (it
//! began before the trace, or in a loss) ends nothing when its record
//! comes: the number was freed before any op open now began, and may be
//! another's already.
//!
//! ```
//! use portsnoop::correlate::{Correlator, Filter, Record};
//! use portsnoop::event::{Event, Probe, ProbeName, Syscall, SyscallName};
//!
//! let probe = |ts, name, args| Event::Probe(Probe { ts_ns: ts, pid: 1, tid: 1, name, args, strings: vec![] });
//! let mut c = Correlator::new(Filter::default());
//! let mut out = Vec::new();
//! c.push(probe(10, ProbeName::ReadEntry, [9, 0, 64, 1, 7, 0]), &mut out);
//! c.push(Event::Syscall(Syscall { ts_ns: 11, pid: 1, tid: 1, name: SyscallName::Recvfrom, fd: 9, rv: 5, dur_ns: 2, arg: 64 }), &mut out);
//! c.push(probe(14, ProbeName::ReadReturn, [9, 0, 64, 1, 7, 5]), &mut out);
//! let op = out.iter().find_map(|r| match r { Record::Op(op) => Some(op), _ => None }).unwrap();
//! assert_eq!((op.user_rv, op.syscalls.len(), op.mismatch.clone()), (Some(5), 1, None));
//! assert_eq!((op.kernel_ns, op.user_ns), (2, 2));
//! ```

mod conn;
mod epoll;
mod stall;
mod summary;

// Keys are the target's tids and fds: small integers, never chosen by an
// attacker, so a hash with no DoS resistance and a fraction of SipHash's cost.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

pub use conn::{name_of, ConnBytes, ConnSummary};
pub use epoll::{parse_fdinfo, registrations_of, EpollMap};
pub use stall::{Stall, StallConfig, StallSyscall};
pub use summary::{Log2Hist, OpStats, StallStats, Summary};

use stall::{StallWatch, Verdict};

use crate::event::{EpollWait, Event, OpKind, Probe, ProbeName, ProcessEventKind, Syscall};

/// At most this many ops open at once on one thread; more means lost
/// returns, and the oldest is given up as incomplete.
const MAX_OPEN_OPS: usize = 64;
/// At most this many syscalls kept per op (a retry loop could be endless).
const MAX_SYSCALLS_PER_OP: usize = 64;
/// How many events a wait with an unresolved fd waits for its `epoll_ctl`.
/// Another thread's registration takes effect inside its `epoll_ctl`,
/// before the exit that submits its record, so a wait returning the new fd
/// can be submitted first.
const WAIT_RESOLVE_HORIZON: u64 = 256;

/// Which events to keep.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this fd.
    pub fd: Option<i32>,
    /// Only this thread.
    pub tid: Option<u32>,
}

/// What the correlator emits, in the order it emits them.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// An input event that passed the filter, passed through for row output
    /// (waits come as [`Record::Wait`] instead).
    Event(Event),
    /// An epoll wait with each returned event's fd resolved.
    Wait(Wait),
    /// A finished (or abandoned) eventer operation with its syscalls.
    /// Boxed: an op is the largest record, and records are moved several
    /// times on their way out.
    Op(Box<Op>),
    /// A callback that ran past the stall threshold (only with
    /// [`Correlator::with_stalls`]), after its callback op.
    Stall(Box<Stall>),
}

/// An epoll wait, as the seed showed `port_getn`: the count, then each
/// returned event with its fd.
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    /// The wait as the kernel side saw it.
    pub wait: EpollWait,
    /// The fd of each of `wait.events`, where the `epoll_ctl` was seen.
    pub fds: Vec<Option<i32>>,
}

/// One eventer operation lined up with the syscalls the kernel did for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// accept/read/write/close/callback.
    pub kind: OpKind,
    /// Process (tgid): `fd` is a number in this process's fd table.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// The fd.
    pub fd: i32,
    /// When the entry probe fired (for an orphan syscall: its start).
    pub entry_ts_ns: u64,
    /// When the return probe fired (None: never seen).
    pub return_ts_ns: Option<u64>,
    /// The rv the return probe reported.
    pub user_rv: Option<i64>,
    /// The syscalls on `fd` by this thread between entry and return.
    pub syscalls: Vec<Syscall>,
    /// Sum of the syscalls' durations.
    pub kernel_ns: u64,
    /// return - entry, minus kernel_ns.
    pub user_ns: u64,
    /// Why user and kernel disagree, if they do: only ever a real
    /// disagreement.
    pub mismatch: Option<String>,
    /// Why the trace cannot see this op whole, if it cannot (it began
    /// before the trace, events were lost, the trace or the process ended
    /// while it was open): what it has is right, but it may be missing
    /// parts.
    pub incomplete: Option<String>,
    /// The registration's id (the probes' `closure`).
    pub closure: Option<u64>,
    /// The enclosing callback's name (for a callback op, its own).
    pub callback: Option<Arc<str>>,
    /// Its thread has entered `close(2)` on its fd: the fd's life is over
    /// for everyone else, and this op waits only for that close.
    closing: bool,
    /// An accept op's new connection (the socket its rv holds), if seen.
    pub conn: Option<Arc<crate::sock::SocketInfo>>,
    /// An open callback's gathering for the stall check (stall tracking
    /// on, callbacks only; taken at the return). Inline: the op is boxed
    /// already, and a box per callback would be an allocation per callback.
    watch: Option<StallWatch>,
}

impl Op {
    /// An op with its identity and entry time and nothing else yet: its
    /// public fields are filled in one by one (`portsnoop replay` rebuilds
    /// recorded ops this way).
    pub fn new(kind: OpKind, pid: u32, tid: u32, fd: i32, entry_ts_ns: u64) -> Op {
        *Op::open(kind, pid, tid, fd, entry_ts_ns, None, None)
    }

    /// Forgets the correlator's working state (whether its thread is
    /// closing its fd), which no output shows: for comparing an op with
    /// one rebuilt from its output.
    #[cfg(test)]
    pub(crate) fn without_state(mut self) -> Op {
        self.closing = false;
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        kind: OpKind,
        pid: u32,
        tid: u32,
        fd: i32,
        ts: u64,
        closure: Option<u64>,
        callback: Option<Arc<str>>,
    ) -> Box<Op> {
        Box::new(Op {
            kind,
            pid,
            tid,
            fd,
            entry_ts_ns: ts,
            return_ts_ns: None,
            user_rv: None,
            syscalls: Vec::new(),
            kernel_ns: 0,
            user_ns: 0,
            mismatch: None,
            incomplete: None,
            closing: false,
            closure,
            callback,
            conn: None,
            watch: None,
        })
    }

    /// Finishes the op with its return probe and decides whether the two
    /// sides agree.
    fn close(&mut self, ts: u64, rv: Option<i64>) {
        self.return_ts_ns = Some(ts);
        self.user_rv = rv;
        self.kernel_ns = kernel_time(&self.syscalls);
        self.user_ns = ts
            .saturating_sub(self.entry_ts_ns)
            .saturating_sub(self.kernel_ns);
        if self.mismatch.is_some() || self.incomplete.is_some() || self.kind == OpKind::Callback {
            return;
        }
        self.mismatch = match (self.syscalls.last(), rv) {
            (None, _) => Some(format!("{} op with no syscall", self.kind.as_str())),
            (Some(s), Some(rv)) if s.rv != rv => Some(format!(
                "user rv {rv} != kernel rv {} ({})",
                s.rv,
                s.name.as_str()
            )),
            _ => None,
        };
    }

    /// Whether the fd was closed inside this op: its life is over, later
    /// syscalls on the number are someone else's.
    fn saw_fd_closed(&self) -> bool {
        self.syscalls
            .iter()
            .any(|s| s.name.op() == OpKind::Close && s.rv == 0)
    }

    /// Gives the op up as incomplete because of `gap`. A disagreement seen
    /// before a loss (another CPU's records can arrive ahead of the loss
    /// report) may be the loss's doing: it becomes part of the reason. One
    /// seen before the trace or the process ended was real, and stays.
    fn abandon(&mut self, gap: Gap) {
        self.kernel_ns = kernel_time(&self.syscalls);
        if self.incomplete.is_some() {
            return;
        }
        let why = gap.as_str();
        self.incomplete = Some(match (gap, self.mismatch.take()) {
            (Gap::Lost, Some(seen)) => format!("{why} (before it: {seen})"),
            (_, seen) => {
                self.mismatch = seen;
                why.to_string()
            }
        });
    }

    /// Ends an op whose return probe matched no entry: a disagreement
    /// where the thread's past is known, else incomplete.
    fn orphan_return(&mut self, gap: Option<Gap>) {
        match gap {
            Some(gap) => {
                self.mismatch = None;
                self.incomplete = Some(gap.as_str().to_string());
            }
            None => self.mismatch = Some(format!("{} return without entry", self.kind.as_str())),
        }
    }
}

/// Time the syscalls spent in the kernel. Saturating: a garbled record
/// must not be able to panic the tool.
fn kernel_time(syscalls: &[Syscall]) -> u64 {
    syscalls
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.dur_ns))
}

/// A `close(2)` entered and not yet returned.
#[derive(Clone, Copy, Debug)]
struct Closing {
    fd: i32,
    /// Whether the eventer used the fd (its life ended at the entry, so
    /// its close must not look like a syscall on an unknown fd).
    eventer_fd: bool,
}

/// Why part of what a thread did is not in the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gap {
    /// It was running before tracing started.
    BeforeTrace,
    /// Events were lost.
    Lost,
    /// The trace ended.
    TraceEnded,
    /// The process exited.
    Exited,
    /// The process exec'd.
    Exec,
}

impl Gap {
    fn as_str(self) -> &'static str {
        match self {
            Gap::BeforeTrace => "began before the trace",
            Gap::Lost => "events lost",
            Gap::TraceEnded => "trace ended",
            Gap::Exited => "process exited",
            Gap::Exec => "process exec'd",
        }
    }
}

// Ops are boxed where they wait: they leave as `Record::Op(Box<Op>)`,
// so an op is moved as a pointer, not as its 150 bytes, from open to out.
#[allow(clippy::vec_box)]
#[derive(Debug)]
struct Thread {
    /// Its process.
    pid: u32,
    /// Open eventer ops, oldest first.
    open: Vec<Box<Op>>,
    /// Open callbacks, outermost first.
    callbacks: Vec<Box<Op>>,
    /// Why the thread may be inside an op whose entry we did not see;
    /// cleared by its next entry probe (ops do not nest, and no probe fires
    /// inside one).
    ops_gap: Option<Gap>,
    /// Why the thread may be inside callbacks whose entries we did not
    /// see. Never cleared: callbacks nest, and how deep it was is unknown.
    callbacks_gap: Option<Gap>,
    /// Stall tracking: the thread's off-CPU total inside callbacks as the
    /// kernel side last reported it ([`Event::OffCpu`]). It starts at 0
    /// with the kernel side's; after a loss a report may be missing, so it
    /// is unknown until the next one.
    off_cpu_total: Option<u64>,
}

impl Thread {
    fn new(pid: u32, gap: Option<Gap>) -> Thread {
        Thread {
            pid,
            open: Vec::new(),
            callbacks: Vec::new(),
            ops_gap: gap,
            callbacks_gap: gap,
            off_cpu_total: if gap == Some(Gap::Lost) {
                None
            } else {
                Some(0)
            },
        }
    }

    /// The innermost open callback's stall watch, if stall tracking is on.
    fn watch(&mut self) -> Option<&mut StallWatch> {
        self.callbacks.last_mut().and_then(|c| c.watch.as_mut())
    }
}

/// The correlation state machine.
#[derive(Debug, Default)]
pub struct Correlator {
    filter: Filter,
    threads: HashMap<u32, Thread>,
    /// Per process: fd numbers, and so epoll instances, are per process.
    epoll: HashMap<u32, EpollMap>,
    /// Fds the eventer has touched since their last close, as (pid, fd): a
    /// syscall on one of these outside any op is an orphan worth showing.
    eventer_fds: HashSet<(u32, i32)>,
    /// Waits with unresolved events, and the event count by which they go
    /// out resolved or not.
    pending_waits: std::collections::VecDeque<(Wait, u64)>,
    /// Threads that were running when the trace began and have not been
    /// seen since.
    before_trace: HashSet<u32>,
    /// Whether events were lost: a thread first seen after that may have
    /// lost records before it was seen.
    lost_any: bool,
    /// Threads in `close(2)`, by tid.
    closing: HashMap<u32, Closing>,
    /// With `-f`, the process portsnoop started or attached to: only its
    /// end is the summary's `process_end` (a followed child's is a row).
    root: Option<u32>,
    /// Which socket each fd holds, and what TCP did to it.
    conns: conn::Connections,
    /// Stall tracking, if on.
    stalls: Option<StallConfig>,
    summary: Summary,
}

impl Correlator {
    /// A correlator keeping only what `filter` selects.
    pub fn new(filter: Filter) -> Correlator {
        Correlator {
            filter,
            ..Correlator::default()
        }
    }

    /// Reports callbacks that run past `config`'s threshold as
    /// [`Record::Stall`]s (see the `stall` module's rules).
    pub fn with_stalls(mut self, config: StallConfig) -> Correlator {
        self.stalls = Some(config);
        self
    }

    /// Keeps a syscall with the innermost open callback of `tid`, if stall
    /// tracking is on and it lasted long enough.
    fn watch_syscall(&mut self, tid: u32, dur_ns: u64, s: impl FnOnce() -> StallSyscall) {
        let Some(config) = self.stalls else { return };
        if dur_ns < config.syscall_min_ns {
            return;
        }
        if let Some(watch) = self.threads.get_mut(&tid).and_then(Thread::watch) {
            watch.add(s());
        }
    }

    /// Learns which threads were running when tracing began (or began
    /// again, after an exec): what they were in the middle of is not in the
    /// trace, so it is incomplete rather than a disagreement (see the
    /// module doc). A thread listed that was started after the trace began
    /// only loses some strictness.
    pub fn threads_before_trace(&mut self, tids: impl IntoIterator<Item = u32>) {
        for tid in tids {
            match self.threads.get_mut(&tid) {
                Some(t) => {
                    t.ops_gap = Some(Gap::BeforeTrace);
                    t.callbacks_gap = Some(Gap::BeforeTrace);
                }
                None => {
                    self.before_trace.insert(tid);
                }
            }
        }
    }

    /// Why thread `tid` may be inside an op whose entry is not in the trace.
    fn ops_gap(&self, tid: u32) -> Option<Gap> {
        match self.threads.get(&tid) {
            Some(t) => t.ops_gap,
            None => self.unseen_thread_gap(tid),
        }
    }

    /// Why a thread's past may be missing, for a thread with no state yet.
    fn unseen_thread_gap(&self, tid: u32) -> Option<Gap> {
        if self.before_trace.contains(&tid) {
            Some(Gap::BeforeTrace)
        } else if self.lost_any {
            Some(Gap::Lost)
        } else {
            None
        }
    }

    /// Learns an epoll registration of process `pid` made before tracing
    /// began, so events for it resolve to its fd (see [`registrations_of`]).
    pub fn known_registration(&mut self, pid: u32, epfd: i32, fd: i32, data: u64) {
        self.epoll.entry(pid).or_default().known(epfd, fd, data);
    }

    /// With `-f`: `pid` is the process traced from the start; the others
    /// are its followed descendants, whose exit ends only their own ops.
    pub fn set_root(&mut self, pid: u32) {
        self.root = Some(pid);
    }

    /// Feeds one event (per thread, in the order the kernel submitted them);
    /// appends what it completes to `out`.
    pub fn push(&mut self, event: Event, out: &mut Vec<Record>) {
        // portsnoop's own word on what it traces after an exec: not a
        // kernel event, and it ends nothing.
        if let Event::Process(p) = &event {
            if matches!(p.kind, ProcessEventKind::Traced { .. }) {
                out.push(Record::Event(event));
                return;
            }
        }
        self.summary.events += 1;
        match event {
            Event::Syscall(s) => self.on_syscall(s, out),
            Event::CloseEnter(c) => self.on_close_enter(c, out),
            Event::EpollCtl(c) => {
                self.epoll.entry(c.pid).or_default().apply(&c);
                self.watch_syscall(c.tid, c.dur_ns, || (&c).into());
                self.emit_event(Event::EpollCtl(c), out);
            }
            Event::SlowSyscall(s) => {
                self.watch_syscall(s.tid, s.dur_ns, || (&s).into());
                self.emit_event(Event::SlowSyscall(s), out);
            }
            Event::OffCpu(o) => {
                self.thread(o.pid, o.tid).off_cpu_total = Some(o.total_ns);
                self.emit_event(Event::OffCpu(o), out);
            }
            Event::EpollWait(w) => {
                self.watch_syscall(w.tid, w.dur_ns, || (&w).into());
                self.summary.waits += 1;
                let rec = Wait {
                    fds: vec![None; w.events.len()],
                    wait: w,
                };
                self.pending_waits
                    .push_back((rec, self.summary.events + WAIT_RESOLVE_HORIZON));
            }
            Event::Probe(p) => self.on_probe(p, out),
            Event::Socket(info) => {
                self.conns.identity(&info);
                self.summary.fd_names.insert(info.fd, conn::name_of(&info));
                self.emit_event(Event::Socket(info), out);
            }
            Event::Tcp(t) => {
                self.conns.tcp(&t);
                self.emit_event(Event::Tcp(t), out);
            }
            Event::Lost { ts_ns, count } => {
                self.flush_waits(true, out);
                self.summary.lost_events = self.summary.lost_events.saturating_add(count);
                self.lost_any = true;
                self.conns.lost();
                self.abandon_all(Gap::Lost, out);
                for t in self.threads.values_mut() {
                    t.ops_gap = Some(Gap::Lost);
                    t.callbacks_gap = Some(Gap::Lost);
                    // A report of it may be what was lost.
                    t.off_cpu_total = None;
                }
                // Whatever they were in, they are in the dark again.
                self.closing.clear();
                out.push(Record::Event(Event::Lost { ts_ns, count }));
            }
            Event::Process(p) => {
                let why = match &p.kind {
                    ProcessEventKind::Exit { .. } => Gap::Exited,
                    ProcessEventKind::Exec => Gap::Exec,
                    // A new process ends nothing: its own tracing starts
                    // when the engine has attached it, and the engine says
                    // which of its threads were running by then.
                    ProcessEventKind::Fork { .. } => {
                        out.push(Record::Event(Event::Process(p)));
                        return;
                    }
                    // Handled above.
                    ProcessEventKind::Traced { .. } => return,
                };
                if self.root.is_none_or(|root| root == p.pid) {
                    self.summary.process_end = Some(match &p.kind {
                        ProcessEventKind::Exit { code } => format!("exit (wait status {code})"),
                        _ => "exec".to_string(),
                    });
                }
                self.flush_waits(true, out);
                // Only this process's ops end: with -f the others go on.
                self.abandon_process(why, p.pid, out);
                // Exited, or a new image: its threads, fds in use by its
                // eventer and epoll instances (created close-on-exec)
                // start afresh. After an exec its tracing starts afresh
                // too, and the engine says which threads were running by
                // then.
                let pid = p.pid;
                let gone: Vec<u32> = self
                    .threads
                    .iter()
                    .filter(|(_, t)| t.pid == pid)
                    .map(|(tid, _)| *tid)
                    .collect();
                for tid in gone {
                    self.threads.remove(&tid);
                    self.closing.remove(&tid);
                }
                self.eventer_fds.retain(|(p, _)| *p != pid);
                self.epoll.remove(&pid);
                self.conns.process_ended(pid);
                out.push(Record::Event(Event::Process(p)));
            }
        }
        self.flush_waits(false, out);
    }

    /// Emits the waits whose events all resolve now, or whose time is up
    /// (`all`: every one), resolving what can be.
    fn flush_waits(&mut self, all: bool, out: &mut Vec<Record>) {
        while let Some((rec, deadline)) = self.pending_waits.front_mut() {
            for (fd, e) in rec.fds.iter_mut().zip(&rec.wait.events) {
                if fd.is_none() {
                    *fd = self
                        .epoll
                        .get(&rec.wait.pid)
                        .and_then(|m| m.resolve(rec.wait.epfd, e.data));
                }
            }
            if !(all || *deadline <= self.summary.events || rec.fds.iter().all(Option::is_some)) {
                break;
            }
            let (rec, _) = self.pending_waits.pop_front().expect("front exists");
            if self.keeps_wait(&rec) {
                out.push(Record::Wait(rec));
            }
        }
    }

    /// Flushes ops still open at the end (marked incomplete) and returns the
    /// totals.
    pub fn finish(&mut self, out: &mut Vec<Record>) -> Summary {
        self.flush_waits(true, out);
        self.abandon_all(Gap::TraceEnded, out);
        let (connections, accepted, omitted) = self.conns.finish();
        self.summary.connections.extend(connections);
        self.summary.connections_omitted += omitted;
        for (k, n) in accepted {
            *self.summary.accepted.entry(k).or_default() += n;
        }
        self.summary.clone()
    }

    fn on_syscall(&mut self, s: Syscall, out: &mut Vec<Record>) {
        self.watch_syscall(s.tid, s.dur_ns, || (&s).into());
        let fd = s.fd;
        self.conns.syscall(s.pid, fd, s.name.op(), s.rv);
        let is_close = s.name.op() == OpKind::Close && s.rv == 0;
        // Its fd's life already ended at the close's entry, when the number
        // was freed: another thread may be using the number by now.
        let entered = match self.closing.get(&s.tid) {
            Some(c) if s.name.op() == OpKind::Close && c.fd == fd => self.closing.remove(&s.tid),
            _ => None,
        };
        // Threads that never fired a probe get no state: a thread per
        // request would otherwise leave an entry per thread forever.
        let owner = self.threads.get_mut(&s.tid).and_then(|thread| {
            thread
                .open
                .iter_mut()
                .rev()
                .find(|op| op.fd == fd && !op.saw_fd_closed())
        });
        // The newest open op on this fd owns the syscall; a syscall of
        // another kind inside it is itself a disagreement.
        if let Some(op) = owner {
            if s.name.op() != op.kind && op.mismatch.is_none() {
                op.mismatch = Some(format!(
                    "{} syscall inside {} op",
                    s.name.as_str(),
                    op.kind.as_str()
                ));
            }
            if op.syscalls.len() < MAX_SYSCALLS_PER_OP {
                op.syscalls.push(s.clone());
            } else {
                self.summary.syscalls_cut += 1;
            }
        } else if entered.map_or(self.eventer_fds.contains(&(s.pid, fd)), |c| c.eventer_fd)
            // connect and shutdown have no eventer probe to be inside of.
            && !matches!(s.name.op(), OpKind::Connect | OpKind::Shutdown)
        {
            self.summary.orphan_syscalls += 1;
            let callback = self
                .threads
                .get(&s.tid)
                .and_then(|t| t.callbacks.last().and_then(|c| c.callback.clone()));
            let gap = self.ops_gap(s.tid);
            let mut op = Op::open(s.name.op(), s.pid, s.tid, fd, s.ts_ns, None, callback);
            op.syscalls.push(s.clone());
            op.kernel_ns = s.dur_ns;
            match gap {
                Some(gap) => op.abandon(gap),
                None => op.mismatch = Some("syscall without eventer op".into()),
            }
            self.emit_op(op, out);
        }
        // The fd's life ended (close) or a new one began (accept returned
        // its number): an op still open on it must not take the next
        // life's syscalls.
        // A close whose entry was not seen ends the fd's life here only if
        // the entry was not missed: one that began before the trace or in
        // a loss freed the number at an unknown point, and another thread
        // may have the number already.
        let life_over = match s.name.op() {
            OpKind::Close if is_close && entered.is_none() && self.ops_gap(s.tid).is_none() => {
                Some((fd, "fd closed"))
            }
            OpKind::Accept if s.rv >= 0 => {
                i32::try_from(s.rv).ok().map(|n| (n, "fd reused by accept"))
            }
            _ => None,
        };
        if let Some((fd, why)) = life_over {
            if why == "fd closed" {
                self.eventer_fds.remove(&(s.pid, fd));
                self.epoll.entry(s.pid).or_default().closed(fd);
            }
            self.end_fd_life(s.pid, fd, why, None, out);
        }
        self.emit_event(Event::Syscall(s), out);
    }

    /// A thread entered `close(fd)`: the number is free from now on (even
    /// if the close fails, Linux has released it), so the fd's life ends
    /// here, not when the close's record arrives. The closing thread's own
    /// ops on it are left to take the close.
    fn on_close_enter(&mut self, c: crate::event::CloseEnter, out: &mut Vec<Record>) {
        let eventer_fd = self.eventer_fds.remove(&(c.pid, c.fd));
        self.conns.fd_closed(c.pid, c.fd);
        self.closing.insert(
            c.tid,
            Closing {
                fd: c.fd,
                eventer_fd,
            },
        );
        if let Some(thread) = self.threads.get_mut(&c.tid) {
            for op in thread.open.iter_mut().filter(|op| op.fd == c.fd) {
                op.closing = true;
            }
        }
        self.epoll.entry(c.pid).or_default().closed(c.fd);
        self.end_fd_life(c.pid, c.fd, "fd closed", Some(c.tid), out);
        self.emit_event(Event::CloseEnter(c), out);
    }

    /// Ends every op still open on `fd` of process `pid` (on any thread but
    /// `closer`; another process's fd of the same number is another fd) that
    /// is not itself closing it: it never returned within the fd's life,
    /// which is a disagreement. The op that closes it waits for its return
    /// (another thread's accept may get the number first) but takes no
    /// more syscalls after the close.
    fn end_fd_life(
        &mut self,
        pid: u32,
        fd: i32,
        why: &str,
        closer: Option<u32>,
        out: &mut Vec<Record>,
    ) {
        let mut ended = Vec::new();
        for (tid, thread) in self.threads.iter_mut() {
            if Some(*tid) == closer || thread.pid != pid {
                continue;
            }
            let mut i = 0;
            while i < thread.open.len() {
                let op = &thread.open[i];
                if op.fd == fd && !op.closing && !op.saw_fd_closed() {
                    ended.push(thread.open.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        // Threads live in a HashMap: sort for a stable output order.
        ended.sort_by_key(|op| (op.entry_ts_ns, op.tid));
        for mut op in ended {
            op.kernel_ns = kernel_time(&op.syscalls);
            op.mismatch
                .get_or_insert_with(|| format!("{why} during {} op", op.kind.as_str()));
            self.emit_op(op, out);
        }
    }

    /// The state of thread `tid` of process `pid`, made on first sight.
    fn thread(&mut self, pid: u32, tid: u32) -> &mut Thread {
        if !self.threads.contains_key(&tid) {
            let gap = self.unseen_thread_gap(tid);
            self.before_trace.remove(&tid);
            self.threads.insert(tid, Thread::new(pid, gap));
        }
        self.threads.get_mut(&tid).expect("inserted above")
    }

    fn on_probe(&mut self, p: Probe, out: &mut Vec<Record>) {
        let Some((kind, is_entry)) = p.name.op() else {
            self.emit_event(Event::Probe(p), out);
            return;
        };
        let stalls = self.stalls;
        let thread = self.thread(p.pid, p.tid);
        let mut done = Vec::new();
        let mut stall = None;
        let mut stall_incomplete = false;
        let mut new_eventer_fd = None;
        let mut closes_eventer_fd = false;
        if kind == OpKind::Callback {
            if is_entry {
                let fd = p.fd().unwrap_or(-1);
                let mut op = Op::open(
                    kind,
                    p.pid,
                    p.tid,
                    fd,
                    p.ts_ns,
                    p.closure(),
                    p.strings.first().cloned(),
                );
                if stalls.is_some() {
                    op.watch = Some(StallWatch {
                        off_cpu_at_entry: thread.off_cpu_total,
                        ..StallWatch::default()
                    });
                }
                thread.callbacks.push(op);
                // No callback begins inside an op.
                thread.ops_gap = None;
            } else {
                let pos = thread
                    .callbacks
                    .iter()
                    .rposition(|c| c.closure == p.closure());
                match pos {
                    Some(i) => {
                        // Callbacks nested inside this one that never returned.
                        let mut inner_watches = Vec::new();
                        for mut inner in thread.callbacks.drain(i + 1..) {
                            inner.mismatch = Some(
                                "callback returned without its inner callback's return".into(),
                            );
                            inner_watches.extend(inner.watch.take());
                            done.push(inner);
                        }
                        let mut op = thread.callbacks.pop().expect("index is valid");
                        op.close(p.ts_ns, p.rv());
                        if let (Some(config), Some(mut watch)) = (stalls, op.watch.take()) {
                            for inner in inner_watches {
                                watch.absorb(inner);
                            }
                            match stall::judge(&config, watch, &op, p.ts_ns, thread.off_cpu_total) {
                                Verdict::Pass(watch) => {
                                    if let Some(outer) = thread.watch() {
                                        outer.absorb(watch);
                                    }
                                }
                                Verdict::Stall(s) => {
                                    if let Some(outer) = thread.watch() {
                                        outer.inner_stalled = true;
                                    }
                                    stall = Some(s);
                                }
                                Verdict::Incomplete => stall_incomplete = true,
                            }
                        }
                        done.push(op);
                    }
                    None => {
                        let mut op = Op::open(
                            kind,
                            p.pid,
                            p.tid,
                            -1,
                            p.ts_ns,
                            p.closure(),
                            p.strings.first().cloned(),
                        );
                        op.close(p.ts_ns, p.rv());
                        op.orphan_return(thread.callbacks_gap);
                        done.push(op);
                    }
                }
            }
        } else {
            let fd = p.fd().unwrap_or(-1);
            let callback = thread.callbacks.last().and_then(|c| c.callback.clone());
            if is_entry {
                if let Some(i) = thread.open.iter().position(|op| op.fd == fd) {
                    let mut stale = thread.open.remove(i);
                    stale.kernel_ns = kernel_time(&stale.syscalls);
                    stale.mismatch.get_or_insert_with(|| {
                        format!("{} entry without return", stale.kind.as_str())
                    });
                    done.push(stale);
                }
                if thread.open.len() >= MAX_OPEN_OPS {
                    let mut oldest = thread.open.remove(0);
                    oldest.kernel_ns = kernel_time(&oldest.syscalls);
                    oldest.mismatch.get_or_insert_with(|| {
                        format!("{} entry without return", oldest.kind.as_str())
                    });
                    done.push(oldest);
                }
                thread.open.push(Op::open(
                    kind,
                    p.pid,
                    p.tid,
                    fd,
                    p.ts_ns,
                    p.closure(),
                    callback,
                ));
                thread.ops_gap = None;
                new_eventer_fd = Some(fd);
            } else {
                let rv = p.rv();
                match thread
                    .open
                    .iter()
                    .rposition(|op| op.fd == fd && op.kind == kind)
                {
                    Some(i) => {
                        let mut op = thread.open.remove(i);
                        op.close(p.ts_ns, rv);
                        // With its entry seen, the fd's life ended there;
                        // the number may be another's by now.
                        closes_eventer_fd = kind == OpKind::Close && !op.closing;
                        done.push(op);
                    }
                    None => {
                        let mut op =
                            Op::open(kind, p.pid, p.tid, fd, p.ts_ns, p.closure(), callback);
                        op.close(p.ts_ns, rv);
                        op.orphan_return(thread.ops_gap);
                        closes_eventer_fd = kind == OpKind::Close;
                        done.push(op);
                    }
                }
                match (kind, rv) {
                    (OpKind::Accept, Some(new_fd)) if new_fd >= 0 => {
                        new_eventer_fd = i32::try_from(new_fd).ok()
                    }
                    _ => {}
                }
            }
        }
        if closes_eventer_fd {
            if let Some(fd) = p.fd() {
                self.eventer_fds.remove(&(p.pid, fd));
            }
        }
        if let Some(fd) = new_eventer_fd {
            self.eventer_fds.insert((p.pid, fd));
        }
        self.emit_event(Event::Probe(p), out);
        for op in done {
            self.emit_op(op, out);
        }
        if stall_incomplete {
            self.summary.stalls_incomplete += 1;
        }
        if let Some(s) = stall {
            if self.keeps_tid(Some(s.tid)) && self.keeps_fd(Some(s.fd)) {
                self.summary.add_stall(&s);
                out.push(Record::Stall(s));
            }
        }
    }

    fn abandon_all(&mut self, gap: Gap, out: &mut Vec<Record>) {
        self.abandon_threads(gap, None, out);
    }

    /// Ends process `pid`'s open ops (exit, exec): the others go on.
    fn abandon_process(&mut self, gap: Gap, pid: u32, out: &mut Vec<Record>) {
        self.abandon_threads(gap, Some(pid), out);
    }

    fn abandon_threads(&mut self, gap: Gap, pid: Option<u32>, out: &mut Vec<Record>) {
        let mut threads: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, t)| pid.is_none_or(|pid| t.pid == pid))
            .map(|(tid, _)| *tid)
            .collect();
        threads.sort_unstable();
        for tid in threads {
            let thread = self.threads.get_mut(&tid).expect("key listed above");
            let mut ops: Vec<Box<Op>> = thread
                .open
                .drain(..)
                .chain(thread.callbacks.drain(..).rev())
                .collect();
            for op in &mut ops {
                op.abandon(gap);
            }
            for op in ops {
                self.emit_op(op, out);
            }
        }
    }

    fn keeps_fd(&self, fd: Option<i32>) -> bool {
        self.filter.fd.is_none() || fd == self.filter.fd
    }

    fn keeps_tid(&self, tid: Option<u32>) -> bool {
        self.filter.tid.is_none() || tid.is_none() || tid == self.filter.tid
    }

    fn keeps_wait(&self, w: &Wait) -> bool {
        self.keeps_tid(Some(w.wait.tid))
            && (self.filter.fd.is_none() || w.fds.iter().any(|fd| self.keeps_fd(*fd)))
    }

    fn emit_event(&self, ev: Event, out: &mut Vec<Record>) {
        let fd = match &ev {
            Event::Syscall(s) => Some(s.fd),
            Event::CloseEnter(c) => Some(c.fd),
            Event::EpollCtl(c) => Some(c.fd),
            Event::Probe(p) if p.name == ProbeName::Log => None,
            Event::Probe(p) => p.fd(),
            Event::Socket(i) => Some(i.fd),
            Event::Tcp(t) => Some(t.fd),
            Event::SlowSyscall(s) => s.fd(),
            Event::EpollWait(_) | Event::Lost { .. } | Event::Process(_) | Event::OffCpu(_) => None,
        };
        let global = matches!(ev, Event::Lost { .. } | Event::Process(_));
        if global
            || (self.keeps_tid(ev.tid())
                && (fd.is_none() && self.filter.fd.is_none() || self.keeps_fd(fd)))
        {
            out.push(Record::Event(ev));
        }
    }

    fn emit_op(&mut self, mut op: Box<Op>, out: &mut Vec<Record>) {
        if op.kind == OpKind::Accept {
            let rv = op.user_rv.or_else(|| op.syscalls.last().map(|s| s.rv));
            if let Some(new_fd) = rv.and_then(|rv| i32::try_from(rv).ok()) {
                op.conn = self.conns.socket(op.pid, new_fd).cloned();
            }
        }
        // A callback cut short (loss, exec, the end) still holds what its
        // stall watch gathered: no output reads it.
        op.watch = None;
        if self.keeps_tid(Some(op.tid)) && self.keeps_fd(Some(op.fd)) {
            self.summary.add_op(&op);
            out.push(Record::Op(op));
        }
    }
}

#[cfg(test)]
mod tests;
