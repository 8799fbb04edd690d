//! The mio examples end to end: echo-mio under real load with real
//! bpftrace attached, the plain baseline, the probes-off build, the custom
//! provider example, and the servers' command-line behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Command;

use portsnoop::list::probes_in;
use tests::{bin, noprobes_bin, run_load, Bpftrace, OutputBounded, Server, WAIT};

/// One line per probe fire, `name fd rv ...`.
const ECHO_SCRIPT: &str = r#"
usdt:$BIN:evloop:eventer-accept-return { printf("accept %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-read-return { printf("read %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-write-return { printf("write %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-close-entry { printf("close-entry %d\n", arg0); }
usdt:$BIN:evloop:eventer-close-return { printf("close-return %d %ld\n", arg0, (int64)arg3); }
usdt:$BIN:evloop:eventer-callback-entry { printf("cb-entry %lu %s\n", arg0, str(arg2)); }
usdt:$BIN:evloop:eventer-callback-return { printf("cb-return %lu %s %d\n", arg0, str(arg2), arg3); }
"#;

#[test]
fn echo_mio_fires_every_probe_with_the_values_the_kernel_saw() {
    tests::require_bpftrace();
    let (conns, msgs, size) = (4u32, 50u32, 100u32);
    let server = Server::start("echo-mio", &[]);
    let bt = Bpftrace::start(ECHO_SCRIPT, server.pid());
    let load = run_load(server.addr, conns, msgs, size);
    assert_eq!(load.bytes, u64::from(conns * msgs * size));
    // The server closes after the client does; wait for the last close.
    let closes = || {
        bt.stdout()
            .all()
            .iter()
            .filter(|l| l.starts_with("close-return "))
            .count()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while closes() < conns as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "closes seen: {}",
            closes()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines = bt.finish();
    let fields = |l: &String| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut accepted = Vec::new();
    let mut read: BTreeMap<i64, u64> = BTreeMap::new();
    let mut written: BTreeMap<i64, u64> = BTreeMap::new();
    let (mut eagain, mut close_entries, mut close_ok) = (0, BTreeSet::new(), BTreeSet::new());
    let (mut cb_entries, mut cb_returns, mut names) = (0, 0, BTreeSet::new());
    for l in &lines {
        let f = fields(l);
        let num = |i: usize| f[i].parse::<i64>().unwrap();
        match f.first().map(String::as_str) {
            Some("accept") if num(2) >= 0 => accepted.push(num(2)),
            Some("read") if num(2) > 0 => *read.entry(num(1)).or_default() += num(2) as u64,
            Some("read") if num(2) == -11 => eagain += 1,
            Some("write") if num(2) > 0 => *written.entry(num(1)).or_default() += num(2) as u64,
            Some("close-entry") => {
                close_entries.insert(num(1));
            }
            Some("close-return") if num(2) == 0 => {
                close_ok.insert(num(1));
            }
            Some("cb-entry") => {
                cb_entries += 1;
                names.insert(f[2].clone());
            }
            Some("cb-return") => cb_returns += 1,
            _ => {}
        }
    }
    assert_eq!(
        accepted.len(),
        conns as usize,
        "one accept per connection: {accepted:?}"
    );
    let accepted: BTreeSet<i64> = accepted.into_iter().collect();
    assert_eq!(
        accepted.len(),
        conns as usize,
        "distinct fds while all are open"
    );
    for fd in &accepted {
        assert_eq!(
            read.get(fd),
            Some(&u64::from(msgs * size)),
            "bytes read on fd {fd}"
        );
        assert_eq!(
            written.get(fd),
            Some(&u64::from(msgs * size)),
            "bytes echoed on fd {fd}"
        );
    }
    assert_eq!(
        read.keys().copied().collect::<BTreeSet<_>>(),
        accepted,
        "reads only on accepted fds"
    );
    assert_eq!(close_entries, accepted, "close-entry once per connection");
    assert_eq!(close_ok, accepted, "close-return 0 once per connection");
    assert!(eagain > 0, "EAGAIN returns are seen as -11");
    assert!(
        cb_entries > 0 && cb_entries == cb_returns,
        "callbacks balanced: {cb_entries} vs {cb_returns}"
    );
    assert_eq!(
        names,
        BTreeSet::from(["accept".to_string(), "echo".to_string()])
    );
}

#[test]
fn echoes_are_identical_with_and_without_every_probe_traced() {
    tests::require_bpftrace();
    let server = Server::start("echo-mio", &[]);
    let untraced = run_load(server.addr, 8, 200, 256);
    let bt = Bpftrace::start("usdt:$BIN:evloop:* { @[probe] = count(); }", server.pid());
    // run_load fails the test on any wrong byte; both runs move the same bytes.
    let traced = run_load(server.addr, 8, 200, 256);
    assert_eq!(
        (untraced.messages, untraced.bytes),
        (traced.messages, traced.bytes)
    );
    let counts = bt.finish().join("\n");
    assert!(
        counts.contains("eventer-read-return]"),
        "the probes fired while traced:\n{counts}"
    );
}

#[test]
fn echo_mio_has_all_eleven_probes_and_the_probes_off_build_none() {
    let names = |path: &std::path::Path| -> BTreeSet<String> {
        probes_in(path)
            .unwrap()
            .into_iter()
            .filter(|p| p.provider == "evloop")
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(names(&bin("echo-mio")).len(), 11);
    let off = noprobes_bin("echo-mio");
    assert!(
        names(&off).is_empty(),
        "no evloop probe survives --no-default-features"
    );
}

#[test]
fn plain_mio_and_tokio_echo_correctly() {
    for name in ["echo-mio-plain", "echo-tokio", "echo-mio"] {
        let server = Server::start(name, &[]);
        let load = run_load(server.addr, 16, 100, 1000);
        assert_eq!(load.ok_conns, 16, "{name}");
    }
}

#[test]
fn servers_exit_0_on_sigterm_and_2_on_bad_arguments() {
    for name in ["echo-mio", "echo-mio-plain", "custom-provider"] {
        let server = Server::start(name, &[]);
        let (status, _, err) = server.proc.stop(libc::SIGTERM);
        assert!(status.success(), "{name} on SIGTERM: {status} {err:?}");
        for args in [
            &["--listen", "not-an-address"][..],
            &["--bogus"][..],
            &[][..],
        ] {
            let out = Command::new(bin(name)).args(args).output_bounded().unwrap();
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("usage:"),
                "{name} {args:?}"
            );
        }
    }
}

#[test]
fn a_custom_provider_fires_beside_evloop() {
    tests::require_bpftrace();
    let server = Server::start("custom-provider", &[]);
    let bt = Bpftrace::start(
        r#"usdt:$BIN:shop:request-start { printf("start %lu %s %lu\n", arg0, str(arg1), arg2); }
usdt:$BIN:shop:request-done { printf("done %lu %d %lu\n", arg0, arg1, arg2); }
usdt:$BIN:evloop:eventer-callback-entry { printf("cb %s\n", str(arg2)); }"#,
        server.pid(),
    );
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"/cart\n/checkout\n").unwrap();
    let mut reader = BufReader::new(conn);
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        replies.push(line);
    }
    assert_eq!(replies, ["ok /cart\n", "ok /checkout\n"]);
    bt.stdout()
        .wait_for(WAIT, |l| {
            l.starts_with("done ") && l.contains(" 200 ") && l.ends_with(" 13")
        })
        .unwrap();
    let out = bt.finish();
    assert!(out.iter().any(|l| l == "start 0 /cart 5"), "{out:?}");
    assert!(out.iter().any(|l| l == "start 1 /checkout 9"), "{out:?}");
    assert!(out.iter().any(|l| l == "done 0 200 9"), "{out:?}");
    assert!(
        out.iter().any(|l| l == "cb shop"),
        "evloop fires too: {out:?}"
    );
}

#[test]
fn mio_wrappers_fire_the_probes_around_their_syscalls() {
    use eventloop_probes::mio::TcpListener;
    use std::io::Read;
    tests::require_bpftrace();
    // The wrappers' probe sites are compiled into this test binary: trace it.
    let bt = Bpftrace::start(
        r#"usdt:$BIN:evloop:eventer-accept-return /pid == $PID/ { printf("accept %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-read-return /pid == $PID/ { printf("read %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-write-return /pid == $PID/ { printf("write %d %ld\n", arg0, (int64)arg5); }
usdt:$BIN:evloop:eventer-close-return /pid == $PID/ { printf("close %d %ld\n", arg0, (int64)arg3); }"#
            .replace("$PID", &std::process::id().to_string())
            .as_str(),
        std::process::id(),
    );
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let (mut conn, _) = loop {
        match listener.accept() {
            Ok(pair) => break pair,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&conn);
    client.write_all(b"12345").unwrap();
    let mut buf = [0u8; 16];
    let n = loop {
        match conn.read(&mut buf) {
            Ok(n) => break n,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(n, 5);
    conn.write_all(&buf[..n]).unwrap();
    drop(conn);
    bt.stdout()
        .wait_for(WAIT, |l| l == format!("close {fd} 0"))
        .expect("close traced");
    let out = bt.finish();
    assert!(
        out.contains(&format!(
            "accept {} {fd}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        )),
        "{out:?}"
    );
    assert!(out.contains(&format!("read {fd} 5")), "{out:?}");
    assert!(out.contains(&format!("write {fd} 5")), "{out:?}");
}
