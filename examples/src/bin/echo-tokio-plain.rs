//! Echo server on tokio's own sockets, no evloop at all: the baseline for
//! `echo-tokio`, which is this file with `eventloop_probes::tokio` sockets
//! and instrumented tasks. Same runtime, same protocol, same buffer sizes,
//! so the bench's paired ratio is what the evloop sockets cost.
//!
//! ```text
//! echo-tokio-plain --listen 127.0.0.1:0
//! ```

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use examples::{announce, die, on_shutdown_signal, parse_listen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

fn main() {
    let addr = parse_listen("echo-tokio-plain");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die("echo-tokio-plain: starting the runtime", e));
    runtime.block_on(serve(addr));
    // Dropping the runtime cancels the connection tasks; their sockets close
    // on the way out.
}

async fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| die(&format!("echo-tokio-plain: bind {addr}"), e));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| die("echo-tokio-plain: local_addr", e));
    let stop = Arc::new(Notify::new());
    let signalled = Arc::clone(&stop);
    // notify_one keeps the wake-up if the signal comes before the wait.
    on_shutdown_signal(move || signalled.notify_one())
        .unwrap_or_else(|e| die("echo-tokio-plain: signals", e));
    announce(local);
    tokio::select! {
        () = stop.notified() => {}
        () = accept_all(&listener) => {}
    }
}

async fn accept_all(listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((conn, _peer)) => {
                tokio::spawn(echo(conn));
            }
            Err(e) if is_out_of_resources(&e) => {
                // Retrying at once would spin; give closing connections a
                // moment to free fds or memory.
                eprintln!("echo-tokio-plain: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // ECONNABORTED and friends concern one peer; keep accepting.
            Err(_) => {}
        }
    }
}

fn is_out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == ErrorKind::OutOfMemory
}

/// Writes back every byte until the peer closes its side, then closes ours.
async fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if conn.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = conn.shutdown().await;
}
