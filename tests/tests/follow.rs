//! `portsnoop -f`: a pre-forking server (`fork-fixture`), its workers
//! traced with their own pids, and without `-f` only the parent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;
use tests::{bin, run_load, wait_gone, Portsnoop, WAIT};

const WORKERS: usize = 2;

fn out_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portsnoop-follow-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("trace.jsonl")
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("the trace file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The workers' pids, from the fixture's `worker PID` lines, and the
/// address it listens on.
fn workers_and_addr(snoop: &Portsnoop) -> (Vec<u32>, SocketAddr) {
    let addr = snoop.child_listen_addr();
    let workers = snoop
        .proc
        .stdout
        .all()
        .iter()
        .filter_map(|l| l.strip_prefix("worker ")?.trim().parse().ok())
        .collect();
    (workers, addr)
}

fn start(tag: &str, follow: bool) -> (Portsnoop, PathBuf) {
    let out = out_file(tag);
    let out_s = out.to_str().unwrap().to_string();
    let fixture = bin("fork-fixture");
    let mut args = vec!["--json", "-o", &out_s];
    if follow {
        args.insert(0, "-f");
    }
    let workers = WORKERS.to_string();
    args.extend(["--", fixture.to_str().unwrap(), "--workers", &workers]);
    (Portsnoop::start(&args), out)
}

#[test]
fn follow_forks_traces_every_worker_with_its_own_pid() {
    let (snoop, out) = start("f", true);
    let parent = snoop.traced_pid();
    let (workers, addr) = workers_and_addr(&snoop);
    assert_eq!(workers.len(), WORKERS);
    // Each worker's probes are attached before the load: its whole
    // connections are in the trace. (The notes come in any order.)
    let mut followed = BTreeSet::new();
    while followed.len() < WORKERS {
        let line = snoop
            .proc
            .stderr
            .wait_for(WAIT, |l| l.starts_with("portsnoop: following pid "))
            .unwrap_or_else(|e| panic!("workers {workers:?} not all followed: {e}"));
        followed.insert(
            line.split_whitespace()
                .nth(3)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(followed, workers.iter().copied().collect());
    let load = run_load(addr, 8, 20, 64);
    assert_eq!(load.ok_conns, 8);
    let (status, _, stderr) = snoop.finish();
    assert!(status.success(), "portsnoop failed: {stderr:?}");
    for w in &workers {
        wait_gone(*w, "a worker of the fixture portsnoop started");
    }

    let recs = records(&out);
    let summary = recs.last().expect("a summary line");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["mismatches"], 0, "{stderr:?}");
    // Every event and op line says which process it is from.
    for r in &recs {
        if r["type"] != "summary" && r["type"] != "lost" {
            assert!(r["pid"].is_u64(), "no pid: {r}");
        }
    }
    let forks: BTreeSet<u64> = recs
        .iter()
        .filter(|r| r["type"] == "process" && r["event"] == "fork")
        .map(|r| {
            assert_eq!(r["pid"], u64::from(parent));
            r["child"].as_u64().unwrap()
        })
        .collect();
    let expected: BTreeSet<u64> = workers.iter().map(|w| u64::from(*w)).collect();
    assert_eq!(forks, expected);

    // Per worker: its accepted fds, and whole connections echoed.
    let mut accepted: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    let mut bytes_written: BTreeMap<u64, i64> = BTreeMap::new();
    for op in recs.iter().filter(|r| r["type"] == "op") {
        assert_eq!(op["mismatch"], Value::Null, "{op}");
        let pid = op["pid"].as_u64().unwrap();
        // An op's syscalls are its own process's: they were made on the
        // thread that fired the op's probes.
        assert!(
            op["tid"].as_u64() == Some(pid) || pid == u64::from(parent),
            "{op}"
        );
        let rv = op["user_rv"].as_i64().unwrap_or(-1);
        match op["op"].as_str().unwrap() {
            "accept" if rv >= 0 => {
                accepted.entry(pid).or_default().insert(rv);
            }
            "write" if rv > 0 => *bytes_written.entry(pid).or_default() += rv,
            _ => {}
        }
    }
    for w in &expected {
        assert!(
            accepted.contains_key(w),
            "worker {w} has no accept op: {accepted:?}"
        );
        assert!(
            bytes_written.get(w).copied().unwrap_or(0) > 0,
            "worker {w} echoed nothing"
        );
    }
    assert_eq!(bytes_written.values().sum::<i64>() as u64, load.bytes);
    // Forked from one image at one point, the workers hand out the same fd
    // numbers: the same number in two processes, two fds, no confusion.
    let shared: BTreeSet<i64> = accepted.values().skip(1).fold(
        accepted.values().next().cloned().unwrap_or_default(),
        |a, b| a.intersection(b).copied().collect(),
    );
    assert!(
        !shared.is_empty(),
        "workers used different fds: {accepted:?}"
    );
    // Each worker inherited the listener: named in its own process.
    for w in &expected {
        assert!(
            recs.iter().any(|r| r["type"] == "socket"
                && r["pid"].as_u64() == Some(*w)
                && r["origin"] == "before_trace"
                && r["local"] == addr.to_string().as_str()),
            "worker {w}'s inherited listener is not named"
        );
    }
    // The workers' exits are rows of their own.
    let exits: BTreeSet<u64> = recs
        .iter()
        .filter(|r| r["type"] == "process" && r["event"] == "exit")
        .filter_map(|r| r["pid"].as_u64())
        .filter(|p| *p != u64::from(parent))
        .collect();
    assert!(exits.is_subset(&expected), "{exits:?}");
}

#[test]
fn without_follow_only_the_parent_is_traced() {
    let (snoop, out) = start("nof", false);
    let parent = u64::from(snoop.traced_pid());
    let (workers, addr) = workers_and_addr(&snoop);
    let load = run_load(addr, 4, 10, 64);
    assert_eq!(load.ok_conns, 4);
    let (status, _, stderr) = snoop.finish();
    assert!(status.success(), "portsnoop failed: {stderr:?}");
    assert!(!stderr.iter().any(|l| l.contains("following pid")));
    for w in &workers {
        wait_gone(*w, "a worker of the fixture portsnoop started");
    }
    let recs = records(&out);
    let mut ops = 0;
    for r in &recs {
        if r["type"] == "summary" || r["type"] == "lost" {
            continue;
        }
        assert_eq!(r["pid"], parent, "{r}");
        assert_ne!(r["event"], "fork", "{r}");
        if r["type"] == "op" {
            ops += 1;
            assert_ne!(r["op"], "accept", "{r}");
        }
    }
    // The parent's own probed close.
    assert!(ops >= 1);
}
