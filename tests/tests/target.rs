//! portsnoop's control of its target, end to end: a `--` child never
//! outlives portsnoop however portsnoop ends, starts as a shell would start
//! it, fails to start with a named reason; `-p` takes a thread id, refuses
//! a kernel thread, reaches a binary in another mount namespace; portsnoop
//! in a pid namespace; a target that execs is followed into its new image.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{
    bin, is_gone, json_file, json_lines, run_load, socket_count, wait_for_sockets, wait_gone,
    OutputBounded, Portsnoop, Server, WAIT,
};

fn tempdir(tag: &str) -> PathBuf {
    tests::scratch_dir(&format!("target-{tag}"))
}

fn summary(records: &[Value]) -> &Value {
    records
        .iter()
        .rfind(|r| r["type"] == "summary")
        .expect("a summary line")
}

/// Load that may be cut off (the server is killed under it).
fn load_until_cut(addr: SocketAddr) {
    let _ = Command::new(bin("echo-load"))
        .args(["--addr", &addr.to_string()])
        .args([
            "--conns",
            "2",
            "--msgs",
            "3000",
            "--size",
            "64",
            "--timeout",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The inode of the socket listening on `addr` (from /proc/net/tcp).
fn listener_inode(addr: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local_address, st 0A (LISTEN), inode.
        .find(|f| f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A")
        .and_then(|f| f[9].parse().ok())
        .unwrap_or_else(|| panic!("nothing listens on {addr}"))
}

/// The child `pid` that served `addr` is gone, and its listening socket
/// with it: no process holds it. (Not a connect to `addr`: another test's
/// server may be given the freed port meanwhile.)
fn assert_child_ended(pid: u32, inode: u64, how: &str) {
    wait_gone(pid, &format!("the child after portsnoop {how}"));
    let socket = format!("socket:[{inode}]");
    let holders: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.flatten())
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
        .map(|fd| fd.path().display().to_string())
        .collect();
    assert!(
        holders.is_empty(),
        "after portsnoop {how}, its child's listener is still held: {holders:?}"
    );
}

#[test]
fn the_child_never_outlives_portsnoop() {
    let echo = bin("echo-mio");
    let echo = echo.to_str().unwrap();
    let server = ["--", echo, "--listen", "127.0.0.1:0"];

    // An output error: the trace cannot be written.
    let mut snoop = Portsnoop::start(&[&["-o", "/dev/full"][..], &server].concat());
    let (pid, addr) = (snoop.traced_pid(), snoop.child_listen_addr());
    let inode = listener_inode(addr);
    load_until_cut(addr);
    let status = snoop.proc.wait_exit(WAIT);
    assert!(!status.success(), "a write error is a failure");
    assert!(
        snoop
            .proc
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("No space left")),
        "{:?}",
        snoop.proc.stderr.all()
    );
    assert_child_ended(pid, inode, "failed to write");

    // A reader that went away (`portsnoop ... | head -c 1`).
    let mut snoop = Portsnoop::start_under(
        &["sh", "-c", "\"$0\" \"$@\" | head -c 1 >/dev/null"],
        &server,
    );
    let (pid, addr) = (snoop.traced_pid(), snoop.child_listen_addr());
    let inode = listener_inode(addr);
    load_until_cut(addr);
    snoop.proc.wait_exit(WAIT);
    assert_child_ended(pid, inode, "lost its reader");

    // Signals that end portsnoop without its cleanup: only the child's
    // parent-death signal can end it then.
    for (how, sig) in [("got SIGHUP", libc::SIGHUP), ("got SIGKILL", libc::SIGKILL)] {
        let mut snoop = Portsnoop::start(&server);
        let (pid, addr) = (snoop.traced_pid(), snoop.child_listen_addr());
        let inode = listener_inode(addr);
        run_load(addr, 1, 5, 8);
        snoop.proc.signal(sig);
        snoop.proc.wait_exit(WAIT);
        assert_child_ended(pid, inode, how);
    }

    // And the ordinary end: ^C.
    let snoop = Portsnoop::start(&server);
    let (pid, addr) = (snoop.traced_pid(), snoop.child_listen_addr());
    let inode = listener_inode(addr);
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    assert_child_ended(pid, inode, "was interrupted");
}

#[test]
fn the_command_starts_with_default_signals_and_an_empty_mask() {
    // -o: the command keeps portsnoop's stdout.
    let mut snoop = Portsnoop::start(&[
        "-o",
        "/dev/null",
        "--",
        "grep",
        "-E",
        "^Sig(Ign|Blk):",
        "/proc/self/status",
    ]);
    // It ends by itself (portsnoop with it); a ^C could come first.
    snoop.proc.wait_exit(WAIT);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    assert_eq!(
        out,
        ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"],
        "nothing blocked or ignored (portsnoop's runtime ignores SIGPIPE)"
    );

    // A pipeline behaves as it does untraced: `yes` dies of SIGPIPE
    // instead of reporting EPIPE errors.
    let mut snoop = Portsnoop::start(&[
        "-o",
        "/dev/null",
        "--",
        "sh",
        "-c",
        "yes | head -1 >/dev/null; echo pipeline-done",
    ]);
    snoop.proc.wait_exit(WAIT);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    assert_eq!(out, ["pipeline-done"]);
    assert!(
        !err.iter().any(|l| l.contains("Broken pipe")),
        "yes saw EPIPE:\n{}",
        err.join("\n")
    );
}

#[test]
fn a_command_that_cannot_run_says_why_and_a_script_runs() {
    let dir = tempdir("exec");
    let write = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let script = write("run.sh", "#!/bin/sh\necho script-ran \"$1\"\n", 0o755);
    let mut snoop = Portsnoop::start(&["-o", "/dev/null", "--", &script, "an-arg"]);
    snoop.proc.wait_exit(WAIT);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "a #! script runs:\n{}", err.join("\n"));
    assert_eq!(out, ["script-ran an-arg"]);

    let run = |args: &[&str]| {
        Command::new(bin("portsnoop"))
            .args(args)
            .output_bounded()
            .unwrap()
    };
    let cases = [
        (write("plain.sh", "#!/bin/sh\n", 0o644), "Permission denied"),
        (
            write("garbage", "not a program\n", 0o755),
            "Exec format error",
        ),
        (
            write("orphan.sh", "#!/no/such/interpreter\n", 0o755),
            "interpreter",
        ),
        ("/no/such/command".to_string(), "command not found"),
        ("no-such-command-anywhere".to_string(), "command not found"),
    ];
    for (command, want) in cases {
        let out = run(&["-q", "--", &command]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains(want), "{command}: want {want:?} in:\n{err}");
        assert!(!err.contains("wait status"), "{command}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_thread_id_traces_its_process_and_a_kernel_thread_is_refused() {
    let server = Server::start("echo-tokio", &[]);
    let pid = server.pid();
    let deadline = std::time::Instant::now() + WAIT;
    let tid = loop {
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|t| *t != pid)
            .collect();
        if let Some(t) = tids.first() {
            break *t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "echo-tokio has no worker thread"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let idle = socket_count(pid);
    let snoop = Portsnoop::start(&["-p", &tid.to_string(), "--json"]);
    run_load(server.addr, 2, 20, 16);
    wait_for_sockets(pid, idle);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let err = err.join("\n");
    assert!(
        err.contains(&format!("{tid} is a thread of process {pid}")),
        "{err}"
    );
    assert!(err.contains(&format!("tracing pid {pid} ")), "{err}");
    let records = json_lines(&out);
    assert!(
        records.iter().filter(|r| r["type"] == "probe").count() >= 40,
        "the process's probes are seen: {}",
        summary(&records)
    );

    let kthread = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let flags: u64 = s
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(6)?
                        .parse()
                        .ok()?;
                    Some(flags & 0x0020_0000 != 0)
                })
                .unwrap_or(false)
        })
        .expect("a kernel thread in /proc");
    let out = Command::new(bin("portsnoop"))
        .args(["-p", &kthread.to_string()])
        .output_bounded()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kernel thread"), "{err}");
}

#[test]
fn json_on_stdout_stays_json_with_a_command() {
    let echo = bin("echo-mio");
    let snoop = Portsnoop::start(&[
        "--json",
        "--",
        echo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let pid = snoop.traced_pid();
    let addr = snoop.child_listen_addr();
    let idle = socket_count(pid);
    run_load(addr, 2, 10, 16);
    wait_for_sockets(pid, idle);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    // Every line of stdout is JSON: the server's own line went to stderr.
    let records = json_lines(&out);
    assert!(records.iter().any(|r| r["type"] == "probe"));
    assert!(
        err.iter().any(|l| l.contains("stdout goes to stderr")),
        "said once: {err:?}"
    );
    assert!(is_gone(pid));
}

/// A copy of `from` at `to`, executable.
fn copy_exe(from: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn a_process_in_another_mount_namespace_is_traced_through_its_own_binary() {
    let dir = tempdir("mntns");
    let app = dir.join("app");
    // On the host, the path holds a binary without probes; in the
    // server's namespace, echo-mio is mounted over it.
    copy_exe(&bin("echo-mio-plain"), &app);
    let script = format!(
        "mount --bind {} {app} && exec {app} --listen 127.0.0.1:0",
        bin("echo-mio").display(),
        app = app.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let server = tests::Proc::spawn(cmd);
    let line = server
        .stdout
        .wait_for(WAIT, |l| l.starts_with("listening on "))
        .unwrap_or_else(|e| panic!("the namespaced server did not start: {e}"));
    let addr: SocketAddr = line["listening on ".len()..].trim().parse().unwrap();
    let pid = server.pid();
    let idle = socket_count(pid);
    let snoop = Portsnoop::start(&["-p", &pid.to_string(), "--json"]);
    run_load(addr, 2, 10, 16);
    wait_for_sockets(pid, idle);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let err = err.join("\n");
    assert!(
        err.contains(&format!("({}): 11 evloop probes", app.display())),
        "the path as the process sees it, with echo-mio's probes:\n{err}"
    );
    let records = json_lines(&out);
    assert!(
        records.iter().filter(|r| r["type"] == "probe").count() >= 40,
        "{}",
        summary(&records)
    );
    assert_eq!(summary(&records)["mismatches"], 0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn portsnoop_in_a_pid_namespace_sees_its_own_pids() {
    let dir = tempdir("pidns");
    let trace = dir.join("trace.json");
    let echo = bin("echo-mio");
    let mut snoop = Portsnoop::start_under(
        &["unshare", "-pf", "--kill-child", "--mount-proc"],
        &[
            "--json",
            "-o",
            trace.to_str().unwrap(),
            "--",
            echo.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    // In the namespace portsnoop is pid 1, and its threads and its child
    // take the next few: the pid it names is the namespace's, not the
    // host's (in the thousands).
    let traced = snoop.traced_pid();
    assert!(traced < 20, "{:?}", snoop.proc.stderr.all());
    let addr = snoop.child_listen_addr();
    run_load(addr, 2, 20, 16);
    // portsnoop is unshare's child; unshare does not pass SIGINT on.
    let unshare = snoop.proc.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let portsnoop: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signalling the portsnoop this test started.
    unsafe { libc::kill(portsnoop, libc::SIGINT) };
    let status = snoop.proc.wait_exit(WAIT);
    assert!(status.success(), "{:?}", snoop.proc.stderr.all());
    let records = json_file(&trace);
    let probes: Vec<&Value> = records.iter().filter(|r| r["type"] == "probe").collect();
    assert!(probes.len() >= 80, "{}", summary(&records));
    // Thread ids as portsnoop sees them: the server's main thread has the
    // namespace's pid portsnoop named, and the namespace holds only
    // portsnoop and it.
    let tids: std::collections::BTreeSet<u64> =
        records.iter().filter_map(|r| r["tid"].as_u64()).collect();
    assert!(
        tids.contains(&u64::from(traced)) && tids.iter().all(|t| *t < 20),
        "tids {tids:?}"
    );
    assert_eq!(summary(&records)["mismatches"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portsnoop -- LAUNCHER... echo-mio`: the first image has no probes, the
/// one it execs has; the exec is followed and the server traced.
fn trace_through_exec(launcher: &[&str], tag: &str) {
    let dir = tempdir(tag);
    let trace = dir.join("trace.json");
    let mut args = vec!["--json", "-o", trace.to_str().unwrap(), "--"];
    args.extend_from_slice(launcher);
    let snoop = Portsnoop::start(&args);
    let pid = snoop.traced_pid();
    snoop
        .proc
        .stderr
        .wait_for(WAIT, |l| l.contains("now tracing 11 evloop probes"))
        .unwrap_or_else(|e| panic!("the exec was not followed: {e}"));
    let addr = snoop.child_listen_addr();
    let idle = socket_count(pid);
    run_load(addr, 2, 20, 16);
    wait_for_sockets(pid, idle);
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let records = json_file(&trace);
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "process" && r["event"] == "exec"),
        "the exec is in the trace"
    );
    let traced = records
        .iter()
        .find(|r| r["type"] == "process" && r["event"] == "traced")
        .expect("what is traced after the exec");
    assert_eq!(traced["probes"], 11);
    assert!(
        traced["exe"].as_str().unwrap().ends_with("/echo-mio"),
        "{traced}"
    );
    let ops = records.iter().filter(|r| r["type"] == "op").count();
    assert!(ops >= 80, "the new image's ops: {}", summary(&records));
    assert_eq!(summary(&records)["mismatches"], 0, "{}", summary(&records));
    assert!(is_gone(pid));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_command_that_execs_is_followed_into_its_new_image() {
    let echo = bin("echo-mio");
    let echo = echo.to_str().unwrap();
    trace_through_exec(&["env", "FOO=1", echo, "--listen", "127.0.0.1:0"], "env");
    let exec = format!("exec {echo} --listen 127.0.0.1:0");
    trace_through_exec(&["sh", "-c", &exec], "sh");
}
