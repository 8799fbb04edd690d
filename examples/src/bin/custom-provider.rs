//! How a service adds probes of its own beside `evloop`: a tiny line
//! server on the eventer whose provider `shop` fires `request-start` and
//! `request-done` around each request (one line in, one line out).
//!
//! ```text
//! custom-provider --listen 127.0.0.1:0
//! bpftrace -p PID -e 'usdt:BIN:shop:request-done { @[arg1] = count(); }'
//! ```

use std::io::ErrorKind::{Interrupted, WouldBlock};

use eventloop_probes::eventer::{Ctx, Eventer, Mask};
use examples::{announce, die, on_shutdown_signal, parse_listen};
use mio::net::TcpStream;

/// The service's own provider. Like `evloop`'s, its probes take integers;
/// the path is an address of NUL-terminated bytes (see `Request::path_arg`).
#[usdt::provider]
mod shop {
    fn request__start(id: u64, path: u64, len: u64) {}
    fn request__done(id: u64, status: u16, bytes: u64) {}
}

struct Request {
    id: u64,
    /// The request line, NUL-terminated so a tracer can `str()` it.
    line: Vec<u8>,
}

impl Request {
    fn path_arg(&self) -> u64 {
        std::hint::black_box(&self.line);
        self.line.as_ptr() as u64
    }
}

fn main() {
    let addr = parse_listen("custom-provider");
    if let Err(e) = usdt::register_probes() {
        die("custom-provider: registering probes", e);
    }
    let listener = mio::net::TcpListener::bind(addr)
        .unwrap_or_else(|e| die(&format!("custom-provider: bind {addr}"), e));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| die("custom-provider: local_addr", e));
    let mut ev = Eventer::new().unwrap_or_else(|e| die("custom-provider: epoll", e));
    let mut next_id = 0u64;
    ev.register(listener, "accept", Mask::READ, move |ctx, _| {
        loop {
            match ctx.accept() {
                Ok((conn, _)) => {
                    let mut pending = Vec::new();
                    let first_id = next_id;
                    next_id += 1 << 32; // room for 2^32 requests per connection
                    let mut served = 0u64;
                    ctx.register(conn, "shop", Mask::READ, move |ctx, _| {
                        serve(ctx, &mut pending, first_id, &mut served)
                    });
                }
                Err(e) if e.kind() == Interrupted => continue,
                Err(_) => return Mask::READ,
            }
        }
    })
    .unwrap_or_else(|e| die("custom-provider: register", e));
    let stop = ev.stop_handle();
    on_shutdown_signal(move || stop.stop()).unwrap_or_else(|e| die("custom-provider: signals", e));
    announce(local);
    if let Err(e) = ev.run() {
        die("custom-provider: event loop", e);
    }
}

/// Reads what is there; answers each complete line with `ok <line>`.
fn serve(
    ctx: &mut Ctx<'_, TcpStream>,
    pending: &mut Vec<u8>,
    first_id: u64,
    served: &mut u64,
) -> Mask {
    let mut buf = [0u8; 4096];
    loop {
        match ctx.read(&mut buf) {
            Ok(0) => return Mask::NONE,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == WouldBlock => break,
            Err(e) if e.kind() == Interrupted => continue,
            Err(_) => return Mask::NONE,
        }
    }
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = pending.drain(..=end).collect();
        line.pop();
        let len = line.len() as u64;
        line.push(0);
        let req = Request {
            id: first_id + *served,
            line,
        };
        *served += 1;
        shop::request__start!(|| (req.id, req.path_arg(), len));
        let mut reply = b"ok ".to_vec();
        reply.extend_from_slice(&req.line[..req.line.len() - 1]);
        reply.push(b'\n');
        // A full socket drops the reply; fine for a demo, and counted below.
        let sent = ctx.write(&reply).unwrap_or(0);
        let status: u16 = if sent == reply.len() { 200 } else { 503 };
        shop::request__done!(|| (req.id, status, sent as u64));
    }
    Mask::READ
}
