//! A plain mio server, shaped like mio's own `examples/tcp_server.rs` (one
//! `Poll`, a token per connection in a `HashMap`, a
//! `handle_connection_event` per readiness), switched to the evloop
//! drop-in wrappers by its imports, and with each event's handling framed
//! as a callback. It echoes (tcp_server greets and prints instead), so
//! `echo-load` can drive it.
//!
//! What the switch takes, next to mio's example:
//!
//! * `use eventloop_probes::mio::{TcpListener, TcpStream}` instead of
//!   `mio::net::{...}`: every accept, read, write and close (on drop) fires
//!   its probe;
//! * `let _cb = conn.callback("echo", event)` around each event's handling:
//!   `eventer-callback-entry/return`, so a trace names the callback each
//!   operation ran in, as it does for the eventer (`echo-mio`).
//!
//! ```text
//! echo-mio-wrappers --listen 127.0.0.1:0
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use eventloop_probes::mio::{Mask, TcpListener, TcpStream};
use examples::{announce, die, on_shutdown_signal, parse_listen};
use mio::event::Event;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

const SERVER: Token = Token(0);
const STOP: Token = Token(1);

fn main() {
    let addr = parse_listen("echo-mio-wrappers");
    if let Err(e) = usdt_provider::register() {
        die("echo-mio-wrappers: registering probes", e);
    }
    if let Err(e) = serve(addr) {
        die("echo-mio-wrappers", e);
    }
}

fn serve(addr: std::net::SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(128);
    let mut server = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut server, SERVER, Interest::READABLE)?;
    // SIGINT/SIGTERM wake the loop through a waker, so connections close
    // (through their probes) on the way out.
    let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
    on_shutdown_signal(move || {
        let _ = waker.wake();
    })?;
    announce(server.local_addr()?);

    let mut connections: HashMap<Token, Connection> = HashMap::new();
    let mut unique_token = Token(STOP.0 + 1);
    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            match event.token() {
                STOP => return Ok(()),
                SERVER => {
                    // The accept loop is one callback, as the eventer's is.
                    let _cb = server.callback("accept", event);
                    loop {
                        let mut stream = match server.accept() {
                            Ok((stream, _address)) => stream,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            // EMFILE and friends: the next readiness retries.
                            Err(_) => break,
                        };
                        let token = next(&mut unique_token);
                        poll.registry()
                            .register(&mut stream, token, Interest::READABLE)?;
                        connections.insert(
                            token,
                            Connection {
                                stream,
                                unsent: Vec::new(),
                            },
                        );
                    }
                }
                token => {
                    let done = match connections.get_mut(&token) {
                        Some(conn) => {
                            let mut cb = conn.stream.callback("echo", event);
                            // An error ends the connection, not the server.
                            let done = handle_connection_event(poll.registry(), conn, event)
                                .unwrap_or(true);
                            cb.set_mask(if done {
                                Mask::NONE
                            } else if conn.unsent.is_empty() {
                                Mask::READ
                            } else {
                                Mask::WRITE
                            });
                            done
                        }
                        None => false,
                    };
                    if done {
                        if let Some(mut conn) = connections.remove(&token) {
                            poll.registry().deregister(&mut conn.stream)?;
                            // Dropped here: the close, between its probes.
                        }
                    }
                }
            }
        }
    }
}

fn next(current: &mut Token) -> Token {
    let next = current.0;
    current.0 += 1;
    Token(next)
}

struct Connection {
    stream: TcpStream,
    /// Read but not yet written back; while non-empty the connection
    /// waits for WRITABLE instead of READABLE.
    unsent: Vec<u8>,
}

/// Returns `true` when the connection is done (the peer closed it).
fn handle_connection_event(
    registry: &Registry,
    conn: &mut Connection,
    event: &Event,
) -> io::Result<bool> {
    if event.is_writable() && !conn.unsent.is_empty() {
        let n = write_some(&mut conn.stream, &conn.unsent)?;
        conn.unsent.drain(..n);
        if !conn.unsent.is_empty() {
            return Ok(false); // still full: wait for the next WRITABLE
        }
        registry.reregister(&mut conn.stream, event.token(), Interest::READABLE)?;
    }
    if event.is_readable() || event.is_read_closed() {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // Nothing more is read while an echo waits for room.
            if !conn.unsent.is_empty() {
                break;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    let w = write_some(&mut conn.stream, &buf[..n])?;
                    if w < n {
                        conn.unsent.extend_from_slice(&buf[w..n]);
                        registry.reregister(&mut conn.stream, event.token(), Interest::WRITABLE)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(false)
}

/// Writes until done or the socket is full; returns how much went out.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        match stream.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}
