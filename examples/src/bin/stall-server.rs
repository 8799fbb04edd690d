//! A line server on tokio (through `eventloop_probes::tokio`) whose request
//! handlers sometimes block the loop, the classic bug `portsnoop --stall`
//! is for. Each connection is a task (`conn`, with its fd); a request is
//! one line, answered with one line:
//!
//! | request | handler (a task poll nested in `conn`'s) | what it does, on the loop's thread |
//! | --- | --- | --- |
//! | `sleep MS` | `handler_sleep` | `std::thread::sleep` (`clock_nanosleep`) |
//! | `fsync MS` | `handler_fsync` | writes 64 KiB to a file and `fsync`s it, again until MS have passed |
//! | `spin MS` | `handler_spin` | spins on the CPU |
//! | anything else | none | echoes the line back |
//!
//! Blocking calls inside a poll are what tokio's docs warn about; here they
//! are on purpose, so that tests (and the README) know which callback
//! stalled the loop, for how long and on what. The fsync file is
//! `stall-server-PID.dat` in `--dir DIR` (default: the temp dir), removed
//! after each request.
//!
//! ```text
//! stall-server --listen 127.0.0.1:0 [--dir DIR]
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventloop_probes::tokio::{Instrumented, TcpListener, TcpStream};
use examples::{announce, die, on_shutdown_signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The longest block a request may ask for.
const MAX_BLOCK_MS: u64 = 10_000;
/// The longest request line.
const MAX_LINE: usize = 4096;

fn main() {
    let (addr, dir) = parse_args();
    if let Err(e) = usdt_provider::register() {
        die("stall-server: registering probes", e);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die("stall-server: starting the runtime", e));
    runtime.block_on(serve(addr, Arc::new(dir)));
}

fn parse_args() -> (SocketAddr, PathBuf) {
    let usage = || -> ! {
        eprintln!("usage: stall-server --listen ADDR [--dir DIR]   (e.g. --listen 127.0.0.1:0)");
        exit(2)
    };
    let (mut addr, mut dir) = (None, std::env::temp_dir());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                addr = Some(
                    args.next()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    (addr.unwrap_or_else(|| usage()), dir)
}

async fn serve(addr: SocketAddr, dir: Arc<PathBuf>) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| die(&format!("stall-server: bind {addr}"), e));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| die("stall-server: local_addr", e));
    let stop = Arc::new(Notify::new());
    let signalled = Arc::clone(&stop);
    on_shutdown_signal(move || signalled.notify_one())
        .unwrap_or_else(|e| die("stall-server: signals", e));
    announce(local);
    let accept = async {
        loop {
            if let Ok((conn, _)) = listener.accept().await {
                let fd = conn.as_raw_fd();
                let dir = Arc::clone(&dir);
                tokio::spawn(Instrumented::new("conn", serve_conn(conn, dir)).with_fd(fd));
            }
        }
    };
    tokio::select! {
        () = stop.notified() => {}
        () = Instrumented::new("accept", accept) => {}
    }
}

/// Answers request lines until the peer closes.
async fn serve_conn(mut conn: TcpStream, dir: Arc<PathBuf>) {
    let fd = conn.as_raw_fd();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            let reply = answer(&line, fd, &dir).await;
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            let _ = conn.write_all(b"error: line too long\n").await;
            break;
        }
    }
    let _ = conn.shutdown().await;
}

/// The reply to one request; the blocking ones run as their own named
/// callback, inside the connection's.
async fn answer(line: &str, fd: i32, dir: &Path) -> String {
    let mut words = line.split_whitespace();
    let (cmd, ms) = (
        words.next(),
        words.next().and_then(|w| w.parse::<u64>().ok()),
    );
    let block = |name: &'static str, ms: u64, work: fn(u64, &Path) -> std::io::Result<()>| {
        let dir = dir.to_path_buf();
        Instrumented::new(name, async move { work(ms.min(MAX_BLOCK_MS), &dir) }).with_fd(fd)
    };
    let (name, result) = match (cmd, ms) {
        (Some("sleep"), Some(ms)) => ("sleep", block("handler_sleep", ms, sleep).await),
        (Some("fsync"), Some(ms)) => ("fsync", block("handler_fsync", ms, fsync).await),
        (Some("spin"), Some(ms)) => ("spin", block("handler_spin", ms, spin).await),
        _ => return format!("{line}\n"),
    };
    match result {
        Ok(()) => format!("done {name} {}\n", ms.unwrap_or(0)),
        Err(e) => format!("error: {name}: {e}\n"),
    }
}

/// Blocks the loop's thread asleep.
fn sleep(ms: u64, _dir: &Path) -> std::io::Result<()> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// Blocks the loop's thread on the disk: 64 KiB written and fsync'd, again
/// until `ms` have passed (at least once). A small write, so the time goes
/// to the syncs: a MiB's copy into the page cache took 2.8 ms on a loaded
/// CI host, longer than the sync after it.
fn fsync(ms: u64, dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!("stall-server-{}.dat", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0x5au8; 64 << 10];
        let start = Instant::now();
        loop {
            file.write_all(&chunk)?;
            file.sync_all()?;
            if start.elapsed() >= Duration::from_millis(ms) {
                return Ok(());
            }
        }
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Keeps the loop's thread busy on the CPU, making no syscall.
fn spin(ms: u64, _dir: &Path) -> std::io::Result<()> {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    Ok(())
}
