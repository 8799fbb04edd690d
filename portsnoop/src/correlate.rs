//! Pure correlation: events in, lined-up records out. No I/O.
//! (Interface stub: the bodies are being written.)

use crate::event::{Event, OpKind, Syscall};

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
    /// An input event that passed the filter, passed through for row output.
    Event(Event),
    /// A finished (or abandoned) eventer operation with its syscalls.
    Op(Op),
}

/// One eventer operation lined up with the syscalls the kernel did for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// accept/read/write/close/callback.
    pub kind: OpKind,
    /// Thread.
    pub tid: u32,
    /// The fd.
    pub fd: i32,
    /// When the entry probe fired.
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
    /// Why user and kernel disagree, if they do.
    pub mismatch: Option<String>,
}

/// Totals for the end of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Events seen.
    pub events: u64,
    /// Events the kernel side dropped.
    pub lost_events: u64,
    /// Ops emitted.
    pub ops: u64,
    /// Ops with a mismatch.
    pub mismatches: u64,
}

/// The correlation state machine.
#[derive(Debug, Default)]
pub struct Correlator {
    _filter: Filter,
}

impl Correlator {
    /// A correlator keeping only what `filter` selects.
    pub fn new(filter: Filter) -> Correlator {
        Correlator { _filter: filter }
    }

    /// Feeds one event (in the order the kernel submitted them); appends what
    /// it completes to `out`.
    pub fn push(&mut self, event: Event, out: &mut Vec<Record>) {
        let _ = (event, out);
        todo!("correlate::push")
    }

    /// Flushes ops still open at the end (marked incomplete) and returns the
    /// totals.
    pub fn finish(&mut self, out: &mut Vec<Record>) -> Summary {
        let _ = out;
        todo!("correlate::finish")
    }
}
