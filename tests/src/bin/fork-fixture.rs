//! A pre-forking echo server, for `portsnoop -f`: the parent binds a
//! listener, closes one probed socket of its own, forks `--workers N`
//! processes and waits. Each worker accepts on the inherited listener and
//! echoes, one connection at a time, every step between its eventer probes
//! as the drop-in sockets fire them. Workers are forked from one image at
//! the same point, so they hand out the same fd numbers: two workers serve
//! "fd 4" at once, each its own.
//!
//! Prints `listening on ADDR` when the listener is bound, and
//! `worker PID` per worker. Workers die with the parent (`PDEATHSIG`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use usdt_provider::{mask, Io};

const CLOSURE: u64 = 9;

fn die(what: &str) -> ! {
    eprintln!("fork-fixture: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn accept(listener: &TcpListener) -> TcpStream {
    tests::fixture::accept(listener, CLOSURE).unwrap_or_else(|_| die("accept"))
}

fn close(fd: i32) {
    tests::fixture::close(fd, CLOSURE);
}

fn serve(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        let args = Io {
            fd: conn.as_raw_fd(),
            buf: buf.as_ptr() as u64,
            len: buf.len() as u64,
            mask: mask::READ,
            closure: CLOSURE,
        };
        usdt_provider::read_entry(|| args);
        let r = conn.read(&mut buf);
        let rv = match &r {
            Ok(n) => *n as i64,
            Err(e) => -i64::from(e.raw_os_error().unwrap_or(0)),
        };
        usdt_provider::read_return(|| (args, rv));
        let n = match r {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let args = Io {
                fd: conn.as_raw_fd(),
                buf: buf[sent..].as_ptr() as u64,
                len: (n - sent) as u64,
                mask: mask::WRITE,
                closure: CLOSURE,
            };
            usdt_provider::write_entry(|| args);
            let w = conn.write(&buf[sent..n]);
            let rv = match &w {
                Ok(k) => *k as i64,
                Err(e) => -i64::from(e.raw_os_error().unwrap_or(0)),
            };
            usdt_provider::write_return(|| (args, rv));
            match w {
                Ok(k) if k > 0 => sent += k,
                _ => return close(std::os::fd::IntoRawFd::into_raw_fd(conn)),
            }
        }
    }
    close(std::os::fd::IntoRawFd::into_raw_fd(conn));
}

fn worker(listener: &TcpListener, parent: i32) -> ! {
    // SAFETY: prctl with constant arguments; then a check that the parent
    // did not die before it took effect.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        std::process::exit(0);
    }
    loop {
        serve(accept(listener));
    }
}

fn main() {
    let mut workers = 2;
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => workers = args.next().and_then(|n| n.parse().ok()).unwrap_or(2),
            "--listen" => listen = args.next().unwrap_or(listen),
            _ => die("usage: fork-fixture [--workers N] [--listen ADDR]"),
        }
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|_| die("bind"));
    // The parent's own op, so a trace without -f has something of it.
    let own = TcpStream::connect(listener.local_addr().unwrap()).unwrap_or_else(|_| die("connect"));
    close(std::os::fd::IntoRawFd::into_raw_fd(own));
    // The connection the parent made waits in the backlog: take it, unprobed
    // by any worker, and drop it quietly (no worker serves it).
    let (pending, _) = listener.accept().unwrap_or_else(|_| die("accept"));
    drop(pending);
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut out = std::io::stdout().lock();
    for _ in 0..workers {
        // SAFETY: single-threaded here; the child only runs Rust code that
        // is fork-safe in a single-threaded process.
        match unsafe { libc::fork() } {
            -1 => die("fork"),
            0 => worker(&listener, me),
            pid => writeln!(out, "worker {pid}").unwrap_or_else(|_| die("stdout")),
        }
    }
    writeln!(out, "listening on {}", listener.local_addr().unwrap())
        .unwrap_or_else(|_| die("stdout"));
    out.flush().unwrap_or_else(|_| die("stdout"));
    drop(out);
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child.
        if unsafe { libc::wait(&mut status) } < 0 {
            std::process::exit(0);
        }
    }
}
