//! A `mismatch` is only ever a real disagreement between the app and the
//! kernel. These attach to busy, correct servers the ways operators do
//! (mid-load, on multi-threaded runtimes, with a buffer too small) and
//! require zero mismatches: what the trace's start or a loss cut short is
//! `incomplete`, with its reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use serde_json::Value;
use tests::{json_file, run_load, Portsnoop, Server, WAIT};

/// Load that keeps `addr` busy until dropped.
struct Busy {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Busy {
    fn start(addr: SocketAddr, conns: u32, msgs: u32) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let deadline = Instant::now() + WAIT * 4;
        let thread = thread::spawn(move || {
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let load = run_load(addr, conns, msgs, 64);
                assert_eq!(load.ok_conns, u64::from(conns), "echoes stay right");
                rounds += 1;
            }
            rounds
        });
        Busy {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let rounds = t.join().expect("the load ran cleanly");
            assert!(rounds > 0);
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("no-false-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Attaches `portsnoop -p PID --json -d SECS -o FILE ARGS...` and returns
/// its records once it has stopped by itself.
fn trace(pid: u32, secs: &str, extra: &[&str], name: &str) -> Vec<Value> {
    let out = scratch(name);
    let mut args = vec![
        "-p".to_string(),
        pid.to_string(),
        "--json".into(),
        "-d".into(),
        secs.into(),
        "-o".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut snoop = Portsnoop::start(&args);
    let status = snoop.proc.wait_exit(WAIT);
    assert!(status.success(), "{status}");
    let records = json_file(&out);
    std::fs::remove_file(&out).ok();
    records
}

fn mismatched(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "op" && !r["mismatch"].is_null())
        .collect()
}

fn summary(records: &[Value]) -> &Value {
    let last = records.last().expect("at least the summary");
    assert_eq!(last["type"], "summary");
    last
}

/// Attaching mid-load used to catch ops half-way: an entry recorded while
/// its return probe was not attached yet, a return whose entry fired before
/// the trace, a syscall inside an op begun before it.
fn attach_ten_times_to(server: &str) {
    let server = Server::start(server, &[]);
    let _busy = Busy::start(server.addr, 4, 20_000);
    let mut seen_before = 0;
    for i in 0..10 {
        let records = trace(server.pid(), "0.2", &[], &format!("{i}.json"));
        let s = summary(&records);
        assert!(s["ops"].as_u64() > Some(100), "the server was busy: {s}");
        assert_eq!(
            s["mismatches"],
            0,
            "attach {i}: {:#?}",
            mismatched(&records)
        );
        seen_before += records
            .iter()
            .filter(|r| r["incomplete"] == "began before the trace")
            .count();
    }
    // Attached mid-load, some ops were under way: they are shown, as what
    // they are.
    assert!(seen_before > 0, "no op was caught half-way in 10 attaches");
}

#[test]
fn attaching_to_a_busy_mio_loop_finds_no_false_mismatch() {
    attach_ten_times_to("echo-mio");
}

#[test]
fn attaching_to_a_busy_tokio_runtime_finds_no_false_mismatch() {
    attach_ten_times_to("echo-tokio");
}

/// Thread A's close(fd) frees the number at its start; thread B's accept4
/// gets it and is recorded before A's close returns. Once three false
/// mismatches for one correct close ("fd reused by accept during close
/// op", "syscall without eventer op", "close return without entry").
#[test]
fn a_close_racing_an_accept_of_its_number_is_no_mismatch() {
    let out = scratch("race.json");
    let close_race = tests::bin("close-race-fixture");
    let mut snoop = Portsnoop::start(&[
        "--json",
        "-o",
        out.to_str().unwrap(),
        "--",
        close_race.to_str().unwrap(),
    ]);
    let status = snoop.proc.wait_exit(WAIT);
    assert!(status.success(), "{status}");
    let records = json_file(&out);
    // The race happened: the close's entry, another thread's accept of the
    // same number, then the close's own record, in the stream's order.
    let at = |pred: &dyn Fn(&Value) -> bool| records.iter().position(pred);
    let after =
        |i: usize, pred: &dyn Fn(&Value) -> bool| records[i..].iter().position(pred).map(|j| i + j);
    let closed = records
        .iter()
        .find(|r| r["type"] == "op" && r["op"] == "close")
        .expect("the close op");
    let enter = at(&|r| r["type"] == "close_enter" && r["fd"] == closed["fd"])
        .expect("a close_enter record");
    let (fd, closer) = (&records[enter]["fd"], &records[enter]["tid"]);
    let accept = after(enter, &|r| {
        r["type"] == "syscall" && r["name"] == "accept4" && &r["rv"] == fd && r["tid"] != *closer
    });
    let close = after(enter, &|r| {
        r["type"] == "syscall" && r["name"] == "close" && &r["fd"] == fd
    });
    assert!(
        matches!((accept, close), (Some(a), Some(c)) if enter < a && a < c),
        "close_enter {enter}, accept {accept:?}, close {close:?}"
    );
    let s = summary(&records);
    assert_eq!(s["mismatches"], 0, "{:#?}", mismatched(&records));
    assert_eq!(s["incomplete"], 0, "{s}");
    let ops = |kind: &str| {
        records
            .iter()
            .filter(|r| r["type"] == "op" && r["op"] == kind)
            .count()
    };
    assert_eq!((ops("accept"), ops("close"), ops("read")), (2, 1, 1));
    assert!(ops("write") > 1, "the send buffer was filled");
}

/// The same race as it comes under load: echo-tokio, two clients with 100
/// short connections each, at once (it shows up now and then).
#[test]
fn short_connections_on_a_multithreaded_runtime_find_no_mismatch() {
    let server = Server::start("echo-tokio", &[]);
    let out = scratch("short.json");
    let snoop = Portsnoop::start(&[
        "-p",
        &server.pid().to_string(),
        "--json",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    for _ in 0..3 {
        let loads: Vec<_> = (0..2)
            .map(|_| {
                let addr = server.addr;
                thread::spawn(move || run_load(addr, 100, 1, 16))
            })
            .collect();
        for l in loads {
            assert_eq!(l.join().unwrap().ok_conns, 100);
        }
    }
    let (status, _, _) = snoop.finish();
    assert!(status.success());
    let records = json_file(&out);
    let s = summary(&records);
    assert_eq!(
        s["per_op"]["accept"]["count"].as_u64().map(|n| n >= 600),
        Some(true),
        "{s}"
    );
    assert_eq!(s["mismatches"], 0, "{s}");
}

/// A 4 KiB ring buffer under load: every op a loss touched is incomplete,
/// and none is a mismatch (callback returns whose entries were lost
/// included).
#[test]
fn a_forced_overflow_makes_ops_incomplete_never_mismatched() {
    for server in ["echo-mio", "echo-tokio"] {
        let server = Server::start(server, &[]);
        let _busy = Busy::start(server.addr, 16, 2000);
        let records = trace(server.pid(), "1", &["--buffer-kb", "4"], "overflow.json");
        let s = summary(&records);
        assert!(s["lost_events"].as_u64() > Some(0), "it overflowed: {s}");
        assert_eq!(s["mismatches"], 0, "{:#?}", mismatched(&records));
        let lost: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] == "op" && r["incomplete"].is_string())
            .collect();
        assert!(!lost.is_empty());
        assert_eq!(s["incomplete"].as_u64(), Some(lost.len() as u64));
        assert!(
            lost.iter()
                .any(|o| o["incomplete"].as_str().unwrap().starts_with("events lost")),
            "{lost:#?}"
        );
    }
}
