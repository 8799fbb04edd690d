//! Stalls: callbacks (or task polls) that ran longer than a threshold, with
//! where their time went.
//!
//! While a callback is open on a thread, the syscalls that thread makes that
//! last at least [`StallConfig::syscall_min_ns`] are kept with it: the
//! kernel side's [`SlowSyscall`]s (any syscall not otherwise traced:
//! `nanosleep`, `fsync`, `futex`...) and the traced fd syscalls and epoll
//! calls. Its off-CPU time is the difference of the thread's running
//! off-CPU total ([`crate::event::OffCpu`]) between its entry and return.
//!
//! At a return at least [`StallConfig::threshold_ns`] after its entry, the
//! callback is a [`Stall`]. **Nested callbacks: the innermost one is
//! reported.** A callback whose inner callback was a stall is not reported
//! again (it would repeat the same time); one whose inner callbacks were
//! not stalls takes their syscalls, so an outer callback that is slow over
//! many short inner ones still names what it waited on.
//!
//! What the trace cannot see whole is never a stall with wrong numbers: a
//! callback cut short by lost events, the trace's start or the process's
//! end is an incomplete op (see the module doc of `correlate`), not a
//! stall; one that ran past the threshold while its thread's off-CPU total
//! was unknown (after a loss, until the kernel side reports it again) is
//! counted in [`super::Summary::stalls_incomplete`] instead.

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::{EpollCtl, EpollWait, SlowSyscall, Syscall};

/// At most this many syscalls kept per callback; the rest are counted.
const MAX_SYSCALLS_PER_STALL: usize = 64;

/// When a callback is a stall, and which syscalls inside it are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallConfig {
    /// A callback that runs at least this long is a stall.
    pub threshold_ns: u64,
    /// Syscalls shorter than this are not kept with a callback (the kernel
    /// side does not even submit the untraced ones).
    pub syscall_min_ns: u64,
}

/// A callback or task poll that ran at least the stall threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// When the callback was entered.
    pub ts_ns: u64,
    /// Process (tgid).
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// The callback's fd (-1: none).
    pub fd: i32,
    /// The callback's name (the app's: untrusted).
    pub name: Arc<str>,
    /// The callback's `closure` (the registration or task id).
    pub closure: Option<u64>,
    /// Return minus entry.
    pub dur_ns: u64,
    /// Of that, time the thread was off the CPU (blocked, or runnable and
    /// waiting for a CPU). `dur_ns - off_cpu_ns` is on-CPU.
    pub off_cpu_ns: u64,
    /// The syscalls inside it that lasted at least the minimum, in time
    /// order.
    pub syscalls: Vec<StallSyscall>,
    /// How many more there were than `syscalls` keeps.
    pub syscalls_cut: u64,
}

/// A syscall inside a stalled callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallSyscall {
    /// Entry time.
    pub ts_ns: u64,
    /// Its name (`"fsync"`; `"syscall_N"` for a number this build does not
    /// know).
    pub name: Cow<'static, str>,
    /// Its fd, where its first argument is one.
    pub fd: Option<i32>,
    /// What it returned: a value or `-errno`.
    pub rv: i64,
    /// Time from entry to exit.
    pub dur_ns: u64,
}

impl From<&SlowSyscall> for StallSyscall {
    fn from(s: &SlowSyscall) -> StallSyscall {
        StallSyscall {
            ts_ns: s.ts_ns,
            name: s
                .name()
                .map_or_else(|| Cow::Owned(format!("syscall_{}", s.nr)), Cow::Borrowed),
            fd: s.fd(),
            rv: s.rv,
            dur_ns: s.dur_ns,
        }
    }
}

impl From<&Syscall> for StallSyscall {
    fn from(s: &Syscall) -> StallSyscall {
        StallSyscall {
            ts_ns: s.ts_ns,
            name: Cow::Borrowed(s.name.as_str()),
            fd: Some(s.fd),
            rv: s.rv,
            dur_ns: s.dur_ns,
        }
    }
}

impl From<&EpollWait> for StallSyscall {
    fn from(w: &EpollWait) -> StallSyscall {
        StallSyscall {
            ts_ns: w.ts_ns,
            name: Cow::Borrowed(w.name),
            fd: Some(w.epfd),
            rv: w.rv,
            dur_ns: w.dur_ns,
        }
    }
}

impl From<&EpollCtl> for StallSyscall {
    fn from(c: &EpollCtl) -> StallSyscall {
        StallSyscall {
            ts_ns: c.ts_ns,
            name: Cow::Borrowed("epoll_ctl"),
            fd: Some(c.epfd),
            rv: c.rv,
            dur_ns: c.dur_ns,
        }
    }
}

/// What an open callback gathers for its stall check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StallWatch {
    /// The thread's off-CPU total at the entry (None: unknown then).
    pub off_cpu_at_entry: Option<u64>,
    pub syscalls: Vec<StallSyscall>,
    pub syscalls_cut: u64,
    /// An inner callback was reported as a stall: this one is not.
    pub inner_stalled: bool,
}

impl StallWatch {
    /// Keeps a syscall made inside the callback.
    pub fn add(&mut self, s: StallSyscall) {
        if self.syscalls.len() < MAX_SYSCALLS_PER_STALL {
            self.syscalls.push(s);
        } else {
            self.syscalls_cut += 1;
        }
    }

    /// Takes what an inner callback gathered that was not a stall.
    pub fn absorb(&mut self, inner: StallWatch) {
        self.inner_stalled |= inner.inner_stalled;
        self.syscalls_cut += inner.syscalls_cut;
        for s in inner.syscalls {
            self.add(s);
        }
    }
}

/// What a returning callback comes to.
pub(crate) enum Verdict {
    /// Under the threshold, or an inner callback was the stall: its watch
    /// goes to the enclosing callback.
    Pass(StallWatch),
    /// A stall.
    Stall(Box<Stall>),
    /// Past the threshold, but its off-CPU time is unknown.
    Incomplete,
}

/// Decides whether a callback that returned is a stall.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    config: &StallConfig,
    mut watch: StallWatch,
    op: &super::Op,
    return_ts: u64,
    off_cpu_now: Option<u64>,
) -> Verdict {
    let dur_ns = return_ts.saturating_sub(op.entry_ts_ns);
    if dur_ns < config.threshold_ns || watch.inner_stalled {
        return Verdict::Pass(watch);
    }
    let off_cpu_ns = match (watch.off_cpu_at_entry, off_cpu_now) {
        (Some(entry), Some(now)) => now.saturating_sub(entry).min(dur_ns),
        _ => return Verdict::Incomplete,
    };
    watch.syscalls.sort_by_key(|s| s.ts_ns);
    Verdict::Stall(Box::new(Stall {
        ts_ns: op.entry_ts_ns,
        pid: op.pid,
        tid: op.tid,
        fd: op.fd,
        name: op.callback.clone().unwrap_or_else(|| "".into()),
        closure: op.closure,
        dur_ns,
        off_cpu_ns,
        syscalls: watch.syscalls,
        syscalls_cut: watch.syscalls_cut,
    }))
}
