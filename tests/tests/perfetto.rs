//! `--perfetto FILE`: a live run writes the JSON and the Perfetto trace of
//! the same records; an independent reader (perfetto's own protos, in
//! Python) reads the trace, and its nesting is checked against the JSON:
//! every op inside its callback's slice on its thread's track, its syscalls
//! inside it, waits as slices, a marker for every mismatch and incomplete
//! op, log probes as instants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tests::{
    bin, json_file, perfetto_nesting, run_load, socket_count, wait_for_sockets, OutputBounded,
    Portsnoop, Proc, Server, WAIT,
};

fn tempdir(tag: &str) -> PathBuf {
    tests::scratch_dir(&format!("perfetto-{tag}"))
}

/// What the check found, for the callers' own expectations.
#[derive(Debug, Default)]
struct Seen {
    callbacks: usize,
    ops_in_callbacks: usize,
    syscalls_in_ops: usize,
    waits: usize,
    mismatches: usize,
    incomplete: usize,
    logs: usize,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no number {k} in {v}"))
}

/// Checks the trace's nesting against the JSON lines of the same run.
fn check(trace: &Value, records: &[Value]) -> Seen {
    assert_eq!(
        trace["errors"],
        serde_json::json!([]),
        "the reader's complaints"
    );
    assert_eq!(trace["clock_snapshot"]["primary_trace_clock"], 3);
    assert_eq!(trace["first_packet"]["sequence_flags"], 1);
    let slices = trace["slices"].as_array().unwrap();
    let instants = trace["instants"].as_array().unwrap();
    // Thread tracks: one per thread the JSON has, with its process.
    let tracks: HashMap<u64, (u64, u64)> = trace["tracks"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["tid"].is_u64())
        .map(|t| (n(t, "tid"), (n(t, "pid"), n(t, "tid"))))
        .collect();
    let mut by_key: HashMap<(u64, &str, u64), usize> = HashMap::new();
    for (i, sl) in slices.iter().enumerate() {
        assert!(sl["end"].is_u64(), "every slice ends: {sl}");
        by_key.insert((n(sl, "tid"), s(sl, "name"), n(sl, "ts")), i);
    }
    let slice = |tid: u64, name: &str, ts: u64| -> &Value {
        let i = by_key
            .get(&(tid, name, ts))
            .unwrap_or_else(|| panic!("no slice {name:?} at {ts} on thread {tid}"));
        &slices[*i]
    };
    let cut = |sl: &Value| sl["args"]["end_cut_ns"].is_u64();
    let mut seen = Seen::default();
    for r in records {
        // What is drawn on its thread's track (process events go on the
        // process's, entry and return probes are the ops).
        let drawn = matches!(s(r, "type"), "syscall" | "wait" | "epoll_ctl" | "op")
            || (r["type"] == "probe" && r["name"] == "log");
        if drawn {
            let tid = n(r, "tid");
            assert_eq!(
                tracks.get(&tid),
                Some(&(n(r, "pid"), tid)),
                "a track for {r}"
            );
        }
        match s(r, "type") {
            "wait" => {
                let sl = slice(n(r, "tid"), s(r, "name"), n(r, "ts_ns"));
                assert_eq!(n(sl, "end"), n(r, "ts_ns") + n(r, "dur_ns"), "{r}");
                seen.waits += 1;
            }
            "probe" if s(r, "name") == "log" => {
                let msg = &r["strings"][2];
                assert!(
                    instants.iter().any(|i| i["name"] == "log"
                        && i["tid"] == r["tid"]
                        && i["ts"] == r["ts_ns"]
                        && &i["args"]["msg"] == msg),
                    "no log instant for {r}"
                );
                seen.logs += 1;
            }
            "op" => {
                let tid = n(r, "tid");
                let (entry, ret) = (n(r, "entry_ts_ns"), r["return_ts_ns"].as_u64());
                let kind = s(r, "op");
                let name = match kind {
                    "callback" => r["callback"].as_str().unwrap_or("callback"),
                    k => k,
                };
                let sl = slice(tid, name, entry);
                if let (Some(ret), false) = (ret, cut(sl)) {
                    assert_eq!(n(sl, "end"), ret, "{r}");
                }
                if kind == "callback" {
                    seen.callbacks += 1;
                } else {
                    // Inside the slice of the callback it ran in.
                    if let (Some(cb), Some(ret), false) = (r["callback"].as_str(), ret, cut(sl)) {
                        let mut parent = sl["parent"].as_u64();
                        let mut found = false;
                        while let Some(p) = parent {
                            let ps = &slices[p as usize];
                            if ps["name"] == cb && n(ps, "ts") <= entry && n(ps, "end") >= ret {
                                found = true;
                                break;
                            }
                            parent = ps["parent"].as_u64();
                        }
                        assert!(found, "{r} is not inside a {cb:?} callback slice: {sl}");
                        seen.ops_in_callbacks += 1;
                    }
                    if !cut(sl) {
                        let me = by_key[&(tid, name, entry)] as u64;
                        for sc in r["syscalls"].as_array().unwrap() {
                            let ss = slice(tid, s(sc, "name"), n(sc, "ts_ns"));
                            assert_eq!(ss["parent"].as_u64(), Some(me), "{sc} inside {r}");
                            assert_eq!(n(ss, "end"), n(sc, "ts_ns") + n(sc, "dur_ns"));
                            assert_eq!(ss["args"]["rv"], sc["rv"]);
                            seen.syscalls_in_ops += 1;
                        }
                    }
                }
                let marker = match (&r["mismatch"], &r["incomplete"]) {
                    (Value::String(m), _) => Some(("MISMATCH", "mismatch", m)),
                    (Value::Null, Value::String(i)) => Some(("INCOMPLETE", "incomplete", i)),
                    _ => None,
                };
                if let Some((label, arg, why)) = marker {
                    let want = format!("{label} {kind}");
                    assert!(
                        instants.iter().any(|i| i["name"] == want.as_str()
                            && n(i, "tid") == tid
                            && i["args"][arg].as_str() == Some(why)),
                        "no {want} marker for {r}"
                    );
                    match label {
                        "MISMATCH" => seen.mismatches += 1,
                        _ => seen.incomplete += 1,
                    }
                }
            }
            _ => {}
        }
    }
    // No marker the JSON does not have.
    let count = |prefix: &str| {
        instants
            .iter()
            .filter(|i| s(i, "name").starts_with(prefix))
            .count()
    };
    assert_eq!(count("MISMATCH "), seen.mismatches);
    assert_eq!(count("INCOMPLETE "), seen.incomplete);
    seen
}

fn run_checked(dir: &Path) -> Seen {
    let records = json_file(&dir.join("rec.jsonl"));
    let trace = perfetto_nesting(&dir.join("trace.pftrace"));
    check(&trace, &records)
}

/// One connection that pauses after each echo, so the loop goes back to
/// its wait between messages.
fn slow_client(addr: std::net::SocketAddr, msgs: u32) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut back = [0u8; 16];
    for _ in 0..msgs {
        s.write_all(&[7; 16]).unwrap();
        s.read_exact(&mut back).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn echo_mio_callbacks_hold_their_ops_and_the_ops_their_syscalls() {
    let dir = tempdir("mio");
    let (json, trace) = (dir.join("rec.jsonl"), dir.join("trace.pftrace"));
    let echo = bin("echo-mio");
    let snoop = Portsnoop::start(&[
        "-q",
        "-o",
        dir.join("summary.txt").to_str().unwrap(),
        &format!("--json={}", json.display()),
        "--perfetto",
        trace.to_str().unwrap(),
        "--",
        echo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = snoop.child_listen_addr();
    // Enough for the writer to lay out and write the loop's thread in
    // several parts (a thousand slices or more each).
    run_load(addr, 3, 200, 100);
    slow_client(addr, 5);
    thread::sleep(Duration::from_millis(200));
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let seen = run_checked(&dir);
    // The accept callbacks and the echo callbacks (one can take several
    // messages under load, the slow client's one each), with their ops.
    assert!(seen.callbacks > 10, "{seen:?}");
    assert!(seen.ops_in_callbacks > 100, "{seen:?}");
    assert!(seen.syscalls_in_ops >= seen.ops_in_callbacks, "{seen:?}");
    assert!(seen.waits > 5, "{seen:?}");
}

#[test]
fn echo_tokio_task_polls_hold_their_ops_on_every_worker() {
    let server = Server::start("echo-tokio", &[]);
    let dir = tempdir("tokio");
    let (json, trace) = (dir.join("rec.jsonl"), dir.join("trace.pftrace"));
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&[
        "-p",
        &server.pid().to_string(),
        "-q",
        "-o",
        dir.join("summary.txt").to_str().unwrap(),
        &format!("--json={}", json.display()),
        "--perfetto",
        trace.to_str().unwrap(),
    ]);
    run_load(server.addr, 4, 20, 64);
    wait_for_sockets(server.pid(), baseline);
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let seen = run_checked(&dir);
    assert!(
        seen.callbacks > 20 && seen.ops_in_callbacks > 40,
        "{seen:?}"
    );
}

/// Probes fired with no syscalls (mismatches), logs, and callback names
/// full of terminal controls: markers for each, names kept as they are.
#[test]
fn mismatches_logs_and_hostile_names_are_marked() {
    let dir = tempdir("fixture");
    let (json, trace) = (dir.join("rec.jsonl"), dir.join("trace.pftrace"));
    let mut fixture = Command::new(tests::bin("probe-fixture"));
    fixture.arg("--hostile");
    let mut fixture = Proc::spawn(fixture);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == "ready")
        .expect("fixture ready");
    let snoop = Portsnoop::start(&[
        "-p",
        &fixture.pid().to_string(),
        "-q",
        "-o",
        dir.join("summary.txt").to_str().unwrap(),
        &format!("--json={}", json.display()),
        "--perfetto",
        trace.to_str().unwrap(),
    ]);
    fixture.signal(libc::SIGUSR1);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == "fired 1")
        .expect("fired");
    thread::sleep(Duration::from_millis(300));
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let seen = run_checked(&dir);
    assert!(seen.mismatches > 0 && seen.logs > 0, "{seen:?}");
    let nesting = perfetto_nesting(&trace);
    let hostile = "\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\u{9b}1A";
    assert!(
        nesting["slices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|sl| sl["name"] == hostile),
        "the hostile callback's slice, its name as the app gave it"
    );
}

/// Two outputs into one file would interleave garbage: a usage error.
#[test]
fn two_outputs_into_one_file_is_a_usage_error() {
    for args in [
        ["--json=same", "-o", "same", "--perfetto", "other"],
        ["--json=one", "-o", "same", "--perfetto", "same"],
    ] {
        let out = Command::new(bin("portsnoop"))
            .args(args)
            .args(["--", "true"])
            .output_bounded()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("need different files"));
    }
}
