//! End-of-run totals: per fd and per operation, with log2 latency
//! histograms as DTrace's `quantize()` keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::{errno_of, OpKind};

use super::{Op, Stall};

/// A power-of-two histogram: bucket 0 holds 0, bucket i holds
/// `[2^(i-1), 2^i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    counts: [u64; 65],
}

impl Default for Log2Hist {
    fn default() -> Log2Hist {
        Log2Hist { counts: [0; 65] }
    }
}

impl Log2Hist {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
    }

    fn bucket(v: u64) -> usize {
        (64 - v.leading_zeros()) as usize
    }

    /// The smallest value of bucket `i`.
    pub fn lower_bound(i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            1u64 << (i - 1)
        }
    }

    /// `(lower bound, count)` for every bucket from the first to the last
    /// non-empty one (empty ones between are kept, as quantize prints them).
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        let first = self.counts.iter().position(|&c| c > 0);
        let last = self.counts.iter().rposition(|&c| c > 0);
        match (first, last) {
            (Some(f), Some(l)) => (f..=l)
                .map(|i| (Self::lower_bound(i), self.counts[i]))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The histogram [`Log2Hist::buckets`] listed, or None if a lower
    /// bound is not one a bucket has (0 or a power of two).
    pub fn from_buckets(buckets: &[(u64, u64)]) -> Option<Log2Hist> {
        let mut h = Log2Hist::default();
        for &(lo, n) in buckets {
            let i = match lo {
                0 => 0,
                lo if lo.is_power_of_two() => lo.trailing_zeros() as usize + 1,
                _ => return None,
            };
            h.counts[i] = n;
        }
        Some(h)
    }

    /// How many values were counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Log2Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }
}

/// Totals for one kind of operation (on one fd, or overall).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Operations seen.
    pub count: u64,
    /// Bytes moved (reads and writes: the sum of positive user rv).
    pub bytes: u64,
    /// Failed operations by errno.
    pub errors: BTreeMap<i32, u64>,
    /// Operations where user and kernel disagreed.
    pub mismatches: u64,
    /// Operations the trace could not see whole (see [`super::Op::incomplete`]).
    pub incomplete: u64,
    /// Time in userland around the syscalls, ns.
    pub user_ns: Log2Hist,
    /// Time in the kernel, ns.
    pub kernel_ns: Log2Hist,
    /// Sum of the user times in `user_ns`, ns.
    pub user_ns_total: u64,
    /// Sum of the kernel times in `kernel_ns`, ns.
    pub kernel_ns_total: u64,
}

impl OpStats {
    fn add(&mut self, op: &Op) {
        self.count += 1;
        let rv = op.user_rv.or_else(|| op.syscalls.last().map(|s| s.rv));
        if let Some(rv) = rv {
            match errno_of(rv) {
                Some(errno) => *self.errors.entry(errno).or_default() += 1,
                None if matches!(op.kind, OpKind::Read | OpKind::Write) && rv > 0 => {
                    self.bytes = self.bytes.saturating_add(rv as u64)
                }
                None => {}
            }
        }
        if op.mismatch.is_some() {
            self.mismatches += 1;
        }
        if op.incomplete.is_some() {
            self.incomplete += 1;
        }
        if op.return_ts_ns.is_some() {
            self.user_ns.record(op.user_ns);
            self.user_ns_total = self.user_ns_total.saturating_add(op.user_ns);
        }
        if !op.syscalls.is_empty() {
            self.kernel_ns.record(op.kernel_ns);
            self.kernel_ns_total = self.kernel_ns_total.saturating_add(op.kernel_ns);
        }
    }

    /// Adds another's totals.
    pub fn merge(&mut self, other: &OpStats) {
        self.count += other.count;
        self.bytes = self.bytes.saturating_add(other.bytes);
        for (e, n) in &other.errors {
            *self.errors.entry(*e).or_default() += n;
        }
        self.mismatches += other.mismatches;
        self.incomplete += other.incomplete;
        self.user_ns.merge(&other.user_ns);
        self.kernel_ns.merge(&other.kernel_ns);
        self.user_ns_total = self.user_ns_total.saturating_add(other.user_ns_total);
        self.kernel_ns_total = self.kernel_ns_total.saturating_add(other.kernel_ns_total);
    }

    /// Mean user time of the ops that returned, ns.
    pub fn user_ns_mean(&self) -> Option<u64> {
        self.user_ns_total.checked_div(self.user_ns.total())
    }

    /// Mean kernel time of the ops that made syscalls, ns.
    pub fn kernel_ns_mean(&self) -> Option<u64> {
        self.kernel_ns_total.checked_div(self.kernel_ns.total())
    }
}

/// Totals for the stalls of one callback name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StallStats {
    /// Stalls.
    pub count: u64,
    /// Their summed duration, ns.
    pub total_ns: u64,
    /// The longest, ns.
    pub max_ns: u64,
    /// Their summed off-CPU time, ns.
    pub off_cpu_ns_total: u64,
    /// Their durations, ns.
    pub dur_ns: Log2Hist,
}

/// Totals for the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events seen (before filtering).
    pub events: u64,
    /// Events the kernel side dropped.
    pub lost_events: u64,
    /// Ops emitted (after filtering).
    pub ops: u64,
    /// Ops where the app and the kernel disagreed.
    pub mismatches: u64,
    /// Ops the trace could not see whole: begun before it, cut by lost
    /// events, the trace's or the process's end. Never mismatches.
    pub incomplete: u64,
    /// Syscalls on an eventer fd with no eventer op around them.
    pub orphan_syscalls: u64,
    /// Syscalls not kept because an op already held the maximum.
    pub syscalls_cut: u64,
    /// Epoll waits seen.
    pub waits: u64,
    /// Per fd, per kind of op.
    pub per_fd: BTreeMap<i32, BTreeMap<OpKind, OpStats>>,
    /// How the target ended, if it did (`"exit code 0"`, `"exec"`).
    pub process_end: Option<String>,
    /// Every connection seen, in the order they ended (then those open at
    /// the end).
    pub connections: Vec<super::ConnSummary>,
    /// Connections not listed in `connections` (a long trace keeps the
    /// first 10,000): counted only.
    pub connections_omitted: u64,
    /// Accepted connections by (remote host, local port or path), as
    /// tcpaccept2 counts them.
    pub accepted: BTreeMap<(String, String), u64>,
    /// The connection each fd number held last, named (escaped).
    pub fd_names: BTreeMap<i32, String>,
    /// TCP sockets whose events could not be followed: the kernel side's
    /// table of sockets was full (set by the session, from the engine).
    pub tcp_untracked: u64,
    /// Stalls by callback name (stall tracking on).
    pub stalls: BTreeMap<Arc<str>, StallStats>,
    /// Callbacks past the stall threshold whose off-CPU time the trace
    /// could not vouch for (a report of it may have been lost): not
    /// reported as stalls.
    pub stalls_incomplete: u64,
}

impl Summary {
    pub(crate) fn add_op(&mut self, op: &Op) {
        self.ops += 1;
        if op.mismatch.is_some() {
            self.mismatches += 1;
        }
        if op.incomplete.is_some() {
            self.incomplete += 1;
        }
        self.per_fd
            .entry(op.fd)
            .or_default()
            .entry(op.kind)
            .or_default()
            .add(op);
    }

    pub(crate) fn add_stall(&mut self, s: &Stall) {
        let st = self.stalls.entry(Arc::clone(&s.name)).or_default();
        st.count += 1;
        st.total_ns = st.total_ns.saturating_add(s.dur_ns);
        st.max_ns = st.max_ns.max(s.dur_ns);
        st.off_cpu_ns_total = st.off_cpu_ns_total.saturating_add(s.off_cpu_ns);
        st.dur_ns.record(s.dur_ns);
    }

    /// Stalls by callback name, the most total time first (names break
    /// ties).
    pub fn top_stalls(&self) -> Vec<(&Arc<str>, &StallStats)> {
        let mut v: Vec<_> = self.stalls.iter().collect();
        v.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        v
    }

    /// Totals per kind of op over all fds.
    pub fn per_op(&self) -> BTreeMap<OpKind, OpStats> {
        let mut out: BTreeMap<OpKind, OpStats> = BTreeMap::new();
        for ops in self.per_fd.values() {
            for (kind, stats) in ops {
                out.entry(*kind).or_default().merge(stats);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_buckets_like_quantize() {
        let mut h = Log2Hist::default();
        for v in [0, 1, 2, 3, 4, 7, 8, 1000] {
            h.record(v);
        }
        let b = h.buckets();
        assert_eq!(b[0], (0, 1));
        assert_eq!(b[1], (1, 1));
        assert_eq!(b[2], (2, 2));
        assert_eq!(b[3], (4, 2));
        assert_eq!(b[4], (8, 1));
        assert_eq!(*b.last().unwrap(), (512, 1));
        assert_eq!(h.total(), 8);
        assert_eq!(h.buckets().len(), 11);
        assert_eq!(Log2Hist::from_buckets(&b), Some(h));
        assert_eq!(Log2Hist::from_buckets(&[(3, 1)]), None);
    }
}
