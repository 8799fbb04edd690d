//! The same echo server on plain mio, with no probes: the baseline a user
//! would otherwise write, for side-by-side benchmarks.
//!
//! ```text
//! echo-mio-plain --listen 127.0.0.1:0
//! ```

use std::collections::HashMap;
use std::io::ErrorKind::{Interrupted, WouldBlock};
use std::io::{Read, Write};

use examples::{announce, die, on_shutdown_signal, parse_listen};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

struct Conn {
    stream: TcpStream,
    unsent: Vec<u8>,
}

fn main() {
    let addr = parse_listen("echo-mio-plain");
    let mut listener =
        TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("echo-mio-plain: bind {addr}"), e));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| die("echo-mio-plain: local_addr", e));
    let mut poll = Poll::new().unwrap_or_else(|e| die("echo-mio-plain: epoll", e));
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap_or_else(|e| die("echo-mio-plain: register", e));
    // Shared, not moved into the handler: dropping the last Waker closes its
    // eventfd, which takes a pending wake-up out of epoll with it.
    let waker =
        Waker::new(poll.registry(), WAKER).unwrap_or_else(|e| die("echo-mio-plain: waker", e));
    let waker = std::sync::Arc::new(waker);
    let wake = std::sync::Arc::clone(&waker);
    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stopping.clone();
    on_shutdown_signal(move || {
        flag.store(true, std::sync::atomic::Ordering::Release);
        let _ = wake.wake();
    })
    .unwrap_or_else(|e| die("echo-mio-plain: signals", e));
    announce(local);

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 2usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    while !stopping.load(std::sync::atomic::Ordering::Acquire) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == Interrupted {
                continue;
            }
            die("echo-mio-plain: poll", e);
        }
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(next);
                            next += 1;
                            if poll
                                .registry()
                                .register(&mut stream, token, Interest::READABLE)
                                .is_ok()
                            {
                                conns.insert(
                                    token,
                                    Conn {
                                        stream,
                                        unsent: Vec::new(),
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == Interrupted => continue,
                        Err(_) => break,
                    }
                },
                token => {
                    let done = match conns.get_mut(&token) {
                        Some(conn) => !serve(conn, &mut buf, poll.registry(), token),
                        None => false,
                    };
                    if done {
                        if let Some(mut conn) = conns.remove(&token) {
                            let _ = poll.registry().deregister(&mut conn.stream);
                        }
                    }
                }
            }
        }
    }
}

/// Echoes what is readable; false when the connection is finished.
fn serve(conn: &mut Conn, buf: &mut [u8], registry: &mio::Registry, token: Token) -> bool {
    if !conn.unsent.is_empty() {
        let n = match write_some(&mut conn.stream, &conn.unsent) {
            Ok(n) => n,
            Err(_) => return false,
        };
        conn.unsent.drain(..n);
        if !conn.unsent.is_empty() {
            return true;
        }
        if registry
            .reregister(&mut conn.stream, token, Interest::READABLE)
            .is_err()
        {
            return false;
        }
    }
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                let w = match write_some(&mut conn.stream, &buf[..n]) {
                    Ok(w) => w,
                    Err(_) => return false,
                };
                if w < n {
                    conn.unsent.extend_from_slice(&buf[w..n]);
                    return registry
                        .reregister(&mut conn.stream, token, Interest::WRITABLE)
                        .is_ok();
                }
            }
            Err(e) if e.kind() == WouldBlock => return true,
            Err(e) if e.kind() == Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn write_some(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        match stream.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == WouldBlock => break,
            Err(e) if e.kind() == Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}
