//! A hyper 1 hello-world server, in two builds chosen at start: on evloop's
//! tokio sockets (`eventloop_probes::tokio`; each connection's task
//! instrumented as callback `http`), or with `--plain` on tokio's own
//! sockets. Everything else (runtime, hyper, the handler) is the same code,
//! so the bench compares the sockets alone, with and without a tracer.
//!
//! ```text
//! hello-hyper --listen 127.0.0.1:0 [--plain]
//! ```
//!
//! Every request gets `200 OK` with the body `Hello, World!` over HTTP/1.1
//! keep-alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use eventloop_probes::tokio::Instrumented;
use examples::{announce, die, on_shutdown_signal};

const USAGE: &str = "usage: hello-hyper --listen ADDR [--plain]";

fn parse() -> (SocketAddr, bool) {
    let usage = || -> ! {
        eprintln!("{USAGE}   (e.g. --listen 127.0.0.1:0)");
        exit(2)
    };
    let (mut addr, mut plain) = (None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().unwrap_or_else(|| usage());
                addr = Some(v.parse().unwrap_or_else(|e| {
                    eprintln!("hello-hyper: bad --listen address {v:?}: {e}");
                    usage()
                }));
            }
            "--plain" => plain = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0)
            }
            _ => usage(),
        }
    }
    (addr.unwrap_or_else(|| usage()), plain)
}

fn main() {
    let (addr, plain) = parse();
    if let Err(e) = usdt_provider::register() {
        die("hello-hyper: registering probes", e);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die("hello-hyper: starting the runtime", e));
    runtime.block_on(async move {
        let stop = Arc::new(Notify::new());
        let signalled = Arc::clone(&stop);
        // notify_one keeps the wake-up if the signal comes before the wait.
        on_shutdown_signal(move || signalled.notify_one())
            .unwrap_or_else(|e| die("hello-hyper: signals", e));
        if plain {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| die(&format!("hello-hyper: bind {addr}"), e));
            announce(
                listener
                    .local_addr()
                    .unwrap_or_else(|e| die("local_addr", e)),
            );
            tokio::select! {
                () = stop.notified() => {}
                () = async { loop {
                    match listener.accept().await {
                        Ok((conn, _)) => { tokio::spawn(serve(conn)); }
                        Err(e) => backoff(e).await,
                    }
                }} => {}
            }
        } else {
            let listener = eventloop_probes::tokio::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| die(&format!("hello-hyper: bind {addr}"), e));
            announce(
                listener
                    .local_addr()
                    .unwrap_or_else(|e| die("local_addr", e)),
            );
            let accept = async {
                loop {
                    match listener.accept().await {
                        Ok((conn, _)) => {
                            let fd = conn.as_raw_fd();
                            tokio::spawn(Instrumented::new("http", serve(conn)).with_fd(fd));
                        }
                        Err(e) => backoff(e).await,
                    }
                }
            };
            tokio::select! {
                () = stop.notified() => {}
                () = Instrumented::new("accept", accept) => {}
            }
        }
    });
}

/// Out of fds or memory: retrying at once would spin. Other errors concern
/// one peer.
async fn backoff(e: std::io::Error) {
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        eprintln!("hello-hyper: accept: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One connection, HTTP/1.1 with keep-alive, until the peer closes it.
async fn serve<S>(conn: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A failed connection (a reset, a bad request) concerns that peer only.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(conn), service_fn(hello))
        .await;
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}
