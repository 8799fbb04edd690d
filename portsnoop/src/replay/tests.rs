//! Replay without a kernel: records made by the correlator, written by the
//! JSON writer, read back; and lines that are not what the contract says.

use std::sync::Arc;

use proptest::prelude::*;

use super::parse::{entry, Entry};
use super::*;
use crate::correlate::{Correlator, Filter, Op, StallConfig, Wait};
use crate::event::{
    CloseEnter, EpollCtl, EpollWait, Event, OffCpu, Probe, ProbeName, ProcessEvent,
    ProcessEventKind, ReadyEvent, SlowSyscall, Syscall, SyscallName,
};
use crate::output::json::Json;
use crate::sock::{Endpoint, SocketInfo, SocketOrigin, AF_UNIX};

const P: u32 = 50;
const T: u32 = 51;

fn probe(ts: u64, name: ProbeName, args: [u64; 6], strings: &[&str]) -> Event {
    Event::Probe(Probe {
        ts_ns: ts,
        pid: P,
        tid: T,
        name,
        args,
        strings: strings.iter().map(|s| Arc::from(*s)).collect(),
    })
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

/// A little of everything the correlator emits: callbacks with ops that
/// agree, disagree and never return, waits resolved and not, probes with
/// strings a terminal must not get raw, a loss, every process event.
fn session() -> (Vec<Record>, Summary) {
    let name = "echo \u{1b}[2J\u{9b}\u{2028}é\"\\";
    // A socketpair open before the trace: each end's peer is the other fd.
    let pair_end = |fd, peer| {
        Event::Socket(SocketInfo {
            ts_ns: 1,
            pid: P,
            tid: 0,
            fd,
            origin: SocketOrigin::BeforeTrace,
            family: AF_UNIX,
            sock_type: 1,
            protocol: 0,
            local: Endpoint::Unix(Vec::new()),
            peer: Endpoint::Fd(peer),
            inode: 900 + fd as u64,
            sk: 0,
        })
    };
    let events = vec![
        pair_end(20, 21),
        pair_end(21, 20),
        Event::EpollCtl(EpollCtl {
            ts_ns: 1,
            pid: P,
            tid: T,
            epfd: 4,
            op: 1,
            fd: 7,
            events: 0x8000_2001,
            data: u64::MAX,
            rv: 0,
            dur_ns: 2,
        }),
        Event::EpollWait(EpollWait {
            ts_ns: 5,
            pid: P,
            tid: T,
            name: "epoll_pwait",
            epfd: 4,
            rv: 40,
            dur_ns: 4,
            events: vec![
                ReadyEvent {
                    events: 1,
                    data: u64::MAX,
                },
                ReadyEvent { events: 5, data: 9 },
            ],
        }),
        probe(
            10,
            ProbeName::CallbackEntry,
            [2, 1, 0xdead, 7, 1, 1],
            &[name],
        ),
        probe(11, ProbeName::ReadEntry, [7, 0x1000, 64, 1, 2, 0], &[]),
        sys(12, SyscallName::Recvfrom, 7, 5),
        probe(16, ProbeName::ReadReturn, [7, 0x1000, 64, 1, 2, 5], &[]),
        probe(17, ProbeName::WriteEntry, [7, 0x1000, 5, 1, 2, 0], &[]),
        sys(18, SyscallName::Sendto, 7, -11),
        probe(22, ProbeName::WriteReturn, [7, 0x1000, 5, 1, 2, 5], &[]),
        probe(
            23,
            ProbeName::Log,
            [0, 0, (-3i64) as u64, 0, 0, 0],
            &["fac\u{7}", "file\n.rs", "msg \u{0}"],
        ),
        probe(24, ProbeName::ReadEntry, [7, 0x1000, 64, 1, 2, 0], &[]),
        Event::CloseEnter(CloseEnter {
            ts_ns: 25,
            pid: P,
            tid: T,
            fd: 7,
        }),
        sys(25, SyscallName::Close, 7, 0),
        // fsync(5) for 2 ns: stall tracking's record of an untraced call.
        Event::SlowSyscall(SlowSyscall {
            ts_ns: 27,
            pid: P,
            tid: T,
            nr: 74,
            arg0: 5,
            rv: 0,
            dur_ns: 2,
        }),
        Event::OffCpu(OffCpu {
            ts_ns: 30,
            pid: P,
            tid: T,
            total_ns: 3,
        }),
        probe(
            30,
            ProbeName::CallbackReturn,
            [2, 1, 0xdead, 1, 0, 0],
            &[name],
        ),
        sys(31, SyscallName::Connect, 9, -115),
        Event::Lost {
            ts_ns: 40,
            count: 3,
        },
        Event::Process(ProcessEvent {
            ts_ns: 41,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Fork { child: 77 },
        }),
        probe(
            42,
            ProbeName::CallbackEntry,
            [3, 1, 0xbeef, 8, 1, 1],
            &["never returns"],
        ),
        probe(43, ProbeName::AcceptEntry, [8, 0, 0, 1, 3, 0], &[]),
        sys(44, SyscallName::Accept4, 8, 10),
        Event::Process(ProcessEvent {
            ts_ns: 50,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Exec,
        }),
        Event::Process(ProcessEvent {
            ts_ns: 51,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Traced {
                exe: "/bin/x\\x1b".into(),
                probes: 11,
            },
        }),
        probe(
            60,
            ProbeName::CloseReturn,
            [8, 1, 7, (-9i64) as u64, 0, 0],
            &[],
        ),
        Event::Process(ProcessEvent {
            ts_ns: 70,
            pid: P,
            tid: T,
            kind: ProcessEventKind::Exit { code: 256 },
        }),
    ];
    // A callback of 20 ns is a stall at a 5 ns threshold.
    let mut c = Correlator::new(Filter::default()).with_stalls(StallConfig {
        threshold_ns: 5,
        syscall_min_ns: 1,
    });
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    let summary = c.finish(&mut out);
    (out, summary)
}

fn json_of(records: &[Record], summary: &Summary) -> Vec<u8> {
    let mut out = Vec::new();
    let mut json = Json::new(&mut out);
    for r in records {
        json.record(r).unwrap();
    }
    json.finish(summary).unwrap();
    drop(json);
    out
}

fn replay_json(input: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut json = Json::new(&mut out);
    replay(std::path::Path::new("rec.jsonl"), input, &mut json)?;
    drop(json);
    Ok(out)
}

#[test]
fn the_session_has_what_the_tests_need() {
    let (records, summary) = session();
    let ops: Vec<&Op> = records
        .iter()
        .filter_map(|r| match r {
            Record::Op(op) => Some(&**op),
            _ => None,
        })
        .collect();
    assert!(ops.iter().any(|o| o.mismatch.is_some()));
    assert!(ops.iter().any(|o| o.incomplete.is_some()));
    assert!(ops.iter().any(|o| o.return_ts_ns.is_none()));
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::Stall(st) if !st.syscalls.is_empty())));
    assert!(!summary.stalls.is_empty());
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::Wait(w) if w.fds.contains(&None))));
    assert!(summary.lost_events == 3 && summary.process_end.is_some());
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::Event(Event::Socket(s)) if s.peer == Endpoint::Fd(21))));
}

#[test]
fn replayed_json_is_the_recording_byte_for_byte() {
    let (records, summary) = session();
    let recording = json_of(&records, &summary);
    assert_eq!(
        String::from_utf8(replay_json(&recording).unwrap()).unwrap(),
        String::from_utf8(recording).unwrap()
    );
}

#[test]
fn each_line_parses_back_into_its_record() {
    let (records, summary) = session();
    let recording = json_of(&records, &summary);
    let lines: Vec<&str> = std::str::from_utf8(&recording).unwrap().lines().collect();
    assert_eq!(lines.len(), records.len() + 1);
    for (line, want) in lines.iter().zip(&records) {
        let Entry::Record(got) = entry(line).unwrap() else {
            panic!("not a record: {line}");
        };
        let mut want = want.clone();
        // An op line keeps its syscalls' name, rv and times; their size
        // argument is on the syscall's own line.
        if let Record::Op(op) = &mut want {
            for s in &mut op.syscalls {
                s.arg = 0;
            }
            **op = op.clone().without_state();
        }
        assert_eq!(got, want, "{line}");
    }
    let Entry::Summary(got) = entry(lines.last().unwrap()).unwrap() else {
        panic!("no summary");
    };
    // The summary's connections do not carry their socket's time and
    // inode (the socket lines do).
    let mut summary = summary;
    for c in &mut summary.connections {
        if let Some(s) = &mut c.socket {
            let s = std::sync::Arc::make_mut(s);
            s.ts_ns = 0;
            s.inode = 0;
        }
    }
    assert_eq!(*got, summary);
}

#[test]
fn unknown_types_are_skipped_and_counted() {
    let (records, summary) = session();
    let mut recording = b"{\"type\":\"from_the_future\",\"ts_ns\":1}\n".to_vec();
    recording.extend(json_of(&records, &summary));
    let replayed = replay_json(&recording).unwrap();
    assert_eq!(replayed, json_of(&records, &summary));
    // ("tcp" was the example here until tcp lines came: a type this build
    // does not know.)
    assert!(matches!(entry(r#"{"type":"quic"}"#), Ok(Entry::Unknown(t)) if t == "quic"));
}

#[test]
fn a_recording_without_its_summary_still_replays() {
    let (records, summary) = session();
    let recording = json_of(&records, &summary);
    let cut = &recording[..recording.len() - 1];
    let cut = &cut[..cut.iter().rposition(|&b| b == b'\n').unwrap() + 1];
    let replayed = replay_json(cut).unwrap();
    assert!(replayed.starts_with(cut));
    let last = std::str::from_utf8(&replayed[cut.len()..]).unwrap();
    let Entry::Summary(rebuilt) = entry(last.trim_end()).unwrap() else {
        panic!("no summary line: {last}");
    };
    assert_eq!(
        (rebuilt.ops, rebuilt.mismatches),
        (summary.ops, summary.mismatches)
    );
    assert_eq!(rebuilt.per_fd, summary.per_fd);
}

#[test]
fn bad_lines_are_errors_naming_their_line() {
    let (records, summary) = session();
    let recording = json_of(&records, &summary);
    let text = std::str::from_utf8(&recording).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let with = |n: usize, bad: &str| {
        let mut l = lines.clone();
        l[n] = bad;
        l.join("\n") + "\n"
    };
    for (n, bad, says) in [
        (0, "garbage", "not JSON"),
        (2, "[1,2]", "not a JSON object"),
        (3, r#"{"ts_ns":1}"#, "no \"type\""),
        (4, r#"{"type":"syscall","ts_ns":-1}"#, "\"ts_ns\" is not"),
        (
            5,
            r#"{"type":"syscall","ts_ns":1,"pid":1,"tid":1,"name":"frob"}"#,
            "unknown syscall",
        ),
        (
            6,
            r#"{"type":"probe","ts_ns":1,"pid":1,"tid":1,"name":"log","args":[1],"strings":[]}"#,
            "4 arguments",
        ),
    ] {
        let err = replay_json(with(n, bad).as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("rec.jsonl: line {}: ", n + 1)),
            "{msg}"
        );
        assert!(msg.contains(says), "{msg}");
    }
    // A line after the summary.
    let err = replay_json(format!("{text}{}\n", lines[0]).as_bytes()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("line {}", lines.len() + 1)),
        "{err}"
    );
    // Not UTF-8.
    let err = replay_json(b"{\"type\":\"lost\",\"ts_ns\":1,\"count\":\xff}\n").unwrap_err();
    assert!(err.to_string().contains("line 1: not UTF-8"), "{err}");
}

#[test]
fn every_truncated_line_is_an_error_not_a_panic() {
    let (records, summary) = session();
    let recording = json_of(&records, &summary);
    for line in std::str::from_utf8(&recording).unwrap().lines() {
        for cut in 1..line.len() {
            if line.is_char_boundary(cut) {
                assert!(entry(&line[..cut]).is_err(), "{}", &line[..cut]);
            }
        }
    }
}

proptest! {
    /// Any line at all: a record, an error, never a panic.
    #[test]
    fn any_line_parses_or_fails_cleanly(line in ".{0,200}") {
        let _ = entry(&line);
    }

    /// A recorded line with one value replaced by another JSON value of
    /// any type: a record or an error, never a panic.
    #[test]
    fn mutated_fields_parse_or_fail_cleanly(
        which in 0usize..64,
        line_no in 0usize..64,
        value in prop_oneof![
            Just("null".to_string()),
            Just("-1".to_string()),
            Just("1.5".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"x\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("[[3,1]]".to_string()),
            Just("[\"a\"]".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
        ],
    ) {
        let (records, summary) = session();
        let recording = String::from_utf8(json_of(&records, &summary)).unwrap();
        let lines: Vec<&str> = recording.lines().collect();
        let line = lines[line_no % lines.len()];
        let serde_json::Value::Object(mut map) = serde_json::from_str(line).unwrap() else {
            unreachable!("every line is an object");
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = &keys[which % keys.len()];
        map.insert(key.clone(), serde_json::from_str(&value).unwrap());
        let _ = entry(&serde_json::Value::Object(map).to_string());
    }
}

/// A live table writes rows out as the wall clock passes; a row whose
/// record comes after that is shown late. Replay, with no wall clock,
/// moves the clock to each record's end and places it as live did.
#[test]
fn the_replayed_table_places_late_rows_as_the_live_one_did() {
    use crate::output::table::Table;
    let ms = 1_000_000;
    let wait = Record::Wait(Wait {
        wait: EpollWait {
            ts_ns: 1000 * ms,
            pid: P,
            tid: T,
            name: "epoll_wait",
            epfd: 4,
            rv: 0,
            // Asleep for 3 s while another thread worked.
            dur_ns: 3000 * ms,
            events: vec![],
        },
        fds: vec![],
    });
    let other = |ts: u64| {
        Record::Event(Event::Syscall(Syscall {
            ts_ns: ts,
            pid: P,
            tid: T + 1,
            name: SyscallName::Read,
            fd: 3,
            rv: 1,
            dur_ns: 1000,
            arg: 1,
        }))
    };
    let records = [other(999 * ms), other(1001 * ms), wait, other(4001 * ms)];
    // Live: each record as it came, and the poll's tick every 10 ms of
    // wall clock between them.
    let mut live = Vec::new();
    let mut table = Table::new(&mut live);
    let mut now = 999 * ms;
    for r in &records {
        let arrives = super::submitted_at(r);
        while now + 10 * ms < arrives {
            now += 10 * ms;
            table.tick(now).unwrap();
        }
        table.record(r).unwrap();
    }
    table.finish(&Summary::default()).unwrap();
    drop(table);
    let live = String::from_utf8(live).unwrap();
    assert!(live.contains("(began 0.001000)"), "{live}");

    let mut recording = json_of(&records, &Summary::default());
    recording.truncate(recording.len() - 1);
    recording.truncate(recording.iter().rposition(|&b| b == b'\n').unwrap() + 1);
    let mut replayed = Vec::new();
    let mut table = Table::new(&mut replayed);
    replay(
        std::path::Path::new("rec.jsonl"),
        &recording[..],
        &mut table,
    )
    .unwrap();
    drop(table);
    assert_eq!(String::from_utf8(replayed).unwrap(), live);
}
