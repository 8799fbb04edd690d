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
            name: s.display_name(),
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

#[cfg(test)]
mod tests {
    use super::super::{Correlator, Filter, Record, Summary};
    use super::*;
    use crate::event::{Event, OffCpu, Probe, ProbeName, SyscallName};

    const P: u32 = 7;
    const T: u32 = 70;
    const MS: u64 = 1_000_000;
    const CONFIG: StallConfig = StallConfig {
        threshold_ns: 10 * MS,
        syscall_min_ns: 10_000,
    };

    fn callback(ts: u64, entry: bool, name: &str, closure: u64, fd: i32) -> Event {
        let (probe, args) = if entry {
            (
                ProbeName::CallbackEntry,
                [closure, closure, 0, fd as u64, 1, 0],
            )
        } else {
            (ProbeName::CallbackReturn, [closure, closure, 0, 0, 0, 0])
        };
        Event::Probe(Probe {
            ts_ns: ts,
            pid: P,
            tid: T,
            name: probe,
            args,
            strings: vec![name.into()],
        })
    }

    fn slow(ts: u64, nr: u32, arg0: u64, dur_ns: u64) -> Event {
        Event::SlowSyscall(SlowSyscall {
            ts_ns: ts,
            pid: P,
            tid: T,
            nr,
            arg0,
            rv: 0,
            dur_ns,
        })
    }

    fn write(ts: u64, fd: i32, dur_ns: u64) -> Event {
        Event::Syscall(Syscall {
            ts_ns: ts,
            pid: P,
            tid: T,
            name: SyscallName::Write,
            fd,
            rv: 5,
            dur_ns,
            arg: 5,
        })
    }

    fn off_cpu(ts: u64, total_ns: u64) -> Event {
        Event::OffCpu(OffCpu {
            ts_ns: ts,
            pid: P,
            tid: T,
            total_ns,
        })
    }

    fn run(events: Vec<Event>) -> (Vec<Stall>, Summary) {
        let mut c = Correlator::new(Filter::default()).with_stalls(CONFIG);
        let mut out = Vec::new();
        for e in events {
            c.push(e, &mut out);
        }
        let summary = c.finish(&mut out);
        let stalls = out
            .into_iter()
            .filter_map(|r| match r {
                Record::Stall(s) => Some(*s),
                _ => None,
            })
            .collect();
        (stalls, summary)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_sleeping_callback_is_a_stall_with_its_syscall_and_off_cpu_time() {
        let (stalls, summary) = run(vec![
            off_cpu(0, 5 * MS), // before: not this callback's
            callback(0, true, "handler", 1, 9),
            slow(MS, 230, 1, 50 * MS), // clock_nanosleep
            write(52 * MS, 9, 20_000),
            write(53 * MS, 9, 2_000), // under the minimum
            off_cpu(60 * MS, 55 * MS),
            callback(60 * MS, false, "handler", 1, 9),
        ]);
        assert_eq!(stalls.len(), 1);
        let s = &stalls[0];
        assert_eq!(
            (&*s.name, s.fd, s.tid, s.dur_ns, s.off_cpu_ns),
            ("handler", 9, T, 60 * MS, 50 * MS)
        );
        let names: Vec<_> = s.syscalls.iter().map(|c| (&*c.name, c.fd)).collect();
        assert_eq!(names, [("clock_nanosleep", None), ("write", Some(9))]);
        assert_eq!(s.syscalls[0].dur_ns, 50 * MS);
        let st = &summary.stalls[&Arc::from("handler")];
        assert_eq!((st.count, st.total_ns, st.max_ns), (1, 60 * MS, 60 * MS));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn fsync_names_its_fd() {
        let (stalls, _) = run(vec![
            callback(0, true, "h", 1, 9),
            slow(MS, 74, 12, 30 * MS),
            callback(40 * MS, false, "h", 1, 9),
        ]);
        assert_eq!(
            (&*stalls[0].syscalls[0].name, stalls[0].syscalls[0].fd),
            ("fsync", Some(12))
        );
        // No off-CPU report: it never left the CPU.
        assert_eq!(stalls[0].off_cpu_ns, 0);
    }

    #[test]
    fn a_short_callback_is_no_stall() {
        let (stalls, summary) = run(vec![
            callback(0, true, "h", 1, 9),
            slow(MS, 35, 0, 5 * MS),
            callback(10 * MS - 1, false, "h", 1, 9),
        ]);
        assert!(stalls.is_empty());
        assert!(summary.stalls.is_empty());
    }

    #[test]
    fn nested_the_innermost_is_reported_once() {
        let (stalls, _) = run(vec![
            callback(0, true, "outer", 1, 9),
            callback(MS, true, "inner", 2, 9),
            slow(2 * MS, 35, 0, 30 * MS),
            callback(40 * MS, false, "inner", 2, 9),
            callback(41 * MS, false, "outer", 1, 9),
        ]);
        let names: Vec<_> = stalls.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["inner"]);
    }

    #[test]
    fn an_outer_stall_over_short_inner_callbacks_keeps_their_syscalls() {
        let (stalls, _) = run(vec![
            callback(0, true, "outer", 1, 9),
            callback(MS, true, "inner", 2, 9),
            slow(2 * MS, 35, 0, 6 * MS),
            callback(9 * MS, false, "inner", 2, 9),
            callback(10 * MS, true, "inner", 3, 9),
            slow(11 * MS, 35, 0, 6 * MS),
            callback(18 * MS, false, "inner", 3, 9),
            callback(19 * MS, false, "outer", 1, 9),
        ]);
        assert_eq!(stalls.len(), 1);
        assert_eq!((&*stalls[0].name, stalls[0].syscalls.len()), ("outer", 2));
    }

    #[test]
    fn a_callback_cut_by_a_loss_is_never_a_stall() {
        let (stalls, summary) = run(vec![
            callback(0, true, "h", 1, 9),
            Event::Lost {
                ts_ns: MS,
                count: 3,
            },
            callback(40 * MS, false, "h", 1, 9),
        ]);
        assert!(stalls.is_empty());
        assert_eq!(summary.incomplete, 1 + 1);
    }

    #[test]
    fn after_a_loss_an_unknown_off_cpu_total_makes_no_stall() {
        let (stalls, summary) = run(vec![
            Event::Lost { ts_ns: 0, count: 1 },
            callback(MS, true, "h", 1, 9),
            off_cpu(40 * MS, 80 * MS),
            callback(40 * MS, false, "h", 1, 9),
            // Known again from here.
            callback(50 * MS, true, "h", 2, 9),
            off_cpu(90 * MS, 100 * MS),
            callback(90 * MS, false, "h", 2, 9),
        ]);
        assert_eq!(summary.stalls_incomplete, 1);
        assert_eq!(stalls.len(), 1);
        assert_eq!(
            (stalls[0].closure, stalls[0].off_cpu_ns),
            (Some(2), 20 * MS)
        );
    }

    #[test]
    fn without_stall_tracking_nothing_is_reported() {
        let mut c = Correlator::new(Filter::default());
        let mut out = Vec::new();
        for e in [
            callback(0, true, "h", 1, 9),
            callback(40 * MS, false, "h", 1, 9),
        ] {
            c.push(e, &mut out);
        }
        assert!(!out.iter().any(|r| matches!(r, Record::Stall(_))));
    }

    #[test]
    fn the_summary_ranks_names_by_total_time() {
        let (_, summary) = run(vec![
            callback(0, true, "a", 1, 9),
            callback(20 * MS, false, "a", 1, 9),
            callback(30 * MS, true, "b", 2, 9),
            callback(60 * MS, false, "b", 2, 9),
            callback(70 * MS, true, "a", 3, 9),
            callback(85 * MS, false, "a", 3, 9),
        ]);
        let top: Vec<_> = summary
            .top_stalls()
            .into_iter()
            .map(|(n, st)| (n.to_string(), st.count, st.total_ns, st.max_ns))
            .collect();
        assert_eq!(
            top,
            [
                ("a".to_string(), 2, 35 * MS, 20 * MS),
                ("b".to_string(), 1, 30 * MS, 30 * MS)
            ]
        );
    }
}
