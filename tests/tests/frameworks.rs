//! Real frameworks over the evloop sockets, with no glue in the app: axum's
//! `serve` takes the evloop `TcpListener` as it is, and hyper serves an
//! evloop `TcpStream` through hyper-util's `TokioIo`. Real HTTP requests on
//! loopback; real bpftrace, attached to this test process (`-p`), sees the
//! server's accepts, reads, writes and closes with the exact byte counts,
//! and (hyper) the handler's `tracing` events through the tracing bridge.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use eventloop_probes::tokio::TcpListener;
use tests::{require_bpftrace, Bpftrace, WAIT};

/// One server at a time: bpftrace sees the probes of the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const REQUESTS: usize = 3;

const SCRIPT: &str = r#"
usdt:$BIN:evloop:eventer-accept-return { printf("accept-return tid=%d fd=%d rv=%lld\n", tid, (int32)arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-read-return { printf("read-return tid=%d fd=%d rv=%lld\n", tid, (int32)arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-write-return { printf("write-return tid=%d fd=%d rv=%lld\n", tid, (int32)arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-close-return { printf("close-return tid=%d fd=%d rv=%lld\n", tid, (int32)arg0, (int64)arg3); }
usdt:$BIN:evloop:log { printf("log tid=%d [%s] [%s]\n", tid, str(arg0), str(arg3)); }
"#;

/// One probe fire: (probe, fd, rv).
fn fires(out: &[String]) -> Vec<(String, i32, i64)> {
    out.iter()
        .filter(|l| l.contains("-return "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let probe = w.next().unwrap().to_string();
            let mut fd = 0;
            let mut rv = 0;
            for kv in w {
                match kv.split_once('=') {
                    Some(("fd", v)) => fd = v.parse().unwrap(),
                    Some(("rv", v)) => rv = v.parse().unwrap(),
                    _ => {}
                }
            }
            (probe, fd, rv)
        })
        .collect()
}

/// One HTTP/1.1 request with `Connection: close`; returns (bytes sent,
/// the whole response).
fn http_get(addr: SocketAddr, path: &str) -> (usize, String) {
    let mut c = std::net::TcpStream::connect(addr).expect("connecting");
    c.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("reading the response");
    (req.len(), resp)
}

/// Waits until bpftrace printed `n` lines satisfying `pred`.
fn wait_for_count(bt: &Bpftrace, n: usize, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    while bt.stdout().all().iter().filter(|l| pred(l)).count() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} {what} within {WAIT:?}:\n{}",
            bt.stdout().all().join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends the requests, checks the responses, and checks what bpftrace saw
/// on the connections the listener `lfd` accepted: every request's bytes
/// read, every response's bytes written, every connection closed.
fn exercise(bt: Bpftrace, addr: SocketAddr, lfd: i32, body: &str) -> Vec<String> {
    let (mut sent, mut received) = (0, 0);
    for i in 0..REQUESTS {
        let (n, resp) = http_get(addr, &format!("/r{i}"));
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with(&format!("\r\n\r\n{body}")), "{resp}");
        sent += n;
        received += resp.len();
    }
    // The server closes each connection after its response; bpftrace drops
    // what it has not printed when stopped, so wait for the closes.
    wait_for_count(&bt, REQUESTS, "closes", |l| l.starts_with("close-return "));
    let out = bt.finish();
    let f = fires(&out);
    let conns: Vec<i32> = f
        .iter()
        .filter(|(p, fd, rv)| p == "accept-return" && *fd == lfd && *rv > 0)
        .map(|(_, _, rv)| *rv as i32)
        .collect();
    assert_eq!(
        conns.len(),
        REQUESTS,
        "accepts on fd {lfd}:\n{}",
        out.join("\n")
    );
    let bytes = |probe: &str| -> i64 {
        f.iter()
            .filter(|(p, fd, rv)| p == probe && conns.contains(fd) && *rv > 0)
            .map(|(_, _, rv)| rv)
            .sum()
    };
    assert_eq!(
        bytes("read-return"),
        sent as i64,
        "request bytes read:\n{}",
        out.join("\n")
    );
    assert_eq!(
        bytes("write-return"),
        received as i64,
        "response bytes written:\n{}",
        out.join("\n")
    );
    let closes = f
        .iter()
        .filter(|(p, fd, rv)| p == "close-return" && conns.contains(fd) && *rv == 0)
        .count();
    assert_eq!(closes, REQUESTS);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn axum_serves_over_the_evloop_listener_with_no_newtype() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_bpftrace();
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let (addr, lfd) = (listener.local_addr().unwrap(), listener.as_raw_fd());
    let app = axum::Router::new().route("/{*path}", axum::routing::get(|| async { "from axum" }));
    let bt = Bpftrace::start(SCRIPT, std::process::id());
    // The point: the evloop listener goes straight into axum::serve.
    let server = rt.spawn(async move { axum::serve(listener, app).await });
    exercise(bt, addr, lfd, "from axum");
    server.abort();
}

#[test]
fn hyper_serves_an_evloop_stream_through_tokio_io() {
    use hyper::{body::Incoming, Request, Response};
    use tracing_subscriber::layer::SubscriberExt;

    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_bpftrace();
    // The handler logs through tracing; the bridge turns that into the
    // `log` probe on the worker thread serving the request.
    let subscriber = tracing_subscriber::registry().with(eventloop_probes::tracing_bridge::Layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    let rt = {
        let dispatch = dispatch.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // Leaked guard: the default lasts as long as the thread.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()
            .unwrap()
    };
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let (addr, lfd) = (listener.local_addr().unwrap(), listener.as_raw_fd());
    let bt = Bpftrace::start(SCRIPT, std::process::id());
    let server = rt.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    tracing::info!(target: "hyper-test", path = req.uri().path(), "request");
                    Ok::<_, Infallible>(Response::new(String::from("from hyper")))
                });
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
            });
        }
    });
    let out = exercise(bt, addr, lfd, "from hyper");
    server.abort();
    for i in 0..REQUESTS {
        let want = format!(r#"[hyper-test] [request path="/r{i}"]"#);
        assert!(
            out.iter()
                .any(|l| l.starts_with("log tid=") && l.ends_with(&want)),
            "no log line ending {want:?}:\n{}",
            out.join("\n")
        );
    }
}
