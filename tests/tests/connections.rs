//! Who is fd N: portsnoop names each accepted or connected fd's socket
//! (from the kernel, or from /proc for one open before the trace) and
//! follows its TCP states, resets and bytes, attributed to the fd that held
//! the socket last. Real servers (echo-mio, echo-tokio, a probed tokio Unix
//! listener), real clients bound to known source ports, on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{
    bin, json_lines, socket_count, wait_for_sockets, OutputBounded, Portsnoop, Proc, WAIT,
};

use tests::SERVE;

/// A server process and where it listens (`IP:PORT` or a Unix path).
struct Server {
    proc: Proc,
    addr: String,
}

impl Server {
    fn example(name: &str, listen: &str) -> Server {
        let mut cmd = Command::new(bin(name));
        cmd.args(["--listen", listen]);
        Server::spawn(cmd, name)
    }

    /// This test binary as a probed tokio Unix echo server at `path`.
    fn unix(path: &str) -> Server {
        Server::helper(path)
    }

    /// This test binary as the server `mode` names (see `serve_helper`).
    fn helper(mode: &str) -> Server {
        let (proc, addr) = tests::serve_self(mode);
        Server { proc, addr }
    }

    fn spawn(cmd: Command, what: &str) -> Server {
        let proc = Proc::spawn(cmd);
        const MARK: &str = "listening on ";
        let line = proc
            .stdout
            .wait_for(WAIT, |l| l.contains(MARK))
            .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
        let addr = line[line.find(MARK).unwrap() + MARK.len()..]
            .trim()
            .to_string();
        Server { proc, addr }
    }

    fn sock_addr(&self) -> SocketAddr {
        self.addr.parse().expect("IP:PORT")
    }

    fn attach(&self) -> Portsnoop {
        Portsnoop::start(&["-p", &self.proc.pid().to_string(), "--json"])
    }
}

/// A TCP client bound to an ephemeral port of `server`'s loopback address
/// before it connects, so its source port is known: (stream, its address).
fn client(server: SocketAddr) -> (TcpStream, SocketAddr) {
    // SAFETY: plain socket calls on a socket this function owns; the
    // sockaddr structs are zeroed and filled for their family.
    unsafe {
        let fam = if server.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let (mut any, mut peer): (libc::sockaddr_storage, libc::sockaddr_storage) =
            (std::mem::zeroed(), std::mem::zeroed());
        let len = match server {
            SocketAddr::V4(a) => {
                let (l, p) = (
                    &mut *(&mut any as *mut _ as *mut libc::sockaddr_in),
                    &mut *(&mut peer as *mut _ as *mut libc::sockaddr_in),
                );
                for s in [&mut *l, &mut *p] {
                    s.sin_family = libc::AF_INET as u16;
                    s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                }
                p.sin_port = a.port().to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let (l, p) = (
                    &mut *(&mut any as *mut _ as *mut libc::sockaddr_in6),
                    &mut *(&mut peer as *mut _ as *mut libc::sockaddr_in6),
                );
                for s in [&mut *l, &mut *p] {
                    s.sin6_family = libc::AF_INET6 as u16;
                    s.sin6_addr.s6_addr = a.ip().octets();
                }
                p.sin6_port = a.port().to_be();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        } as libc::socklen_t;
        let ok = libc::bind(fd, &any as *const _ as *const libc::sockaddr, len);
        assert_eq!(ok, 0, "bind: {}", std::io::Error::last_os_error());
        let local = stream.local_addr().expect("bound");
        let ok = libc::connect(fd, &peer as *const _ as *const libc::sockaddr, len);
        assert_eq!(ok, 0, "connect: {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(WAIT)).unwrap();
        (stream, local)
    }
}

/// Sends `msg`, reads the echo back.
fn echo(s: &mut (impl Read + Write), msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Closes with SO_LINGER 0: the kernel sends a RST instead of a FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid struct on an open socket.
    let ok = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(ok, 0);
    drop(s);
}

/// Waits (bounded) until portsnoop has written `n` lines matching `pred`.
fn wait_lines(p: &Portsnoop, n: usize, what: &str, pred: impl Fn(&str) -> bool) {
    for i in 0..n {
        p.proc
            .stdout
            .wait_for(WAIT, &pred)
            .unwrap_or_else(|e| panic!("{what} ({} of {n}): {e}", i + 1));
    }
}

fn of_type<'a>(lines: &'a [Value], t: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines.iter().filter(move |v| v["type"] == t)
}

/// The `socket` line whose peer is `peer`.
fn socket_with_peer<'a>(lines: &'a [Value], peer: &str) -> &'a Value {
    of_type(lines, "socket")
        .find(|v| v["peer"] == peer)
        .unwrap_or_else(|| panic!("no socket line with peer {peer}"))
}

/// The summary's connection whose peer is `peer`.
fn connection_with_peer<'a>(summary: &'a Value, peer: &str) -> &'a Value {
    summary["connections"]
        .as_array()
        .expect("the summary's connections")
        .iter()
        .find(|c| c["peer"] == peer)
        .unwrap_or_else(|| panic!("no connection with peer {peer} in the summary"))
}

/// The TCP events of the socket `sk`, in order.
fn tcp_of(lines: &[Value], sk: &Value) -> Vec<(String, i64, String, String)> {
    of_type(lines, "tcp")
        .filter(|v| &v["sk"] == sk)
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["fd"].as_i64().unwrap(),
                v["from"].as_str().unwrap().to_string(),
                v["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Two clients from known ports: one closes, one resets. Each accept op
/// names its exact peer; the closing one's server fd goes ESTABLISHED ->
/// CLOSE_WAIT and on to CLOSE; the reset one's shows reset_received.
fn accepts_name_peers_and_tcp_follows_the_fd(name: &str, listen: &str) {
    let server = Server::example(name, listen);
    let addr = server.sock_addr();
    let idle = socket_count(server.proc.pid());
    let tracer = server.attach();

    let (mut closing, closing_addr) = client(addr);
    echo(&mut closing, b"hello");
    drop(closing);
    let (mut resetting, reset_addr) = client(addr);
    echo(&mut resetting, b"x");
    reset(resetting);

    wait_for_sockets(server.proc.pid(), idle);
    // Both sockets' last state change (LAST_ACK -> CLOSE, ESTABLISHED ->
    // CLOSE) comes after the server's close: wait for them in the output.
    wait_lines(&tracer, 2, "a socket reaching CLOSE", |l| {
        l.contains(r#""type":"tcp""#) && l.contains(r#""to":"CLOSE""#)
    });
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);

    for peer in [closing_addr, reset_addr] {
        let peer = peer.to_string();
        let accept = of_type(&lines, "op")
            .find(|v| v["op"] == "accept" && v["peer"] == peer.as_str())
            .unwrap_or_else(|| panic!("{name}: no accept op with peer {peer}"));
        assert_eq!(accept["local"], server.addr.as_str(), "{name}: {accept}");
        let syscall = of_type(&lines, "syscall")
            .find(|v| v["peer"] == peer.as_str())
            .unwrap_or_else(|| panic!("{name}: no accept syscall line with peer {peer}"));
        assert_eq!(syscall["rv"], accept["user_rv"]);
        assert!(syscall["name"].as_str().unwrap().starts_with("accept"));
    }

    let closed = socket_with_peer(&lines, &closing_addr.to_string());
    let fd = closed["fd"].as_i64().unwrap();
    let events = tcp_of(&lines, &closed["sk"]);
    let states: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.0 == "state")
        .map(|e| (e.2.as_str(), e.3.as_str()))
        .collect();
    assert_eq!(
        states.first(),
        Some(&("ESTABLISHED", "CLOSE_WAIT")),
        "{name}: {events:?}"
    );
    assert_eq!(
        states.last().map(|s| s.1),
        Some("CLOSE"),
        "{name}: {events:?}"
    );
    assert!(
        events.iter().all(|e| e.1 == fd),
        "{name}: every TCP event on the fd that held the socket: {events:?}"
    );

    let reset = socket_with_peer(&lines, &reset_addr.to_string());
    let events = tcp_of(&lines, &reset["sk"]);
    assert!(
        events
            .iter()
            .any(|e| e.0 == "reset_received" && e.1 == reset["fd"].as_i64().unwrap()),
        "{name}: {events:?}"
    );

    let summary = lines.last().unwrap();
    let conn = connection_with_peer(summary, &closing_addr.to_string());
    assert!(conn["states"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "CLOSE_WAIT"));
    // Everything it sent was read and echoed: no difference.
    assert_eq!(conn["bytes"]["not_compared"], Value::Null, "{conn}");
    assert_eq!(conn["bytes"]["ops_read"], 5, "{conn}");
    assert_eq!(conn["bytes"]["kernel_received"], 5, "{conn}");
    assert_eq!(conn["bytes"]["unread"], 0, "{conn}");
    assert_eq!(conn["bytes"]["unacked"], 0, "{conn}");
    let reset_conn = connection_with_peer(summary, &reset_addr.to_string());
    assert_eq!(reset_conn["resets_received"], 1, "{reset_conn}");
    let accepted = summary["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == addr.port().to_string().as_str())
        .expect("the accepted table counts the server's port");
    assert_eq!(accepted["host"], addr.ip().to_string().as_str());
    assert_eq!(accepted["count"], 2);
}

#[test]
fn echo_mio_accepts_name_peers_and_tcp_follows_the_fd() {
    accepts_name_peers_and_tcp_follows_the_fd("echo-mio", "127.0.0.1:0");
}

#[test]
fn echo_tokio_accepts_name_peers_and_tcp_follows_the_fd() {
    accepts_name_peers_and_tcp_follows_the_fd("echo-tokio", "127.0.0.1:0");
}

#[test]
fn ipv6_peers_are_bracketed() {
    accepts_name_peers_and_tcp_follows_the_fd("echo-mio", "[::1]:0");
}

/// A socket accepted before portsnoop attached: named from /proc, and its
/// TCP states still followed (the kernel side knows it by inode).
#[test]
fn a_socket_open_before_attach_is_named_from_proc() {
    let server = Server::example("echo-mio", "127.0.0.1:0");
    let addr = server.sock_addr();
    let (mut early, early_addr) = client(addr);
    echo(&mut early, b"before");
    let idle = socket_count(server.proc.pid()) - 1;
    let tracer = server.attach();
    echo(&mut early, b"after");
    drop(early);
    wait_for_sockets(server.proc.pid(), idle);
    wait_lines(&tracer, 1, "the early socket reaching CLOSE", |l| {
        l.contains(r#""type":"tcp""#) && l.contains(r#""to":"CLOSE""#)
    });
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);
    let sock = socket_with_peer(&lines, &early_addr.to_string());
    assert_eq!(sock["origin"], "before_trace");
    assert_eq!(sock["local"], server.addr.as_str());
    let fd = sock["fd"].as_i64().unwrap();
    let states: Vec<_> = of_type(&lines, "tcp")
        .filter(|v| v["fd"] == fd && v["event"] == "state")
        .map(|v| format!("{} -> {}", v["from"], v["to"]))
        .collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some(r#""ESTABLISHED" -> "CLOSE_WAIT""#),
        "{states:?}"
    );
    let summary = lines.last().unwrap();
    assert_eq!(
        summary["fd_connections"][fd.to_string()],
        format!("tcp {} <-> {early_addr}", server.addr).as_str()
    );
    let conn = summary["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["fd"] == fd && c["origin"] == "before_trace")
        .expect("its connection");
    assert_eq!(conn["bytes"]["not_compared"], "opened before the trace");
}

/// A Unix stream socket: the accepted fd is named by the listener's path.
#[test]
fn unix_sockets_are_named_by_path() {
    let path = unix_path();
    let server = Server::unix(path.to_str().unwrap());
    let idle = socket_count(server.proc.pid());
    let tracer = server.attach();
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    echo(&mut c, b"unix");
    drop(c);
    wait_for_sockets(server.proc.pid(), idle);
    // The accept's op comes with its return probe, before the echo's rows.
    wait_lines(&tracer, 1, "the accept op", |l| {
        l.contains(r#""op":"accept""#) && l.contains(r#""peer":"unnamed""#)
    });
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);
    let sock = of_type(&lines, "socket")
        .find(|v| v["family"] == "unix" && v["origin"] == "accept")
        .expect("an accepted unix socket's line");
    assert_eq!(sock["local"], path.to_str().unwrap());
    assert_eq!(sock["peer"], "unnamed");
    let accept = of_type(&lines, "op")
        .find(|v| v["op"] == "accept" && v["user_rv"] == sock["fd"])
        .expect("its accept op");
    assert_eq!(accept["local"], path.to_str().unwrap());
    let _ = std::fs::remove_file(&path);
}

fn unix_path() -> PathBuf {
    unix_path_named("conn")
}

/// A socket path of this test process's, `what` telling the tests apart
/// (they run in parallel).
fn unix_path_named(what: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("evloop-{what}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Not a test: the Unix echo server of [`unix_sockets_are_named_by_path`],
/// run in a child process when [`SERVE`] names a path.
#[test]
fn serve_helper() {
    let Ok(mode) = std::env::var(SERVE) else {
        return;
    };
    if mode == NOREAD {
        return serve_without_reading();
    }
    if let Some(path) = mode.strip_prefix(HOLD_UNIX) {
        return hold_unix_sockets(path);
    }
    let path = mode;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use eventloop_probes::tokio as evloop;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = evloop::UnixListener::bind(&path).unwrap();
        println!("listening on {path}");
        std::io::stdout().flush().unwrap();
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Bounded: the test waits for this close.
                let _ = tokio::time::timeout(Duration::from_secs(5), c.shutdown()).await;
            });
        }
    });
}

/// A client's connect (non-blocking: `EINPROGRESS`) names its peer, and its
/// socket's SYN_SENT -> ESTABLISHED, which happen before connect returns,
/// are on its fd.
#[test]
fn connect_names_its_peer_and_its_handshake() {
    let server = Server::example("echo-mio", "127.0.0.1:0");
    let tracer = Portsnoop::start(&[
        "--json",
        "--",
        bin("echo-load").to_str().unwrap(),
        "--addr",
        &server.addr,
        "--conns",
        "1",
        "--msgs",
        "3",
    ]);
    let traced = tracer.traced_pid();
    // The session ends with echo-load.
    let deadline = std::time::Instant::now() + WAIT;
    while !tests::is_gone(traced) {
        assert!(
            std::time::Instant::now() < deadline,
            "echo-load still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);
    let connect = of_type(&lines, "syscall")
        .find(|v| v["name"] == "connect" && v["peer"] == server.addr.as_str())
        .unwrap_or_else(|| panic!("no connect line with peer {}", server.addr));
    assert!(
        connect["rv"] == 0 || connect["rv"] == -libc::EINPROGRESS,
        "{connect}"
    );
    let local: SocketAddr = connect["local"].as_str().unwrap().parse().unwrap();
    assert_eq!(local.ip(), server.sock_addr().ip());
    assert_ne!(local.port(), 0);
    let sock = socket_with_peer(&lines, &server.addr);
    assert_eq!(sock["origin"], "connect");
    assert_eq!(sock["fd"], connect["fd"]);
    let events = tcp_of(&lines, &sock["sk"]);
    assert!(
        events.iter().any(|e| e.2 == "SYN_SENT"
            && e.3 == "ESTABLISHED"
            && e.1 == sock["fd"].as_i64().unwrap()),
        "{events:?}"
    );
}

/// The `serve_helper` mode of [`serve_without_reading`].
const NOREAD: &str = "tcp-noread";

/// [`SERVE`]'s prefix for [`hold_unix_sockets`], the path after it.
const HOLD_UNIX: &str = "hold-unix:";

/// A process holding a Unix stream connected to the listener at `path`
/// and a socketpair, printing `listening on CLIENT PAIR_A PAIR_B` (their
/// fds), then idle until killed (bounded: a minute).
fn hold_unix_sockets(path: &str) {
    let client = UnixStream::connect(path).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    use std::os::fd::AsRawFd;
    println!(
        "listening on {} {} {}",
        client.as_raw_fd(),
        a.as_raw_fd(),
        b.as_raw_fd()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Unix sockets open before portsnoop attaches are named with their peers
/// (sock_diag), which `/proc/net/unix` does not give: a client connected
/// to a path has that path as peer, a socketpair's ends each other's fd.
#[test]
fn unix_peers_open_before_attach_are_named() {
    let path = unix_path_named("held");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let holder = Server::helper(&format!("{HOLD_UNIX}{}", path.display()));
    let (_accepted, _) = listener.accept().unwrap();
    let fds: Vec<i64> = holder
        .addr
        .split_whitespace()
        .map(|f| f.parse().expect("an fd"))
        .collect();
    let [client, a, b] = fds[..] else {
        panic!("three fds: {:?}", holder.addr)
    };
    let tracer = holder.attach();
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let _ = std::fs::remove_file(&path);
    let lines = json_lines(&out);
    let peer_of = |fd: i64| {
        of_type(&lines, "socket")
            .find(|v| v["fd"] == fd && v["origin"] == "before_trace")
            .unwrap_or_else(|| panic!("no socket line for fd {fd}"))["peer"]
            .clone()
    };
    let path = path.to_str().unwrap();
    assert_eq!(peer_of(client), path);
    assert_eq!(peer_of(a), format!("fd {b}").as_str());
    assert_eq!(peer_of(b), format!("fd {a}").as_str());
    let named = &lines.last().unwrap()["fd_connections"];
    assert_eq!(
        named[client.to_string()],
        format!("unix-stream unnamed <-> {path}").as_str()
    );
    assert_eq!(
        named[a.to_string()],
        format!("unix-stream unnamed <-> fd {b}").as_str()
    );
}

/// A probed tokio TCP server that accepts, reads nothing, and closes each
/// connection 300 ms later: the kernel received data the app never read
/// (and, closing with it unread, sends a reset).
fn serve_without_reading() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use eventloop_probes::tokio as evloop;
        let l = evloop::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", l.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(c);
            });
        }
    });
}

/// Data the kernel received and the app never read is a difference in the
/// summary's bytes, not a mismatch; closing with it unread sends a reset,
/// which is on the server's fd.
#[test]
fn unread_bytes_are_a_difference_and_a_reset_sent() {
    let server = Server::helper(NOREAD);
    let addr = server.sock_addr();
    let tracer = server.attach();
    let (mut c, local) = client(addr);
    c.write_all(&[7u8; 100]).unwrap();
    // The server closes after 300 ms: a reset, since it read nothing.
    let mut buf = [0u8; 16];
    let _ = c.read(&mut buf);
    wait_lines(&tracer, 1, "the server's socket reaching CLOSE", |l| {
        l.contains(r#""type":"tcp""#) && l.contains(r#""to":"CLOSE""#)
    });
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);
    let sock = socket_with_peer(&lines, &local.to_string());
    let events = tcp_of(&lines, &sock["sk"]);
    assert!(
        events
            .iter()
            .any(|e| e.0 == "reset_sent" && e.1 == sock["fd"].as_i64().unwrap()),
        "{events:?}"
    );
    let summary = lines.last().unwrap();
    let conn = connection_with_peer(summary, &local.to_string());
    let b = &conn["bytes"];
    assert_eq!(b["not_compared"], Value::Null, "{conn}");
    assert_eq!(
        (&b["ops_read"], &b["kernel_received"]),
        (&0.into(), &100.into()),
        "{conn}"
    );
    assert_eq!(b["unread"], 100, "{conn}");
    assert_eq!(conn["resets_sent"], 1, "{conn}");
    assert_eq!(
        summary["mismatches"], 0,
        "a difference is no mismatch: {summary}"
    );
}

/// A connection's TCP state changes, recorded with `--json=FILE` beside a
/// Perfetto trace: the recording replays byte for byte with its socket and
/// tcp lines, and the trace marks each state change on the process's track
/// under its fd.
#[test]
fn tcp_state_replays_and_is_marked_in_perfetto() {
    let dir = tests::scratch_dir("connections-perfetto");
    let (rec, trace) = (dir.join("rec.jsonl"), dir.join("trace.pftrace"));
    let server = Server::example("echo-mio", "127.0.0.1:0");
    let idle = socket_count(server.proc.pid());
    let tracer = Portsnoop::start(&[
        "-p",
        &server.proc.pid().to_string(),
        "-q",
        &format!("--json={}", rec.display()),
        "--perfetto",
        trace.to_str().unwrap(),
    ]);
    let (mut conn, _) = client(server.sock_addr());
    echo(&mut conn, b"hello");
    drop(conn);
    wait_for_sockets(server.proc.pid(), idle);
    // The last change (LAST_ACK -> CLOSE) comes after the server's close.
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&rec)
        .unwrap_or_default()
        .contains(r#""to":"CLOSE""#)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket reached CLOSE"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, _, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");

    let replayed = Command::new(bin("portsnoop"))
        .args(["replay", rec.to_str().unwrap(), "--json"])
        .output_bounded()
        .expect("running portsnoop replay");
    assert!(
        replayed.status.success() && replayed.stdout == std::fs::read(&rec).unwrap(),
        "replay --json differs from the recording: {}",
        String::from_utf8_lossy(&replayed.stderr)
    );

    let lines = tests::json_file(&rec);
    let states: Vec<String> = of_type(&lines, "tcp")
        .filter(|t| t["event"] == "state")
        .map(|t| {
            format!(
                "tcp {} {} -> {}",
                t["fd"],
                t["from"].as_str().unwrap(),
                t["to"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        states
            .iter()
            .any(|s| s.ends_with("ESTABLISHED -> CLOSE_WAIT")),
        "{states:?}"
    );
    let nesting = tests::perfetto_nesting(&trace);
    assert_eq!(nesting["errors"], serde_json::json!([]), "{nesting}");
    let marks: Vec<&str> = nesting["instants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["tid"].is_null() && i["pid"] == server.proc.pid())
        .filter_map(|i| i["name"].as_str())
        .filter(|n| n.starts_with("tcp "))
        .collect();
    assert_eq!(marks, states, "{nesting}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A listener on an ephemeral loopback port whose accept queue holds one
/// connection (`listen(fd, 0)`): once one waits there unaccepted, the
/// kernel drops the next SYN, and its sender retransmits it.
fn listener_of_one() -> (std::net::TcpListener, SocketAddr) {
    // SAFETY: plain socket calls on a socket this function owns; the
    // sockaddr is zeroed and filled for AF_INET.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let ok = libc::bind(fd, &sin as *const _ as *const libc::sockaddr, len);
        assert_eq!(ok, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }
}

/// A connect whose SYN the peer dropped (its accept queue full) is
/// retransmitted by the kernel a second later: the `retransmit` is on the
/// connecting fd, in SYN_SENT, and counted in the summary's connection.
#[test]
fn a_dropped_syn_is_a_retransmit_on_the_connecting_fd() {
    let (listener, addr) = listener_of_one();
    let filler = TcpStream::connect(addr).expect("the queue's one connection");
    let tracer = Portsnoop::start(&[
        "--json",
        "--",
        bin("echo-load").to_str().unwrap(),
        "--addr",
        &addr.to_string(),
        "--conns",
        "1",
        "--msgs",
        "0",
        "--timeout",
        "20",
    ]);
    let traced = tracer.traced_pid();
    wait_lines(&tracer, 1, "a retransmit", |l| {
        l.contains(r#""type":"tcp""#) && l.contains(r#""event":"retransmit""#)
    });
    // Room in the queue: the next retransmitted SYN (3 s after the first
    // send) is answered, and echo-load, with no messages to send, is done.
    let (accepted, _) = listener.accept().expect("the filler");
    let deadline = std::time::Instant::now() + WAIT;
    while !tests::is_gone(traced) {
        assert!(
            std::time::Instant::now() < deadline,
            "echo-load still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((accepted, filler, listener));
    let (status, out, err) = tracer.finish();
    assert!(status.success(), "portsnoop failed: {err:?}");
    let lines = json_lines(&out);
    let sock = socket_with_peer(&lines, &addr.to_string());
    assert_eq!(sock["origin"], "connect");
    let fd = sock["fd"].as_i64().unwrap();
    let events = tcp_of(&lines, &sock["sk"]);
    assert!(
        events
            .iter()
            .any(|e| e.0 == "retransmit" && e.1 == fd && e.2 == "SYN_SENT"),
        "{events:?}"
    );
    let summary = lines.last().unwrap();
    let conn = connection_with_peer(summary, &addr.to_string());
    assert!(conn["retransmits"].as_u64().unwrap() >= 1, "{conn}");
}
