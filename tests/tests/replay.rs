//! `portsnoop replay`: one live run writes its table with the summary,
//! a `--json=FILE` recording and a Perfetto trace; replaying the recording
//! must give the same outputs: the JSON and the Perfetto trace byte for
//! byte, the table the same rows (byte for byte but where a live row was
//! placed late by the wall clock, which a recording does not hold), the
//! summary byte for byte. Bad recordings are clear errors naming the line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use tests::{bin, run_load, OutputBounded, Portsnoop, WAIT};

fn tempdir() -> PathBuf {
    tests::scratch_dir("replay")
}

fn replay(args: &[&str]) -> Output {
    Command::new(bin("portsnoop"))
        .arg("replay")
        .args(args)
        .output_bounded()
        .expect("running portsnoop replay")
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "replay failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A live run of echo-mio under load, started under portsnoop: its table
/// with the summary, its recording, its Perfetto trace.
fn live_run(dir: &Path) {
    let echo = bin("echo-mio");
    let snoop = Portsnoop::start(&[
        "--summary",
        "-o",
        dir.join("table.txt").to_str().unwrap(),
        &format!("--json={}", dir.join("rec.jsonl").display()),
        "--perfetto",
        dir.join("live.pftrace").to_str().unwrap(),
        "--",
        echo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = snoop.child_listen_addr();
    run_load(addr, 3, 30, 100);
    // A connection that pauses: the loop waits between its messages.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut back = [0u8; 8];
        for _ in 0..5 {
            s.write_all(&[1; 8]).unwrap();
            s.read_exact(&mut back).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
}

/// The table's rows with a late row (`T2 ... (began T1)`) put back at T1,
/// sorted: the same rows whether or not the wall clock made one late.
fn rows(table: &str) -> Vec<String> {
    let mut rows: Vec<String> = table
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| match l.rfind(" (began ") {
            Some(at) if l.ends_with(')') => {
                let began = &l[at + " (began ".len()..l.len() - 1];
                format!("{began:>12}{}", &l[12..at])
            }
            _ => l.to_string(),
        })
        .collect();
    rows.sort();
    rows
}

fn summary_part(table: &str) -> &str {
    &table[table.find("\n=== summary").expect("a summary")..]
}

#[test]
fn replay_renders_what_the_live_run_wrote() {
    let dir = tempdir();
    live_run(&dir);
    let rec = dir.join("rec.jsonl");
    let rec_s = rec.to_str().unwrap();
    let recording = std::fs::read(&rec).unwrap();
    assert!(recording.len() > 10_000, "a real recording");

    // JSON: byte for byte.
    let json = ok(replay(&[rec_s, "--json"]));
    assert!(
        json == recording,
        "replay --json differs from the recording"
    );

    // The table with the summary, and the Perfetto trace, in one replay.
    let table_out = dir.join("replay.txt");
    let pf_out = dir.join("replay.pftrace");
    ok(replay(&[
        rec_s,
        "--summary",
        "-o",
        table_out.to_str().unwrap(),
        "--perfetto",
        pf_out.to_str().unwrap(),
    ]));
    let live_pf = std::fs::read(dir.join("live.pftrace")).unwrap();
    assert!(
        std::fs::read(&pf_out).unwrap() == live_pf,
        "the Perfetto traces differ"
    );
    let live = std::fs::read_to_string(dir.join("table.txt")).unwrap();
    let replayed = std::fs::read_to_string(&table_out).unwrap();
    assert_eq!(live.lines().next(), replayed.lines().next(), "the header");
    assert_eq!(rows(&replayed), rows(&live));
    assert!(rows(&live).len() > 500, "a real table");
    assert_eq!(summary_part(&replayed), summary_part(&live));
    if replayed != live {
        eprintln!("note: a row the live table placed late by the wall clock is in place in replay");
    }

    // -q: the summary alone, the same.
    let quiet = String::from_utf8(ok(replay(&[rec_s, "-q"]))).unwrap();
    assert_eq!(quiet, summary_part(&live));
    // And from stdin.
    let stdin = Command::new(bin("portsnoop"))
        .args(["replay", "-", "--json"])
        .stdin(std::fs::File::open(&rec).unwrap())
        .output_bounded()
        .unwrap();
    assert!(ok(stdin) == recording);
}

#[test]
fn bad_recordings_are_errors_naming_the_line() {
    let dir = tempdir();
    let good = [
        r#"{"type":"syscall","ts_ns":10,"pid":5,"tid":5,"name":"read","fd":3,"rv":4,"errno":null,"dur_ns":2,"arg":8}"#,
        // As the writer orders a lost line's keys.
        r#"{"count":2,"ts_ns":20,"type":"lost"}"#,
    ];
    let cases: [(&str, String, &str); 4] = [
        (
            "garbage",
            format!("{}\nnot json\n", good[0]),
            "line 2: not JSON",
        ),
        (
            "truncated",
            format!("{}\n{}", good[0], &good[1][..20]),
            "line 2: not JSON",
        ),
        (
            "bad field",
            format!(
                "{}\n{}\n",
                good[1],
                good[0].replace("\"fd\":3", "\"fd\":\"3\"")
            ),
            "line 2: syscall: \"fd\" is not",
        ),
        (
            "after the summary",
            format!(
                "{}\n{}\n",
                r#"{"type":"summary","events":0,"lost_events":0,"ops":0,"mismatches":0,"incomplete":0,"orphan_syscalls":0,"syscalls_cut":0,"waits":0,"process_end":null,"per_fd":{},"per_op":{}}"#,
                good[1]
            ),
            "line 2: a line after the summary",
        ),
    ];
    for (what, text, says) in cases {
        let path = dir.join(format!("{}.jsonl", what.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let out = replay(&[path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // The output is the recording: refused before it is emptied.
    let path = dir.join("self.jsonl");
    std::fs::write(&path, format!("{}\n", good[0])).unwrap();
    let out = replay(&[
        path.to_str().unwrap(),
        "--json",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the recording being replayed"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", good[0])
    );

    let out = replay(&[dir.join("no-such.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));

    // Types a newer portsnoop writes: skipped, counted, the rest replayed.
    let path = dir.join("newer.jsonl");
    std::fs::write(
        &path,
        format!(
            "{}\n{{\"type\":\"future_a\",\"ts_ns\":11}}\n{{\"type\":\"future_b\"}}\n{}\n",
            good[0], good[1]
        ),
    )
    .unwrap();
    let out = replay(&[path.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let json = String::from_utf8(ok(out)).unwrap();
    assert!(
        json.starts_with(&format!("{}\n{}\n", good[0], good[1])),
        "{json}"
    );
    assert!(
        err.contains(
            "skipped 2 lines of record types this portsnoop does not know: future_a (1), future_b (1)"
        ),
        "{err}"
    );
    assert!(err.contains("no summary line"), "{err}");
}

/// A `-f` run (a pre-forking server and its workers): replay `--pids`
/// shows the PID column the live table had, and the Perfetto trace, live
/// and replayed, has a track per process.
#[test]
fn a_followed_run_replays_with_its_pid_column() {
    let dir = tempdir();
    let fixture = bin("fork-fixture");
    let snoop = Portsnoop::start(&[
        "-f",
        "--summary",
        "-o",
        dir.join("table.txt").to_str().unwrap(),
        &format!("--json={}", dir.join("rec.jsonl").display()),
        "--perfetto",
        dir.join("live.pftrace").to_str().unwrap(),
        "--",
        fixture.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    let addr = snoop.child_listen_addr();
    for _ in 0..2 {
        snoop
            .proc
            .stderr
            .wait_for(WAIT, |l| l.starts_with("portsnoop: following pid "))
            .expect("the workers followed");
    }
    run_load(addr, 4, 10, 32);
    thread::sleep(Duration::from_millis(200));
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));

    let rec = dir.join("rec.jsonl");
    let table_out = dir.join("replay.txt");
    let pf_out = dir.join("replay.pftrace");
    ok(replay(&[
        rec.to_str().unwrap(),
        "--pids",
        "--summary",
        "-o",
        table_out.to_str().unwrap(),
        "--perfetto",
        pf_out.to_str().unwrap(),
    ]));
    let live = std::fs::read_to_string(dir.join("table.txt")).unwrap();
    let replayed = std::fs::read_to_string(&table_out).unwrap();
    assert!(live.lines().next().unwrap().contains(" PID "), "{live}");
    assert_eq!(live.lines().next(), replayed.lines().next());
    assert_eq!(rows(&replayed), rows(&live));
    assert_eq!(summary_part(&replayed), summary_part(&live));
    let live_pf = dir.join("live.pftrace");
    assert!(std::fs::read(&pf_out).unwrap() == std::fs::read(&live_pf).unwrap());
    let nesting = tests::perfetto_nesting(&live_pf);
    assert_eq!(nesting["errors"], serde_json::json!([]));
    let processes = nesting["tracks"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["process"].is_u64())
        .count();
    assert!(processes >= 3, "the server and its 2 workers: {nesting}");
}
