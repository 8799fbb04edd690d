//! Load generator for the echo servers: C connections each send N messages
//! of S bytes and check every echoed byte.
//!
//! ```text
//! echo-load --addr 127.0.0.1:PORT --conns 8 --msgs 1000 --size 64
//! ```
//!
//! The last stdout line is machine-readable `key=value` pairs; any wrong or
//! missing byte is an error (exit 1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::exit;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Opts {
    addr: SocketAddr,
    conns: usize,
    msgs: usize,
    size: usize,
    timeout: Duration,
}

const USAGE: &str =
    "usage: echo-load --addr IP:PORT [--conns C] [--msgs N] [--size S] [--timeout SECS]";

fn parse() -> Result<Opts, String> {
    let mut addr = None;
    let (mut conns, mut msgs, mut size, mut timeout) = (1usize, 100usize, 64usize, 60u64);
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
            "--msgs" => msgs = num()? as usize,
            "--size" => size = num()? as usize,
            "--timeout" => timeout = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    if conns == 0 || size == 0 {
        return Err("--conns and --size must be at least 1".into());
    }
    Ok(Opts {
        addr,
        conns,
        msgs,
        size,
        timeout: Duration::from_secs(timeout),
    })
}

/// The byte at offset `i` of message `m` on connection `c`: differs between
/// connections and messages, so crossed or reordered echoes are caught.
fn pattern(c: usize, m: usize, i: usize) -> u8 {
    ((c * 31 + m * 7 + i) % 251) as u8
}

fn run_conn(opts: &Opts, c: usize, start: &Barrier) -> Result<u64, String> {
    let conn = TcpStream::connect_timeout(&opts.addr, opts.timeout);
    // Everyone waits at the barrier, even after a failed connect, so the
    // others are not stuck.
    start.wait();
    let mut s = conn.map_err(|e| format!("connection {c}: connect {}: {e}", opts.addr))?;
    s.set_read_timeout(Some(opts.timeout))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; opts.size];
    let mut back = vec![0u8; opts.size];
    for m in 0..opts.msgs {
        for (i, b) in out.iter_mut().enumerate() {
            *b = pattern(c, m, i);
        }
        s.write_all(&out)
            .map_err(|e| format!("connection {c}: message {m}: write: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("connection {c}: message {m}: read: {e}"))?;
        if let Some(i) = (0..opts.size).find(|&i| back[i] != out[i]) {
            return Err(format!(
                "connection {c}: message {m}: byte {i} echoed as {} but sent {}",
                back[i], out[i]
            ));
        }
    }
    Ok((opts.msgs * opts.size) as u64)
}

fn main() {
    let opts = parse().unwrap_or_else(|e| {
        eprintln!("echo-load: {e}\n{USAGE}");
        exit(2)
    });
    let opts = Arc::new(opts);
    let start = Arc::new(Barrier::new(opts.conns + 1));
    let mut workers = Vec::with_capacity(opts.conns);
    for c in 0..opts.conns {
        let (opts, start) = (Arc::clone(&opts), Arc::clone(&start));
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || run_conn(&opts, c, &start));
        match spawned {
            Ok(w) => workers.push(w),
            Err(e) => {
                eprintln!("echo-load: cannot start connection thread {c}: {e}");
                exit(1)
            }
        }
    }
    start.wait();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut failed = 0usize;
    for w in workers {
        match w.join() {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => {
                eprintln!("echo-load: {e}");
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let messages = (opts.conns - failed) * opts.msgs;
    println!(
        "conns={} msgs={} size={} failed={} messages={} bytes={} secs={:.6} msgs_per_sec={:.0}",
        opts.conns,
        opts.msgs,
        opts.size,
        failed,
        messages,
        bytes,
        secs,
        messages as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        eprintln!("echo-load: {failed} of {} connections failed", opts.conns);
        exit(1);
    }
}
