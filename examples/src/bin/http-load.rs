//! Keep-alive HTTP/1.1 load generator for `hello-hyper`: C connections each
//! send N `GET /` requests one after another (closed loop, as `echo-load`
//! does for echoes) and check every response (status 200, the body its
//! Content-Length announces).
//!
//! ```text
//! http-load --addr 127.0.0.1:PORT --conns 8 --reqs 2000 [--body 'Hello, World!']
//! ```
//!
//! The last stdout line is machine-readable `key=value` pairs; any bad or
//! missing response is an error (exit 1). Written here rather than using
//! wrk so the benchmark needs nothing outside this workspace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::exit;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: http-load --addr IP:PORT [--conns C] [--reqs N] [--body TEXT] [--timeout SECS]";

struct Opts {
    addr: SocketAddr,
    conns: usize,
    reqs: usize,
    body: Option<String>,
    timeout: Duration,
}

fn parse() -> Result<Opts, String> {
    let (mut addr, mut conns, mut reqs, mut body, mut timeout) =
        (None, 1usize, 1000usize, None, 60u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value:?}: {e}"))
        };
        match flag.as_str() {
            "--addr" => {
                addr = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--addr {value:?}: {e}"))?,
                )
            }
            "--conns" => conns = num()? as usize,
            "--reqs" => reqs = num()? as usize,
            "--body" => body = Some(value.clone()),
            "--timeout" => timeout = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    Ok(Opts {
        addr: addr.ok_or("--addr is required")?,
        conns,
        reqs,
        body,
        timeout: Duration::from_secs(timeout),
    })
}

/// Reads one response from `s` (bytes past it stay in `buf`) and returns
/// its status and body.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    // hyper sends Content-Length for a Full body; chunked is not expected.
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed inside a body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok((status, body))
}

fn run_conn(opts: &Opts, c: usize, start: &Barrier) -> Result<u64, String> {
    let conn = TcpStream::connect_timeout(&opts.addr, opts.timeout);
    // Everyone waits at the barrier, even after a failed connect.
    start.wait();
    let mut s = conn.map_err(|e| format!("connection {c}: connect {}: {e}", opts.addr))?;
    s.set_read_timeout(Some(opts.timeout))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", opts.addr);
    let mut buf = Vec::with_capacity(8192);
    for r in 0..opts.reqs {
        s.write_all(req.as_bytes())
            .map_err(|e| format!("connection {c}: request {r}: write: {e}"))?;
        let (status, body) = read_response(&mut s, &mut buf)
            .map_err(|e| format!("connection {c}: request {r}: {e}"))?;
        if status != 200 {
            return Err(format!("connection {c}: request {r}: status {status}"));
        }
        if let Some(want) = &opts.body {
            if body != want.as_bytes() {
                return Err(format!(
                    "connection {c}: request {r}: body {:?}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
    Ok(opts.reqs as u64)
}

fn main() {
    let opts = Arc::new(parse().unwrap_or_else(|e| {
        eprintln!("http-load: {e}\n{USAGE}");
        exit(2)
    }));
    let start = Arc::new(Barrier::new(opts.conns + 1));
    let mut workers = Vec::with_capacity(opts.conns);
    for c in 0..opts.conns {
        let (opts, start) = (Arc::clone(&opts), Arc::clone(&start));
        match std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || run_conn(&opts, c, &start))
        {
            Ok(w) => workers.push(w),
            Err(e) => {
                eprintln!("http-load: cannot start connection thread {c}: {e}");
                exit(1)
            }
        }
    }
    start.wait();
    let t0 = Instant::now();
    let (mut requests, mut failed) = (0u64, 0usize);
    for w in workers {
        match w.join() {
            Ok(Ok(n)) => requests += n,
            Ok(Err(e)) => {
                eprintln!("http-load: {e}");
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "conns={} reqs={} failed={} requests={} secs={:.6} reqs_per_sec={:.0}",
        opts.conns,
        opts.reqs,
        failed,
        requests,
        secs,
        requests as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        eprintln!("http-load: {failed} of {} connections failed", opts.conns);
        exit(1);
    }
}
