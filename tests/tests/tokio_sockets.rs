//! `eventloop_probes::tokio` sockets as a drop-in for tokio's: the same
//! socket syscalls per request as tokio's own sockets (counted by the
//! kernel's syscall tracepoints), every byte of UDP and Unix echoes seen by
//! the probes with one syscall per probe pair, and a hyper server whose
//! vectored writes are `writev`s inside write ops with no mismatch in
//! portsnoop.
//!
//! The servers run in child processes (this test binary, re-run with
//! [`SERVE`] set, runs [`serve_helper`] only), so bpftrace and portsnoop
//! see only the server's syscalls and the clients here are plain std
//! sockets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tests::{
    require_bpftrace, run_load, socket_count, wait_for_sockets, Bpftrace, Portsnoop, Proc, WAIT,
};

use tests::SERVE;

/// A server started from this binary, killed when dropped.
struct Child {
    proc: Proc,
    /// What it printed after `listening on `.
    addr: String,
    /// Its sockets when idle: the listener and the runtime's own (tokio's
    /// signal driver holds a socketpair).
    idle_sockets: usize,
}

impl Child {
    fn start(mode: &str) -> Child {
        let (proc, addr) = tests::serve_self(mode);
        Child {
            addr,
            idle_sockets: socket_count(proc.pid()),
            proc,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits (bounded) until every connection is closed, so all of a
    /// load's syscalls have happened.
    fn wait_idle(&self) {
        wait_for_sockets(self.pid(), self.idle_sockets);
    }

    fn sock_addr(&self) -> SocketAddr {
        self.addr.parse().expect("IP:PORT")
    }
}

/// Not a test: the server side of the others, run in a child process when
/// [`SERVE`] names one. Without it, it returns at once.
#[test]
fn serve_helper() {
    let Ok(mode) = std::env::var(SERVE) else {
        return;
    };
    // Two workers, like a small service; the same runtime for both kinds
    // of socket, so only the sockets differ.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server::run(&mode));
}

mod server {
    use std::convert::Infallible;

    use eventloop_probes::tokio as evloop;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    fn announce(addr: impl std::fmt::Display) {
        use std::io::Write;
        println!("listening on {addr}");
        std::io::stdout().flush().unwrap();
    }

    pub async fn run(mode: &str) {
        match mode {
            "echo-evloop" => {
                let l = evloop::TcpListener::bind("127.0.0.1:0").await.unwrap();
                announce(l.local_addr().unwrap());
                loop {
                    let (c, _) = l.accept().await.unwrap();
                    tokio::spawn(echo(c));
                }
            }
            "echo-tokio" => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                announce(l.local_addr().unwrap());
                loop {
                    let (c, _) = l.accept().await.unwrap();
                    tokio::spawn(echo(c));
                }
            }
            "hyper-evloop" => {
                let l = evloop::TcpListener::bind("127.0.0.1:0").await.unwrap();
                announce(l.local_addr().unwrap());
                loop {
                    let (c, _) = l.accept().await.unwrap();
                    tokio::spawn(hello_conn(c));
                }
            }
            "hyper-tokio" => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                announce(l.local_addr().unwrap());
                loop {
                    let (c, _) = l.accept().await.unwrap();
                    tokio::spawn(hello_conn(c));
                }
            }
            "udp-evloop" => {
                let s = evloop::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                announce(s.local_addr().unwrap());
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = s.recv_from(&mut buf).await.unwrap();
                    s.send_to(&buf[..n], from).await.unwrap();
                }
            }
            path if path.starts_with("unix-evloop:") => {
                let path = &path["unix-evloop:".len()..];
                let l = evloop::UnixListener::bind(path).unwrap();
                announce(path);
                loop {
                    let (c, _) = l.accept().await.unwrap();
                    // Through the owned halves, to exercise them.
                    tokio::spawn(async move {
                        let (mut r, mut w) = c.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            }
            other => panic!("unknown {other}"),
        }
    }

    /// What echo-tokio does per connection.
    async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S) {
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

    /// hyper's hello world.
    async fn hello_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(conn: S) {
        let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"Hello, World!",
            ))))
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(conn), service)
            .await;
    }
}

/// `n` keep-alive GETs on each of `conns` connections, each response read
/// whole (headers, then `Content-Length` bytes) before the next request.
fn hello_load(addr: SocketAddr, conns: usize, n: usize) {
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(WAIT)).unwrap();
                c.set_nodelay(true).unwrap();
                let mut pending = Vec::new();
                for _ in 0..n {
                    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        .unwrap();
                    let body = read_response(&mut c, &mut pending);
                    assert_eq!(body, b"Hello, World!");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// One HTTP/1.1 response's body; `pending` keeps bytes read past it.
fn read_response(c: &mut TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            let start = end + 4;
            while pending.len() < start + len {
                let n = c.read(&mut chunk).unwrap();
                assert!(n > 0, "EOF inside a response");
                pending.extend_from_slice(&chunk[..n]);
            }
            let body = pending[start..start + len].to_vec();
            pending.drain(..start + len);
            return body;
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "EOF before a response");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The socket syscalls a server makes for its connections; read/write are
/// left out because tokio's runtime wakes itself with read/write on an
/// eventfd, which is not a socket (neither kind of stream uses them).
const SOCKET_SYSCALLS: [&str; 9] = [
    "recvfrom", "recvmsg", "readv", "sendto", "sendmsg", "writev", "accept4", "shutdown", "close",
];

/// Counts, per process of `pids` and syscall, the socket syscalls and the
/// epoll ones (for the report), from the kernel's syscall tracepoints.
fn count_script(pids: &[u32]) -> String {
    let filter = pids
        .iter()
        .map(|p| format!("pid == {p}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let probes = SOCKET_SYSCALLS
        .iter()
        .chain(&["epoll_wait", "epoll_ctl"])
        .map(|s| format!("tracepoint:syscalls:sys_enter_{s}"))
        .collect::<Vec<_>>()
        .join(",\n");
    format!("{probes} /{filter}/ {{ @n[pid, probe] = count(); }}\n")
}

/// `@n[PID, tracepoint:syscalls:sys_enter_NAME]: COUNT` lines as
/// (pid, name) -> count.
fn parse_counts(lines: &[String]) -> BTreeMap<(u32, String), u64> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("@n[")?;
            let (key, count) = rest.split_once("]: ")?;
            let (pid, probe) = key.split_once(", ")?;
            let name = probe.rsplit("sys_enter_").next()?;
            Some((
                (pid.trim().parse().ok()?, name.to_string()),
                count.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// Runs `load` against two servers (evloop's sockets, tokio's) one after
/// the other under one bpftrace, waits until each has closed every
/// connection, and returns each one's syscall counts.
fn count_both(
    evloop: &Child,
    tokio: &Child,
    load: impl Fn(SocketAddr),
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    require_bpftrace();
    let bt = Bpftrace::start(&count_script(&[evloop.pid(), tokio.pid()]), evloop.pid());
    for server in [evloop, tokio] {
        load(server.sock_addr());
        server.wait_idle();
    }
    let lines = bt.finish();
    let counts = parse_counts(&lines);
    let of = |pid: u32| -> BTreeMap<String, u64> {
        counts
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|((_, name), n)| (name.clone(), *n))
            .collect()
    };
    (of(evloop.pid()), of(tokio.pid()))
}

fn socket_total(counts: &BTreeMap<String, u64>) -> u64 {
    SOCKET_SYSCALLS
        .iter()
        .map(|s| counts.get(*s).copied().unwrap_or(0))
        .sum()
}

/// Asserts evloop's socket syscalls per request are within 1.1x of
/// tokio's, printing both for the record.
fn assert_within(
    what: &str,
    requests: u64,
    ev: &BTreeMap<String, u64>,
    tk: &BTreeMap<String, u64>,
) {
    let (e, t) = (socket_total(ev), socket_total(tk));
    let per = |n: u64| n as f64 / requests as f64;
    println!(
        "{what}: {requests} requests; evloop {:.3} socket syscalls/request {ev:?}; tokio {:.3} {tk:?}",
        per(e),
        per(t)
    );
    assert!(t > 0 && e > 0, "nothing counted: {ev:?} {tk:?}");
    assert!(
        e as f64 <= t as f64 * 1.1,
        "{what}: evloop sockets made {:.3} socket syscalls per request, tokio's {:.3}\nevloop: {ev:?}\ntokio: {tk:?}",
        per(e),
        per(t)
    );
}

#[test]
fn echo_makes_the_socket_syscalls_tokio_makes() {
    let evloop = Child::start("echo-evloop");
    let tokio = Child::start("echo-tokio");
    let (conns, msgs) = (4u32, 2000u32);
    let (ev, tk) = count_both(&evloop, &tokio, |addr| {
        let load = run_load(addr, conns, msgs, 64);
        assert_eq!(load.messages, u64::from(conns * msgs));
    });
    assert_within("echo", u64::from(conns * msgs), &ev, &tk);
}

#[test]
fn hyper_hello_world_makes_the_socket_syscalls_tokio_makes() {
    let evloop = Child::start("hyper-evloop");
    let tokio = Child::start("hyper-tokio");
    let (conns, n) = (4usize, 1000usize);
    let (ev, tk) = count_both(&evloop, &tokio, |addr| hello_load(addr, conns, n));
    assert_within("hyper", (conns * n) as u64, &ev, &tk);
    // hyper writes head and body with one writev when the stream says it
    // can, as it does on tokio's.
    let writevs = ev.get("writev").copied().unwrap_or(0);
    assert!(
        writevs >= (conns * n) as u64,
        "evloop: {writevs} writev for {} responses: {ev:?}",
        conns * n
    );
}

/// For each probe pair of the server: how many syscalls its thread made
/// between entry and return (`all`), and the probe's rv; socket I/O
/// syscalls outside a pair of their kind are printed as stray. read/write
/// are not checked: tokio's runtime uses them on its eventfd.
const PAIR_SCRIPT: &str = r#"
usdt:$BIN:evloop:eventer-read-entry { @op[tid] = 1; @all[tid] = 0; }
usdt:$BIN:evloop:eventer-write-entry { @op[tid] = 2; @all[tid] = 0; }
usdt:$BIN:evloop:eventer-accept-entry { @op[tid] = 3; @all[tid] = 0; }
usdt:$BIN:evloop:eventer-close-entry { @op[tid] = 4; @all[tid] = 0; }
tracepoint:raw_syscalls:sys_enter /pid == PID && @op[tid] != 0/ { @all[tid]++; }
tracepoint:syscalls:sys_enter_recvfrom,tracepoint:syscalls:sys_enter_recvmsg,tracepoint:syscalls:sys_enter_readv /pid == PID && @op[tid] != 1/ { printf("stray %s\n", probe); }
tracepoint:syscalls:sys_enter_sendto,tracepoint:syscalls:sys_enter_sendmsg,tracepoint:syscalls:sys_enter_writev /pid == PID && @op[tid] != 2/ { printf("stray %s\n", probe); }
tracepoint:syscalls:sys_enter_accept4 /pid == PID && @op[tid] != 3/ { printf("stray accept4\n"); }
tracepoint:syscalls:sys_enter_close /pid == PID && @op[tid] != 4/ { printf("stray close\n"); }
usdt:$BIN:evloop:eventer-read-return { printf("pair read fd=%d rv=%lld all=%d\n", (int32)arg0, (int64)arg5, @all[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-write-return { printf("pair write fd=%d rv=%lld all=%d\n", (int32)arg0, (int64)arg5, @all[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-accept-return { printf("pair accept fd=%d rv=%lld all=%d\n", (int32)arg0, (int64)arg5, @all[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-close-return { printf("pair close fd=%d rv=%lld all=%d\n", (int32)arg2, (int64)arg3, @all[tid]); @op[tid] = 0; }
"#;

/// A probe pair as [`PAIR_SCRIPT`] printed it.
#[derive(Debug)]
struct Pair {
    op: String,
    rv: i64,
    all: u32,
}

fn pairs(lines: &[String]) -> Vec<Pair> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("pair ")?.split_whitespace();
            let op = w.next()?.to_string();
            let field = |w: &mut std::str::SplitWhitespace<'_>, k: &str| -> Option<i64> {
                w.next()?.strip_prefix(k)?.parse().ok()
            };
            let _fd = field(&mut w, "fd=")?;
            let rv = field(&mut w, "rv=")?;
            let all = field(&mut w, "all=")? as u32;
            Some(Pair { op, rv, all })
        })
        .collect()
}

/// Attaches [`PAIR_SCRIPT`] to a server.
fn attach_pairs(server: &Child) -> Bpftrace {
    require_bpftrace();
    let script = PAIR_SCRIPT.replace("PID", &server.pid().to_string());
    Bpftrace::start(&script, server.pid())
}

/// Waits (bounded) until bpftrace printed pairs whose `op` rvs add up to
/// `bytes`: bpftrace drops what it has not printed when it is stopped.
fn wait_for_bytes(bt: &Bpftrace, op: &str, bytes: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen: i64 = pairs(&bt.stdout().all())
            .iter()
            .filter(|p| p.op == op && p.rv > 0)
            .map(|p| p.rv)
            .sum();
        if seen >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "saw {seen} of {bytes} {op} bytes"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// No stray socket syscall, and every pair around exactly one syscall.
fn assert_one_syscall_per_pair(lines: &[String]) {
    let stray: Vec<&String> = lines.iter().filter(|l| l.starts_with("stray")).collect();
    assert!(
        stray.is_empty(),
        "socket syscalls outside probe pairs: {stray:?}"
    );
    let bad: Vec<Pair> = pairs(lines).into_iter().filter(|p| p.all != 1).collect();
    assert!(bad.is_empty(), "pairs not around one syscall: {bad:?}");
}

/// Deterministic bytes.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32.wrapping_mul(seed + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn udp_echo_every_byte_goes_through_the_probes() {
    let server = Child::start("udp-evloop");
    let bt = attach_pairs(&server);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(server.sock_addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let sizes = [1usize, 7, 512, 1400, 9000, 60_000];
    let mut total = 0i64;
    let mut buf = vec![0u8; 65536];
    for (i, &n) in sizes.iter().enumerate().cycle().take(60) {
        let p = payload(i as u32, n);
        client.send(&p).unwrap();
        let got = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], &p[..], "datagram {i}");
        total += n as i64;
    }
    wait_for_bytes(&bt, "write", total);
    let lines = bt.finish();
    let all = pairs(&lines);
    let sum = |op: &str| -> i64 {
        all.iter()
            .filter(|p| p.op == op && p.rv > 0)
            .map(|p| p.rv)
            .sum()
    };
    assert_eq!(
        (sum("read"), sum("write")),
        (total, total),
        "bytes read, written"
    );
    // One datagram per recv and per send.
    assert_eq!(
        all.iter().filter(|p| p.op == "write" && p.rv > 0).count(),
        60
    );
    assert_eq!(
        all.iter().filter(|p| p.op == "read" && p.rv > 0).count(),
        60
    );
    assert_one_syscall_per_pair(&lines);
}

/// A socket path in a fresh directory, removed when dropped.
struct TempSock {
    dir: PathBuf,
}

impl TempSock {
    fn new(name: &str) -> TempSock {
        let dir = std::env::temp_dir().join(format!("evloop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempSock { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("s.sock")
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn unix_echo_every_byte_goes_through_the_probes() {
    let sock = TempSock::new("unix-echo");
    let path = sock.path();
    let server = Child::start(&format!("unix-evloop:{}", path.display()));
    let bt = attach_pairs(&server);

    let sizes = [1usize, 4093, 100_000, 250_007];
    let workers: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let path = path.clone();
            thread::spawn(move || unix_echo(&path, &payload(i as u32 + 50, n)))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total: i64 = sizes.iter().map(|&n| n as i64).sum();
    wait_for_bytes(&bt, "write", total);
    // Every connection closed (a close pair each): only the listener left.
    server.wait_idle();
    let deadline = Instant::now() + WAIT;
    while pairs(&bt.stdout().all())
        .iter()
        .filter(|p| p.op == "close")
        .count()
        < sizes.len()
    {
        assert!(Instant::now() < deadline, "close pairs missing");
        thread::sleep(Duration::from_millis(20));
    }
    let lines = bt.finish();
    let all = pairs(&lines);
    let sum = |op: &str| -> i64 {
        all.iter()
            .filter(|p| p.op == op && p.rv > 0)
            .map(|p| p.rv)
            .sum()
    };
    assert_eq!(
        (sum("read"), sum("write")),
        (total, total),
        "bytes read, written"
    );
    assert_eq!(
        all.iter().filter(|p| p.op == "accept" && p.rv >= 0).count(),
        sizes.len()
    );
    assert_eq!(
        all.iter().filter(|p| p.op == "read" && p.rv == 0).count(),
        sizes.len(),
        "one EOF each"
    );
    assert_one_syscall_per_pair(&lines);
}

/// Sends `p` over a new connection to `path` while reading the echo.
fn unix_echo(path: &Path, p: &[u8]) {
    let mut c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = c.try_clone().unwrap();
    let to_send = p.to_vec();
    let sender = thread::spawn(move || {
        for chunk in to_send.chunks(4093) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    assert_eq!(back, p);
}

#[test]
fn portsnoop_sees_hypers_writev_inside_write_ops_without_mismatch() {
    let server = Child::start("hyper-evloop");
    let out = std::env::temp_dir().join(format!("evloop-writev-{}.json", std::process::id()));
    let pid = server.pid().to_string();
    let snoop = Portsnoop::start(&["-p", &pid, "--json", "-o", out.to_str().unwrap()]);
    let (conns, n) = (2usize, 200usize);
    hello_load(server.sock_addr(), conns, n);
    server.wait_idle();
    // Give portsnoop's reorder window time to pass the last close.
    thread::sleep(Duration::from_millis(500));
    let (status, _, stderr) = snoop.finish();
    assert!(status.success(), "{status}: {stderr:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = records.last().expect("a summary");
    assert_eq!(summary["type"], "summary");
    let mismatched: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "op" && !r["mismatch"].is_null())
        .collect();
    assert_eq!(summary["mismatches"], 0, "{mismatched:#?}");
    assert_eq!(summary["orphan_syscalls"], 0, "{summary}");
    // Every response was one writev, inside a write op whose user rv is the
    // kernel's.
    let writev_ops: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "op" && r["op"] == "write")
        .filter(|r| {
            let calls = r["syscalls"].as_array().unwrap();
            calls.len() == 1 && calls[0]["name"] == "writev" && calls[0]["rv"] == r["user_rv"]
        })
        .collect();
    assert!(
        writev_ops.len() >= conns * n,
        "{} writev ops for {} responses; summary {summary}",
        writev_ops.len(),
        conns * n
    );
}
