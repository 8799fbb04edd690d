//! echo-tokio end to end: real server, real loopback clients, real bpftrace
//! on the evloop probes of `eventloop_probes::tokio`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tests::{bin, require_bpftrace, Bpftrace, OutputBounded, Server, WAIT};

const EAGAIN: i64 = -(libc::EAGAIN as i64);

/// One line per probe fire, `key=value` separated by spaces; `BEGIN` says
/// when every probe is attached. Signed arguments are cast so `-11` prints
/// as -11.
const SCRIPT: &str = r#"
BEGIN { printf("ready\n"); }
usdt:$BIN:evloop:eventer-accept-entry { printf("accept-entry ts=%llu tid=%d fd=%d closure=%llu\n", nsecs, tid, (int32)arg0, arg4); }
usdt:$BIN:evloop:eventer-accept-return { printf("accept-return ts=%llu tid=%d fd=%d closure=%llu rv=%lld\n", nsecs, tid, (int32)arg0, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-read-entry { printf("read-entry ts=%llu tid=%d fd=%d closure=%llu len=%llu\n", nsecs, tid, (int32)arg0, arg4, arg2); }
usdt:$BIN:evloop:eventer-read-return { printf("read-return ts=%llu tid=%d fd=%d closure=%llu rv=%lld\n", nsecs, tid, (int32)arg0, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-write-entry { printf("write-entry ts=%llu tid=%d fd=%d closure=%llu len=%llu\n", nsecs, tid, (int32)arg0, arg4, arg2); }
usdt:$BIN:evloop:eventer-write-return { printf("write-return ts=%llu tid=%d fd=%d closure=%llu rv=%lld\n", nsecs, tid, (int32)arg0, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-close-entry { printf("close-entry ts=%llu tid=%d fd=%d closure=%llu\n", nsecs, tid, (int32)arg0, arg2); }
usdt:$BIN:evloop:eventer-close-return { printf("close-return ts=%llu tid=%d fd=%d closure=%llu rv=%lld\n", nsecs, tid, (int32)arg0, arg2, (int64)arg3); }
usdt:$BIN:evloop:eventer-callback-entry { printf("callback-entry ts=%llu tid=%d closure=%llu name=%s fd=%d\n", nsecs, tid, arg0, str(arg2), (int32)arg3); }
usdt:$BIN:evloop:eventer-callback-return { printf("callback-return ts=%llu tid=%d closure=%llu name=%s rv=%d\n", nsecs, tid, arg0, str(arg2), (int32)arg3); }
"#;

/// One probe fire as the script printed it.
#[derive(Clone, Debug, Default)]
struct Fire {
    probe: String,
    ts: u64,
    tid: u32,
    fd: i32,
    closure: u64,
    rv: i64,
    name: String,
}

fn parse(lines: &[String]) -> Vec<Fire> {
    let mut fires: Vec<Fire> = lines
        .iter()
        .filter(|l| l.contains("-entry ") || l.contains("-return "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let mut fire = Fire {
                probe: words.next().unwrap().to_string(),
                ..Fire::default()
            };
            for kv in words {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad line {l:?}"));
                match k {
                    "ts" => fire.ts = num(v, l),
                    "tid" => fire.tid = num(v, l),
                    "fd" => fire.fd = num(v, l),
                    "closure" => fire.closure = num(v, l),
                    "rv" => fire.rv = num(v, l),
                    "name" => fire.name = v.to_string(),
                    _ => {}
                }
            }
            fire
        })
        .collect();
    // bpftrace prints per-CPU buffers in turn, not in time order.
    fires.sort_by_key(|f| f.ts);
    fires
}

fn num<T: std::str::FromStr>(v: &str, line: &str) -> T
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .unwrap_or_else(|e| panic!("{v:?} in {line:?}: {e}"))
}

/// Attaches the script to the server and waits until every probe is live.
fn attach(server: &Server) -> Bpftrace {
    require_bpftrace();
    let bt = Bpftrace::start(SCRIPT, server.pid());
    bt.stdout()
        .wait_for(WAIT, |l| l == "ready")
        .unwrap_or_else(|e| panic!("bpftrace never ran BEGIN: {e}"));
    bt
}

/// Waits until bpftrace printed `n` lines for which `pred` holds.
fn wait_for_count(bt: &Bpftrace, n: usize, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = bt.stdout().all().iter().filter(|l| pred(l)).count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "saw {seen} of {n} {what} within {WAIT:?}; output:\n{}",
            bt.stdout().all().join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until bpftrace printed the end of `n` connections: each task ends
/// by closing its fd and returning Ready. bpftrace drops what it has not
/// printed when it is stopped, so stopping earlier would lose events.
fn wait_for_session_end(bt: &Bpftrace, n: usize) {
    wait_for_count(bt, n, "closes", |l| l.starts_with("close-return "));
    wait_for_count(bt, n, "finished echo tasks", |l| {
        l.starts_with("callback-return ") && l.contains(" name=echo ") && l.ends_with(" rv=0")
    });
}

/// Deterministic bytes, different per connection.
fn payload(conn: usize, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32.wrapping_mul(conn as u32 + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends each payload on its own connection while reading the echo, then
/// closes the sending side and reads to EOF; returns what came back.
///
/// All connections are open, and have echoed their first byte, before the
/// rest is sent, so the server holds them all at once and their fds are
/// distinct for the whole session.
fn echo_session(addr: SocketAddr, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let conns: Vec<TcpStream> = payloads
        .iter()
        .map(|p| {
            let mut c = TcpStream::connect(addr).expect("connecting");
            c.set_read_timeout(Some(WAIT)).unwrap();
            c.set_write_timeout(Some(WAIT)).unwrap();
            c.write_all(&p[..1]).unwrap();
            let mut first = [0u8; 1];
            c.read_exact(&mut first).expect("first byte echoed");
            assert_eq!(first[0], p[0]);
            c
        })
        .collect();
    let workers: Vec<_> = conns
        .into_iter()
        .zip(payloads.iter().cloned())
        .map(|(conn, p)| {
            let mut writer = conn.try_clone().unwrap();
            let first = p[0];
            let sender = thread::spawn(move || {
                // Odd chunk sizes so reads and writes do not line up.
                for chunk in p[1..].chunks(4093) {
                    writer.write_all(chunk).expect("sending");
                }
                writer.shutdown(Shutdown::Write).unwrap();
            });
            thread::spawn(move || {
                let mut conn = conn;
                let mut back = vec![first];
                conn.read_to_end(&mut back).expect("reading the echo");
                sender.join().unwrap();
                back
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

fn sizes() -> Vec<usize> {
    vec![1, 4093, 100_000, 250_007]
}

#[test]
fn probes_see_every_accept_byte_eagain_close_and_task_poll() {
    let server = Server::start("echo-tokio", &[]);
    let bt = attach(&server);

    let payloads: Vec<Vec<u8>> = sizes()
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(i, n))
        .collect();
    let echoed = echo_session(server.addr, &payloads);
    assert_eq!(echoed, payloads, "echo differs");

    let n = payloads.len();
    wait_for_session_end(&bt, n);
    let lines = bt.finish();
    assert!(
        !lines.iter().any(|l| l.contains("Lost")),
        "bpftrace lost events:\n{}",
        lines.join("\n")
    );
    let fires = parse(&lines);
    let of = |probe: &'static str| fires.iter().filter(move |f| f.probe == probe);

    // Every entry has its return, on the same thread, with nothing of the
    // same kind in between: each probe pair brackets one attempt.
    let mut open: BTreeMap<(u32, String), &Fire> = BTreeMap::new();
    for f in &fires {
        let (kind, is_entry) = match f.probe.rsplit_once('-') {
            Some((kind, "entry")) => (kind.to_string(), true),
            Some((kind, _)) => (kind.to_string(), false),
            None => unreachable!(),
        };
        let key = (f.tid, kind);
        if is_entry {
            if let Some(prev) = open.insert(key, f) {
                panic!("{prev:?} has no return before {f:?}");
            }
        } else {
            let entry = open
                .remove(&key)
                .unwrap_or_else(|| panic!("{f:?} has no entry"));
            assert_eq!(entry.closure, f.closure, "{entry:?} vs {f:?}");
            // callback-return carries no fd.
            if !f.probe.starts_with("callback") {
                assert_eq!(entry.fd, f.fd, "{entry:?} vs {f:?}");
            }
        }
    }
    assert!(open.is_empty(), "entries without returns: {open:?}");

    // One accept per connection; its rv is the fd the data is read from.
    let accepted: Vec<i32> = of("accept-return")
        .filter(|f| f.rv >= 0)
        .map(|f| f.rv as i32)
        .collect();
    assert_eq!(accepted.len(), n, "accepts: {accepted:?}");
    let conn_fds: BTreeSet<i32> = accepted.iter().copied().collect();
    assert_eq!(conn_fds.len(), n, "fds reused: {accepted:?}");
    let listen_fd = of("accept-return").next().unwrap().fd;
    assert!(!conn_fds.contains(&listen_fd));
    assert!(
        of("accept-return").any(|f| f.rv == EAGAIN),
        "no accept came back EAGAIN"
    );

    // Bytes read and written per fd are what each connection sent, and
    // each fd reads EOF (0) exactly once.
    let mut read_bytes: BTreeMap<i32, i64> = BTreeMap::new();
    let mut written: BTreeMap<i32, i64> = BTreeMap::new();
    for f in of("read-return").filter(|f| f.rv > 0) {
        *read_bytes.entry(f.fd).or_default() += f.rv;
    }
    for f in of("write-return").filter(|f| f.rv > 0) {
        *written.entry(f.fd).or_default() += f.rv;
    }
    let mut want: Vec<i64> = sizes().iter().map(|&n| n as i64).collect();
    want.sort();
    let sorted = |m: &BTreeMap<i32, i64>| {
        assert_eq!(
            m.keys().copied().collect::<BTreeSet<_>>(),
            conn_fds,
            "{m:?}"
        );
        let mut v: Vec<i64> = m.values().copied().collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&read_bytes), want, "bytes read per fd");
    assert_eq!(sorted(&written), want, "bytes written per fd");
    for fd in &conn_fds {
        let eofs = of("read-return")
            .filter(|f| f.fd == *fd && f.rv == 0)
            .count();
        assert_eq!(eofs, 1, "EOF reads on fd {fd}");
    }
    // No read EAGAIN is required: like tokio's, the sockets try a read
    // again only after one that filled the buffer or a new epoll event, so
    // a read says EAGAIN only in those cases (the unit tests pin the rule,
    // tokio_sockets.rs the syscall counts); accepts above show EAGAIN.
    assert!(
        of("read-return")
            .chain(of("write-return"))
            .all(|f| f.rv >= 0 || f.rv == EAGAIN),
        "an I/O error in an echo"
    );

    // One close per connection, rv 0, and none of them before its last read.
    let closes: Vec<&Fire> = of("close-return").collect();
    assert_eq!(
        closes.iter().map(|f| f.fd).collect::<BTreeSet<_>>(),
        conn_fds,
        "closes: {closes:?}"
    );
    assert_eq!(closes.len(), n);
    assert!(closes.iter().all(|f| f.rv == 0), "{closes:?}");

    // Each connection is one task named echo: its polls carry the fd, its
    // I/O and close carry its id, and only its last poll returns 0 (Ready).
    let task_of_fd: BTreeMap<i32, u64> = of("callback-entry")
        .filter(|f| f.name == "echo")
        .map(|f| (f.fd, f.closure))
        .collect();
    assert_eq!(
        task_of_fd.keys().copied().collect::<BTreeSet<_>>(),
        conn_fds
    );
    for (fd, task) in &task_of_fd {
        assert!(
            of("callback-entry").all(|f| f.closure != *task || (f.name == "echo" && f.fd == *fd)),
            "task {task} seen under another name or fd"
        );
        let io = fires.iter().filter(|f| {
            f.fd == *fd && !f.probe.starts_with("callback") && !f.probe.starts_with("accept")
        });
        for f in io {
            assert_eq!(f.closure, *task, "{f:?} not inside task {task}");
        }
        let rvs: Vec<i64> = of("callback-return")
            .filter(|f| f.closure == *task)
            .map(|f| f.rv)
            .collect();
        let (last, before) = rvs.split_last().expect("task polled");
        assert_eq!(*last, 0, "task {task} polls: {rvs:?}");
        assert!(
            before.iter().all(|&rv| rv == 1),
            "task {task} polls: {rvs:?}"
        );
        let close = closes.iter().find(|f| f.fd == *fd).unwrap();
        let last_read = of("read-return").rfind(|f| f.fd == *fd).unwrap();
        assert!(last_read.ts < close.ts);
    }

    // Accepts happen inside the task named accept.
    let accept_task: BTreeSet<u64> = of("accept-return").map(|f| f.closure).collect();
    assert_eq!(accept_task.len(), 1);
    let accept_task = *accept_task.iter().next().unwrap();
    assert!(
        of("callback-entry").any(|f| f.closure == accept_task && f.name == "accept" && f.fd == -1)
    );
    assert!(!task_of_fd.values().any(|&t| t == accept_task));

    let (status, _, _) = server.proc.stop(libc::SIGINT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn echoes_are_identical_with_and_without_bpftrace() {
    let server = Server::start("echo-tokio", &[]);
    let payloads: Vec<Vec<u8>> = [3usize, 70_000, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(i + 10, n))
        .collect();

    let untraced = echo_session(server.addr, &payloads);
    let bt = attach(&server);
    let traced = echo_session(server.addr, &payloads);
    wait_for_session_end(&bt, payloads.len());
    let lines = bt.finish();

    assert_eq!(untraced, payloads);
    assert_eq!(traced, untraced);
    // The traced run really was traced.
    let reads: i64 = parse(&lines)
        .iter()
        .filter(|f| f.probe == "read-return" && f.rv > 0)
        .map(|f| f.rv)
        .sum();
    assert_eq!(reads as usize, payloads.iter().map(Vec::len).sum::<usize>());

    let (status, _, _) = server.proc.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_and_sigterm_exit_zero_even_with_a_connection_open() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let server = Server::start("echo-tokio", &[]);
        let mut conn = TcpStream::connect(server.addr).unwrap();
        // Open while the signal arrives: the server must not wait for it.
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");

        let (status, stdout, stderr) = server.proc.stop(sig);
        assert_eq!(status.code(), Some(0), "signal {sig}; stderr: {stderr:?}");
        assert_eq!(stdout.len(), 1, "only the listening line: {stdout:?}");
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    for args in [
        &[][..],
        &["--listen"],
        &["--listen", "not-an-address"],
        &["--port", "1"],
    ] {
        let out = Command::new(bin("echo-tokio"))
            .args(args)
            .output_bounded()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "args {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("usage: echo-tokio --listen ADDR"),
            "args {args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "args {args:?}");
    }
}

/// Counts, for every probe pair, the syscalls the thread made between entry
/// and return (all of them, and the one the op should be); any
/// recvfrom/sendto/accept4/close of the server outside a pair is stray.
const ONE_SYSCALL_SCRIPT: &str = r#"
BEGIN { printf("ready\n"); }
usdt:$BIN:evloop:eventer-read-entry { @op[tid] = 1; @all[tid] = 0; @want[tid] = 0; }
usdt:$BIN:evloop:eventer-write-entry { @op[tid] = 2; @all[tid] = 0; @want[tid] = 0; }
usdt:$BIN:evloop:eventer-accept-entry { @op[tid] = 3; @all[tid] = 0; @want[tid] = 0; }
usdt:$BIN:evloop:eventer-close-entry { @op[tid] = 4; @all[tid] = 0; @want[tid] = 0; }
tracepoint:raw_syscalls:sys_enter /pid == PID && @op[tid] != 0/ { @all[tid]++; }
tracepoint:syscalls:sys_enter_recvfrom /pid == PID/ { if (@op[tid] == 1) { @want[tid]++; } else { printf("stray recvfrom\n"); } }
tracepoint:syscalls:sys_enter_sendto /pid == PID/ { if (@op[tid] == 2) { @want[tid]++; } else { printf("stray sendto\n"); } }
tracepoint:syscalls:sys_enter_accept4 /pid == PID/ { if (@op[tid] == 3) { @want[tid]++; } else { printf("stray accept4\n"); } }
tracepoint:syscalls:sys_enter_close /pid == PID/ { if (@op[tid] == 4) { @want[tid]++; } else { printf("stray close\n"); } }
usdt:$BIN:evloop:eventer-read-return { printf("pair read all=%d want=%d\n", @all[tid], @want[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-write-return { printf("pair write all=%d want=%d\n", @all[tid], @want[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-accept-return { printf("pair accept all=%d want=%d\n", @all[tid], @want[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-close-return { printf("pair close all=%d want=%d\n", @all[tid], @want[tid]); @op[tid] = 0; }
usdt:$BIN:evloop:eventer-callback-return /str(arg2) == "echo" && arg3 == 0/ { printf("echo task done\n"); }
"#;

#[test]
fn each_probe_pair_brackets_exactly_one_syscall() {
    let server = Server::start("echo-tokio", &[]);
    require_bpftrace();
    let script = ONE_SYSCALL_SCRIPT.replace("PID", &server.pid().to_string());
    let bt = Bpftrace::start(&script, server.pid());
    bt.stdout()
        .wait_for(WAIT, |l| l == "ready")
        .unwrap_or_else(|e| panic!("bpftrace never ran BEGIN: {e}"));

    let payloads: Vec<Vec<u8>> = [50_000usize, 9]
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(i + 20, n))
        .collect();
    assert_eq!(echo_session(server.addr, &payloads), payloads);
    wait_for_count(&bt, payloads.len(), "finished echo tasks", |l| {
        l == "echo task done"
    });
    let lines = bt.finish();

    let stray: Vec<&String> = lines.iter().filter(|l| l.starts_with("stray")).collect();
    assert!(stray.is_empty(), "syscalls outside probe pairs: {stray:?}");
    for op in ["read", "write", "accept", "close"] {
        let pairs: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("pair {op} ")))
            .collect();
        assert!(!pairs.is_empty(), "no {op} pairs:\n{}", lines.join("\n"));
        for p in pairs {
            assert!(p.ends_with(" all=1 want=1"), "{p}");
        }
    }
}
