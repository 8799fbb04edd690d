//! The writers' exact output: a small hand-built stream whose every row is
//! written out here (checked by hand), and the recorded echo session
//! against golden files (regenerate with `UPDATE_GOLDEN=1`, then read the
//! diff).

mod support;

use portsnoop::correlate::{Log2Hist, Record, Summary};
use portsnoop::event::{
    EpollCtl, EpollWait, Event, Probe, ProbeName, ReadyEvent, Syscall, SyscallName,
};
use portsnoop::output::json::Json;
use portsnoop::output::summary::{quantize, SummaryReport};
use portsnoop::output::table::Table;
use portsnoop::output::{Output, SummaryOnly};
use serde_json::{json, Value};
use support::{correlate, fixture, load_recording};

const T0: u64 = 5_000_000_000;

fn probe(ts: u64, tid: u32, name: ProbeName, args: [u64; 6], strings: &[&str]) -> Event {
    Event::Probe(Probe {
        ts_ns: T0 + ts,
        pid: 1,
        tid,
        name,
        args,
        strings: strings.iter().map(|s| (*s).into()).collect(),
    })
}

fn syscall(ts: u64, tid: u32, name: SyscallName, fd: i32, rv: i64, dur_ns: u64) -> Event {
    Event::Syscall(Syscall {
        ts_ns: T0 + ts,
        pid: 1,
        tid,
        name,
        fd,
        rv,
        dur_ns,
        arg: 64,
    })
}

/// One callback on fd 9 whose read the kernel answers EAGAIN while the
/// eventer reports 5 bytes; a wait with a ready event for an fd whose
/// `epoll_ctl` was never seen; another thread's write submitted late.
fn small_stream() -> Vec<Event> {
    vec![
        Event::EpollCtl(EpollCtl {
            ts_ns: T0,
            pid: 1,
            tid: 7,
            epfd: 4,
            op: 1,
            fd: 9,
            events: 0x8000_0001,
            data: 2,
            rv: 0,
            dur_ns: 1_500,
        }),
        Event::EpollWait(EpollWait {
            ts_ns: T0 + 10_000,
            pid: 1,
            tid: 7,
            name: "epoll_wait",
            epfd: 4,
            rv: 2,
            dur_ns: 5_000,
            events: vec![
                ReadyEvent { events: 1, data: 2 },
                ReadyEvent {
                    events: 0x11,
                    data: 77,
                },
            ],
        }),
        probe(
            20_000,
            7,
            ProbeName::CallbackEntry,
            [2, 2, 0xdead, 9, 1, 1],
            &["echo"],
        ),
        probe(
            21_000,
            7,
            ProbeName::ReadEntry,
            [9, 0x1000, 64, 1, 2, 0],
            &[],
        ),
        syscall(22_000, 7, SyscallName::Recvfrom, 9, -11, 1_000),
        // Submitted from another CPU after the rows above; it sorts in.
        syscall(12_500, 8, SyscallName::Write, 1, 5, 2_000),
        probe(
            24_000,
            7,
            ProbeName::ReadReturn,
            [9, 0x1000, 64, 1, 2, 5],
            &[],
        ),
        probe(
            30_000,
            7,
            ProbeName::CallbackReturn,
            [2, 2, 0xdead, 1, 0, 0],
            &["echo"],
        ),
    ]
}

/// `rows` as the writer ends them: each with a newline.
fn lines(rows: &[&str]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

fn write_all<O: Output>(mut out: O, records: &[Record], summary: &Summary) -> O {
    for r in records {
        out.record(r).expect("writing to a Vec");
    }
    out.finish(summary).expect("writing to a Vec");
    out
}

fn table_of(records: &[Record], summary: &Summary) -> String {
    let mut buf = Vec::new();
    write_all(Table::new(&mut buf), records, summary);
    String::from_utf8(buf).expect("the table is UTF-8")
}

fn json_of(records: &[Record], summary: &Summary) -> String {
    let mut buf = Vec::new();
    write_all(Json::new(&mut buf), records, summary);
    String::from_utf8(buf).expect("JSON is UTF-8")
}

fn summary_of(summary: &Summary) -> String {
    let mut buf = Vec::new();
    SummaryReport::new(summary).write(&mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn table_rows_interleave_both_sides_in_time_order() {
    let (records, summary) = correlate(small_stream());
    let expected = lines(&[
        "        TIME     TID SYSCALL               FD DETAILS                                  ERROR",
        "    0.000000       7 epoll_ctl              9 ADD 0x80000001 IN|ET data 2",
        "    0.000010       7 epoll_wait             - 2 events 5us",
        "    0.000012       8 write                  1 = 5 (arg 64) 2us",
        "    0.000015       7 EPOLL_EVENT            9 fdevents 0x01 IN",
        "    0.000015       7 EPOLL_EVENT            ? fdevents 0x11 IN|HUP",
        "    0.000020       7 callback-entry         9 echo mask 0x01 closure 2",
        "    0.000021       7 read-entry             9 len 64 closure 2",
        "    0.000022       7 recvfrom               9 = -1 (arg 64) 1us                        errno = 11 (EAGAIN)",
        "    0.000024       7 read-return            9 = 5",
        "    0.000024       7 MISMATCH read          9 user rv 5 != kernel rv -11 (recvfrom)",
        "    0.000030       7 callback-return        - echo = 0x01",
    ]);
    assert_eq!(table_of(&records, &summary), expected);
}

#[test]
fn table_marks_lost_events_and_incomplete_ops() {
    let events = vec![
        probe(0, 7, ProbeName::WriteEntry, [9, 0x1000, 64, 1, 2, 0], &[]),
        syscall(1_000, 7, SyscallName::Sendto, 9, 64, 500),
        Event::Lost {
            ts_ns: T0 + 2_000,
            count: 3,
        },
    ];
    let (records, summary) = correlate(events);
    let expected = lines(&[
        "        TIME     TID SYSCALL               FD DETAILS                                  ERROR",
        "    0.000000       7 write-entry            9 len 64 closure 2",
        "    0.000001       7 sendto                 9 = 64 (arg 64) 0us",
        "    0.000001       7 INCOMPLETE write       9 events lost",
        "    0.000002       0 LOST                   - 3 events dropped by the kernel side",
    ]);
    // The op never returned: its row goes where it was last seen, after
    // its syscall, even though the loss that ended it came later.
    let got = table_of(&records, &summary);
    assert_eq!(got, expected);
}

/// The JSON contract, field by field.
#[test]
fn json_lines_follow_the_contract() {
    let (records, summary) = correlate(small_stream());
    let text = json_of(&records, &summary);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    let of_type = |t: &str| -> Vec<&Value> { lines.iter().filter(|l| l["type"] == t).collect() };

    assert_eq!(
        of_type("epoll_ctl"),
        [
            &json!({"type": "epoll_ctl", "ts_ns": T0, "pid": 1, "tid": 7, "name": "epoll_ctl", "epfd": 4,
                 "op": "ADD", "fd": 9, "events": 0x8000_0001u32, "data": 2, "rv": 0,
                 "errno": null, "dur_ns": 1500})
        ]
    );
    assert_eq!(
        of_type("syscall"),
        [
            &json!({"type": "syscall", "ts_ns": T0 + 22_000, "pid": 1, "tid": 7, "name": "recvfrom",
                    "fd": 9, "rv": -11, "errno": 11, "dur_ns": 1000, "arg": 64}),
            &json!({"type": "syscall", "ts_ns": T0 + 12_500, "pid": 1, "tid": 8, "name": "write",
                    "fd": 1, "rv": 5, "errno": null, "dur_ns": 2000, "arg": 64}),
        ]
    );
    assert_eq!(
        of_type("wait"),
        [
            &json!({"type": "wait", "ts_ns": T0 + 10_000, "pid": 1, "tid": 7, "name": "epoll_wait",
                 "epfd": 4, "rv": 2, "errno": null, "dur_ns": 5000,
                 "events": [{"fd": 9, "events": 1, "data": 2},
                            {"fd": null, "events": 0x11, "data": 77}],
                 "events_omitted": 0})
        ]
    );
    let probes = of_type("probe");
    assert_eq!(probes.len(), 4);
    assert_eq!(
        probes[0],
        &json!({"type": "probe", "ts_ns": T0 + 20_000, "pid": 1, "tid": 7,
                "name": "eventer-callback-entry", "fd": 9,
                "args": [2, 2, 0xdead, 9, 1, 1], "strings": ["echo"]})
    );
    assert_eq!(
        probes[2],
        &json!({"type": "probe", "ts_ns": T0 + 24_000, "pid": 1, "tid": 7,
                "name": "eventer-read-return", "fd": 9,
                "args": [9, 0x1000, 64, 1, 2, 5], "strings": []}),
        "only arg_count arguments, ints signed"
    );
    assert_eq!(
        probes[3]["args"],
        json!([2, 2, 0xdead, 1]),
        "callback-return has 4 arguments"
    );
    assert_eq!(
        of_type("op"),
        [
            &json!({"type": "op", "op": "read", "pid": 1, "tid": 7, "fd": 9,
                    "entry_ts_ns": T0 + 21_000, "return_ts_ns": T0 + 24_000, "user_rv": 5,
                    "syscalls": [{"name": "recvfrom", "rv": -11, "errno": 11,
                                  "ts_ns": T0 + 22_000, "dur_ns": 1000}],
                    "kernel_ns": 1000, "user_ns": 2000,
                    "mismatch": "user rv 5 != kernel rv -11 (recvfrom)",
                    "incomplete": null, "closure": 2, "callback": "echo"}),
            &json!({"type": "op", "op": "callback", "pid": 1, "tid": 7, "fd": 9,
                    "entry_ts_ns": T0 + 20_000, "return_ts_ns": T0 + 30_000, "user_rv": 1,
                    "syscalls": [], "kernel_ns": 0, "user_ns": 10_000, "mismatch": null,
                    "incomplete": null, "closure": 2, "callback": "echo"}),
        ]
    );

    let last = lines.last().unwrap();
    assert_eq!(last["type"], "summary", "the summary is the last line");
    assert_eq!(
        (
            &last["events"],
            &last["lost_events"],
            &last["ops"],
            &last["mismatches"]
        ),
        (&json!(8), &json!(0), &json!(2), &json!(1))
    );
    assert_eq!(
        last["per_fd"]["9"]["read"],
        json!({"count": 1, "bytes": 5, "mismatches": 1, "incomplete": 0, "errors": {},
               "user_ns_log2": [[1024, 1]], "kernel_ns_log2": [[512, 1]],
               "user_ns_total": 2000, "kernel_ns_total": 1000}),
        "the user side's rv counts bytes and errors"
    );
    assert_eq!(of_type("summary").len(), 1);
}

#[test]
fn quantize_prints_like_dtrace() {
    let mut h = Log2Hist::default();
    for v in [3, 5, 6, 7, 1000] {
        h.record(v);
    }
    let mut buf = Vec::new();
    quantize(&mut buf, "  user time (ns)", &h).unwrap();
    let expected = "  user time (ns)
           value  ------------- Distribution ------------- count
               2 |@@@@@@@@                                 1
               4 |@@@@@@@@@@@@@@@@@@@@@@@@                 3
               8 |                                         0
              16 |                                         0
              32 |                                         0
              64 |                                         0
             128 |                                         0
             256 |                                         0
             512 |@@@@@@@@                                 1
            1024 |                                         0
";
    assert_eq!(String::from_utf8(buf).unwrap(), expected);
    let mut extreme = Log2Hist::default();
    extreme.record(u64::MAX);
    let mut buf = Vec::new();
    quantize(&mut buf, "t", &extreme).unwrap();
    assert!(
        String::from_utf8(buf).unwrap().contains(&format!(
            "{} |{:<40} 1\n",
            1u64 << 63,
            "@".repeat(40)
        )),
        "the top bucket prints without overflow"
    );
    let mut empty = Vec::new();
    quantize(&mut empty, "nothing", &Log2Hist::default()).unwrap();
    assert!(empty.is_empty(), "an empty distribution prints nothing");
}

/// Compares `got` with the golden file `name`, or rewrites it when
/// `UPDATE_GOLDEN` is set.
fn golden(name: &str, got: &str) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 makes it)", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{name} differs from line {}:\n got: {:?}\nwant: {:?}\n(UPDATE_GOLDEN=1 rewrites it; read the diff)",
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

#[test]
fn recorded_session_table_matches_its_golden_file() {
    let (records, summary) = correlate(load_recording("echo_mio_session.jsonl"));
    golden(
        "echo_mio_session.table.golden",
        &table_of(&records, &summary),
    );
}

#[test]
fn recorded_session_json_matches_its_golden_file() {
    let (records, summary) = correlate(load_recording("echo_mio_session.jsonl"));
    golden("echo_mio_session.json.golden", &json_of(&records, &summary));
}

#[test]
fn recorded_session_summary_matches_its_golden_file() {
    let (_, summary) = correlate(load_recording("echo_mio_session.jsonl"));
    golden("echo_mio_session.summary.golden", &summary_of(&summary));
}

/// JSON output is itself a recording: replaying it gives the same events.
#[test]
fn json_output_replays_to_the_same_stream() {
    let events = load_recording("echo_mio_session.jsonl");
    let (records, summary) = correlate(events.clone());
    let replayed = support::parse_recording(&json_of(&records, &summary)).unwrap();
    let key = |e: &Event| format!("{e:?}");
    let mut a: Vec<String> = events.iter().map(key).collect();
    let mut b: Vec<String> = replayed.iter().map(key).collect();
    // Waits come out once resolved, so only the order may differ.
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn the_summary_report_names_losses_and_disagreements() {
    let mut events = small_stream();
    events.push(probe(
        40_000,
        7,
        ProbeName::WriteEntry,
        [9, 0x1000, 64, 1, 2, 0],
        &[],
    ));
    events.push(Event::Lost {
        ts_ns: T0 + 41_000,
        count: 3,
    });
    let (_, summary) = correlate(events);
    let text = summary_of(&summary);
    let head: Vec<&str> = text.lines().take(5).collect();
    assert_eq!(
        head,
        [
            "",
            "=== summary",
            "events 10  lost 3  ops 3  mismatches 1  incomplete 1  orphan syscalls 0  waits 1",
            "WARNING: 3 events were lost; ops around them are marked incomplete, not mismatched",
            "",
        ]
    );
    assert!(
        text.contains(
            "     9 read              1            5         1          0         2000         1000  -\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "     9 write             1            0         0          1            -            -  -\n"
        ),
        "an op cut by the loss has no times: {text}"
    );
}

/// A wait that returned more events than the kernel side records (30):
/// the table says how many more there were, JSON has `events_omitted`.
#[test]
fn a_wait_with_more_events_than_recorded_says_how_many_more() {
    let wait = |rv: i64, n: u64| {
        Event::EpollWait(EpollWait {
            ts_ns: T0,
            pid: 1,
            tid: 7,
            name: "epoll_wait",
            epfd: 4,
            rv,
            dur_ns: 2_000,
            events: (0..n)
                .map(|i| ReadyEvent {
                    events: 1,
                    data: 100 + i,
                })
                .collect(),
        })
    };
    let (records, summary) = correlate(vec![wait(180, 30)]);
    let table = table_of(&records, &summary);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(
        rows.len(),
        1 + 1 + 30 + 1,
        "header, wait, 30 events, the marker:\n{table}"
    );
    assert_eq!(
        rows[1],
        "    0.000000       7 epoll_wait             - 180 events 2us"
    );
    assert_eq!(
        rows[31],
        "    0.000002       7 EPOLL_EVENT            ? fdevents 0x01 IN"
    );
    assert_eq!(
        rows[32],
        "    0.000002       7 EPOLL_EVENT            - +150 more events not recorded"
    );
    let json = json_of(&records, &summary);
    let line: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "wait");
    assert_eq!(line["events"].as_array().unwrap().len(), 30);
    assert_eq!(line["events_omitted"], 150);

    // All there, or a failed wait: nothing omitted, no marker.
    for (rv, n) in [(30, 30), (3, 3), (0, 0), (-4, 0)] {
        let (records, summary) = correlate(vec![wait(rv, n)]);
        assert!(!table_of(&records, &summary).contains("more events"));
        let json = json_of(&records, &summary);
        let line: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(line["events_omitted"], 0, "rv {rv}");
    }
}

/// What the traced program names (callbacks, log messages) reaches the
/// table escaped: one row each, no byte a terminal acts on. JSON keeps the
/// exact string, escaped as JSON.
#[test]
fn hostile_strings_are_escaped_in_the_table_and_exact_in_json() {
    let hostile = "\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\r\u{9b}1A\\";
    let events = vec![
        probe(
            0,
            7,
            ProbeName::CallbackEntry,
            [2, 2, 0xdead, 9, 1, 1],
            &[hostile],
        ),
        probe(
            1_000,
            7,
            ProbeName::Log,
            [0, 0, 42, 0, 0, 0],
            &[hostile, "f\n.rs", "m\x1b[1m"],
        ),
        probe(
            2_000,
            7,
            ProbeName::CallbackReturn,
            [2, 2, 0xdead, 1, 0, 0],
            &[hostile],
        ),
    ];
    let (records, summary) = correlate(events);
    let table = table_of(&records, &summary);
    let shown = r"\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\r\u{9b}1A\\";
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        [
            "        TIME     TID SYSCALL               FD DETAILS                                  ERROR",
            &format!("    0.000000       7 callback-entry         9 {shown} mask 0x01 closure 2"),
            &format!("    0.000001       7 log                    - {shown}: m\\x1b[1m (f\\n.rs:42)"),
            &format!("    0.000002       7 callback-return        - {shown} = 0x01"),
        ]
    );
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "no control but the rows' newlines: {table:?}"
    );

    let json = json_of(&records, &summary);
    assert!(
        !json.chars().any(|c| c.is_control() && c != '\n'),
        "{json:?}"
    );
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["strings"][0], hostile,
        "JSON decodes to the exact name"
    );
    assert_eq!(lines[1]["strings"], json!([hostile, "f\n.rs", "m\x1b[1m"]));
    let callback = lines.iter().find(|l| l["type"] == "op").unwrap();
    assert_eq!(callback["callback"], hostile);
}

/// `--summary` with the table: the text report after the rows, in the same
/// stream; with `-q` only the report. JSON never gets it (its summary is
/// its last line).
#[test]
fn the_text_summary_follows_the_table_in_the_same_stream() {
    let (records, summary) = correlate(small_stream());
    let mut buf = Vec::new();
    write_all(Table::new(&mut buf).with_summary(), &records, &summary);
    let text = String::from_utf8(buf).unwrap();
    let (rows, report) = text.split_once("\n=== summary\n").expect("a summary");
    assert!(
        rows.ends_with("callback-return        - echo = 0x01\n"),
        "{rows}"
    );
    assert!(report.starts_with("events 8  lost 0"), "{report}");

    let mut buf = Vec::new();
    write_all(
        SummaryOnly(Table::new(&mut buf).with_summary()),
        &records,
        &summary,
    );
    let quiet = String::from_utf8(buf).unwrap();
    assert!(quiet.starts_with("\n=== summary\n"), "{quiet}");
    assert_eq!(quiet, summary_of(&summary));
}

/// `-f`: a PID column, and fork rows; fd 5 of two processes side by side.
#[test]
fn table_with_pids_shows_each_rows_process() {
    use portsnoop::event::{ProcessEvent, ProcessEventKind};
    let in_pid = |pid: u32, ev: Event| match ev {
        Event::Syscall(mut s) => {
            s.pid = pid;
            Event::Syscall(s)
        }
        other => other,
    };
    let events = vec![
        Event::Process(ProcessEvent {
            ts_ns: T0,
            pid: 1,
            tid: 1,
            kind: ProcessEventKind::Fork { child: 42 },
        }),
        in_pid(1, syscall(1_000, 1, SyscallName::Write, 5, 3, 1_000)),
        in_pid(42, syscall(2_000, 42, SyscallName::Write, 5, 4, 1_000)),
    ];
    let (records, summary) = correlate(events);
    let mut buf = Vec::new();
    write_all(Table::new(&mut buf).with_pids(), &records, &summary);
    let expected = lines(&[
        "        TIME     PID     TID SYSCALL               FD DETAILS                                  ERROR",
        "    0.000000       1       1 PROCESS                - fork: child 42",
        "    0.000001       1       1 write                  5 = 3 (arg 64) 1us",
        "    0.000002      42      42 write                  5 = 4 (arg 64) 1us",
    ]);
    assert_eq!(String::from_utf8(buf).unwrap(), expected);
}

/// A callback named by a hostile app that sleeps 50 ms (clock_nanosleep,
/// all off-CPU) and writes to its fd, with stall tracking at 10 ms.
fn stall_stream() -> (Vec<Record>, Summary) {
    use portsnoop::correlate::{Correlator, Filter, StallConfig};
    use portsnoop::event::{OffCpu, SlowSyscall};
    let name = "bad\u{1b}[2Jcb";
    let events = vec![
        probe(0, 7, ProbeName::CallbackEntry, [3, 3, 0, 9, 1, 0], &[name]),
        Event::SlowSyscall(SlowSyscall {
            ts_ns: T0 + 1_000,
            pid: 1,
            tid: 7,
            nr: 230,
            arg0: 1,
            rv: 0,
            dur_ns: 50_000_000,
        }),
        syscall(50_002_000, 7, SyscallName::Write, 9, 5, 30_000),
        Event::OffCpu(OffCpu {
            ts_ns: T0 + 50_100_000,
            pid: 1,
            tid: 7,
            total_ns: 49_900_000,
        }),
        probe(
            50_100_000,
            7,
            ProbeName::CallbackReturn,
            [3, 3, 0, 1, 0, 0],
            &[name],
        ),
    ];
    let mut c = Correlator::new(Filter::default()).with_stalls(StallConfig {
        threshold_ns: 10_000_000,
        syscall_min_ns: 10_000,
    });
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    let summary = c.finish(&mut out);
    (out, summary)
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_stall_is_a_json_line_a_table_row_and_a_summary_entry() {
    let (records, summary) = stall_stream();
    let json = json_of(&records, &summary);
    let stall = json
        .lines()
        .find(|l| l.contains(r#""type":"stall""#))
        .expect("a stall line");
    assert_eq!(
        stall,
        r#"{"type":"stall","ts_ns":5000000000,"pid":1,"tid":7,"fd":9,"name":"bad\u001b[2Jcb","closure":3,"dur_ns":50100000,"off_cpu_ns":49900000,"syscalls":[{"name":"clock_nanosleep","fd":null,"rv":0,"dur_ns":50000000,"ts_ns":5000001000},{"name":"write","fd":9,"rv":5,"dur_ns":30000,"ts_ns":5050002000}],"syscalls_cut":0}"#
    );
    assert!(json.contains(r#""type":"slow_syscall","ts_ns":5000001000,"pid":1,"tid":7,"nr":230,"name":"clock_nanosleep","fd":null,"rv":0,"errno":null,"dur_ns":50000000,"arg0":1}"#));
    let last: Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["stalls"],
        json!([{"name": "bad\u{1b}[2Jcb", "count": 1, "total_ns": 50_100_000u64, "max_ns": 50_100_000u64,
                "off_cpu_ns_total": 49_900_000u64, "dur_ns_log2": [[33_554_432u64, 1]]}])
    );
    assert!(!json.contains('\u{1b}'), "raw ESC in the JSON: {json}");

    let table = table_of(&records, &summary);
    let row = table
        .lines()
        .find(|l| l.contains("STALL"))
        .expect("a STALL row");
    assert_eq!(
        row,
        "    0.050100       7 STALL                  9 bad\\x1b[2Jcb 50.1ms: off-CPU 49.9ms, on-CPU 200us; clock_nanosleep 50.0ms, write fd 9 30us"
    );
    assert!(
        table.contains("clock_nanosleep        - = 0 50000us"),
        "{table}"
    );
    assert!(!table.contains('\u{1b}'));

    let text = summary_of(&summary);
    assert!(
        text.contains(
            "top stalls (callbacks that ran past the --stall threshold):\n    COUNT     TOTAL ms       MAX ms   OFF-CPU ms  CALLBACK\n        1         50.1         50.1         49.9  bad\\x1b[2Jcb\n"
        ),
        "{text}"
    );
    assert!(text.contains("bad\\x1b[2Jcb stalls (ns)\n"), "{text}");
    assert!(!text.contains('\u{1b}'));
}
