//! `frame_all_tasks` end to end: an axum server on a runtime with the task
//! hooks, real HTTP requests on loopback, and the real portsnoop attached
//! to this very process (`-p`): the connection tasks axum spawns itself are
//! framed by callback-entry/return, their reads and writes carry the task's
//! id, and portsnoop finds no mismatch.
//!
//! Built only under `--cfg tokio_unstable` (test.sh runs it so, in its own
//! target dir); it needs portsnoop from the main release build
//! (`target/release/portsnoop`, which test.sh builds first).
#![cfg(all(tokio_unstable, feature = "axum", feature = "probes"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use eventloop_probes::tokio::{frame_all_tasks, TcpListener};
use serde_json::Value;

/// How long any single wait may take.
const WAIT: Duration = Duration::from_secs(30);

const REQUESTS: usize = 4;

fn portsnoop_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portsnoop");
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --workspace --bins` first (./test.sh does)",
        path.display()
    );
    path
}

/// A child's pipe, line by line, read by a thread so waits can time out.
fn lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Collects lines into `seen` until one satisfies `pred` (bounded by WAIT).
fn wait_for(
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !pred(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "waiting for {what}: {e}; lines so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Kills the child if the test panics before stopping it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One `GET /` with `Connection: close`; returns the whole response.
fn http_get(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).expect("connecting");
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).expect("reading the response");
    out
}

fn callback_ops(records: &[Value]) -> impl Iterator<Item = &Value> {
    records
        .iter()
        .filter(|r| r["type"] == "op" && r["op"] == "callback")
}

#[test]
fn portsnoop_sees_every_task_axum_spawns_framed() {
    let out = std::env::temp_dir().join(format!("frame-all-tasks-{}.json", std::process::id()));
    let mut snoop = Command::new(portsnoop_bin())
        .args(["--json", "-o", out.to_str().unwrap()])
        .args(["-p", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting portsnoop");
    let err = lines(snoop.stderr.take().unwrap());
    let mut snoop = Reap(snoop);
    let mut err_seen = Vec::new();
    wait_for(&err, &mut err_seen, "portsnoop's ready line", |l| {
        l.last().is_some_and(|l| l.ends_with("; ready"))
    });

    // The server: axum on the evloop listener, on a runtime whose every
    // task poll is framed. Built after the attach, so its worker threads
    // are traced from their first poll.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    frame_all_tasks(&mut builder);
    let rt = builder.build().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "framed" }));
    let server = rt.spawn(async move { axum::serve(listener, app).await });

    for _ in 0..REQUESTS {
        let resp = http_get(addr);
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nframed"), "{resp}");
    }
    // Every connection task has ended once only the serve task and axum's
    // shutdown-signal task are alive. Dropping the runtime then waits for
    // its workers, so every poll's return probe has fired before portsnoop
    // is stopped (it drains its buffer at the stop).
    let deadline = Instant::now() + WAIT;
    while rt.metrics().num_alive_tasks() > 2 {
        assert!(Instant::now() < deadline, "connection tasks still alive");
        thread::sleep(Duration::from_millis(10));
    }
    server.abort();
    drop(rt);

    // SAFETY: kill(2) on our own child, not yet reaped (Reap owns it).
    unsafe { libc::kill(snoop.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = snoop.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "portsnoop did not stop");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "portsnoop: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["mismatches"], 0, "{summary}");

    // The connection tasks axum spawned (in its serve module, with
    // tokio::spawn, not spawn_named): framed, named after their spawn
    // site, their closure the tokio task id in the name, and each one's
    // last poll returned 0 (finished).
    let mut last_rv: BTreeMap<u64, i64> = BTreeMap::new();
    for o in callback_ops(&records) {
        let name = o["callback"].as_str().unwrap_or("");
        if name.starts_with("task-") && name.contains("axum-") && name.contains("/src/serve/") {
            let id = o["closure"].as_u64().unwrap();
            assert!(name.starts_with(&format!("task-{id}@")), "{o}");
            last_rv.insert(id, o["user_rv"].as_i64().unwrap());
        }
    }
    let finished = last_rv.values().filter(|rv| **rv == 0).count();
    assert!(
        finished >= REQUESTS,
        "{finished} finished framed axum tasks, want {REQUESTS}: {last_rv:?}"
    );
    // Their reads and writes name them: the request was read, and the
    // response written, inside the task's frame.
    for op in ["read", "write"] {
        let by_conn_tasks = records
            .iter()
            .filter(|r| r["type"] == "op" && r["op"] == op && r["user_rv"].as_i64() > Some(0))
            .filter(|r| {
                r["closure"]
                    .as_u64()
                    .is_some_and(|c| last_rv.contains_key(&c))
            })
            .count();
        assert!(
            by_conn_tasks >= REQUESTS,
            "{by_conn_tasks} {op}s by the framed axum tasks, want {REQUESTS}"
        );
    }
    // And the accept loop, a task spawned here, is framed too.
    assert!(
        callback_ops(&records).any(|o| o["callback"]
            .as_str()
            .is_some_and(|n| n.contains("tests/frame_all_tasks.rs:"))),
        "the serve task spawned by this test is framed"
    );
}
