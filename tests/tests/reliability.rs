//! portsnoop under stress and faults: killed mid-trace, targets that die,
//! fd reuse, a thousand connections, forced event loss. Bounded, loopback.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    bin, json_lines, run_load, socket_count, wait_for_sockets, OutputBounded, Portsnoop, Server,
    WAIT,
};

/// The values of every `evloop` semaphore in `pid`'s memory.
fn semaphores(pid: u32) -> Vec<u16> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // PIE: the binary's first mapping (file offset 0) is its load base.
    let base = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(5).map(std::path::Path::new) == Some(exe.as_path()) && f[2] == "00000000")
                .then(|| u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap())
        })
        .expect("a mapping of the binary");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut sems: Vec<u64> = portsnoop::list::probes_in(&exe)
        .unwrap()
        .into_iter()
        .filter(|p| p.provider == "evloop")
        .map(|p| p.semaphore)
        .collect();
    sems.sort_unstable();
    sems.dedup();
    sems.iter()
        .map(|addr| {
            let mut buf = [0u8; 2];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, base + addr).unwrap();
            u16::from_ne_bytes(buf)
        })
        .collect()
}

#[test]
fn sigkill_of_portsnoop_leaves_the_target_serving_with_no_probe_enabled() {
    let server = Server::start("echo-mio", &[]);
    let pid = server.pid();
    assert!(
        semaphores(pid).iter().all(|&s| s == 0),
        "no probe enabled before"
    );
    let mut snoop = Portsnoop::start(&["-p", &pid.to_string(), "-o", "/dev/null"]);
    let during = semaphores(pid);
    assert_eq!(during.len(), 11);
    assert!(
        during.iter().all(|&s| s >= 1),
        "every probe enabled while traced: {during:?}"
    );
    let loader = std::thread::spawn(move || run_load(server.addr, 4, 3000, 64));
    std::thread::sleep(Duration::from_millis(100));
    snoop.proc.signal(libc::SIGKILL);
    snoop.proc.wait_exit(WAIT);
    let load = loader
        .join()
        .expect("the load finished and every echoed byte was right");
    assert_eq!(load.ok_conns, 4);
    // The kernel drops the uprobes and their semaphore counts with the last
    // reference to portsnoop's BPF links, i.e. when its fds close.
    let deadline = Instant::now() + WAIT;
    while semaphores(pid).iter().any(|&s| s != 0) {
        assert!(
            Instant::now() < deadline,
            "semaphores still set: {:?}",
            semaphores(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        run_load(server.addr, 2, 100, 32).ok_conns,
        2,
        "still serving after"
    );
    drop(server);
}

#[test]
fn a_target_that_crashes_or_execs_ends_the_trace_cleanly() {
    for (how, sig) in [("SIGSEGV", libc::SIGSEGV), ("SIGABRT", libc::SIGABRT)] {
        let dir = std::env::temp_dir().join(format!("reliability-{}-{how}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("trace.json");
        let echo = bin("echo-mio");
        let mut snoop = Portsnoop::start(&[
            "--json",
            "--summary",
            "-o",
            out.to_str().unwrap(),
            "--",
            echo.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        run_load(snoop.child_listen_addr(), 1, 5, 8);
        let child = snoop.proc.stderr.all().iter().find_map(|l| {
            l.strip_prefix("portsnoop: tracing pid ")
                .and_then(|r| r.split_whitespace().next())
                .map(|p| p.parse::<i32>().unwrap())
        });
        // Rust's runtime catches the first SIGSEGV (its stack-overflow
        // check) and, when no guard page was hit, resets the handler and
        // returns; a second one then kills, as a real crash would.
        for _ in 0..if sig == libc::SIGSEGV { 2 } else { 1 } {
            // SAFETY: signalling the child portsnoop started for this test.
            unsafe { libc::kill(child.unwrap(), sig) };
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = snoop.proc.wait_exit(WAIT);
        assert!(
            status.success(),
            "portsnoop exits 0 when its target {how}s: {status}"
        );
        let err = snoop.proc.stderr.all().join("\n");
        assert!(
            err.contains(&format!("killed by signal {sig}")),
            "reports the {how}:\n{err}"
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let summary = json_lines(&text.lines().map(String::from).collect::<Vec<_>>())
            .into_iter()
            .find(|r| r["type"] == "summary")
            .unwrap();
        assert!(
            summary["process_end"].as_str().unwrap().starts_with("exit"),
            "{summary}"
        );
        // `--summary` adds no text to JSON: every line is JSON, the
        // summary line last.
        for l in text.lines() {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        }
        assert_eq!(
            summary,
            json_lines(&text.lines().map(String::from).collect::<Vec<_>>())
                .pop()
                .unwrap()
        );
    }
    // exec: the target replaces itself; its probes are gone, portsnoop says so.
    let snoop = Portsnoop::start(&["--json", "--", "/bin/sh", "-c", "sleep 0.3; exec /bin/true"]);
    let mut snoop = snoop;
    let status = snoop.proc.wait_exit(WAIT);
    assert!(status.success());
    let records = json_lines(&snoop.proc.stdout.all());
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "process" && r["event"] == "exec"),
        "exec reported: {records:?}"
    );
}

#[test]
fn fd_reuse_never_merges_two_connections() {
    let server = Server::start("echo-mio", &[]);
    let base = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    // One connection at a time: each gets the fd the last one closed.
    for i in 0..20u32 {
        run_load(server.addr, 1, 1 + i % 3, 10 + i);
        wait_for_sockets(server.pid(), base);
    }
    let (status, out, _) = snoop.finish();
    assert!(status.success());
    let records = json_lines(&out);
    let ops: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "op" && r["op"] != "callback")
        .collect();
    let accepted: Vec<i64> = ops
        .iter()
        .filter(|o| o["op"] == "accept")
        .filter_map(|o| o["user_rv"].as_i64())
        .filter(|fd| *fd >= 0)
        .collect();
    assert_eq!(accepted.len(), 20);
    let distinct: std::collections::BTreeSet<_> = accepted.iter().collect();
    assert!(distinct.len() < 5, "fd numbers were reused: {accepted:?}");
    // Per life (accept..close of an fd number): the bytes are exactly what
    // that connection sent, and every op's syscalls are on its own fd.
    let mut timeline = ops.clone();
    timeline.sort_by_key(|o| o["entry_ts_ns"].as_u64());
    let mut life: BTreeMap<i64, u64> = BTreeMap::new();
    let mut lives = Vec::new();
    for op in timeline {
        let fd = op["fd"].as_i64().unwrap();
        assert!(op["mismatch"].is_null(), "{op}");
        let rv = op["user_rv"].as_i64().unwrap_or(-1);
        match op["op"].as_str().unwrap() {
            "accept" if rv >= 0 => assert!(
                life.insert(rv, 0).is_none(),
                "fd {rv} accepted twice without a close"
            ),
            "read" if rv > 0 => *life.get_mut(&fd).expect("read inside a life") += rv as u64,
            "close" => lives.push(life.remove(&fd).expect("close ends a life")),
            _ => {}
        }
    }
    let want: Vec<u64> = (0..20u64).map(|i| (1 + i % 3) * (10 + i)).collect();
    assert_eq!(lives, want, "each life read exactly its connection's bytes");
}

#[test]
fn a_thousand_connections_are_all_accounted_for() {
    let server = Server::start("echo-mio", &[]);
    let base = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    let load = run_load(server.addr, 1000, 3, 64);
    assert_eq!(load.ok_conns, 1000, "every echoed byte right");
    wait_for_sockets(server.pid(), base);
    let (status, out, _) = snoop.finish();
    assert!(status.success());
    let records = json_lines(&out);
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let count = |op: &str, pred: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .filter(|r| r["type"] == "op" && r["op"] == op && pred(r))
            .count()
    };
    if summary["lost_events"] == 0 {
        assert_eq!(count("accept", &|o| o["user_rv"].as_i64() >= Some(0)), 1000);
        assert_eq!(count("close", &|o| o["user_rv"] == 0), 1000);
        assert_eq!(summary["mismatches"], 0, "{summary}");
    } else {
        // Lost events are allowed only if counted and shown as incomplete ops.
        assert!(records.iter().any(|r| r["type"] == "lost"));
        assert!(summary["incomplete"].as_u64() > Some(0));
    }
}

#[test]
fn forced_ring_buffer_overflow_is_counted_shown_and_marks_ops_incomplete() {
    let server = Server::start("echo-mio", &[]);
    let snoop = Portsnoop::start(&[
        "-p",
        &server.pid().to_string(),
        "--json",
        "--buffer-kb",
        "4",
    ]);
    let load = run_load(server.addr, 16, 2000, 16);
    assert_eq!(
        load.ok_conns, 16,
        "tracing never changes what the target does"
    );
    let (status, out, err) = snoop.finish();
    assert!(status.success());
    let records = json_lines(&out);
    let summary = records.last().unwrap();
    let lost = summary["lost_events"].as_u64().unwrap();
    assert!(
        lost > 0,
        "a 4 KiB buffer overflows under this load: {summary}"
    );
    let lost_records: u64 = records
        .iter()
        .filter(|r| r["type"] == "lost")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(lost_records, lost, "every loss shows up as a lost record");
    assert!(
        err.iter().any(|l| l.contains(&format!("{lost} lost"))),
        "and on stderr: {err:?}"
    );
    assert!(
        summary["incomplete"].as_u64() > Some(0),
        "ops open at a loss are marked incomplete"
    );
    for op in records
        .iter()
        .filter(|r| r["type"] == "op" && r["incomplete"].is_string())
    {
        assert!(op["mismatch"].is_null(), "a loss is never a mismatch: {op}");
    }
    // What a loss did not cut still lines up: complete ops agree.
    for op in records
        .iter()
        .filter(|r| r["type"] == "op" && r["incomplete"].is_null() && r["op"] == "read")
    {
        let last = op["syscalls"].as_array().unwrap().last().cloned();
        if let Some(last) = last {
            assert_eq!(last["rv"], op["user_rv"], "{op}");
        }
    }
}

#[test]
fn cli_misuse_is_exit_2_and_missing_rights_are_named() {
    let run = |args: &[&str]| {
        Command::new(bin("portsnoop"))
            .args(args)
            .output_bounded()
            .unwrap()
    };
    for args in [
        &["--bogus"][..],
        &["-p", "1", "--", "true"],
        &["-d", "0", "-p", "1"],
        &[],
        &["--buffer-kb", "0", "-p", "1"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
    let out = run(&["-p", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process"));
    // As an unprivileged user: says which capabilities are missing.
    let server = Server::start("echo-mio", &[]);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(bin("portsnoop"))
        .args(["-p", &server.pid().to_string()])
        .output_bounded()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}
