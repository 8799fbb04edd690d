//! Properties over damaged versions of a real recording: reordered,
//! truncated at either end, duplicated, with losses. Whatever the damage,
//! nothing panics, no op holds another fd's or thread's syscalls, and the
//! writers still write. Where the damage is honest (a cut, or losses
//! reported where they happened), every op that claims agreement is one the
//! intact recording also has: damage makes ops incomplete or flagged, never
//! wrong.

mod support;

use std::sync::OnceLock;

use portsnoop::correlate::{Op, Record, Summary};
use portsnoop::event::{Event, OpKind, ProcessEvent, ProcessEventKind, Syscall, SyscallName};
use portsnoop::output::json::Json;
use portsnoop::output::summary::SummaryReport;
use portsnoop::output::table::Table;
use portsnoop::output::Output;
use proptest::prelude::*;
use support::{correlate, load_recording, ops};

/// The recordings damaged here: echo-mio (one thread) and echo-tokio
/// (worker threads, a dup'd epoll fd).
const RECORDINGS: [&str; 2] = ["echo_mio_session.jsonl", "echo_tokio_session.jsonl"];

fn recording(which: usize) -> &'static [Event] {
    static EVENTS: OnceLock<Vec<Vec<Event>>> = OnceLock::new();
    &EVENTS.get_or_init(|| RECORDINGS.iter().map(|r| load_recording(r)).collect())[which]
}

/// The intact recording's ops.
fn intact_ops(which: usize) -> &'static [Op] {
    static OPS: OnceLock<Vec<Vec<Op>>> = OnceLock::new();
    &OPS.get_or_init(|| {
        (0..RECORDINGS.len())
            .map(|i| {
                let (records, _) = correlate(recording(i).to_vec());
                ops(&records).into_iter().cloned().collect()
            })
            .collect()
    })[which]
}

/// One way of damaging a stream; indices are taken modulo its length.
#[derive(Clone, Debug)]
enum Damage {
    /// Two events trade places (ring-buffer order across CPUs, far apart).
    Swap(usize, usize),
    /// An event moves a few places later (nearly-in-order submission).
    Nudge(usize, usize),
    /// An event is delivered twice.
    Duplicate(usize),
    /// An event vanishes without a trace (a bug elsewhere).
    Drop(usize),
    /// Events vanish and the engine says so where they were.
    Lose(usize, usize),
    /// The process ends here.
    End(usize),
    /// An event gets an absurd time and duration (a clock or decoding bug).
    Retime(usize, u64, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::Swap(a, b)),
        (any::<usize>(), 1usize..8).prop_map(|(a, n)| Damage::Nudge(a, n)),
        any::<usize>().prop_map(Damage::Duplicate),
        any::<usize>().prop_map(Damage::Drop),
        (any::<usize>(), 1usize..5).prop_map(|(a, n)| Damage::Lose(a, n)),
        any::<usize>().prop_map(Damage::End),
        (any::<usize>(), any::<u64>(), any::<u64>()).prop_map(|(a, t, d)| Damage::Retime(a, t, d)),
    ]
}

fn apply(stream: &mut Vec<Event>, d: &Damage) {
    let n = stream.len();
    if n == 0 {
        return;
    }
    match *d {
        Damage::Swap(a, b) => stream.swap(a % n, b % n),
        Damage::Nudge(a, k) => {
            let a = a % n;
            let e = stream.remove(a);
            stream.insert((a + k).min(n - 1), e);
        }
        Damage::Duplicate(a) => {
            let e = stream[a % n].clone();
            stream.insert(a % n, e);
        }
        Damage::Drop(a) => {
            stream.remove(a % n);
        }
        Damage::Lose(a, k) => {
            let a = a % n;
            let gone = stream.drain(a..(a + k).min(n)).count();
            let ts_ns = stream.get(a).map_or(0, Event::ts_ns);
            stream.insert(
                a,
                Event::Lost {
                    ts_ns,
                    count: gone as u64,
                },
            );
        }
        Damage::Retime(a, ts, dur) => match &mut stream[a % n] {
            Event::Syscall(x) => (x.ts_ns, x.dur_ns) = (ts, dur),
            Event::CloseEnter(x) => x.ts_ns = ts,
            Event::EpollCtl(x) => (x.ts_ns, x.dur_ns) = (ts, dur),
            Event::EpollWait(x) => (x.ts_ns, x.dur_ns) = (ts, dur),
            Event::Probe(x) => x.ts_ns = ts,
            Event::Lost { ts_ns, .. } => *ts_ns = ts,
            Event::Process(x) => x.ts_ns = ts,
            Event::Socket(x) => x.ts_ns = ts,
            Event::Tcp(x) => x.ts_ns = ts,
            Event::SlowSyscall(x) => (x.ts_ns, x.dur_ns) = (ts, dur),
            Event::OffCpu(x) => x.ts_ns = ts,
        },
        Damage::End(a) => {
            let a = a % n;
            let ts_ns = stream[a].ts_ns();
            stream.insert(
                a,
                Event::Process(ProcessEvent {
                    ts_ns,
                    pid: 1,
                    tid: 24609,
                    kind: ProcessEventKind::Exit { code: 9 },
                }),
            );
        }
    }
}

/// The same operation: both sides and every syscall. The enclosing
/// callback is left out: a cut can take the callback's entry away from an
/// op that is otherwise whole.
fn same_op(a: &Op, b: &Op) -> bool {
    (
        a.kind,
        a.tid,
        a.fd,
        a.entry_ts_ns,
        a.return_ts_ns,
        a.user_rv,
        &a.syscalls,
        a.kernel_ns,
        a.user_ns,
        a.closure,
    ) == (
        b.kind,
        b.tid,
        b.fd,
        b.entry_ts_ns,
        b.return_ts_ns,
        b.user_rv,
        &b.syscalls,
        b.kernel_ns,
        b.user_ns,
        b.closure,
    )
}

/// Every op that claims agreement is an op of the intact recording.
fn agreeing_ops_are_real(which: usize, records: &[Record]) -> Result<(), TestCaseError> {
    for op in ops(records) {
        if op.mismatch.is_none() && op.incomplete.is_none() {
            prop_assert!(
                intact_ops(which).iter().any(|real| same_op(op, real)),
                "an op claims agreement but the intact recording has no such op: {:?}",
                op
            );
        }
    }
    Ok(())
}

/// What holds whatever the damage.
fn invariants(input: &[Event], records: &[Record], summary: &Summary) -> Result<(), TestCaseError> {
    let given: Vec<&Syscall> = input
        .iter()
        .filter_map(|e| match e {
            Event::Syscall(s) => Some(s),
            _ => None,
        })
        .collect();
    let ops = ops(records);
    for op in &ops {
        for s in &op.syscalls {
            prop_assert_eq!(
                (s.fd, s.tid),
                (op.fd, op.tid),
                "foreign syscall in {:?}",
                op
            );
            prop_assert!(given.contains(&s), "a syscall nobody made: {:?}", s);
        }
        prop_assert!(op.syscalls.len() <= 64);
        // What a loss may have caused is never counted as a disagreement.
        if op
            .incomplete
            .as_deref()
            .is_some_and(|why| why.starts_with("events lost"))
        {
            prop_assert!(
                op.mismatch.is_none(),
                "a loss's op with a mismatch: {:?}",
                op
            );
        }
        if let Some(ret) = op.return_ts_ns {
            prop_assert!(op.user_ns <= ret.saturating_sub(op.entry_ts_ns));
        }
    }
    prop_assert_eq!(summary.ops as usize, ops.len());
    prop_assert_eq!(
        summary.mismatches as usize,
        ops.iter().filter(|o| o.mismatch.is_some()).count()
    );
    prop_assert_eq!(summary.events as usize, input.len());
    Ok(())
}

/// No op holds syscalls from two lives of its fd: between its first and
/// last syscall (in input order) the fd is neither closed nor handed out
/// again by accept. Meaningful only for streams without duplicates.
/// Whether the thread of the event at `i` may have entered it unseen: a
/// loss came before it, and the thread fired no entry probe since.
fn entry_maybe_lost(events: &[Event], i: usize) -> bool {
    let Some(lost) = events[..i]
        .iter()
        .rposition(|e| matches!(e, Event::Lost { .. }))
    else {
        return false;
    };
    let tid = events[i].tid();
    !events[lost + 1..i].iter().any(|e| {
        matches!(e, Event::Probe(p) if Some(p.tid) == tid && p.name.op().is_some_and(|(_, entry)| entry))
    })
}

fn no_op_spans_two_lives(input: &[Event], records: &[Record]) -> Result<(), TestCaseError> {
    for op in ops(records) {
        let at: Vec<usize> = op
            .syscalls
            .iter()
            .filter_map(|s| {
                input
                    .iter()
                    .position(|e| matches!(e, Event::Syscall(x) if x == s))
            })
            .collect();
        let (Some(&first), Some(&last)) = (at.iter().min(), at.iter().max()) else {
            continue;
        };
        for (i, e) in input.iter().enumerate().take(last).skip(first + 1) {
            if let Event::Syscall(x) = e {
                // A close whose entry may have been lost freed the number
                // before any op open now began: its record is no boundary.
                let closed = x.name == SyscallName::Close
                    && x.fd == op.fd
                    && x.rv == 0
                    && !entry_maybe_lost(input, i);
                let reused = x.name.op() == OpKind::Accept && x.rv == i64::from(op.fd);
                prop_assert!(
                    !(closed || reused),
                    "op spans two lives of fd {}: {:?} inside {:?}",
                    op.fd,
                    x,
                    op
                );
            }
        }
    }
    Ok(())
}

/// Rows the table must print for `records`: one per event, a wait's own row
/// plus one per returned event, one per disagreeing op.
fn expected_rows(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| match r {
            // Stall bookkeeping has no row of its own.
            Record::Event(portsnoop::event::Event::OffCpu(_)) => 0,
            Record::Event(_) => 1,
            Record::Stall(_) => 1,
            Record::Wait(w) => 1 + w.wait.events.len(),
            Record::Op(op) => usize::from(op.mismatch.is_some() || op.incomplete.is_some()),
        })
        .sum()
}

/// Both writers accept the records; the table's TIME never goes backwards
/// and no row is lost in its window; every JSON line parses and the
/// summary comes last.
fn writers_hold(records: &[Record], summary: &Summary) -> Result<(), TestCaseError> {
    let mut table = Vec::new();
    {
        let mut t = Table::new(&mut table);
        for r in records {
            t.record(r).unwrap();
        }
        t.finish(summary).unwrap();
    }
    let table = String::from_utf8(table).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    prop_assert_eq!(rows.len(), expected_rows(records));
    let times: Vec<f64> = rows
        .iter()
        .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    prop_assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "TIME goes backwards:\n{}",
        table
    );

    let mut json = Vec::new();
    {
        let mut j = Json::new(&mut json);
        for r in records {
            j.record(r).unwrap();
        }
        j.finish(summary).unwrap();
    }
    let json = String::from_utf8(json).unwrap();
    let mut last = None;
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        prop_assert!(v["type"].is_string());
        last = Some(v);
    }
    prop_assert_eq!(&last.unwrap()["type"], "summary");

    let mut report = Vec::new();
    SummaryReport::new(summary).write(&mut report).unwrap();
    prop_assert!(String::from_utf8(report).unwrap().contains("=== summary"));
    Ok(())
}

#[test]
fn the_intact_recordings_agree_everywhere() {
    for (which, name) in RECORDINGS.iter().enumerate() {
        let (records, summary) = correlate(recording(which).to_vec());
        assert_eq!(summary.mismatches, 0, "{name}");
        assert!(ops(&records).iter().all(|o| o.mismatch.is_none()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn damaged_recordings_never_mix_fds_or_threads(which in 0..RECORDINGS.len(), damages in proptest::collection::vec(damage(), 0..40)) {
        let mut stream = recording(which).to_vec();
        for d in &damages {
            apply(&mut stream, d);
        }
        let (records, summary) = correlate(stream.clone());
        invariants(&stream, &records, &summary)?;
        if !damages.iter().any(|d| matches!(d, Damage::Duplicate(_))) {
            no_op_spans_two_lives(&stream, &records)?;
        }
        writers_hold(&records, &summary)?;
    }

    /// Starting late (attaching to a running loop) or stopping early: ops
    /// cut in two are flagged, every other op is exactly as in the whole
    /// recording.
    #[test]
    fn cuts_flag_ops_and_never_make_a_wrong_one(which in 0..RECORDINGS.len(), a in any::<usize>(), b in any::<usize>()) {
        let all = recording(which);
        let (mut start, mut end) = (a % (all.len() + 1), b % (all.len() + 1));
        if start > end {
            std::mem::swap(&mut start, &mut end);
        }
        let cut = all[start..end].to_vec();
        let (records, summary) = correlate(cut.clone());
        invariants(&cut, &records, &summary)?;
        no_op_spans_two_lives(&cut, &records)?;
        agreeing_ops_are_real(which, &records)?;
    }

    /// Losses the engine reports where they happened: the ops they touch
    /// are marked, never wrong, and every lost event is counted.
    #[test]
    fn reported_losses_never_make_a_wrong_op(which in 0..RECORDINGS.len(), losses in proptest::collection::vec((any::<usize>(), 1usize..6), 1..6)) {
        let mut stream = recording(which).to_vec();
        for (at, n) in &losses {
            apply(&mut stream, &Damage::Lose(*at, *n));
        }
        let lost: u64 = stream
            .iter()
            .map(|e| match e {
                Event::Lost { count, .. } => *count,
                _ => 0,
            })
            .sum();
        let (records, summary) = correlate(stream.clone());
        invariants(&stream, &records, &summary)?;
        no_op_spans_two_lives(&stream, &records)?;
        agreeing_ops_are_real(which, &records)?;
        prop_assert_eq!(summary.lost_events, lost);
        writers_hold(&records, &summary)?;
    }
}
