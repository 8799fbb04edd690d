//! Echo server on the evloop eventer: every accept, read, write, close and
//! callback fires its `evloop` probe.
//!
//! Two callbacks: `accept` on the listener (its `Ctx` is typed by the
//! listener, so it can `accept`) and `echo` per connection. Each returns
//! the `Mask` it waits for next: READ, WRITE while an echo waits for room
//! in the socket, NONE when the peer is gone (the eventer then closes the
//! connection, between the close probes).
//!
//! ```text
//! echo-mio --listen 127.0.0.1:0
//! ```

use std::io::ErrorKind::{Interrupted, WouldBlock};

use eventloop_probes::eventer::{Ctx, Eventer, Mask};
use examples::{announce, die, on_shutdown_signal, parse_listen};
use mio::net::{TcpListener, TcpStream};

fn main() {
    let addr = parse_listen("echo-mio");
    if let Err(e) = usdt_provider::register() {
        die("echo-mio: registering probes", e);
    }
    let listener =
        TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("echo-mio: bind {addr}"), e));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| die("echo-mio: local_addr", e));
    let mut ev = Eventer::new().unwrap_or_else(|e| die("echo-mio: epoll", e));
    ev.register(listener, "accept", Mask::READ, accept_all)
        .unwrap_or_else(|e| die("echo-mio: register", e));
    let stop = ev.stop_handle();
    on_shutdown_signal(move || stop.stop()).unwrap_or_else(|e| die("echo-mio: signals", e));
    announce(local);
    if let Err(e) = ev.run() {
        die("echo-mio: event loop", e);
    }
}

fn accept_all(ctx: &mut Ctx<'_, TcpListener>, _ready: Mask) -> Mask {
    loop {
        match ctx.accept() {
            Ok((conn, _peer)) => {
                let mut conn_state = Echo::default();
                ctx.register(conn, "echo", Mask::READ, move |ctx, ready| {
                    conn_state.on_ready(ctx, ready)
                });
            }
            Err(e) if e.kind() == WouldBlock => return Mask::READ,
            Err(e) if e.kind() == Interrupted => continue,
            // EMFILE and friends: keep listening; the next readiness retries.
            Err(_) => return Mask::READ,
        }
    }
}

/// One connection: bytes read but not yet written back wait in `unsent`,
/// and while they do the connection waits for WRITE instead of READ.
#[derive(Default)]
struct Echo {
    buf: Vec<u8>,
    unsent: Vec<u8>,
}

impl Echo {
    fn on_ready(&mut self, ctx: &mut Ctx<'_, TcpStream>, _ready: Mask) -> Mask {
        if self.buf.is_empty() {
            self.buf = vec![0; 16 * 1024];
        }
        if !self.unsent.is_empty() {
            match write_all(ctx, &self.unsent) {
                Ok(n) if n == self.unsent.len() => self.unsent.clear(),
                Ok(n) => {
                    self.unsent.drain(..n);
                    return Mask::WRITE;
                }
                Err(_) => return Mask::NONE,
            }
        }
        loop {
            match ctx.read(&mut self.buf) {
                Ok(0) => return Mask::NONE,
                Ok(n) => match write_all(ctx, &self.buf[..n]) {
                    Ok(w) if w == n => {}
                    Ok(w) => {
                        self.unsent.extend_from_slice(&self.buf[w..n]);
                        return Mask::WRITE;
                    }
                    Err(_) => return Mask::NONE,
                },
                Err(e) if e.kind() == WouldBlock => return Mask::READ,
                Err(e) if e.kind() == Interrupted => continue,
                Err(_) => return Mask::NONE,
            }
        }
    }
}

/// Writes until done or the socket is full; returns how much went out.
fn write_all(ctx: &mut Ctx<'_, TcpStream>, data: &[u8]) -> std::io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        match ctx.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == WouldBlock => break,
            Err(e) if e.kind() == Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}
