//! A real echo-mio session, recorded by portsnoop, replayed through the
//! correlator: the figures checked here were counted by hand from the
//! recording and from what the load did (see tests/fixtures/README.md).
//!
//! The session: two clients sending 3 messages of 16 bytes each (fds 8 and
//! 9), then one client sending 2 messages of 100 bytes (fd 8 again), then
//! SIGTERM through the loop's waker. A signal thread works on fds 5-7
//! without probes; before the loop starts, fd 3 is a file that is read and
//! closed, and then reused by the listener.

mod support;

use std::collections::BTreeMap;

use portsnoop::correlate::{Filter, Op, Record};
use portsnoop::event::{OpKind, SyscallName};
use support::{correlate, correlate_with, load_recording, ops};

const RECORDING: &str = "echo_mio_session.jsonl";
/// The event loop's thread in the recording.
const LOOP_TID: u32 = 24609;
/// The signal-handling thread (no probes).
const SIGNAL_TID: u32 = 24610;
const EAGAIN: i32 = 11;

fn of_kind<'a>(ops: &[&'a Op], kind: OpKind, fd: i32) -> Vec<&'a Op> {
    ops.iter()
        .copied()
        .filter(|o| o.kind == kind && o.fd == fd)
        .collect()
}

#[test]
fn every_op_of_the_session_lines_up() {
    let events = load_recording(RECORDING);
    assert_eq!(events.len(), 139, "the fixture's event lines");
    let (records, summary) = correlate(events);
    let ops = ops(&records);
    assert_eq!(ops.len(), 39);
    assert_eq!(summary.ops, 39);
    for op in &ops {
        assert_eq!(op.mismatch, None, "disagreement in a clean session: {op:?}");
        assert_eq!(op.incomplete, None, "{op:?}");
        assert_eq!(op.tid, LOOP_TID, "only the loop thread has probes");
        assert!(op.return_ts_ns.is_some());
        if op.kind == OpKind::Callback {
            assert!(op.syscalls.is_empty(), "callbacks hold no syscalls: {op:?}");
            continue;
        }
        // Each eventer op here is exactly one syscall of its own kind,
        // whose rv is the probe's.
        assert_eq!(op.syscalls.len(), 1, "{op:?}");
        let s = &op.syscalls[0];
        assert_eq!(s.name.op(), op.kind);
        assert_eq!((s.fd, s.tid), (op.fd, op.tid));
        assert_eq!(Some(s.rv), op.user_rv);
        assert_eq!(op.kernel_ns, s.dur_ns);
        let entry = op.entry_ts_ns;
        let ret = op.return_ts_ns.unwrap();
        assert!(entry <= s.ts_ns && s.ts_ns + s.dur_ns <= ret, "{op:?}");
        assert_eq!(op.user_ns, ret - entry - s.dur_ns);
    }
}

#[test]
fn accepts_return_the_new_fds_and_eagain_ends_each_batch() {
    let (records, _) = correlate(load_recording(RECORDING));
    let ops = ops(&records);
    let accepts = of_kind(&ops, OpKind::Accept, 3);
    let rvs: Vec<i64> = accepts.iter().map(|o| o.user_rv.unwrap()).collect();
    assert_eq!(rvs, [8, 9, -11, 8, -11]);
    for a in &accepts {
        assert_eq!(a.syscalls[0].name, SyscallName::Accept4);
        assert_eq!(a.callback.as_deref(), Some("accept"));
        assert_eq!(a.closure, Some(1));
    }
}

#[test]
fn the_reused_fd_8_is_two_lives_that_never_merge() {
    let (records, _) = correlate(load_recording(RECORDING));
    let ops = ops(&records);
    let closes = of_kind(&ops, OpKind::Close, 8);
    assert_eq!(closes.len(), 2, "fd 8 is closed once per life");
    let first_close = closes[0].return_ts_ns.unwrap();
    let second_accept = of_kind(&ops, OpKind::Accept, 3)
        .into_iter()
        .filter(|a| a.user_rv == Some(8))
        .nth(1)
        .expect("fd 8 accepted twice")
        .entry_ts_ns;
    assert!(first_close < second_accept);

    // (read bytes, write bytes, closures) per life of fd 8.
    let mut lives: BTreeMap<bool, (i64, i64, Vec<u64>)> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.fd == 8) {
        let ret = op.return_ts_ns.unwrap();
        assert!(
            ret <= first_close || op.entry_ts_ns >= second_accept,
            "an op spans fd 8's close and reuse: {op:?}"
        );
        let life = lives.entry(op.entry_ts_ns >= second_accept).or_default();
        let rv = op.user_rv.unwrap_or(0).max(0);
        match op.kind {
            OpKind::Read => life.0 += rv,
            OpKind::Write => life.1 += rv,
            _ => {}
        }
        if let Some(c) = op.closure {
            if !life.2.contains(&c) {
                life.2.push(c);
            }
        }
    }
    assert_eq!(lives[&false], (48, 48, vec![2]), "first life: 3 x 16 bytes");
    assert_eq!(
        lives[&true],
        (200, 200, vec![4]),
        "second life: 2 x 100 bytes"
    );
}

#[test]
fn ops_inside_callbacks_carry_the_callbacks_name() {
    let (records, _) = correlate(load_recording(RECORDING));
    let ops = ops(&records);
    let callbacks: Vec<(&str, i32, u64)> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Callback)
        .map(|o| (o.callback.as_deref().unwrap(), o.fd, o.closure.unwrap()))
        .collect();
    assert_eq!(
        callbacks,
        [
            ("accept", 3, 1),
            ("echo", 8, 2),
            ("echo", 8, 2),
            ("echo", 9, 3),
            ("echo", 8, 2),
            ("echo", 8, 2),
            ("accept", 3, 1),
            ("echo", 8, 4),
        ]
    );
    for op in &ops {
        match op.kind {
            OpKind::Read | OpKind::Write => assert_eq!(op.callback.as_deref(), Some("echo")),
            // The eventer closes after the callback returned.
            OpKind::Close => assert_eq!(op.callback, None),
            _ => {}
        }
    }
}

#[test]
fn waits_resolve_every_returned_event_to_its_fd() {
    let (records, summary) = correlate(load_recording(RECORDING));
    let waits: Vec<(i64, Vec<Option<i32>>)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Wait(w) => Some((w.wait.rv, w.fds.clone())),
            _ => None,
        })
        .collect();
    let some = |fds: &[i32]| fds.iter().copied().map(Some).collect::<Vec<_>>();
    assert_eq!(
        waits,
        [
            (1, some(&[3])),
            (1, some(&[8])),
            (2, some(&[8, 9])),
            (1, some(&[8])),
            (1, some(&[8])),
            (1, some(&[3])),
            (1, some(&[8])),
            (-4, vec![]),    // EINTR: the SIGTERM
            (1, some(&[5])), // the waker, data u64::MAX
        ]
    );
    assert_eq!(summary.waits, 9);
}

#[test]
fn the_summary_adds_up_per_fd_and_per_op() {
    let (_, s) = correlate(load_recording(RECORDING));
    assert_eq!(
        (s.events, s.lost_events, s.ops, s.mismatches, s.incomplete),
        (139, 0, 39, 0, 0)
    );
    assert_eq!(
        s.orphan_syscalls, 0,
        "fd 3's life as a file and the signal thread's fds are not the eventer's"
    );
    assert_eq!(s.process_end.as_deref(), Some("exit (wait status 0)"));

    let stat = |fd: i32, kind: OpKind| {
        let st = &s.per_fd[&fd][&kind];
        (
            st.count,
            st.bytes,
            st.errors.get(&EAGAIN).copied().unwrap_or(0),
        )
    };
    assert_eq!(stat(3, OpKind::Accept), (5, 0, 2));
    assert_eq!(stat(3, OpKind::Close), (1, 0, 0));
    assert_eq!(stat(3, OpKind::Callback), (2, 0, 0));
    assert_eq!(stat(8, OpKind::Read), (10, 248, 3));
    assert_eq!(stat(8, OpKind::Write), (5, 248, 0));
    assert_eq!(stat(8, OpKind::Close), (2, 0, 0));
    assert_eq!(stat(8, OpKind::Callback), (5, 0, 0));
    assert_eq!(stat(9, OpKind::Read), (4, 48, 0));
    assert_eq!(stat(9, OpKind::Write), (3, 48, 0));
    assert_eq!(
        s.per_fd.keys().copied().collect::<Vec<_>>(),
        [3, 8, 9],
        "no ops for the probe-less fds"
    );

    let per_op = s.per_op();
    assert_eq!(per_op[&OpKind::Read].count, 14);
    assert_eq!(per_op[&OpKind::Read].bytes, 296);
    assert_eq!(per_op[&OpKind::Write].bytes, 296);
    for (kind, st) in &per_op {
        // Every finished op has a user time; every op with a syscall a
        // kernel time (callbacks have none).
        assert_eq!(st.user_ns.total(), st.count, "{kind:?}");
        let with_syscalls = if *kind == OpKind::Callback {
            0
        } else {
            st.count
        };
        assert_eq!(st.kernel_ns.total(), with_syscalls, "{kind:?}");
    }
}

#[test]
fn filters_select_one_fd_or_one_thread() {
    let (records, s) = correlate_with(
        load_recording(RECORDING),
        Filter {
            fd: Some(9),
            tid: None,
        },
    );
    let ops = ops(&records);
    assert_eq!(ops.len(), 9, "1 callback, 4 reads, 3 writes, 1 close");
    assert!(ops.iter().all(|o| o.fd == 9));
    assert_eq!(s.per_fd.keys().copied().collect::<Vec<_>>(), [9]);
    for r in &records {
        match r {
            Record::Event(e) => {
                if let portsnoop::event::Event::Syscall(sc) = e {
                    assert_eq!(sc.fd, 9);
                }
            }
            Record::Wait(w) => assert!(w.fds.contains(&Some(9)), "{w:?}"),
            Record::Op(_) | Record::Stall(_) => {}
        }
    }

    let (records, s) = correlate_with(
        load_recording(RECORDING),
        Filter {
            fd: None,
            tid: Some(SIGNAL_TID),
        },
    );
    assert_eq!(s.ops, 0, "the signal thread fires no probes");
    let syscalls: Vec<(SyscallName, i32, i64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Event(portsnoop::event::Event::Syscall(sc)) => {
                assert_eq!(sc.tid, SIGNAL_TID);
                Some((sc.name, sc.fd, sc.rv))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        syscalls,
        [
            (SyscallName::Recvfrom, 6, -11),
            (SyscallName::Recvfrom, 6, 1),
            (SyscallName::Recvfrom, 6, -11),
            (SyscallName::Write, 5, 8),
        ]
    );
}

/// echo-tokio, multi-threaded, 2 clients x 3 messages of 16 bytes: the
/// listener is fd 9, the connections fds 13 and 14; tokio registers
/// through a dup of its epoll fd (5) and waits on the original (3); the echo
/// task on fd 13 moves between the two worker threads; each connection ends
/// with a `shutdown` that no probe wraps.
mod tokio_session {
    use super::*;

    const RECORDING: &str = "echo_tokio_session.jsonl";
    const MAIN: u32 = 31402;
    const WORKERS: [u32; 2] = [31403, 31404];

    #[test]
    fn every_op_lines_up_across_worker_threads() {
        let (records, s) = correlate(load_recording(RECORDING));
        let ops = ops(&records);
        assert_eq!(
            (s.events, s.ops, s.mismatches, s.lost_events),
            (128, 29, 0, 0)
        );
        assert_eq!(
            s.orphan_syscalls, 0,
            "shutdown has no probe to be inside of"
        );
        for op in &ops {
            assert_eq!(op.mismatch, None, "{op:?}");
            for sc in &op.syscalls {
                assert_eq!((sc.fd, sc.tid), (op.fd, op.tid));
            }
        }
        let accepts: Vec<(u32, Option<i64>)> = of_kind(&ops, OpKind::Accept, 9)
            .iter()
            .map(|o| (o.tid, o.user_rv))
            .collect();
        assert_eq!(
            accepts,
            [(MAIN, Some(13)), (MAIN, Some(14)), (MAIN, Some(-11))]
        );

        let st = |fd: i32, kind: OpKind| {
            let st = &s.per_fd[&fd][&kind];
            (
                st.count,
                st.bytes,
                st.errors.get(&EAGAIN).copied().unwrap_or(0),
            )
        };
        assert_eq!(st(13, OpKind::Read), (6, 48, 2));
        assert_eq!(st(13, OpKind::Write), (3, 48, 0));
        assert_eq!(st(14, OpKind::Read), (4, 48, 0));
        assert_eq!(st(14, OpKind::Write), (3, 48, 0));
        for fd in [9, 13, 14] {
            assert_eq!(st(fd, OpKind::Close), (1, 0, 0), "fd {fd}");
        }

        // The echo task on fd 13 ran on both workers; each op stays on one.
        let threads: std::collections::BTreeSet<u32> = of_kind(&ops, OpKind::Read, 13)
            .iter()
            .map(|o| o.tid)
            .collect();
        assert_eq!(threads.into_iter().collect::<Vec<_>>(), WORKERS);
        let callbacks: Vec<(u32, i32, Option<&str>)> = ops
            .iter()
            .filter(|o| o.kind == OpKind::Callback)
            .map(|o| (o.tid, o.fd, o.callback.as_deref()))
            .collect();
        assert_eq!(callbacks.len(), 7, "{callbacks:?}");
        assert_eq!(
            callbacks.iter().filter(|c| c.2 == Some("accept")).count(),
            2
        );
    }

    #[test]
    fn waits_on_the_original_epoll_fd_resolve_through_the_dup() {
        let (records, _) = correlate(load_recording(RECORDING));
        let waits: Vec<(i32, Vec<Option<i32>>)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Wait(w) => Some((w.wait.epfd, w.fds.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            waits,
            [
                (3, vec![Some(9)]),
                (3, vec![Some(9)]),
                (3, vec![Some(13), Some(14), Some(4)]),
                (3, vec![Some(13)]),
                (3, vec![Some(13)]),
                (3, vec![Some(13)]),
                (3, vec![Some(4)]),
            ]
        );
    }
}
