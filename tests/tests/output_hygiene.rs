//! portsnoop's output on a real deployment: `--json` is pure JSON Lines
//! whatever the flags, strings from the traced program never reach a
//! terminal raw, a wait with more events than recorded says so, a closed
//! pipe ends the session quietly, a signal ends it even when nobody reads
//! the output, and a bad command line or `list` target is a clear error.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    bin, json_lines, run_load, socket_count, wait_for_sockets, OutputBounded, Portsnoop, Proc,
    Server, WAIT,
};

/// Through the harness, not `CARGO_BIN_EXE_probe-fixture`: `cargo test` and the
/// harness's `cargo build` link it with different features and each puts its
/// own copy at that path, so a fixture started from it can be running a
/// deleted file by the time a probe is attached by path.
static PROBE_FIXTURE: LazyLock<String> =
    LazyLock::new(|| tests::bin("probe-fixture").to_str().unwrap().to_string());
/// Through the harness, not `CARGO_BIN_EXE_syscall-fixture`: `cargo test` and the
/// harness's `cargo build` link it with different features and each puts its
/// own copy at that path, so a fixture started from it can be running a
/// deleted file by the time a probe is attached by path.
static SYSCALL_FIXTURE: LazyLock<String> =
    LazyLock::new(|| tests::bin("syscall-fixture").to_str().unwrap().to_string());

/// The fixture's `--hostile` callback name (`probe-fixture.rs`).
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\u{9b}1A";
/// The same, as the table shows it.
const HOSTILE_SHOWN: &str = r"\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\u{9b}1A";

fn tempdir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("portsnoop-hygiene-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `text` holds anything a terminal would act on: a C0 control
/// other than the rows' newlines, DEL, or a C1 control.
fn has_terminal_controls(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

/// `--json` with `--summary` (and `-q`): every line of stdout is JSON, the
/// last one the summary; no text histograms after it.
#[test]
fn json_output_is_json_lines_only_whatever_the_flags() {
    let server = Server::start("echo-mio", &[]);
    let pid = server.pid().to_string();
    let baseline = socket_count(server.pid());
    let full = Portsnoop::start(&["-p", &pid, "--json", "--summary"]);
    let quiet = Portsnoop::start(&["-p", &pid, "-q", "--json", "--summary"]);
    let load = run_load(server.addr, 2, 20, 32);
    assert_eq!(load.bytes, 2 * 20 * 32);
    wait_for_sockets(server.pid(), baseline);
    for (snoop, rows) in [(full, true), (quiet, false)] {
        let (status, out, err) = snoop.finish();
        assert!(status.success(), "{status}\n{}", err.join("\n"));
        let records = json_lines(&out);
        let last = records.last().expect("output");
        assert_eq!(last["type"], "summary", "the summary is the last line");
        assert_eq!(last["per_op"]["read"]["bytes"], 2 * 20 * 32);
        if rows {
            assert!(
                records.len() > 100,
                "rows and the summary: {}",
                records.len()
            );
        } else {
            assert_eq!(records.len(), 1, "-q: only the summary line: {out:?}");
        }
    }
}

/// The probe fixture fires a callback named with terminal controls and a
/// `log` full of them: the table shows them escaped (nothing a terminal
/// acts on, one line per row), and the JSON output keeps the exact string.
#[test]
fn hostile_probe_strings_reach_the_table_escaped() {
    let dir = tempdir();
    let (table, json) = (dir.join("trace.txt"), dir.join("trace.json"));
    let mut fixture = Command::new(&*PROBE_FIXTURE);
    fixture.arg("--hostile");
    let mut fixture = Proc::spawn(fixture);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == "ready")
        .expect("fixture ready");
    let pid = fixture.pid().to_string();
    let snoop_table = Portsnoop::start(&["-p", &pid, "-o", table.to_str().unwrap()]);
    let snoop_json = Portsnoop::start(&["-p", &pid, "--json", "-o", json.to_str().unwrap()]);
    fixture.signal(libc::SIGUSR1);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == "fired 1")
        .expect("fired");
    // Past the table's 50 ms reorder window and the 10 ms drain.
    thread::sleep(Duration::from_millis(300));
    for snoop in [snoop_table, snoop_json] {
        let (status, _, err) = snoop.finish();
        assert!(status.success(), "{}", err.join("\n"));
        let err = err.join("\n");
        assert!(!has_terminal_controls(&err), "stderr: {err:?}");
    }

    let text = String::from_utf8(std::fs::read(&table).unwrap()).expect("the table is UTF-8");
    assert!(
        !has_terminal_controls(&text),
        "raw controls in the table:\n{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE ROW")),
        "a forged row:\n{text}"
    );
    let rows_with = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        rows_with(&format!(
            "callback-entry         7 {HOSTILE_SHOWN} mask 0x01"
        )),
        1,
        "{text}"
    );
    assert_eq!(
        rows_with(&format!("callback-return        - {HOSTILE_SHOWN} = 0x01")),
        1,
        "{text}"
    );
    assert_eq!(
        rows_with(r"\x1b[31mfac\r: msg\x1b]0;pwned\x07\nFAKE ROW (evil\n.rs:7)"),
        1,
        "the log row:\n{text}"
    );

    let bytes = std::fs::read(&json).unwrap();
    let json_text = String::from_utf8(bytes).expect("JSON is UTF-8");
    assert!(!has_terminal_controls(&json_text), "raw controls in JSON");
    let records: Vec<Value> = json_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&Value> = records
        .iter()
        .filter(|r| r["name"] == "eventer-callback-entry")
        .map(|r| &r["strings"][0])
        .collect();
    assert!(names.contains(&&Value::from(HOSTILE)), "{names:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An executable whose path holds terminal controls: escaped in
/// portsnoop's lines on stderr, in `portsnoop list`, and in errors.
#[test]
fn a_hostile_executable_path_is_escaped_everywhere_it_is_shown() {
    let dir = tempdir();
    let name = "evil\x1b[2J\nFAKE \x07";
    let exe = dir.join(name);
    std::fs::copy(&*PROBE_FIXTURE, &exe).unwrap();
    let shown = format!("{}/evil\\x1b[2J\\nFAKE \\x07", dir.display());

    let out = Command::new(bin("portsnoop"))
        .arg("list")
        .arg(&exe)
        .output_bounded()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!has_terminal_controls(&text), "{text:?}");
    assert!(
        text.lines()
            .filter(|l| l.contains(&shown) && l.contains(" evloop "))
            .count()
            >= 11,
        "{text}"
    );

    // Traced from its start. (No whitespace in this one: the engine finds
    // the binary's mapping in /proc/PID/maps by its path, where a newline
    // shows as `\012` and a blank splits the line's fields: its business,
    // not this test's.)
    let exe2 = dir.join("evil\x1b[2J\x07FAKE");
    std::fs::copy(&*PROBE_FIXTURE, &exe2).unwrap();
    let snoop = Portsnoop::start(&["--", exe2.to_str().unwrap()]);
    let (status, _, err) = snoop.finish();
    assert!(status.success(), "{}", err.join("\n"));
    let ready = err.iter().find(|l| l.ends_with("; ready")).unwrap();
    let shown2 = format!("{}/evil\\x1b[2J\\x07FAKE", dir.display());
    assert!(ready.contains(&format!("({shown2})")), "{ready}");
    assert!(!err.iter().any(|l| has_terminal_controls(l)), "{err:?}");

    // An error naming it: the output file cannot be created.
    let bad_out = dir.join("no-such-dir").join(name);
    let out = Command::new(bin("portsnoop"))
        .arg("-o")
        .arg(&bad_out)
        .args(["-p", &std::process::id().to_string()])
        .output_bounded()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!has_terminal_controls(&err), "{err:?}");
    assert!(
        err.starts_with("portsnoop: cannot write ")
            && err.contains(r"evil\x1b[2J\nFAKE \x07: No such file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An `epoll_wait` returning 40 events (the kernel side records 30): the
/// JSON wait line says 10 were omitted, the table has a row saying so.
#[test]
fn a_wait_with_more_events_than_recorded_says_how_many_more() {
    let dir = tempdir();
    let (json, table, log) = (dir.join("t.json"), dir.join("t.txt"), dir.join("log"));
    for (args, out) in [(&["--json", "-o"][..], &json), (&["-o"][..], &table)] {
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            out.to_str().unwrap(),
            "--",
            &SYSCALL_FIXTURE,
            "--many-ready",
            "40",
        ]);
        a.push(log.to_str().unwrap());
        let mut snoop = Portsnoop::start(&a);
        let status = snoop.proc.wait_exit(WAIT);
        assert!(status.success(), "{}", snoop.proc.stderr.all().join("\n"));
    }
    let want: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    let records: Vec<Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let wait = records
        .iter()
        .find(|r| r["type"] == "wait" && r["rv"] == 40)
        .unwrap_or_else(|| panic!("no wait returning 40"));
    assert_eq!(wait["epfd"], want["epfd"]);
    assert_eq!(wait["events"].as_array().unwrap().len(), 30);
    assert_eq!(wait["events"][0]["data"], want["data"]);
    assert_eq!(wait["events_omitted"], 10);
    assert!(
        records
            .iter()
            .filter(|r| r["type"] == "wait")
            .all(|r| r["events_omitted"].is_u64()),
        "every wait line has the field"
    );

    let text = std::fs::read_to_string(&table).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    let at = rows
        .iter()
        .position(|l| l.contains(" epoll_wait ") && l.contains(" 40 events "))
        .unwrap_or_else(|| panic!("no wait row:\n{text}"));
    let after: Vec<&str> = rows[at + 1..]
        .iter()
        .copied()
        .filter(|l| l.contains("EPOLL_EVENT"))
        .collect();
    assert!(
        after[..30].iter().all(|l| l.contains("fdevents 0x01 IN")),
        "{text}"
    );
    assert!(
        after[30].ends_with("EPOLL_EVENT            - +10 more events not recorded"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A portsnoop whose stdout the test holds (to read a little, to leave
/// unread, or to close), with its stderr collected.
struct Raw {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    /// Starts `portsnoop ARGS` and waits for its ready line; returns it
    /// with the traced pid.
    fn start(args: &[&str]) -> (Raw, u32) {
        let mut child = Command::new(bin("portsnoop"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut raw = Raw {
            child,
            stdout,
            stderr: rx,
            seen,
        };
        let ready = raw.wait_stderr(|l| l.ends_with("; ready"));
        let pid = ready
            .strip_prefix("portsnoop: tracing pid ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{ready}"));
        (raw, pid)
    }

    fn wait_stderr(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("{e}; stderr so far: {:?}", self.stderr_lines()),
            }
        }
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for the exit; the time it took.
    fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr reader catch up.
                thread::sleep(Duration::from_millis(50));
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "portsnoop did not exit within {timeout:?}; stderr: {:?}",
                    self.stderr_lines()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `echo-load` in the background, its result ignored: the server may be
/// ended under it.
fn background_load(addr: std::net::SocketAddr, conns: u32, msgs: u32) -> Child {
    Command::new(bin("echo-load"))
        .args(["--addr", &addr.to_string()])
        .args(["--conns", &conns.to_string(), "--msgs", &msgs.to_string()])
        .args(["--size", "16", "--timeout", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether `pid` still exists (a zombie counts: it was not reaped).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `portsnoop | head`: once the reader is gone, the session ends quietly
/// with exit 0, and the child portsnoop started is ended too.
#[test]
fn a_closed_pipe_ends_the_session_quietly() {
    // Attached to a running server: the pipe is closed before anything is
    // written; the first block of rows finds it closed.
    let server = Server::start("echo-mio", &[]);
    let (mut snoop, _) = Raw::start(&["-p", &server.pid().to_string()]);
    drop(snoop.stdout.take());
    // Long enough for rows to leave the table's 50 ms reorder window.
    let mut load = background_load(server.addr, 2, 3000);
    let (status, _) = snoop.wait_exit(WAIT);
    let _ = load.wait();
    let err = snoop.stderr_lines();
    assert_eq!(status.code(), Some(0), "{err:?}");
    assert!(
        !err.iter()
            .any(|l| l.contains("Broken pipe") || l.contains("error")),
        "no error text: {err:?}"
    );
    assert!(
        alive(server.pid()),
        "a process we attached to is left alone"
    );

    // A child it started (its stdout goes to portsnoop's stderr, to keep
    // the trace clean): close the trace's pipe like `head -1`.
    let echo = bin("echo-mio");
    let (mut snoop, child) = Raw::start(&["--", echo.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let line = snoop.wait_stderr(|l| l.starts_with("listening on "));
    let addr: std::net::SocketAddr = line["listening on ".len()..].trim().parse().unwrap();
    drop(snoop.stdout.take());
    let mut load = background_load(addr, 2, 3000);
    let (status, _) = snoop.wait_exit(WAIT);
    let _ = load.kill();
    let _ = load.wait();
    let err = snoop.stderr_lines();
    assert_eq!(status.code(), Some(0), "{err:?}");
    assert!(!err.iter().any(|l| l.contains("Broken pipe")), "{err:?}");
    assert!(
        !alive(child),
        "the child portsnoop started is ended and reaped"
    );
}

/// Makes the pipe behind `out` one page (before anything fills it) and
/// returns its size.
fn shrink_pipe(out: &ChildStdout) {
    // SAFETY: fcntl on a pipe fd we own.
    let size = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        size > 0,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until portsnoop (`pid`) is blocked writing to its stalled pipe.
/// Asked of the kernel (the main thread's wait channel), not guessed from
/// the bytes queued: a one-page pipe can refuse a write with room left in
/// its page, since a write that does not fit whole waits for a free page.
fn wait_until_blocked(pid: u32) {
    let deadline = Instant::now() + WAIT;
    let wchan = format!("/proc/{pid}/wchan");
    loop {
        let now = std::fs::read_to_string(&wchan).unwrap_or_default();
        // `pipe_write`, or `anon_pipe_write` on newer kernels (6.18 here).
        if now.ends_with("pipe_write") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "portsnoop never blocked on its output (wchan {now:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The bound on ending with a stalled output: the 2 s grace, plus the
/// child's half second, plus slack for a loaded machine.
const STALLED_EXIT_WITHIN: Duration = Duration::from_secs(10);

/// `portsnoop | less` with `less` not reading: SIGINT, SIGTERM and SIGHUP
/// still end it, within a bound, saying the output stalled; the child it
/// started is ended and reaped first.
#[test]
fn a_signal_ends_the_session_with_the_output_stalled() {
    let server = Server::start("echo-mio", &[]);
    let pid = server.pid().to_string();
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let (mut snoop, _) = Raw::start(&["-p", &pid]);
        let out = snoop.stdout.take().unwrap();
        shrink_pipe(&out);
        let mut load = background_load(server.addr, 2, 3000);
        wait_until_blocked(snoop.child.id());
        snoop.signal(sig);
        let (status, took) = snoop.wait_exit(STALLED_EXIT_WITHIN);
        let _ = load.kill();
        let _ = load.wait();
        let err = snoop.stderr_lines();
        assert_eq!(status.code(), Some(1), "signal {sig}: {err:?}");
        assert!(
            err.iter()
                .any(|l| l.starts_with("portsnoop: output stalled: ")),
            "{err:?}"
        );
        assert!(
            took >= Duration::from_secs(1),
            "it gave the output a grace: {took:?}"
        );
        drop(out);
    }
    assert!(
        alive(server.pid()),
        "a process we attached to is left alone"
    );

    // With a child: nothing of the trace is read.
    let echo = bin("echo-mio");
    let (mut snoop, child) = Raw::start(&["--", echo.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let out = snoop.stdout.take().unwrap();
    shrink_pipe(&out);
    let line = snoop.wait_stderr(|l| l.starts_with("listening on "));
    let addr: std::net::SocketAddr = line["listening on ".len()..].trim().parse().unwrap();
    let mut load = background_load(addr, 2, 3000);
    wait_until_blocked(snoop.child.id());
    let start = Instant::now();
    snoop.signal(libc::SIGINT);
    let (status, _) = snoop.wait_exit(STALLED_EXIT_WITHIN);
    assert!(start.elapsed() < STALLED_EXIT_WITHIN);
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(status.code(), Some(1), "{:?}", snoop.stderr_lines());
    assert!(
        !alive(child),
        "the child was ended and reaped before the exit"
    );
}

/// `-d` with nobody reading: the time limit ends the session all the same.
#[test]
fn the_time_limit_ends_the_session_with_the_output_stalled() {
    let server = Server::start("echo-mio", &[]);
    let (mut snoop, _) = Raw::start(&["-p", &server.pid().to_string(), "-d", "1.5"]);
    let out = snoop.stdout.take().unwrap();
    shrink_pipe(&out);
    let mut load = background_load(server.addr, 2, 3000);
    wait_until_blocked(snoop.child.id());
    let (status, _) = snoop.wait_exit(STALLED_EXIT_WITHIN);
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(status.code(), Some(1), "{:?}", snoop.stderr_lines());
    drop(out);
}

/// SIGHUP (the terminal went away) ends a session like SIGINT: the rows,
/// the summary, the counts on stderr, exit 0.
#[test]
fn sighup_ends_the_session_with_its_summary() {
    let server = Server::start("echo-mio", &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--summary"]);
    run_load(server.addr, 1, 5, 10);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, err) = snoop.proc.stop(libc::SIGHUP);
    assert!(status.success(), "{status}: {err:?}");
    assert!(out.iter().any(|l| l.contains("recvfrom")), "rows: {out:?}");
    assert!(
        out.iter().any(|l| l == "=== summary"),
        "the summary: {out:?}"
    );
    assert!(
        err.iter().any(|l| l.starts_with("portsnoop: ")
            && l.contains(" events, ")
            && l.ends_with(" mismatches")),
        "the counts on stderr: {err:?}"
    );
}

/// Numeric flags are bounded (clap's exit 2, never a panic), and `list`
/// refuses what it cannot read fast, with exit 1 and a clear error.
#[test]
fn bad_arguments_and_list_targets_are_clear_errors() {
    let run = |args: &[&str]| {
        Command::new(bin("portsnoop"))
            .args(args)
            .output_bounded()
            .unwrap()
    };
    for args in [
        &["-d", "1e19", "-p", "1"][..],
        &["-d", "0", "-p", "1"],
        &["-d", "-1", "-p", "1"],
        &["-d", "nan", "-p", "1"],
        &["-d", "inf", "-p", "1"],
        &["-d", "soon", "-p", "1"],
        &["--fd", "-1", "-p", "1"],
        &["--tid", "0", "-p", "1"],
        &["-p", "0"],
        &["-p", "-5"],
        &["-p", "99999999999"],
        &["--buffer-kb", "0", "-p", "1"],
        &["list", "-p", "0"],
        &[],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }

    let dir = tempdir();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a binary\n").unwrap();
    let big = dir.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 << 30).unwrap(); // sparse: 64 GiB of nothing
    drop(f);
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (target, says) in [
        ("/dev/zero", "/dev/zero: not a regular file"),
        (fifo.to_str().unwrap(), "fifo: not a regular file"),
        (dir.to_str().unwrap(), ": not a regular file"),
        (text.to_str().unwrap(), "notes.txt: not an ELF file"),
        (big.to_str().unwrap(), "big: not an ELF file"),
        ("/no/such/file", "/no/such/file: No such file or directory"),
    ] {
        let start = Instant::now();
        let out = run(&["list", target]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{target}: {err}");
        assert!(
            err.starts_with("portsnoop: ") && err.contains(says),
            "{target}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "no header before the error: {target}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{target}: fast");
    }
    let out = run(&["list", "-p", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process: 999999999"));
    let _ = std::fs::remove_dir_all(dir);
}
