//! The servers the benchmarks compare, end to end: the tokio baseline on
//! tokio's own sockets, and hyper's hello-world in both builds, loaded by
//! `http-load` (which checks every response) and, on evloop's sockets,
//! traced by portsnoop. No timings are asserted: bench/ measures those.

use std::process::Command;

use serde_json::Value;
use tests::{bin, run_load, socket_count, wait_for_sockets, OutputBounded, Portsnoop, Server};

/// Runs `http-load` and returns the requests it completed; panics with its
/// stderr on any bad or missing response.
fn http_load(addr: std::net::SocketAddr, conns: u32, reqs: u32) -> u64 {
    let out = Command::new(bin("http-load"))
        .args(["--addr", &addr.to_string(), "--conns", &conns.to_string()])
        .args(["--reqs", &reqs.to_string(), "--body", "Hello, World!"])
        .args(["--timeout", "60"])
        .output_bounded()
        .expect("running http-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "http-load failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .last()
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("requests="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no requests= in {stdout}"))
}

#[test]
fn echo_tokio_plain_echoes_and_exits_0_on_sigterm() {
    let server = Server::start("echo-tokio-plain", &[]);
    let load = run_load(server.addr, 8, 100, 1000);
    assert_eq!((load.ok_conns, load.bytes), (8, 8 * 100 * 1000));
    let (status, _, err) = server.proc.stop(libc::SIGTERM);
    assert!(status.success(), "{status} {err:?}");
}

#[test]
fn hello_hyper_serves_keep_alive_requests_in_both_builds() {
    for extra in [&["--plain"][..], &[][..]] {
        let server = Server::start("hello-hyper", extra);
        assert_eq!(http_load(server.addr, 4, 200), 800, "{extra:?}");
        let (status, _, err) = server.proc.stop(libc::SIGTERM);
        assert!(status.success(), "{extra:?}: {status} {err:?}");
    }
    let bad = Command::new(bin("hello-hyper"))
        .arg("--bogus")
        .output_bounded()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn hello_hyper_on_evloop_sockets_traces_with_no_mismatch() {
    let server = Server::start("hello-hyper", &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    assert_eq!(http_load(server.addr, 3, 50), 150);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "portsnoop: {status}\n{}", err.join("\n"));
    let records: Vec<Value> = out
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = records.last().expect("output");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    let ops: Vec<&Value> = records.iter().filter(|r| r["type"] == "op").collect();
    let count = |kind: &str| {
        ops.iter()
            .filter(|o| o["op"] == kind && o["incomplete"].is_null())
            .count()
    };
    assert!(count("accept") >= 3, "3 accepts (and EAGAINs)");
    assert_eq!(count("close"), 3, "one close per connection");
    // 150 requests in, 150 responses out, each inside a poll of task `http`.
    let http_reads = ops
        .iter()
        .filter(|o| o["op"] == "read" && o["user_rv"].as_i64() > Some(0))
        .filter(|o| o["callback"] == "http")
        .count();
    assert!(
        http_reads >= 150,
        "reads of requests in task http: {http_reads}"
    );
}
