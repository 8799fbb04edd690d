//! The correlation rules, one small event stream each, and properties over
//! arbitrary streams. No kernel involved.

use proptest::prelude::*;

use super::*;
use crate::event::{EpollCtl, EpollWait, ProcessEvent, ReadyEvent, SyscallName};

const T: u32 = 100;
/// The process of every event but where a test says otherwise.
const P: u32 = 99;

fn probe(ts: u64, tid: u32, name: ProbeName, args: [u64; 6]) -> Event {
    let strings = match name {
        ProbeName::CallbackEntry | ProbeName::CallbackReturn => vec!["echo".into()],
        _ => vec![],
    };
    Event::Probe(Probe {
        ts_ns: ts,
        pid: P,
        tid,
        name,
        args,
        strings,
    })
}

fn io(ts: u64, name: ProbeName, fd: i32, rv: i64) -> Event {
    probe(ts, T, name, [fd as u64, 0x1000, 64, 1, 7, rv as u64])
}

fn sys(ts: u64, name: SyscallName, fd: i32, rv: i64) -> Event {
    Event::Syscall(Syscall {
        ts_ns: ts,
        pid: P,
        tid: T,
        name,
        fd,
        rv,
        dur_ns: 3,
        arg: 64,
    })
}

fn close_probe(ts: u64, entry: bool, fd: i32) -> Event {
    let name = if entry {
        ProbeName::CloseEntry
    } else {
        ProbeName::CloseReturn
    };
    probe(ts, T, name, [fd as u64, 1, 7, 0, 0, 0])
}

fn run(events: Vec<Event>) -> (Vec<Record>, Summary) {
    run_filtered(events, Filter::default())
}

fn run_filtered(events: Vec<Event>, filter: Filter) -> (Vec<Record>, Summary) {
    let mut c = Correlator::new(filter);
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    let summary = c.finish(&mut out);
    (out, summary)
}

fn ops(records: &[Record]) -> Vec<&Op> {
    records
        .iter()
        .filter_map(|r| {
            if let Record::Op(op) = r {
                Some(&**op)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_read_lines_up_with_its_syscall() {
    let (out, s) = run(vec![
        io(10, ProbeName::ReadEntry, 9, 0),
        sys(11, SyscallName::Recvfrom, 9, 5),
        io(20, ProbeName::ReadReturn, 9, 5),
    ]);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    let op = ops[0];
    assert_eq!(
        (op.kind, op.fd, op.user_rv, op.syscalls.len()),
        (OpKind::Read, 9, Some(5), 1)
    );
    assert_eq!(
        (op.kernel_ns, op.user_ns, op.mismatch.clone()),
        (3, 7, None)
    );
    assert_eq!(s.per_fd[&9][&OpKind::Read].bytes, 5);
}

#[test]
fn eagain_pairs_with_the_kernels_eagain() {
    let (out, s) = run(vec![
        io(10, ProbeName::ReadEntry, 9, 0),
        sys(11, SyscallName::Recvfrom, 9, -11),
        io(20, ProbeName::ReadReturn, 9, -11),
    ]);
    assert_eq!(ops(&out)[0].mismatch, None);
    assert_eq!(s.per_fd[&9][&OpKind::Read].errors[&11], 1);
}

#[test]
fn disagreements_are_named() {
    let cases: Vec<(Vec<Event>, &str)> = vec![
        (
            vec![
                io(1, ProbeName::ReadEntry, 9, 0),
                sys(2, SyscallName::Recvfrom, 9, 4),
                io(3, ProbeName::ReadReturn, 9, 5),
            ],
            "user rv 5 != kernel rv 4",
        ),
        (
            vec![
                io(1, ProbeName::WriteEntry, 9, 0),
                io(3, ProbeName::WriteReturn, 9, 5),
            ],
            "write op with no syscall",
        ),
        (
            vec![
                io(1, ProbeName::ReadEntry, 9, 0),
                sys(2, SyscallName::Sendto, 9, 4),
                io(3, ProbeName::ReadReturn, 9, 4),
            ],
            "sendto syscall inside read op",
        ),
        (
            vec![io(3, ProbeName::ReadReturn, 9, 4)],
            "read return without entry",
        ),
    ];
    for (events, want) in cases {
        let (out, s) = run(events);
        let op = ops(&out)[0].clone();
        assert!(
            op.mismatch.as_deref().is_some_and(|m| m.contains(want)),
            "{:?} vs {want}",
            op.mismatch
        );
        assert_eq!(s.mismatches, 1);
    }
}

#[test]
fn a_second_entry_gives_up_the_first() {
    let (out, _) = run(vec![
        io(1, ProbeName::ReadEntry, 9, 0),
        io(2, ProbeName::ReadEntry, 9, 0),
        sys(3, SyscallName::Recvfrom, 9, 4),
        io(4, ProbeName::ReadReturn, 9, 4),
    ]);
    let ops = ops(&out);
    // Nothing was lost: the app fired an entry and never its return.
    assert_eq!(
        (ops[0].mismatch.as_deref(), ops[0].incomplete.as_deref()),
        (Some("read entry without return"), None)
    );
    assert_eq!((ops[1].mismatch.clone(), ops[1].syscalls.len()), (None, 1));
}

#[test]
fn orphan_syscalls_only_on_fds_the_eventer_uses() {
    let (out, s) = run(vec![
        sys(1, SyscallName::Write, 4, 8), // an eventfd the loop never names: not ours to judge
        io(2, ProbeName::ReadEntry, 9, 0),
        sys(3, SyscallName::Recvfrom, 9, 4),
        io(4, ProbeName::ReadReturn, 9, 4),
        sys(5, SyscallName::Recvfrom, 9, 4), // on an eventer fd, outside any op
    ]);
    let ops = ops(&out);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[1].mismatch.as_deref(),
        Some("syscall without eventer op")
    );
    assert_eq!(s.orphan_syscalls, 1);
}

#[test]
fn syscalls_without_an_eventer_probe_are_never_orphans() {
    // echo-tokio shuts its write side down inside the echo task: there is
    // no eventer probe for shutdown (or connect) to wrap it in.
    let (out, s) = run(vec![
        io(1, ProbeName::ReadEntry, 9, 0),
        sys(2, SyscallName::Recvfrom, 9, 0),
        io(3, ProbeName::ReadReturn, 9, 0),
        sys(4, SyscallName::Shutdown, 9, 0),
        sys(5, SyscallName::Connect, 9, -115),
    ]);
    assert_eq!(ops(&out).len(), 1);
    assert_eq!((s.mismatches, s.orphan_syscalls), (0, 0));
    let shown = out
        .iter()
        .filter(|r| matches!(r, Record::Event(Event::Syscall(_))))
        .count();
    assert_eq!(shown, 3, "they are still shown as syscalls");
}

#[test]
fn threads_without_probes_leave_no_state() {
    let mut c = Correlator::new(Filter::default());
    let mut out = Vec::new();
    for tid in 0..10_000u32 {
        c.push(
            Event::Syscall(Syscall {
                ts_ns: u64::from(tid),
                pid: P,
                tid,
                name: SyscallName::Write,
                fd: 1,
                rv: 8,
                dur_ns: 1,
                arg: 8,
            }),
            &mut out,
        );
    }
    assert!(c.threads.is_empty(), "{} thread entries", c.threads.len());
    assert_eq!(out.len(), 10_000, "their syscalls are still shown");
}

#[test]
fn callbacks_frame_the_ops_inside_them() {
    let (out, _) = run(vec![
        probe(1, T, ProbeName::CallbackEntry, [5, 5, 0, 9, 1, 1]),
        io(2, ProbeName::ReadEntry, 9, 0),
        sys(3, SyscallName::Recvfrom, 9, 4),
        io(4, ProbeName::ReadReturn, 9, 4),
        probe(5, T, ProbeName::CallbackReturn, [5, 5, 0, 1, 0, 0]),
    ]);
    let ops = ops(&out);
    assert_eq!(ops[0].callback.as_deref(), Some("echo"));
    assert_eq!(
        (
            ops[1].kind,
            ops[1].fd,
            ops[1].user_rv,
            ops[1].mismatch.clone()
        ),
        (OpKind::Callback, 9, Some(1), None)
    );
}

#[test]
fn accepts_close_and_fd_reuse_never_merge() {
    let accept = |ts, rv| {
        vec![
            probe(ts, T, ProbeName::AcceptEntry, [3, 0, 0, 1, 1, 0]),
            sys(ts + 1, SyscallName::Accept4, 3, rv),
            probe(
                ts + 2,
                T,
                ProbeName::AcceptReturn,
                [3, 0, 0, 1, 1, rv as u64],
            ),
        ]
    };
    let mut events = accept(10, 9);
    events.extend([
        io(20, ProbeName::ReadEntry, 9, 0),
        sys(21, SyscallName::Recvfrom, 9, 3),
        io(22, ProbeName::ReadReturn, 9, 3),
    ]);
    events.extend([
        close_probe(30, true, 9),
        sys(31, SyscallName::Close, 9, 0),
        close_probe(32, false, 9),
    ]);
    events.extend(accept(40, 9)); // the same number again
    events.extend([
        io(50, ProbeName::ReadEntry, 9, 0),
        sys(51, SyscallName::Recvfrom, 9, 7),
        io(52, ProbeName::ReadReturn, 9, 7),
    ]);
    let (out, s) = run(events);
    let reads: Vec<_> = ops(&out)
        .into_iter()
        .filter(|o| o.kind == OpKind::Read)
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(
        reads[0].syscalls.iter().map(|s| s.rv).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(
        reads[1].syscalls.iter().map(|s| s.rv).collect::<Vec<_>>(),
        vec![7]
    );
    assert_eq!(s.mismatches, 0);
}

#[test]
fn an_op_left_open_across_a_close_and_reuse_ends_at_the_close() {
    const T2: u32 = T + 1;
    let on = |tid, ts, name, fd, rv| {
        Event::Syscall(Syscall {
            ts_ns: ts,
            pid: P,
            tid,
            name,
            fd,
            rv,
            dur_ns: 3,
            arg: 0,
        })
    };
    let (out, s) = run(vec![
        io(10, ProbeName::ReadEntry, 9, 0),
        on(T, 11, SyscallName::Recvfrom, 9, 3),
        // The read's return never comes (and no loss is reported); another
        // thread closes fd 9 and accepts a new connection on the number.
        on(T2, 20, SyscallName::Close, 9, 0),
        on(T2, 30, SyscallName::Accept4, 3, 9),
        on(T, 40, SyscallName::Recvfrom, 9, 7),
    ]);
    let reads: Vec<_> = ops(&out)
        .into_iter()
        .filter(|o| o.kind == OpKind::Read)
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(
        reads[0].syscalls.iter().map(|s| s.rv).collect::<Vec<_>>(),
        vec![3],
        "the new life's recvfrom stays out of the old read"
    );
    assert_eq!(
        reads[0].mismatch.as_deref(),
        Some("fd closed during read op")
    );
    assert_eq!(
        reads[0].incomplete, None,
        "nothing is missing: it never returned"
    );
    let closes: Vec<_> = ops(&out)
        .into_iter()
        .filter(|o| o.kind == OpKind::Close)
        .map(|o| (o.tid, o.mismatch.as_deref()))
        .collect();
    assert_eq!(
        closes,
        [(T2, Some("syscall without eventer op"))],
        "closing the eventer's fd behind its back is shown too"
    );
    assert_eq!(s.mismatches, 2);

    // Reuse by accept alone ends it too (the close was not traced).
    let (out, _) = run(vec![
        io(10, ProbeName::WriteEntry, 9, 0),
        on(T2, 30, SyscallName::Accept4, 3, 9),
        on(T, 40, SyscallName::Sendto, 9, 7),
    ]);
    let ops = ops(&out);
    assert_eq!(
        ops[0].mismatch.as_deref(),
        Some("fd reused by accept during write op")
    );
    assert!(ops[0].syscalls.is_empty());
}

#[test]
fn a_close_op_survives_its_own_close_syscall() {
    let (out, s) = run(vec![
        close_probe(1, true, 9),
        sys(2, SyscallName::Close, 9, 0),
        close_probe(3, false, 9),
    ]);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0].kind, ops[0].mismatch.clone()),
        (OpKind::Close, None)
    );
    assert_eq!(s.mismatches, 0);
}

#[test]
fn waits_resolve_through_epoll_ctl_and_dup_fds() {
    let ctl = |ts, epfd, op, fd, data| {
        Event::EpollCtl(EpollCtl {
            ts_ns: ts,
            pid: P,
            tid: T,
            epfd,
            op,
            fd,
            events: 1,
            data,
            rv: 0,
            dur_ns: 1,
        })
    };
    let wait = |ts, epfd, datas: &[u64]| {
        Event::EpollWait(EpollWait {
            ts_ns: ts,
            pid: P,
            tid: T,
            name: "epoll_wait",
            epfd,
            rv: datas.len() as i64,
            dur_ns: 5,
            events: datas
                .iter()
                .map(|d| ReadyEvent {
                    events: 1,
                    data: *d,
                })
                .collect(),
        })
    };
    let (out, _) = run(vec![
        ctl(1, 4, 1, 9, 100),
        wait(2, 4, &[100]),
        ctl(3, 5, 1, 10, 200),
        wait(4, 3, &[200]),
        wait(5, 4, &[300]),
    ]);
    let waits: Vec<&Wait> = out
        .iter()
        .filter_map(|r| {
            if let Record::Wait(w) = r {
                Some(w)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(waits[0].fds, vec![Some(9)]);
    assert_eq!(
        waits[1].fds,
        vec![Some(10)],
        "registered through a dup of the epoll fd"
    );
    assert_eq!(
        waits[2].fds,
        vec![None],
        "never registered: unknown, not guessed"
    );
}

#[test]
fn a_wait_waits_briefly_for_another_threads_epoll_ctl() {
    // Thread 2's ADD takes effect inside its epoll_ctl; thread 1's wait can
    // return the new fd and be submitted before the ADD's record.
    let w = Event::EpollWait(EpollWait {
        ts_ns: 5,
        pid: P,
        tid: 1,
        name: "epoll_wait",
        epfd: 4,
        rv: 1,
        dur_ns: 5,
        events: vec![ReadyEvent {
            events: 1,
            data: 77,
        }],
    });
    let c = Event::EpollCtl(EpollCtl {
        ts_ns: 4,
        pid: P,
        tid: 2,
        epfd: 4,
        op: 1,
        fd: 12,
        events: 1,
        data: 77,
        rv: 0,
        dur_ns: 3,
    });
    let (out, _) = run(vec![w, c]);
    let fds = out.iter().find_map(|r| {
        if let Record::Wait(w) = r {
            Some(w.fds.clone())
        } else {
            None
        }
    });
    assert_eq!(fds, Some(vec![Some(12)]));
}

#[test]
fn lost_events_make_open_ops_incomplete_and_are_counted() {
    let (out, s) = run(vec![
        io(1, ProbeName::ReadEntry, 9, 0),
        sys(2, SyscallName::Recvfrom, 9, 4),
        Event::Lost {
            ts_ns: 3,
            count: 17,
        },
        io(4, ProbeName::WriteReturn, 9, 4), // its entry was in the gap
    ]);
    let ops = ops(&out);
    assert!(
        ops.iter()
            .all(|o| o.incomplete.as_deref() == Some("events lost") && o.mismatch.is_none()),
        "{ops:?}"
    );
    assert_eq!((s.lost_events, s.incomplete, s.mismatches), (17, 2, 0));
}

#[test]
fn a_loss_reported_after_its_damage_still_leads_the_reason() {
    // The write's syscall and return and the next read's entry were lost;
    // the read's recvfrom, submitted concurrently from another CPU, arrives
    // before the loss report. (The kernel side reports a loss before the
    // next record of the thread that lost it, but not across threads.)
    let (out, _) = run(vec![
        io(1, ProbeName::WriteEntry, 9, 0),
        sys(5, SyscallName::Recvfrom, 9, 16),
        Event::Lost { ts_ns: 6, count: 3 },
    ]);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    assert_eq!(
        ops[0].mismatch, None,
        "maybe the loss's doing: not a mismatch"
    );
    assert_eq!(
        ops[0].incomplete.as_deref(),
        Some("events lost (before it: recvfrom syscall inside write op)")
    );
}

#[test]
fn process_end_flushes_open_ops() {
    let (out, s) = run(vec![
        io(1, ProbeName::ReadEntry, 9, 0),
        Event::Process(ProcessEvent {
            ts_ns: 2,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Exit { code: 9 },
        }),
    ]);
    assert_eq!(ops(&out)[0].incomplete.as_deref(), Some("process exited"));
    assert_eq!((s.incomplete, s.mismatches), (1, 0));
    assert_eq!(s.process_end.as_deref(), Some("exit (wait status 9)"));
}

#[test]
fn filters_keep_only_the_fd_and_thread_asked_for() {
    let events = vec![
        io(1, ProbeName::ReadEntry, 9, 0),
        sys(2, SyscallName::Recvfrom, 9, 1),
        io(3, ProbeName::ReadReturn, 9, 1),
        io(4, ProbeName::ReadEntry, 10, 0),
        sys(5, SyscallName::Recvfrom, 10, 1),
        io(6, ProbeName::ReadReturn, 10, 1),
    ];
    let (out, s) = run_filtered(
        events.clone(),
        Filter {
            fd: Some(10),
            tid: None,
        },
    );
    assert!(ops(&out).iter().all(|o| o.fd == 10));
    assert_eq!(s.ops, 1);
    let (out, _) = run_filtered(
        events,
        Filter {
            fd: None,
            tid: Some(T + 1),
        },
    );
    assert!(ops(&out).is_empty());
}

#[test]
fn per_thread_state_is_bounded() {
    let mut events = Vec::new();
    for fd in 0..(MAX_OPEN_OPS as i32 + 10) {
        events.push(io(fd as u64, ProbeName::ReadEntry, fd + 20, 0));
    }
    events.push(io(1000, ProbeName::ReadEntry, 5, 0));
    for i in 0..(MAX_SYSCALLS_PER_OP as u64 + 5) {
        events.push(sys(1001 + i, SyscallName::Recvfrom, 5, -4));
    }
    let (out, s) = run(events);
    assert!(
        ops(&out)
            .iter()
            .filter(|o| o.mismatch.as_deref() == Some("read entry without return"))
            .count()
            >= 10
    );
    assert_eq!(s.syscalls_cut, 5);
}

/// Arbitrary events over a few threads and fds.
fn any_event() -> impl Strategy<Value = Event> {
    let tid = 1u32..4;
    let fd = 3i32..7;
    let rv = prop_oneof![Just(-11i64), Just(0i64), 1i64..100];
    prop_oneof![
        (0u64..1000, tid.clone(), 0usize..13, fd.clone(), rv.clone()).prop_map(
            |(ts, tid, n, fd, rv)| {
                Event::Syscall(Syscall {
                    ts_ns: ts,
                    pid: P,
                    tid,
                    name: SyscallName::ALL[n],
                    fd,
                    rv,
                    dur_ns: 1,
                    arg: 0,
                })
            }
        ),
        (
            0u64..1000,
            tid.clone(),
            0usize..11,
            fd.clone(),
            rv.clone(),
            0u64..3
        )
            .prop_map(|(ts, tid, n, fd, rv, cl)| {
                let name = ProbeName::ALL[n];
                let args = match name {
                    ProbeName::CallbackEntry => [cl, cl, 0, fd as u64, 1, 1],
                    ProbeName::CallbackReturn => [cl, cl, 0, 1, 0, 0],
                    ProbeName::CloseEntry | ProbeName::CloseReturn => {
                        [fd as u64, 1, cl, rv as u64, 0, 0]
                    }
                    _ => [fd as u64, 0, 64, 1, cl, rv as u64],
                };
                probe(ts, tid, name, args)
            }),
        (0u64..1000, tid.clone(), fd.clone(), 0u64..5, 1i32..4).prop_map(
            |(ts, tid, fd, data, op)| {
                Event::EpollCtl(EpollCtl {
                    ts_ns: ts,
                    pid: P,
                    tid,
                    epfd: 2,
                    op,
                    fd,
                    events: 1,
                    data,
                    rv: 0,
                    dur_ns: 1,
                })
            }
        ),
        (0u64..1000, tid, proptest::collection::vec(0u64..6, 0..4)).prop_map(|(ts, tid, datas)| {
            Event::EpollWait(EpollWait {
                ts_ns: ts,
                pid: P,
                tid,
                name: "epoll_wait",
                epfd: 2,
                rv: datas.len() as i64,
                dur_ns: 1,
                events: datas
                    .into_iter()
                    .map(|d| ReadyEvent { events: 1, data: d })
                    .collect(),
            })
        }),
        (0u64..1000, 1u64..10).prop_map(|(ts, count)| Event::Lost { ts_ns: ts, count }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the stream (random, hence reordered, truncated and
    /// duplicated), nothing panics and no op holds another fd's or thread's
    /// syscalls.
    #[test]
    fn ops_never_mix_fds_or_threads(events in proptest::collection::vec(any_event(), 0..200), dup in 0usize..20) {
        let mut stream = events.clone();
        stream.extend(events.iter().take(dup).cloned());
        let (out, s) = run(stream);
        let ops = ops(&out);
        for op in &ops {
            for sc in &op.syscalls {
                prop_assert_eq!(sc.fd, op.fd);
                prop_assert_eq!(sc.tid, op.tid);
            }
            prop_assert!(op.syscalls.len() <= MAX_SYSCALLS_PER_OP);
        }
        prop_assert_eq!(s.ops as usize, ops.len());
    }
}

/// `e` stamped `ts`: a stream stamped with positions has unique, ordered
/// syscalls, so an op's syscalls map back to where they were.
fn at(mut e: Event, ts: u64) -> Event {
    match &mut e {
        Event::Syscall(x) => x.ts_ns = ts,
        Event::CloseEnter(x) => x.ts_ns = ts,
        Event::EpollCtl(x) => x.ts_ns = ts,
        Event::EpollWait(x) => x.ts_ns = ts,
        Event::Probe(x) => x.ts_ns = ts,
        Event::Lost { ts_ns, .. } => *ts_ns = ts,
        Event::Process(x) => x.ts_ns = ts,
        Event::Socket(x) => x.ts_ns = ts,
        Event::Tcp(x) => x.ts_ns = ts,
        Event::SlowSyscall(x) => x.ts_ns = ts,
        Event::OffCpu(x) => x.ts_ns = ts,
    }
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A close ends an fd's life and an accept returning its number starts
    /// the next: no op holds syscalls from both sides of either. (A close
    /// by a thread whose entry into it may have been lost freed the number
    /// before any op open now began: its record is no boundary.)
    #[test]
    fn ops_never_span_two_lives_of_an_fd(events in proptest::collection::vec(any_event(), 0..200)) {
        let events: Vec<Event> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| at(e, i as u64))
            .collect();
        let (out, _) = run(events.clone());
        for op in ops(&out) {
            let first = op.syscalls.iter().map(|s| s.ts_ns).min();
            let last = op.syscalls.iter().map(|s| s.ts_ns).max();
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            for (i, e) in events.iter().enumerate().take(last as usize).skip(first as usize + 1) {
                if let Event::Syscall(x) = e {
                    let closed = x.name.op() == OpKind::Close
                        && x.fd == op.fd
                        && x.rv == 0
                        && !entry_maybe_lost(&events, i);
                    let reused = x.name.op() == OpKind::Accept && x.rv == i64::from(op.fd);
                    prop_assert!(!(closed || reused), "{:?} inside {:?}", x, op);
                }
            }
        }
    }
}

/// Whether the thread of the syscall at `i` may have entered it unseen: a
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

fn sys_on(ts: u64, tid: u32, name: SyscallName, fd: i32, rv: i64) -> Event {
    match sys(ts, name, fd, rv) {
        Event::Syscall(s) => Event::Syscall(Syscall { tid, ..s }),
        _ => unreachable!(),
    }
}

fn close_enter(ts: u64, tid: u32, fd: i32) -> Event {
    Event::CloseEnter(crate::event::CloseEnter {
        ts_ns: ts,
        pid: P,
        tid,
        fd,
    })
}

fn run_after_attach(before: &[u32], events: Vec<Event>) -> (Vec<Record>, Summary) {
    let mut c = Correlator::new(Filter::default());
    c.threads_before_trace(before.iter().copied());
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    let summary = c.finish(&mut out);
    (out, summary)
}

#[test]
fn what_a_thread_began_before_the_trace_is_incomplete_not_a_mismatch() {
    // Attached while thread T was inside a callback and a read: the
    // entries were never recorded.
    let (out, s) = run_after_attach(
        &[T],
        vec![
            io(1, ProbeName::WriteEntry, 9, 0),
            sys(2, SyscallName::Sendto, 9, 4),
            io(3, ProbeName::WriteReturn, 9, 4),
            probe(4, T, ProbeName::CallbackReturn, [5, 5, 0, 1, 0, 0]),
        ],
    );
    assert_eq!((s.mismatches, s.incomplete), (0, 1), "{out:?}");
    let cb = ops(&out).into_iter().find(|o| o.kind == OpKind::Callback);
    assert_eq!(
        cb.and_then(|o| o.incomplete.clone()).as_deref(),
        Some("began before the trace")
    );

    // The read's syscall and return, with its entry before the trace.
    let (out, s) = run_after_attach(
        &[T],
        vec![
            io(1, ProbeName::WriteEntry, 9, 0),
            sys(2, SyscallName::Sendto, 9, 4),
            io(3, ProbeName::WriteReturn, 9, 4),
        ],
    );
    assert_eq!((s.mismatches, s.incomplete), (0, 0), "{out:?}");
    let (out, s) = run_after_attach(
        &[T],
        vec![
            sys(1, SyscallName::Recvfrom, 9, 4),
            io(2, ProbeName::ReadReturn, 9, 4),
            // From its first entry on, the thread is known.
            io(3, ProbeName::WriteEntry, 9, 0),
            sys(4, SyscallName::Sendto, 9, 4),
            io(5, ProbeName::WriteReturn, 9, 4),
            io(6, ProbeName::ReadReturn, 9, 4),
        ],
    );
    let why: Vec<_> = ops(&out)
        .iter()
        .map(|o| (o.mismatch.clone(), o.incomplete.clone()))
        .collect();
    assert_eq!(
        why,
        vec![
            (None, Some("began before the trace".to_string())),
            (None, None),
            (Some("read return without entry".to_string()), None),
        ]
    );
    assert_eq!((s.mismatches, s.incomplete), (1, 1));
}

#[test]
fn a_thread_started_after_the_trace_began_is_held_to_every_rule() {
    let (out, s) = run_after_attach(
        &[T + 1],
        vec![
            io(1, ProbeName::ReadReturn, 9, 4),
            probe(2, T, ProbeName::CallbackReturn, [5, 5, 0, 1, 0, 0]),
        ],
    );
    assert_eq!((s.mismatches, s.incomplete), (2, 0), "{out:?}");
}

#[test]
fn after_a_loss_a_callback_return_without_entry_is_incomplete() {
    // The loss took the callback's entry; the thread then made a whole
    // read op (which syncs its ops, not how deep its callbacks are).
    let (out, s) = run(vec![
        probe(1, T, ProbeName::CallbackEntry, [5, 5, 0, 9, 1, 1]),
        probe(2, T, ProbeName::CallbackReturn, [5, 5, 0, 1, 0, 0]),
        Event::Lost { ts_ns: 3, count: 1 },
        io(4, ProbeName::ReadEntry, 9, 0),
        sys(5, SyscallName::Recvfrom, 9, 4),
        io(6, ProbeName::ReadReturn, 9, 4),
        probe(7, T, ProbeName::CallbackReturn, [6, 6, 0, 1, 0, 0]),
        // A thread first seen after the loss may have lost records too.
        probe(8, T + 1, ProbeName::CallbackReturn, [7, 7, 0, 1, 0, 0]),
        io(9, ProbeName::WriteReturn, 9, 4),
    ]);
    assert_eq!(
        s.mismatches, 1,
        "only the write return after a known read: {out:?}"
    );
    assert_eq!(s.incomplete, 2);
    for op in ops(&out)
        .iter()
        .filter(|o| o.kind == OpKind::Callback && o.entry_ts_ns > 3)
    {
        assert_eq!(op.incomplete.as_deref(), Some("events lost"), "{op:?}");
        assert_eq!(op.mismatch, None);
    }
}

#[test]
fn a_close_ends_the_fd_at_its_entry_so_a_racing_accept_is_no_mismatch() {
    // Thread A closes fd 12; the kernel frees the number at once and
    // thread B's accept4 returns 12, all recorded before A's close
    // returns from the kernel.
    const A: u32 = 1;
    const B: u32 = 2;
    let cl = |ts, tid, name, fd, rv: i64| probe(ts, tid, name, [fd as u64, 1, 7, rv as u64, 0, 0]);
    let acc = |ts, name, rv: i64| probe(ts, B, name, [3, 0, 0, 0, 1, rv as u64]);
    let rd = |ts, name, rv: i64| probe(ts, B, name, [12, 0x1000, 64, 1, 7, rv as u64]);
    let stream = vec![
        cl(1, A, ProbeName::CloseEntry, 12, 0),
        close_enter(2, A, 12),
        acc(3, ProbeName::AcceptEntry, 0),
        sys_on(4, B, SyscallName::Accept4, 3, 12),
        acc(5, ProbeName::AcceptReturn, 12),
        rd(6, ProbeName::ReadEntry, 0),
        sys_on(7, B, SyscallName::Recvfrom, 12, 5),
        sys_on(2, A, SyscallName::Close, 12, 0),
        cl(9, A, ProbeName::CloseReturn, 12, 0),
        rd(10, ProbeName::ReadReturn, 5),
        sys_on(11, B, SyscallName::Recvfrom, 12, 0), // not the eventer's read: an orphan
    ];
    let (out, s) = run(stream.clone());
    let got: Vec<_> = ops(&out)
        .iter()
        .map(|o| (o.kind, o.tid, o.syscalls.len(), o.mismatch.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (OpKind::Accept, B, 1, None),
            (OpKind::Close, A, 1, None),
            (OpKind::Read, B, 1, None),
            (
                OpKind::Read,
                B,
                1,
                Some("syscall without eventer op".into())
            ),
        ],
        "{out:?}"
    );
    assert_eq!(s.mismatches, 1);
    // Without the close's entry (an old recording), its record is where the
    // life ends: B's read, open on the new life, is taken for the old one's.
    let old: Vec<Event> = stream
        .into_iter()
        .filter(|e| !matches!(e, Event::CloseEnter(_)))
        .collect();
    assert!(run(old).1.mismatches > 1);
}

#[test]
fn a_close_entered_ends_other_threads_ops_on_the_fd_but_not_its_own() {
    const A: u32 = 1;
    const B: u32 = 2;
    let (out, s) = run(vec![
        probe(1, B, ProbeName::ReadEntry, [12, 0, 64, 1, 7, 0]),
        probe(2, A, ProbeName::CloseEntry, [12, 1, 7, 0, 0, 0]),
        close_enter(3, A, 12),
        sys_on(3, A, SyscallName::Close, 12, 0),
        probe(5, A, ProbeName::CloseReturn, [12, 1, 7, 0, 0, 0]),
    ]);
    let got: Vec<_> = ops(&out)
        .iter()
        .map(|o| (o.tid, o.mismatch.clone()))
        .collect();
    assert_eq!(
        got,
        vec![(B, Some("fd closed during read op".into())), (A, None)],
        "a read open while another thread closes its fd is a real race"
    );
    assert_eq!(s.mismatches, 1);
}

/// A correct multi-threaded event loop, simulated: threads accept, read,
/// write and close connections inside callbacks; the kernel hands out the
/// lowest free fd number and frees it at the entry of close. Each thread's
/// events are in its order; the threads' are interleaved as a scheduler
/// would. The `close_enter` goes out before the number is free, as the BPF
/// side submits it, so the stream is one a real kernel could produce.
mod simulated {
    use super::*;
    use std::collections::BTreeSet;

    /// What a thread does next, in the program's terms.
    #[derive(Clone, Copy, Debug)]
    pub enum Step {
        Accept,
        Read(usize),
        Write(usize),
        Close(usize),
    }

    #[derive(Default)]
    struct ThreadSim {
        /// Events decided but not yet emitted.
        queue: std::collections::VecDeque<Pending>,
        /// Its connections' fds, by slot, as the kernel chose them.
        conns: Vec<i32>,
        /// Slots planned so far, and those planned to be closed.
        slots: usize,
        closed: BTreeSet<usize>,
    }

    /// An event, or one whose fd the kernel decides when it happens.
    enum Pending {
        Ready(Event),
        /// accept4 returns the lowest free number, then the return probe.
        AcceptSyscall,
        AcceptReturn,
        /// close(2) entered: the number is free from here on.
        CloseEnter(usize),
    }

    pub struct Sim {
        threads: Vec<ThreadSim>,
        scripts: Vec<std::collections::VecDeque<Vec<Step>>>,
        used: BTreeSet<i32>,
        ts: u64,
        closure: u64,
        pub events: Vec<Event>,
    }

    const LISTENER: i32 = 3;

    impl Sim {
        /// `scripts[t]`: thread t's callbacks, each a few steps.
        pub fn new(scripts: Vec<Vec<Vec<Step>>>) -> Sim {
            Sim {
                threads: scripts.iter().map(|_| ThreadSim::default()).collect(),
                scripts: scripts.into_iter().map(Into::into).collect(),
                used: (0..=LISTENER + 1).collect(),
                ts: 0,
                closure: 100,
                events: Vec::new(),
            }
        }

        fn tid(t: usize) -> u32 {
            1000 + t as u32
        }

        /// Plans thread t's next callback, if its queue is empty.
        fn plan(&mut self, t: usize) -> bool {
            if !self.threads[t].queue.is_empty() {
                return true;
            }
            let Some(steps) = self.scripts[t].pop_front() else {
                return false;
            };
            let tid = Self::tid(t);
            self.closure += 1;
            let cl = self.closure;
            let th = &mut self.threads[t];
            let mut q = vec![Pending::Ready(probe(
                0,
                tid,
                ProbeName::CallbackEntry,
                [cl, cl, 0, 3, 1, 1],
            ))];
            // Connections are named by slot: the fd of one accepted in this
            // callback is chosen by the kernel only when it is accepted.
            let mut slots = th.slots;
            for step in steps {
                let live: Vec<usize> = (0..slots).filter(|j| !th.closed.contains(j)).collect();
                let pick = |i: usize| (!live.is_empty()).then(|| live[i % live.len()]);
                let step = match step {
                    Step::Read(i) | Step::Write(i) | Step::Close(i) if pick(i).is_none() => {
                        Step::Accept
                    }
                    s => s,
                };
                match step {
                    Step::Accept => {
                        q.push(Pending::Ready(probe(
                            0,
                            tid,
                            ProbeName::AcceptEntry,
                            [LISTENER as u64, 0, 0, 0, cl, 0],
                        )));
                        q.push(Pending::AcceptSyscall);
                        q.push(Pending::AcceptReturn);
                        slots += 1;
                    }
                    Step::Read(i) | Step::Write(i) | Step::Close(i) => {
                        let slot = pick(i).expect("checked above");
                        let (entry, sc, ret, rv) = match step {
                            Step::Read(_) => (
                                ProbeName::ReadEntry,
                                SyscallName::Recvfrom,
                                ProbeName::ReadReturn,
                                16,
                            ),
                            Step::Write(_) => (
                                ProbeName::WriteEntry,
                                SyscallName::Sendto,
                                ProbeName::WriteReturn,
                                16,
                            ),
                            _ => (
                                ProbeName::CloseEntry,
                                SyscallName::Close,
                                ProbeName::CloseReturn,
                                0,
                            ),
                        };
                        q.push(Pending::Ready(slot_probe(tid, entry, slot, cl, 0)));
                        if matches!(step, Step::Close(_)) {
                            q.push(Pending::CloseEnter(slot));
                            th.closed.insert(slot);
                        }
                        q.push(Pending::Ready(slot_sys(tid, sc, slot, rv)));
                        q.push(Pending::Ready(slot_probe(tid, ret, slot, cl, rv)));
                    }
                }
            }
            th.slots = slots;
            q.push(Pending::Ready(probe(
                0,
                tid,
                ProbeName::CallbackReturn,
                [cl, cl, 0, 1, 0, 0],
            )));
            th.queue.extend(q);
            true
        }

        /// Runs thread `t` one event further; false if it has finished.
        pub fn step(&mut self, t: usize) -> bool {
            if !self.plan(t) {
                return false;
            }
            let tid = Self::tid(t);
            self.ts += 1;
            let ts = self.ts;
            let th = &mut self.threads[t];
            let ev = match th.queue.pop_front().expect("planned") {
                Pending::Ready(e) => resolve_slots(e, &th.conns),
                Pending::AcceptSyscall => {
                    let fd = (0..)
                        .find(|n| !self.used.contains(n))
                        .expect("a free number");
                    self.used.insert(fd);
                    th.conns.push(fd);
                    sys_on(ts, tid, SyscallName::Accept4, LISTENER, fd.into())
                }
                Pending::AcceptReturn => {
                    let fd = *th.conns.last().expect("just accepted");
                    probe(
                        ts,
                        tid,
                        ProbeName::AcceptReturn,
                        [LISTENER as u64, 0, 0, 0, 0, fd as u64],
                    )
                }
                Pending::CloseEnter(slot) => {
                    let fd = th.conns[slot];
                    self.used.remove(&fd);
                    // Later events of this callback still name it by slot.
                    close_enter(ts, tid, fd)
                }
            };
            self.events.push(at(ev, ts));
            true
        }
    }

    // Steps name connections by their slot in the thread's list; the fd
    // goes in when the event is emitted, once the kernel has chosen it.
    const SLOT: u64 = 1 << 40;

    fn slot_probe(tid: u32, name: ProbeName, slot: usize, cl: u64, rv: i64) -> Event {
        let args = match name {
            ProbeName::CloseEntry | ProbeName::CloseReturn => {
                [SLOT + slot as u64, 1, cl, rv as u64, 0, 0]
            }
            _ => [SLOT + slot as u64, 0x1000, 64, 1, cl, rv as u64],
        };
        probe(0, tid, name, args)
    }

    fn slot_sys(tid: u32, name: SyscallName, slot: usize, rv: i64) -> Event {
        Event::Syscall(Syscall {
            ts_ns: 0,
            pid: P,
            tid,
            name,
            fd: -1 - slot as i32,
            rv,
            dur_ns: 1,
            arg: 64,
        })
    }

    fn resolve_slots(e: Event, conns: &[i32]) -> Event {
        match e {
            Event::Probe(mut p) if p.args[0] >= SLOT && p.name != ProbeName::CallbackEntry => {
                p.args[0] = conns[(p.args[0] - SLOT) as usize] as u64;
                Event::Probe(p)
            }
            Event::Syscall(mut s) if s.fd < 0 => {
                s.fd = conns[(-1 - s.fd) as usize];
                Event::Syscall(s)
            }
            e => e,
        }
    }

    pub fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Accept),
            (0usize..4).prop_map(Step::Read),
            (0usize..4).prop_map(Step::Write),
            (0usize..4).prop_map(Step::Close),
        ]
    }
}

/// Thread scripts and a schedule for the simulation.
fn any_program() -> impl Strategy<Value = (Vec<Vec<Vec<simulated::Step>>>, Vec<usize>)> {
    let callback = proptest::collection::vec(simulated::any_step(), 1..4);
    let thread = proptest::collection::vec(callback, 1..8);
    (
        proptest::collection::vec(thread, 2..4),
        proptest::collection::vec(0usize..4, 0..400),
    )
}

fn simulate(scripts: Vec<Vec<Vec<simulated::Step>>>, schedule: &[usize]) -> Vec<Event> {
    let n = scripts.len();
    let mut sim = simulated::Sim::new(scripts);
    for &t in schedule {
        sim.step(t % n);
    }
    // Then every thread to its end, round robin.
    while (0..n).fold(false, |any, t| sim.step(t) | any) {}
    sim.events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A correct program never yields a mismatch, however its threads
    /// interleave: closes racing accepts of the same number included.
    #[test]
    fn a_correct_multithreaded_loop_never_mismatches((scripts, schedule) in any_program()) {
        let events = simulate(scripts, &schedule);
        let (out, s) = run(events.clone());
        prop_assert_eq!(s.mismatches, 0, "{:?}\n{:?}", events, out.iter().filter(|r| matches!(r, Record::Op(o) if o.mismatch.is_some())).collect::<Vec<_>>());
        prop_assert_eq!(s.incomplete, 0);
    }

    /// Nor when tracing starts in the middle (threads running before it
    /// are named), nor when a stretch of events is lost (the loss reported
    /// before the next record, as the kernel side does).
    #[test]
    fn a_correct_loop_cut_by_attach_or_loss_never_mismatches(
        (scripts, schedule) in any_program(),
        start in 0usize..200,
        loss in proptest::option::of((0usize..300, 1usize..40)),
    ) {
        let threads: Vec<u32> = (0..scripts.len() as u32).map(|t| 1000 + t).collect();
        let events = simulate(scripts, &schedule);
        let mut cut: Vec<Event> = events.iter().skip(start.min(events.len())).cloned().collect();
        if let Some((at_, len)) = loss {
            let at_ = at_.min(cut.len());
            let end = (at_ + len).min(cut.len());
            let ts = cut.get(at_).map_or(0, Event::ts_ns);
            cut.splice(at_..end, [Event::Lost { ts_ns: ts, count: len as u64 }]);
        }
        let before: &[u32] = if start == 0 { &[] } else { &threads };
        let (out, s) = run_after_attach(before, cut.clone());
        prop_assert_eq!(s.mismatches, 0, "{:?}\n{:?}", cut, out.iter().filter(|r| matches!(r, Record::Op(o) if o.mismatch.is_some())).collect::<Vec<_>>());
    }
}

/// With `-f`: events of process `pid` (its main thread's tid is `pid`).
mod per_process {
    use super::*;

    const A: u32 = 10;
    const B: u32 = 20;

    fn io_in(pid: u32, ts: u64, name: ProbeName, fd: i32, rv: i64) -> Event {
        Event::Probe(Probe {
            ts_ns: ts,
            pid,
            tid: pid,
            name,
            args: [fd as u64, 0x1000, 64, 1, 7, rv as u64],
            strings: vec![],
        })
    }

    fn sys_in(pid: u32, ts: u64, name: SyscallName, fd: i32, rv: i64) -> Event {
        Event::Syscall(Syscall {
            ts_ns: ts,
            pid,
            tid: pid,
            name,
            fd,
            rv,
            dur_ns: 1,
            arg: 64,
        })
    }

    /// A close probe whose close returned 0.
    fn close_in(pid: u32, ts: u64, name: ProbeName, fd: i32) -> Event {
        Event::Probe(Probe {
            ts_ns: ts,
            pid,
            tid: pid,
            name,
            args: [fd as u64, 1, 7, 0, 0, 0],
            strings: vec![],
        })
    }

    fn close_enter_in(pid: u32, ts: u64, fd: i32) -> Event {
        Event::CloseEnter(crate::event::CloseEnter {
            ts_ns: ts,
            pid,
            tid: pid,
            fd,
        })
    }

    fn process(pid: u32, ts: u64, kind: ProcessEventKind) -> Event {
        Event::Process(ProcessEvent {
            ts_ns: ts,
            pid,
            tid: pid,
            kind,
        })
    }

    #[test]
    fn the_same_fd_number_in_two_processes_is_two_fds() {
        use ProbeName::*;
        let (out, s) = run(vec![
            // Both use "fd 5", interleaved.
            io_in(A, 1, ReadEntry, 5, 0),
            io_in(B, 2, ReadEntry, 5, 0),
            sys_in(A, 3, SyscallName::Recvfrom, 5, 3),
            // B's read ends and B closes its fd 5, then accepts a new 5,
            // while A's read on its own fd 5 is still open.
            sys_in(B, 4, SyscallName::Recvfrom, 5, 7),
            io_in(B, 5, ReadReturn, 5, 7),
            close_in(B, 6, CloseEntry, 5),
            close_enter_in(B, 7, 5),
            sys_in(B, 7, SyscallName::Close, 5, 0),
            close_in(B, 8, CloseReturn, 5),
            sys_in(B, 9, SyscallName::Accept4, 3, 5),
            // A syscall on B's new fd 5 outside any op: B's eventer has not
            // touched this life of it, so it is not an orphan in B.
            sys_in(B, 10, SyscallName::Write, 5, 2),
            io_in(A, 11, ReadReturn, 5, 3),
        ]);
        let ops = ops(&out);
        assert_eq!(s.mismatches, 0, "{ops:#?}");
        assert_eq!(s.orphan_syscalls, 0);
        let a: Vec<_> = ops.iter().filter(|o| o.pid == A).collect();
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].fd, a[0].user_rv, a[0].syscalls.len()),
            (5, Some(3), 1)
        );
        assert_eq!(a[0].syscalls[0].pid, A);
        assert_eq!(ops.iter().filter(|o| o.pid == B).count(), 2);
        assert!(ops.iter().all(|o| o.incomplete.is_none()));
    }

    #[test]
    fn an_orphan_is_an_orphan_of_its_own_process_only() {
        use ProbeName::*;
        let (out, s) = run(vec![
            io_in(A, 1, ReadEntry, 5, 0),
            sys_in(A, 2, SyscallName::Read, 5, 1),
            io_in(A, 3, ReadReturn, 5, 1),
            // B's fd 5 is not A's eventer fd.
            sys_in(B, 4, SyscallName::Read, 5, 1),
            // A's is.
            sys_in(A, 5, SyscallName::Read, 5, 1),
        ]);
        assert_eq!(s.orphan_syscalls, 1);
        let orphan = ops(&out)
            .into_iter()
            .find(|o| o.mismatch.is_some())
            .expect("A's orphan");
        assert_eq!((orphan.pid, orphan.entry_ts_ns), (A, 5));
    }

    #[test]
    fn a_followed_process_exit_ends_only_its_own_ops() {
        use ProbeName::*;
        let mut c = Correlator::new(Filter::default());
        c.set_root(A);
        let mut out = Vec::new();
        for e in [
            io_in(A, 1, ReadEntry, 5, 0),
            process(A, 2, ProcessEventKind::Fork { child: B }),
            io_in(B, 3, ReadEntry, 5, 0),
            process(B, 4, ProcessEventKind::Exit { code: 9 }),
            sys_in(A, 5, SyscallName::Read, 5, 4),
            io_in(A, 6, ReadReturn, 5, 4),
        ] {
            c.push(e, &mut out);
        }
        let s = c.finish(&mut out);
        let ops = ops(&out);
        let b = ops.iter().find(|o| o.pid == B).expect("B's op");
        assert_eq!(b.incomplete.as_deref(), Some("process exited"));
        assert_eq!(b.mismatch, None);
        let a = ops.iter().find(|o| o.pid == A).expect("A's op");
        assert_eq!(
            (a.user_rv, a.mismatch.clone(), a.incomplete.clone()),
            (Some(4), None, None)
        );
        // The session's end is the root's, not a followed child's.
        assert_eq!(s.process_end, None);
        assert_eq!(s.mismatches, 0);
        assert!(out.iter().any(|r| matches!(
            r,
            Record::Event(Event::Process(ProcessEvent {
                kind: ProcessEventKind::Fork { child: B },
                ..
            }))
        )));
    }

    #[test]
    fn a_forked_child_attached_late_begins_before_the_trace() {
        use ProbeName::*;
        let mut c = Correlator::new(Filter::default());
        c.set_root(A);
        let mut out = Vec::new();
        c.push(process(A, 1, ProcessEventKind::Fork { child: B }), &mut out);
        // The session attaches B and hands over its threads: it was inside
        // a read (entered before its probes were attached) by then.
        c.threads_before_trace([B]);
        // Its accept, entered before the attach, returns now; then it goes
        // on as traced from the start.
        for e in [
            sys_in(B, 2, SyscallName::Accept4, 3, 7),
            io_in(B, 3, AcceptReturn, 3, 7),
            io_in(B, 4, ReadEntry, 7, 0),
            sys_in(B, 5, SyscallName::Read, 7, 2),
            io_in(B, 6, ReadReturn, 7, 2),
        ] {
            c.push(e, &mut out);
        }
        let s = c.finish(&mut out);
        assert_eq!(s.mismatches, 0, "{:#?}", ops(&out));
        let ops = ops(&out);
        assert_eq!(ops[0].incomplete.as_deref(), Some("began before the trace"));
        assert_eq!(
            (ops[1].pid, ops[1].user_rv, ops[1].incomplete.clone()),
            (B, Some(2), None)
        );
    }

    #[test]
    fn epoll_registrations_are_per_process() {
        let ctl = |pid, fd| {
            Event::EpollCtl(EpollCtl {
                ts_ns: 1,
                pid,
                tid: pid,
                epfd: 3,
                op: 1,
                fd,
                events: 1,
                data: 7,
                rv: 0,
                dur_ns: 1,
            })
        };
        let wait = |pid| {
            Event::EpollWait(EpollWait {
                ts_ns: 2,
                pid,
                tid: pid,
                name: "epoll_wait",
                epfd: 3,
                rv: 1,
                dur_ns: 1,
                events: vec![ReadyEvent { events: 1, data: 7 }],
            })
        };
        let (out, _) = run(vec![ctl(A, 5), ctl(B, 6), wait(A), wait(B)]);
        let resolved: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                Record::Wait(w) => Some((w.wait.pid, w.fds.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(resolved, vec![(A, vec![Some(5)]), (B, vec![Some(6)])]);
    }
}
/// A close entered before the trace (or in a loss) and returned after it:
/// its number may be another thread's by the time its record comes, so
/// that record ends no op on the number (found by the property below).
#[test]
fn a_close_whose_entry_came_before_the_trace_ends_no_new_life() {
    const A: u32 = 1;
    const B: u32 = 2;
    let rd = |ts, name, rv: i64| probe(ts, B, name, [5, 0x1000, 64, 1, 7, rv as u64]);
    let stream = vec![
        // (Before the trace: A entered close(5); the number was freed.)
        sys_on(1, B, SyscallName::Accept4, 3, 5),
        probe(2, B, ProbeName::AcceptReturn, [3, 0, 0, 0, 1, 5]),
        rd(3, ProbeName::ReadEntry, 0),
        sys_on(0, A, SyscallName::Close, 5, 0),
        sys_on(4, B, SyscallName::Recvfrom, 5, 16),
        rd(5, ProbeName::ReadReturn, 16),
    ];
    let (out, s) = run_after_attach(&[A, B], stream.clone());
    assert_eq!(s.mismatches, 0, "{out:?}");
    let read = ops(&out)
        .into_iter()
        .find(|o| o.kind == OpKind::Read)
        .cloned();
    assert_eq!(
        read.map(|o| (o.syscalls.len(), o.mismatch)),
        Some((1, None))
    );
}

/// Arbitrary events, with the stall-tracking records among them.
fn any_event_with_stall_records() -> impl Strategy<Value = Event> {
    let callback =
        (0u64..1000, 1u32..3, 0u64..3, any::<bool>()).prop_map(|(ts, tid, cl, entry)| {
            let (name, args) = if entry {
                (ProbeName::CallbackEntry, [cl, cl, 0, 5, 1, 1])
            } else {
                (ProbeName::CallbackReturn, [cl, cl, 0, 1, 0, 0])
            };
            probe(ts, tid, name, args)
        });
    prop_oneof![
        1 => any_event(),
        4 => callback,
        1 => (0u64..1000, 1u32..4, 0u32..300, 0u64..1000).prop_map(|(ts, tid, nr, dur)| {
            Event::SlowSyscall(crate::event::SlowSyscall {
                ts_ns: ts,
                pid: P,
                tid,
                nr,
                arg0: 5,
                rv: 0,
                dur_ns: dur,
            })
        }),
        1 => (0u64..1000, 1u32..4, 0u64..2000).prop_map(|(ts, tid, total)| {
            Event::OffCpu(crate::event::OffCpu {
                ts_ns: ts,
                pid: P,
                tid,
                total_ns: total,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Stall tracking only adds: the ops and the op counts are the same
    /// with it on as off, whatever the stream; every stall follows its
    /// callback op (same thread, closure and entry, seen whole), lasted at
    /// least the threshold, and was off the CPU no longer than it lasted.
    #[test]
    fn stall_tracking_only_adds_stalls(events in proptest::collection::vec(any_event_with_stall_records(), 0..200)) {
        let config = StallConfig { threshold_ns: 100, syscall_min_ns: 10 };
        let (plain, plain_summary) = run(events.clone());
        let mut c = Correlator::new(Filter::default()).with_stalls(config);
        let mut out = Vec::new();
        for e in events {
            c.push(e, &mut out);
        }
        let summary = c.finish(&mut out);
        let without_watch = |records: &[Record]| -> Vec<Op> {
            ops(records).into_iter().map(|op| Op { watch: None, ..op.clone() }).collect()
        };
        prop_assert_eq!(without_watch(&plain), without_watch(&out));
        prop_assert_eq!(
            (plain_summary.ops, plain_summary.mismatches, plain_summary.incomplete),
            (summary.ops, summary.mismatches, summary.incomplete)
        );
        let mut count = 0;
        for (i, r) in out.iter().enumerate() {
            let Record::Stall(s) = r else { continue };
            count += 1;
            prop_assert!(s.dur_ns >= config.threshold_ns);
            prop_assert!(s.off_cpu_ns <= s.dur_ns);
            prop_assert!(s.syscalls.len() <= 64);
            let op = out[..i].iter().rev().find_map(|r| match r {
                Record::Op(op) if op.kind == OpKind::Callback => Some(op),
                _ => None,
            });
            let op = op.expect("a stall follows its callback op");
            prop_assert_eq!(
                (op.tid, op.closure, op.entry_ts_ns, op.incomplete.clone()),
                (s.tid, s.closure, s.ts_ns, None)
            );
        }
        prop_assert_eq!(summary.stalls.values().map(|st| st.count).sum::<u64>(), count);
    }
}
