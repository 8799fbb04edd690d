//! The writer's layout, read back with a minimal protobuf reader (the
//! end-to-end tests read real traces with perfetto's own protos).

use std::sync::Arc;

use super::*;
use crate::event::EpollWait;

const P: u32 = 7;
const T: u32 = 8;

/// A message's fields: (field number, varint value or bytes).
type Fields<'a> = Vec<(u32, Result<u64, &'a [u8]>)>;

/// One decoded track event: (ts, track, type, name, annotations).
type Ev = (u64, u64, u64, String, Vec<(String, String)>);

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The fields of a message: (field, varint value or bytes).
fn fields(b: &[u8]) -> Fields<'_> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => out.push((field, Ok(varint(b, &mut at)))),
            2 => {
                let len = varint(b, &mut at) as usize;
                out.push((field, Err(&b[at..at + len])));
                at += len;
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

fn track_events(trace: &[u8]) -> Vec<Ev> {
    let mut evs = Vec::new();
    for (f, packet) in fields(trace) {
        assert_eq!(f, field::TRACE_PACKET);
        let packet = packet.unwrap_err();
        let pf = fields(packet);
        let ts = pf.iter().find(|(f, _)| *f == field::TIMESTAMP);
        let Some((_, Err(ev))) = pf.iter().find(|(f, _)| *f == field::TRACK_EVENT) else {
            continue;
        };
        assert!(pf.contains(&(field::TIMESTAMP_CLOCK_ID, Ok(CLOCK_MONOTONIC))));
        let mut e: Ev = (ts.unwrap().1.unwrap(), 0, 0, String::new(), Vec::new());
        for (f, v) in fields(ev) {
            match (f, v) {
                (field::EVENT_TYPE, Ok(t)) => e.2 = t,
                (field::EVENT_TRACK_UUID, Ok(u)) => e.1 = u,
                (field::EVENT_NAME, Err(s)) => e.3 = String::from_utf8(s.to_vec()).unwrap(),
                (field::DEBUG_ANNOTATIONS, Err(a)) => {
                    let a = fields(a);
                    let name = a
                        .iter()
                        .find(|(f, _)| *f == field::ANNOTATION_NAME)
                        .unwrap();
                    let value = a
                        .iter()
                        .find(|(f, _)| *f != field::ANNOTATION_NAME)
                        .unwrap();
                    let value = match value.1 {
                        Ok(n) => n.to_string(),
                        Err(s) => String::from_utf8(s.to_vec()).unwrap(),
                    };
                    e.4.push((
                        String::from_utf8(name.1.unwrap_err().to_vec()).unwrap(),
                        value,
                    ));
                }
                other => panic!("unexpected track event field {other:?}"),
            }
        }
        evs.push(e);
    }
    evs
}

fn write(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = Perfetto::new(&mut out);
    for r in records {
        p.record(r).unwrap();
    }
    p.finish(&Summary::default()).unwrap();
    drop(p);
    out
}

/// The thread's events as `B name@ts`, `E@ts`, `I name@ts`.
fn layout(trace: &[u8], track: u64) -> Vec<String> {
    track_events(trace)
        .into_iter()
        .filter(|e| e.1 == track)
        .map(|(ts, _, ty, name, _)| match ty {
            SLICE_BEGIN => format!("B {name}@{ts}"),
            SLICE_END => format!("E@{ts}"),
            INSTANT => format!("I {name}@{ts}"),
            t => panic!("type {t}"),
        })
        .collect()
}

fn syscall(ts: u64, name: SyscallName, fd: i32, rv: i64, dur: u64) -> Syscall {
    Syscall {
        ts_ns: ts,
        pid: P,
        tid: T,
        name,
        fd,
        rv,
        dur_ns: dur,
        arg: 64,
    }
}

fn op(kind: OpKind, entry: u64, ret: Option<u64>, syscalls: Vec<Syscall>) -> Record {
    let mut op = Op::new(kind, P, T, 5, entry);
    op.return_ts_ns = ret;
    op.syscalls = syscalls;
    op.callback = Some(Arc::from("echo"));
    op.closure = Some(3);
    Record::Op(Box::new(op))
}

fn wait(ts: u64, dur: u64) -> Record {
    Record::Wait(Wait {
        wait: EpollWait {
            ts_ns: ts,
            pid: P,
            tid: T,
            name: "epoll_wait",
            epfd: 4,
            rv: 1,
            dur_ns: dur,
            events: vec![crate::event::ReadyEvent { events: 1, data: 0 }],
        },
        fds: vec![Some(5)],
    })
}

#[test]
fn syscalls_nest_in_ops_in_callbacks_whatever_order_they_come_in() {
    let recv = syscall(22, SyscallName::Recvfrom, 5, 10, 6);
    let records = [
        // As the correlator emits them: the syscall, its op, then things
        // outside, the callback last; and a wait that came late.
        Record::Event(Event::Syscall(recv.clone())),
        op(OpKind::Read, 20, Some(30), vec![recv]),
        Record::Event(Event::Syscall(syscall(40, SyscallName::Connect, 9, 0, 5))),
        op(OpKind::Callback, 10, Some(100), vec![]),
        wait(0, 5),
    ];
    let trace = write(&records);
    assert_eq!(
        layout(&trace, thread_track(T)),
        [
            "B epoll_wait@0",
            "E@5",
            "B echo@10",
            "B read@20",
            "B recvfrom@22",
            "E@28",
            "E@30",
            // Held by no op: drawn from its own record.
            "B connect@40",
            "E@45",
            "E@100"
        ]
    );
    // The same records, the same bytes.
    assert_eq!(write(&records), trace);
}

#[test]
fn an_op_that_outlives_its_callback_is_cut_and_marked() {
    let mut late = Op::new(OpKind::Write, P, T, 5, 40);
    late.syscalls = vec![syscall(60, SyscallName::Sendto, 5, 3, 10)];
    late.mismatch = Some("write entry without return".into());
    let records = [
        Record::Op(Box::new(late)),
        op(OpKind::Callback, 10, Some(50), vec![]),
    ];
    let trace = write(&records);
    assert_eq!(
        layout(&trace, thread_track(T)),
        [
            "B echo@10",
            "B write@40",
            "E@50",
            "E@50",
            // After the cut: at its own time, outside what ended.
            "B sendto@60",
            "E@70",
            "I MISMATCH write@70"
        ]
    );
    let evs = track_events(&trace);
    let write_slice = evs.iter().find(|e| e.3 == "write").unwrap();
    assert!(write_slice.4.contains(&("end_cut_ns".into(), "20".into())));
    assert!(write_slice
        .4
        .contains(&("mismatch".into(), "write entry without return".into())));
}

#[test]
fn a_callback_never_seen_to_return_ends_with_its_thread() {
    let mut open = Op::new(OpKind::Callback, P, T, 5, 100);
    open.callback = Some(Arc::from("accept"));
    open.incomplete = Some("trace ended".into());
    let records = [
        op(OpKind::Accept, 110, Some(120), vec![]),
        Record::Event(Event::Syscall(syscall(130, SyscallName::Close, 9, 0, 20))),
        Record::Op(Box::new(open)),
    ];
    assert_eq!(
        layout(&write(&records), thread_track(T)),
        [
            "B accept@100",
            // Where the table shows it: where it was last seen itself.
            "I INCOMPLETE callback@100",
            "B accept@110",
            "E@120",
            "B close@130",
            "E@150",
            "E@150"
        ]
    );
}

#[test]
fn tracks_are_described_and_losses_and_process_events_marked() {
    let records = [
        wait(10, 5),
        Record::Event(Event::Lost {
            ts_ns: 20,
            count: 4,
        }),
        Record::Event(Event::Process(crate::event::ProcessEvent {
            ts_ns: 30,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Exit { code: 0 },
        })),
    ];
    let trace = write(&records);
    let descriptors: Vec<Fields<'_>> = fields(&trace)
        .into_iter()
        .filter_map(|(_, p)| {
            fields(p.unwrap_err())
                .into_iter()
                .find(|(f, _)| *f == field::TRACK_DESCRIPTOR)
                .map(|(_, d)| fields(d.unwrap_err()))
        })
        .collect();
    let uuids: Vec<u64> = descriptors.iter().map(|d| d[0].1.unwrap()).collect();
    assert_eq!(uuids, [PORTSNOOP_TRACK, process_track(P), thread_track(T)]);
    let thread = descriptors[2]
        .iter()
        .find(|(f, _)| *f == field::TRACK_THREAD)
        .unwrap()
        .1
        .unwrap_err();
    assert_eq!(
        fields(thread),
        [
            (field::PID, Ok(u64::from(P))),
            (field::TID, Ok(u64::from(T)))
        ]
    );
    assert_eq!(layout(&trace, PORTSNOOP_TRACK), ["I LOST@20"]);
    assert_eq!(layout(&trace, process_track(P)), ["I exit@30"]);
    // The first packet clears the sequence's state and names the clock.
    let first = fields(fields(&trace)[0].1.unwrap_err());
    assert!(first.contains(&(field::SEQUENCE_FLAGS, Ok(SEQ_INCREMENTAL_STATE_CLEARED))));
    let snapshot = first
        .iter()
        .find(|(f, _)| *f == field::CLOCK_SNAPSHOT)
        .unwrap()
        .1
        .unwrap_err();
    assert!(fields(snapshot).contains(&(field::PRIMARY_TRACE_CLOCK, Ok(CLOCK_MONOTONIC))));
}

/// The slices of `track` as a reader nests them: events sorted by time
/// (ties in file order), an end closing the innermost open slice. Returns
/// (name, depth, start, end) in start order; panics on a bad nesting.
fn nested(trace: &[u8], track: u64) -> Vec<(String, usize, u64, u64)> {
    let mut evs: Vec<(usize, Ev)> = track_events(trace)
        .into_iter()
        .filter(|e| e.1 == track)
        .enumerate()
        .collect();
    evs.sort_by_key(|(i, e)| (e.0, *i));
    let mut out = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for (_, (ts, _, ty, name, _)) in evs {
        match ty {
            SLICE_BEGIN => {
                open.push(out.len());
                out.push((name, open.len() - 1, ts, 0));
            }
            SLICE_END => out[open.pop().expect("an end closes an open slice")].3 = ts,
            _ => {}
        }
    }
    assert!(open.is_empty(), "slices never ended");
    out
}

fn entry_probe(ts: u64, name: ProbeName) -> Record {
    Record::Event(Event::Probe(Probe {
        ts_ns: ts,
        pid: P,
        tid: T,
        name,
        args: [5, 0, 0, 0, 3, 0],
        strings: vec![],
    }))
}

/// One callback with a read inside, as the correlator emits them.
fn callback_with_read(t: u64, out: &mut Vec<Record>) {
    out.push(entry_probe(t, ProbeName::CallbackEntry));
    out.push(entry_probe(t + 10, ProbeName::ReadEntry));
    let recv = syscall(t + 20, SyscallName::Recvfrom, 5, 1, 10);
    out.push(Record::Event(Event::Syscall(recv.clone())));
    out.push(op(OpKind::Read, t + 10, Some(t + 40), vec![recv]));
    out.push(op(OpKind::Callback, t, Some(t + 50), vec![]));
}

#[test]
fn a_long_trace_is_written_as_it_comes_and_nests_as_one_written_at_once() {
    let mut records = Vec::new();
    for i in 0..3000 {
        callback_with_read(i * 100, &mut records);
    }
    let mut out = Vec::new();
    let mut p = Perfetto::new(&mut out);
    let mut most = 0;
    for r in &records {
        p.record(r).unwrap();
        most = most.max(p.threads[&T].items.len());
    }
    // Written as it came: never more than a flush's worth waits.
    assert!(most <= FLUSH_MIN, "{most} slices waited");
    p.finish(&Summary::default()).unwrap();
    drop(p);
    let slices = nested(&out, thread_track(T));
    assert_eq!(slices.len(), 3 * 3000);
    for (i, chunk) in slices.chunks(3).enumerate() {
        let t = i as u64 * 100;
        assert_eq!(
            chunk,
            [
                ("echo".to_string(), 0, t, t + 50),
                ("read".to_string(), 1, t + 10, t + 40),
                ("recvfrom".to_string(), 2, t + 20, t + 30)
            ]
        );
    }
}

#[test]
fn nothing_a_still_open_callback_may_enclose_is_written_before_it() {
    // A callback open for the whole run (a task poll that never yields,
    // or one whose return is still to come), with many callbacks inside.
    let mut records = vec![entry_probe(0, ProbeName::CallbackEntry)];
    for i in 1..3000 {
        callback_with_read(i * 100, &mut records);
    }
    // A write entered inside it that returns after it (a mismatch), with
    // many syscalls on other fds in between.
    records.push(entry_probe(399_990, ProbeName::WriteEntry));
    let mut outer = Op::new(OpKind::Callback, P, T, 5, 0);
    outer.return_ts_ns = Some(400_000);
    outer.callback = Some(Arc::from("outer"));
    records.push(Record::Op(Box::new(outer)));
    for i in 0..2 * FLUSH_MIN as u64 {
        let other = syscall(400_001 + i * 10, SyscallName::Write, 1, 1, 5);
        records.push(Record::Event(Event::Syscall(other)));
    }
    records.push(op(OpKind::Write, 399_990, Some(500_000), vec![]));
    let trace = write(&records);
    let slices = nested(&trace, thread_track(T));
    assert_eq!(slices[0], ("outer".to_string(), 0, 0, 400_000));
    assert_eq!(slices.len(), 1 + 3 * 2999 + 1 + 2 * FLUSH_MIN);
    assert!(
        slices[1..=3 * 2999].iter().all(|s| s.1 >= 1),
        "all inside the outer callback"
    );
    // Cut at the callback's end, in the same layout as the callback.
    assert_eq!(
        slices[3 * 2999 + 1],
        ("write".to_string(), 1, 399_990, 400_000)
    );
}
