//! portsnoop end to end: real servers on loopback, real load, portsnoop
//! attached for real, its output checked against what the load did.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{
    bin, json_lines, run_load, socket_count, wait_for_sockets, OutputBounded, Portsnoop, Server,
    WAIT,
};

fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

/// The checks every eventer trace must pass; returns the ops by kind.
/// `eagain_op` is the kind of op that must show an `EAGAIN` paired with the
/// kernel's: a mio loop reads until `EAGAIN`, but tokio's sockets (and so
/// echo-tokio's) stop at a short read, so there only accepts reliably do.
fn check_lined_up(
    records: &[Value],
    conns: u64,
    bytes_per_conn: u64,
    eagain_op: &str,
) -> BTreeMap<String, Vec<Value>> {
    let summary = records.last().expect("some output");
    assert_eq!(summary["type"], "summary", "the summary is the last line");
    assert_eq!(
        summary["lost_events"], 0,
        "nothing lost at this load: {summary}"
    );

    let mut ops: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for op in of_type(records, "op") {
        ops.entry(op["op"].as_str().unwrap().to_string())
            .or_default()
            .push(op.clone());
    }
    for kind in ["accept", "read", "write", "close"] {
        for op in ops.get(kind).map(Vec::as_slice).unwrap_or(&[]) {
            if op["incomplete"] == true {
                continue; // open when the trace started or ended
            }
            assert!(op["mismatch"].is_null(), "{kind} op disagrees: {op}");
            let syscalls = op["syscalls"].as_array().unwrap();
            let last = syscalls
                .last()
                .unwrap_or_else(|| panic!("{kind} op without syscall: {op}"));
            assert_eq!(last["rv"], op["user_rv"], "user rv == kernel rv: {op}");
            for s in syscalls {
                assert_eq!(
                    s["errno"].is_null(),
                    s["rv"].as_i64().unwrap() >= 0,
                    "errno iff negative rv: {s}"
                );
            }
        }
    }
    // Walk the ops in time order, one fd life from accept to close: fd
    // numbers are reused, and a life's bytes must not leak into the next.
    let mut timeline: Vec<&Value> = ops
        .values()
        .flatten()
        .filter(|o| o["op"] != "callback")
        .collect();
    timeline.sort_by_key(|o| o["entry_ts_ns"].as_u64());
    let mut open: BTreeMap<i64, u64> = BTreeMap::new();
    let mut lives = Vec::new();
    for op in timeline {
        let (fd, rv) = (
            op["fd"].as_i64().unwrap(),
            op["user_rv"].as_i64().unwrap_or(-1),
        );
        match op["op"].as_str().unwrap() {
            "accept" if rv >= 0 => assert!(
                open.insert(rv, 0).is_none(),
                "fd {rv} accepted while still open"
            ),
            "read" if rv > 0 => {
                *open
                    .get_mut(&fd)
                    .unwrap_or_else(|| panic!("read on fd {fd} outside its life")) += rv as u64
            }
            "close" if open.contains_key(&fd) => lives.push(open.remove(&fd).unwrap()),
            _ => {}
        }
    }
    assert!(open.is_empty(), "connections never closed: {open:?}");
    assert_eq!(
        lives.len() as u64,
        conns,
        "one accept and one close per connection"
    );
    assert!(
        lives.iter().all(|b| *b == bytes_per_conn),
        "bytes read per connection: {lives:?}"
    );
    let accepted: BTreeSet<i64> = ops["accept"]
        .iter()
        .filter_map(|o| o["user_rv"].as_i64())
        .filter(|fd| *fd >= 0)
        .collect();
    let eagain = ops[eagain_op]
        .iter()
        .any(|o| o["user_rv"] == -11 && o["syscalls"][0]["errno"] == 11);
    assert!(
        eagain,
        "an EAGAIN {eagain_op}, paired with the kernel's EAGAIN"
    );
    // Every event an epoll wait returned names an fd the loop registered.
    let mut named = BTreeSet::new();
    for w in of_type(records, "wait") {
        for e in w["events"].as_array().unwrap() {
            let fd = e["fd"]
                .as_i64()
                .unwrap_or_else(|| panic!("unresolved epoll event in {w}"));
            named.insert(fd);
        }
    }
    assert!(
        accepted.is_subset(&named),
        "epoll events name the connections: {named:?} vs {accepted:?}"
    );
    ops
}

/// One connection that pauses after each echo, so the server's read after
/// it finds nothing: an EAGAIN on both sides, deterministically. (Under
/// load the next message is often already there.)
fn slow_client(addr: std::net::SocketAddr, msgs: u32, size: u32) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let msg = vec![7u8; size as usize];
    let mut back = vec![0u8; size as usize];
    for _ in 0..msgs {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Traces `name` under `conns` loaded connections plus one slow one, each
/// sending `msgs` messages of `size` bytes.
fn trace_server(name: &str, conns: u32, msgs: u32, size: u32) -> Vec<Value> {
    let server = Server::start(name, &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    let load = run_load(server.addr, conns, msgs, size);
    assert_eq!(load.bytes, u64::from(conns * msgs * size));
    slow_client(server.addr, msgs, size);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, err) = snoop.finish();
    assert!(
        status.success(),
        "portsnoop failed: {status}\n{}",
        err.join("\n")
    );
    json_lines(&out)
}

#[test]
fn echo_mio_ops_line_up_with_their_syscalls() {
    let records = trace_server("echo-mio", 3, 20, 100);
    let ops = check_lined_up(&records, 3 + 1, 20 * 100, "read");
    let callbacks = &ops["callback"];
    assert!(callbacks.iter().any(|c| c["callback"] == "accept"));
    assert!(callbacks.iter().any(|c| c["callback"] == "echo"));
    // Reads inside the echo callback carry its name.
    assert!(ops["read"].iter().all(|r| r["callback"] == "echo"));
}

#[test]
fn echo_tokio_ops_line_up_with_their_syscalls() {
    let records = trace_server("echo-tokio", 4, 10, 64);
    check_lined_up(&records, 4 + 1, 10 * 64, "accept");
}

#[test]
fn json_lines_follow_the_contract() {
    let records = trace_server("echo-mio", 1, 3, 10);
    let has = |r: &Value, keys: &[&str]| {
        for k in keys {
            assert!(r.get(k).is_some(), "{} record without {k}: {r}", r["type"]);
        }
    };
    for r in &records {
        match r["type"].as_str().unwrap() {
            "syscall" => has(r, &["ts_ns", "tid", "name", "fd", "rv", "errno", "dur_ns"]),
            "probe" => has(r, &["ts_ns", "tid", "name", "fd", "args"]),
            "wait" => {
                has(r, &["ts_ns", "tid", "name", "rv", "errno", "events"]);
                for e in r["events"].as_array().unwrap() {
                    has(e, &["fd", "events"]);
                }
            }
            "op" => {
                has(
                    r,
                    &[
                        "op",
                        "tid",
                        "fd",
                        "entry_ts_ns",
                        "return_ts_ns",
                        "user_rv",
                        "syscalls",
                        "kernel_ns",
                        "user_ns",
                        "mismatch",
                    ],
                );
                for s in r["syscalls"].as_array().unwrap() {
                    has(s, &["name", "rv", "errno", "ts_ns", "dur_ns"]);
                }
            }
            "summary" => has(r, &["events", "lost_events", "ops", "mismatches", "per_fd"]),
            _ => {}
        }
    }
    for t in ["syscall", "probe", "wait", "op", "summary"] {
        assert!(!of_type(&records, t).is_empty(), "no {t} record");
    }
    let read_entry = of_type(&records, "probe")
        .into_iter()
        .find(|p| p["name"] == "eventer-read-entry")
        .unwrap();
    assert_eq!(
        read_entry["args"].as_array().unwrap().len(),
        5,
        "read-entry has 5 arguments"
    );
}

#[test]
fn table_rows_are_in_time_order_with_both_sides() {
    let server = Server::start("echo-mio", &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string()]);
    run_load(server.addr, 2, 5, 16);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, _) = snoop.finish();
    assert!(status.success());
    assert!(
        out[0]
            .split_whitespace()
            .eq(["TIME", "TID", "SYSCALL", "FD", "DETAILS", "ERROR"]),
        "header: {}",
        out[0]
    );
    let times: Vec<f64> = out[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(times.len() > 20, "rows: {out:?}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "TIME goes forward:\n{}",
        out.join("\n")
    );
    let text = out.join("\n");
    for row in [
        "read-entry",
        "recvfrom",
        "read-return",
        "accept4",
        "epoll_wait",
        "EPOLL_EVENT",
        "errno = 11 (EAGAIN)",
    ] {
        assert!(text.contains(row), "no {row} row:\n{text}");
    }
}

#[test]
fn traces_a_command_from_its_first_instruction() {
    let dir = tempdir();
    let json = dir.join("trace.json");
    let echo = bin("echo-mio");
    let snoop = Portsnoop::start(&[
        "--json",
        "-o",
        json.to_str().unwrap(),
        "--",
        echo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = snoop.child_listen_addr();
    run_load(addr, 2, 5, 10);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let records = json_lines(
        &std::fs::read_to_string(&json)
            .unwrap()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
    );
    // The listener's registration happens before `listening on`: seeing it
    // proves nothing before the trace was missed.
    let first_ctl = of_type(&records, "epoll_ctl")
        .into_iter()
        .next()
        .expect("an epoll_ctl");
    assert_eq!(first_ctl["op"], "ADD");
    let ops = of_type(&records, "op");
    assert!(ops
        .iter()
        .any(|o| o["op"] == "accept" && o["user_rv"].as_i64() >= Some(0)));
}

/// Every syscall the kernel side traces, made once by `syscall-fixture`
/// on fds it knows: each must come through with its name, fd, return value
/// (errno included) and kept argument, the registration and the three
/// kinds of wait with the fd resolved, in the order they were made.
#[test]
fn every_traced_syscall_comes_through_with_its_values() {
    let dir = tempdir();
    let (json, expected) = (dir.join("trace.json"), dir.join("expected.jsonl"));
    let fixture = bin("syscall-fixture");
    let mut snoop = Portsnoop::start(&[
        "--json",
        "-o",
        json.to_str().unwrap(),
        "--",
        fixture.to_str().unwrap(),
        expected.to_str().unwrap(),
    ]);
    let status = snoop.proc.wait_exit(WAIT);
    assert!(status.success(), "{}", snoop.proc.stderr.all().join("\n"));
    let read_lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let records = json_lines(&read_lines(&json));
    let want = json_lines(&read_lines(&expected));
    assert!(want.len() > 25, "the fixture made its calls: {want:?}");
    let registered = &want
        .iter()
        .find(|w| w["name"] == "epoll_ctl")
        .expect("the fixture registers an fd")["fd"];
    let mut from = 0;
    for w in &want {
        let name = w["name"].as_str().unwrap();
        let matches = |r: &Value| match name {
            "epoll_ctl" => {
                r["type"] == "epoll_ctl"
                    && r["epfd"] == w["epfd"]
                    && r["fd"] == w["fd"]
                    && r["data"] == w["data"]
                    && r["op"] == "ADD"
                    && r["rv"] == 0
            }
            _ if name.starts_with("epoll_") => {
                r["type"] == "wait"
                    && r["name"] == name
                    && r["epfd"] == w["epfd"]
                    && r["rv"] == w["rv"]
                    && r["events"][0]["data"] == w["data"]
                    // Resolved through the epoll_ctl to the pipe's read end.
                    && r["events"][0]["fd"] == *registered
            }
            _ => {
                r["type"] == "syscall"
                    && r["name"] == name
                    && r["fd"] == w["fd"]
                    && r["rv"] == w["rv"]
                    && (w["arg"].is_null() || r["arg"] == w["arg"])
            }
        };
        let at = records[from..]
            .iter()
            .position(matches)
            .unwrap_or_else(|| panic!("no record after #{from} for {w}"));
        from += at + 1;
    }
    let eagain = records
        .iter()
        .find(|r| r["type"] == "syscall" && r["rv"] == -11)
        .expect("the EAGAIN recvfrom");
    assert_eq!(eagain["errno"], 11);
}

#[test]
fn target_exit_ends_the_trace_with_a_summary_and_exit_0() {
    let server = Server::start("echo-mio", &[]);
    let pid = server.pid();
    let snoop = Portsnoop::start(&["-p", &pid.to_string(), "--summary"]);
    run_load(server.addr, 1, 2, 8);
    let (_, _, _) = server.proc.stop(libc::SIGTERM);
    let mut snoop = snoop;
    let status = snoop.proc.wait_exit(WAIT);
    assert!(
        status.success(),
        "portsnoop exits 0 when the target exits: {status}"
    );
    let out = snoop.proc.stdout.all().join("\n");
    assert!(out.contains("=== summary"), "summary printed:\n{out}");
    let err = snoop.proc.stderr.all().join("\n");
    assert!(
        err.contains(&format!("pid {pid} exited")),
        "says the target exited:\n{err}"
    );
}

/// `--quiet`: no rows, only the summary, which still counts everything; with
/// `--json`, one line: the summary. Two portsnoops on one target at once.
#[test]
fn quiet_prints_only_a_whole_summary() {
    let server = Server::start("echo-mio", &[]);
    let pid = server.pid().to_string();
    let mut text = Portsnoop::start(&["-p", &pid, "-q"]);
    let mut json = Portsnoop::start(&["-p", &pid, "-q", "--json"]);
    run_load(server.addr, 2, 50, 32);
    std::thread::sleep(Duration::from_millis(200));
    let (_, _, _) = server.proc.stop(libc::SIGTERM);
    for snoop in [&mut text, &mut json] {
        let status = snoop.proc.wait_exit(WAIT);
        assert!(status.success(), "{}", snoop.proc.stderr.all().join("\n"));
    }
    let out = text.proc.stdout.all();
    assert!(out.iter().any(|l| l.starts_with("=== summary")), "{out:?}");
    assert!(
        !out.iter()
            .any(|l| l.contains("read-entry") || l.contains("recvfrom")),
        "no rows: {out:?}"
    );
    // Both connections' reads are in the per-fd table: 2 x 50 messages.
    let reads: u64 = out
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[1] == "read")
                .then(|| f[3].parse::<u64>().ok())
                .flatten()
        })
        .sum();
    assert_eq!(
        reads,
        2 * 50 * 32,
        "bytes read, summed over the fds: {out:?}"
    );
    let lines = json.proc.stdout.all();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    let summary: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["per_op"]["read"]["bytes"], 2 * 50 * 32);
}

/// All of an image's probe sites are one uprobe_multi link (portsnoop's
/// link fds, as the kernel describes them in fdinfo), not a link per site:
/// the kernel waits out a grace period as each uprobe link closes, and
/// with a link per site hello-hyper's 11 took 1.2 s to let go at the end.
#[test]
fn an_images_sites_are_one_uprobe_multi_link() {
    let server = Server::start("hello-hyper", &[]);
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "-q"]);
    let fdinfo = format!("/proc/{}/fdinfo", snoop.proc.pid());
    let mut links: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&fdinfo).expect("portsnoop's fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue; // closed meanwhile
        };
        if let Some(kind) = info
            .lines()
            .find_map(|l| l.strip_prefix("link_type:"))
            .map(str::trim)
        {
            links
                .entry(kind.to_string())
                .or_default()
                .push(info.clone());
        }
    }
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{err:?}");
    let multi = links.get("uprobe_multi").map_or(&[][..], Vec::as_slice);
    assert_eq!(multi.len(), 1, "{links:#?}");
    let sites: usize = multi[0]
        .lines()
        .find_map(|l| l.strip_prefix("uprobe_cnt:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("uprobe_cnt");
    let ready = err.iter().find(|l| l.ends_with("; ready")).unwrap();
    assert!(sites >= 11, "{sites} sites for {ready}");
    assert!(
        multi[0].contains(&format!("pid:\t{}", server.pid())),
        "the link is the traced process's: {}",
        multi[0]
    );
    assert!(
        !links.contains_key("perf_event"),
        "a site of its own: {links:#?}"
    );
}

#[test]
fn kernel_side_only_for_a_target_without_the_provider() {
    let server = Server::start("echo-mio-plain", &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    let err = snoop.proc.stderr.all().join("\n");
    assert!(
        err.contains("has no evloop probes: tracing the kernel side only"),
        "{err}"
    );
    run_load(server.addr, 1, 3, 10);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, _) = snoop.finish();
    assert!(status.success());
    let records = json_lines(&out);
    let reads = of_type(&records, "syscall")
        .into_iter()
        .filter(|s| s["name"] == "recvfrom" && s["rv"] == 10)
        .count();
    assert_eq!(reads, 3, "the kernel side is traced");
    assert!(of_type(&records, "probe").is_empty());
}

#[test]
fn list_shows_every_evloop_probe() {
    let server = Server::start("echo-mio", &[]);
    let names = |args: &[&str]| -> BTreeSet<String> {
        let out = Command::new(bin("portsnoop"))
            .args(args)
            .output_bounded()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" evloop"))
            .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
            .collect()
    };
    let pid = server.pid().to_string();
    let by_pid = names(&["list", "-p", &pid]);
    assert_eq!(by_pid.len(), 11, "{by_pid:?}");
    assert!(by_pid.contains("eventer-callback-entry") && by_pid.contains("log"));
    assert_eq!(names(&["list", bin("echo-mio").to_str().unwrap()]), by_pid);
    let all = Command::new(bin("portsnoop"))
        .arg("list")
        .output_bounded()
        .unwrap();
    assert!(String::from_utf8_lossy(&all.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(pid.as_str())));
}

#[test]
fn bpftrace_script_runs_under_bpftrace() {
    tests::require_bpftrace();
    let server = Server::start("echo-mio", &[]);
    let out = Command::new(bin("portsnoop"))
        .args(["--bpftrace", "-p", &server.pid().to_string()])
        .output_bounded()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    let bt = tests::Bpftrace::start(&script, server.pid());
    run_load(server.addr, 1, 4, 10);
    bt.stdout()
        .wait_for(WAIT, |l| l.contains("eventer-close-return"))
        .expect("the script prints the close of the connection");
    let lines = bt.finish();
    let reads = lines
        .iter()
        .filter(|l| l.contains("eventer-read-return") && l.ends_with("= 10"))
        .count();
    assert_eq!(reads, 4, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("sys_exit_recvfrom")));
}

#[test]
fn misuse_and_missing_targets_are_clear_errors() {
    let run = |args: &[&str]| {
        Command::new(bin("portsnoop"))
            .args(args)
            .output_bounded()
            .unwrap()
    };
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-p PID"));
    let out = run(&["-p", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process: 999999999"));
    let out = run(&["--", "/no/such/command"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portsnoop-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A live trace shows what happened, not only what a later event pushed
/// out: once a server goes quiet, its last rows (table) and lines (JSON)
/// appear within a second, while portsnoop keeps running.
#[test]
fn a_quiet_target_still_shows_its_last_rows() {
    let server = Server::start("echo-mio", &[]);
    for format in [&[][..], &["--json"][..]] {
        let pid = server.pid().to_string();
        let mut args = vec!["-p", pid.as_str()];
        args.extend_from_slice(format);
        let snoop = Portsnoop::start(&args);
        run_load(server.addr, 1, 1, 7);
        // The echo's read of 7 bytes, then nothing more happens.
        let seen = snoop.proc.stdout.wait_for(Duration::from_secs(5), |l| {
            l.contains("recvfrom") && (l.contains("= 7 ") || l.contains(r#""rv":7,"#))
        });
        assert!(seen.is_ok(), "{format:?}: {}", seen.unwrap_err());
        let (status, _, _) = snoop.finish();
        assert!(status.success());
    }
}
