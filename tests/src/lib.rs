//! Shared plumbing for the end-to-end tests: start the built binaries, wait
//! (bounded) for the lines that say they are ready, attach real tracers.
//!
//! The tests run the release binaries in `target/release`, built on first
//! use (see [`bin`]), so a plain `cargo test` works on a clean clone. Every
//! wait here has a deadline so a broken build or tracer fails a test
//! instead of hanging CI.

pub mod fixture;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The path of a release binary of the workspace (`echo-mio`,
/// `portsnoop`, ...), built first if need be.
///
/// The first call in a test process runs `cargo build --release --workspace
/// --bins` (a no-op when nothing changed), so a plain `cargo test` on a
/// clean clone works, and a test never runs a binary older than the code.
/// Cargo holds no lock while tests run, so this cannot deadlock with the
/// `cargo test` that started us.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| cargo_build(&["build", "--release", "--workspace", "--bins"]));
    if let Err(e) = built {
        panic!("building the workspace's binaries failed:\n{e}");
    }
    let path = target_dir().join("release").join(name);
    assert!(
        path.exists(),
        "{} is not a binary of the workspace",
        path.display()
    );
    path
}

/// The path of an example binary built with every probe compiled out
/// (`--no-default-features`, in its own target dir), built first if need
/// be.
pub fn noprobes_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = target_dir().join("noprobes");
    let built = BUILT.get_or_init(|| {
        cargo_build(&[
            "build",
            "--release",
            "-p",
            "examples",
            "--no-default-features",
            "--target-dir",
            dir.to_str().expect("a UTF-8 target dir"),
        ])
    });
    if let Err(e) = built {
        panic!("building the examples without probes failed:\n{e}");
    }
    dir.join("release").join(name)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs cargo (the one that built these tests) in the workspace; its
/// output, if it fails.
fn cargo_build(args: &[&str]) -> Result<(), String> {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Lines a child writes on one of its pipes, collected by a thread so a wait
/// can have a deadline.
pub struct Lines {
    rx: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn spawn<R: Read + Send + 'static>(pipe: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    // Nobody waits any more; keep draining so the child never
                    // blocks on a full pipe.
                }
            }
        });
        Lines { rx, seen }
    }

    /// Waits up to `timeout` for a line for which `pred` is true and returns
    /// it. Lines before it are skipped (they stay in [`Lines::all`]).
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "timed out after {timeout:?}; lines so far:\n{}",
                        self.all().join("\n")
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "stream closed; lines so far:\n{}",
                        self.all().join("\n")
                    ))
                }
            }
        }
    }

    /// Every line seen so far.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A child process that is killed when dropped, with its output collected.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its stdout lines.
    pub stdout: Lines,
    /// Its stderr lines.
    pub stderr: Lines,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let out: ChildStdout = child.stdout.take().unwrap();
        let err: ChildStderr = child.stderr.take().unwrap();
        Proc {
            child,
            stdout: Lines::spawn(out),
            stderr: Lines::spawn(err),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGINT`), unless the child has already been
    /// reaped (its pid could belong to someone else by now).
    pub fn signal(&mut self, sig: i32) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own, still unreaped child.
            unsafe {
                libc::kill(self.child.id() as i32, sig);
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; kills it and panics if it
    /// does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                // Where each of its threads is stuck, read before the kill.
                let threads = where_threads_wait(self.child.id());
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; its threads:\n{threads}stderr:\n{}",
                    self.stderr.all().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Signals `sig` and waits for the exit, then for the output pipes to
    /// drain, returning (status, stdout lines, stderr lines).
    pub fn stop(mut self, sig: i32) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        self.signal(sig);
        let status = self.wait_exit(WAIT);
        // The reader threads finish once the pipes close.
        let _ = self.stdout.wait_for(Duration::from_secs(5), |_| false);
        let _ = self.stderr.wait_for(Duration::from_secs(5), |_| false);
        (status, self.stdout.all(), self.stderr.all())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An example server started with `--listen 127.0.0.1:0`.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts the example binary `name` on an ephemeral loopback port and
    /// waits for its `listening on IP:PORT` line.
    pub fn start(name: &str, extra_args: &[&str]) -> Server {
        let mut cmd = Command::new(bin(name));
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra_args);
        let proc = Proc::spawn(cmd);
        let line = proc
            .stdout
            .wait_for(WAIT, |l| l.starts_with("listening on "))
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        let addr = line["listening on ".len()..]
            .trim()
            .parse()
            .expect("listening on IP:PORT");
        Server { proc, addr }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// `script` with a `BEGIN` that prints [`ATTACHED`] first: added to the
/// script's own `BEGIN` if it has one (bpftrace 0.17 allows only one).
fn with_attached_line(script: &str) -> String {
    let print = format!("printf(\"{ATTACHED}\\n\"); ");
    match script
        .find("BEGIN")
        .and_then(|b| script[b..].find('{').map(|o| b + o + 1))
    {
        Some(at) => format!("{}{print}{}", &script[..at], &script[at..]),
        None => format!("BEGIN {{ {print}}}\n{script}"),
    }
}

/// The line [`Bpftrace::start`] waits for.
pub const ATTACHED: &str = "__bpftrace_attached__";

/// A running bpftrace, attached before [`Bpftrace::start`] returns.
pub struct Bpftrace {
    proc: Proc,
}

impl Bpftrace {
    /// Runs `script` against process `pid` and waits until every probe is
    /// attached. In the script, `$BIN` stands for the full path of the
    /// process's executable (bpftrace 0.17 needs it in `usdt:` probes).
    ///
    /// bpftrace prints `Attaching N probes...` before it attaches, but runs
    /// `BEGIN` only after, so `BEGIN` prints [`ATTACHED`] first thing and
    /// that is what this waits for.
    pub fn start(script: &str, pid: u32) -> Bpftrace {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("reading /proc/PID/exe");
        let script = with_attached_line(&script.replace("$BIN", &exe.to_string_lossy()));
        let mut cmd = Command::new("bpftrace");
        // `-B line`: a pipe is not a terminal, and the wait below needs the
        // attach line as soon as it is printed.
        cmd.args(["-B", "line", "-p", &pid.to_string(), "-e", &script]);
        let proc = Proc::spawn(cmd);
        if let Err(e) = proc.stdout.wait_for(WAIT, |l| l == ATTACHED) {
            panic!(
                "bpftrace did not attach: {e}\nstderr:\n{}",
                proc.stderr.all().join("\n")
            );
        }
        Bpftrace { proc }
    }

    /// Its stdout so far and to come: wait on it for a line the script
    /// prints, e.g. from `BEGIN`, which bpftrace runs only once every probe
    /// is attached (the `Attaching` line comes before the attaching).
    pub fn stdout(&self) -> &Lines {
        &self.proc.stdout
    }

    /// Stops bpftrace (SIGINT, so it prints its maps) and returns its stdout.
    ///
    /// bpftrace 0.17 sometimes takes a SIGINT and goes on sleeping in
    /// epoll_wait until something else wakes it, so the signal is repeated
    /// every second until it exits (bounded by [`WAIT`]).
    pub fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        while self.proc.child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
            self.proc.signal(libc::SIGINT);
            let tick = Instant::now() + Duration::from_secs(1);
            while Instant::now() < tick && self.proc.child.try_wait().expect("try_wait").is_none() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let (status, out, err) = self.proc.stop(libc::SIGINT);
        assert!(
            status.success() || status.code().is_none(),
            "bpftrace failed: {status}\n{}",
            err.join("\n")
        );
        out
    }
}

/// Whether bpftrace can run here; the tests need it, so this panics with the
/// install hint instead of skipping.
pub fn require_bpftrace() {
    let ok = Command::new("bpftrace")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "bpftrace is not installed; run scripts/setup.sh (./test.sh does)"
    );
}

/// A running portsnoop, attached before [`Portsnoop::start`] returns.
pub struct Portsnoop {
    /// The process; its stdout carries the trace unless `-o` was given.
    pub proc: Proc,
    /// Whether `-o FILE` was given: then a `--` command writes to the
    /// process's stdout, else to its stderr.
    output_to_file: bool,
}

impl Portsnoop {
    /// Runs `portsnoop ARGS` and waits for its ready line on stderr.
    pub fn start(args: &[&str]) -> Portsnoop {
        Portsnoop::start_under(&[], args)
    }

    /// Runs `WRAPPER... portsnoop ARGS` (e.g. `unshare -pf --mount-proc`)
    /// and waits for portsnoop's ready line on stderr.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Portsnoop {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(bin("portsnoop"));
                cmd
            }
            None => Command::new(bin("portsnoop")),
        };
        cmd.args(args);
        let proc = Proc::spawn(cmd);
        if let Err(e) = proc.stderr.wait_for(WAIT, |l| l.ends_with("; ready")) {
            panic!("portsnoop did not get ready: {e}");
        }
        let output_to_file = args
            .iter()
            .take_while(|a| **a != "--")
            .any(|a| *a == "-o" || *a == "--output" || a.starts_with("--output="));
        Portsnoop {
            proc,
            output_to_file,
        }
    }

    /// For `portsnoop ... -- SERVER --listen 127.0.0.1:0`: waits for the
    /// server's `listening on` line and returns the address. The child
    /// writes to portsnoop's stdout with `-o FILE`, else to its stderr
    /// (portsnoop's output owns stdout then).
    pub fn child_listen_addr(&self) -> SocketAddr {
        let lines = if self.output_to_file {
            &self.proc.stdout
        } else {
            &self.proc.stderr
        };
        let line = lines
            .wait_for(WAIT, |l| l.starts_with("listening on "))
            .unwrap_or_else(|e| panic!("the traced server did not start: {e}"));
        line["listening on ".len()..]
            .trim()
            .parse()
            .expect("listening on IP:PORT")
    }

    /// The traced pid, from the ready line (`tracing pid N (...)`).
    pub fn traced_pid(&self) -> u32 {
        self.proc
            .stderr
            .all()
            .iter()
            .find_map(|l| {
                l.strip_prefix("portsnoop: tracing pid ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
            })
            .expect("a ready line names the traced pid")
    }

    /// Stops it with SIGINT and returns (status, stdout, stderr).
    pub fn finish(self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        self.proc.stop(libc::SIGINT)
    }
}

/// portsnoop's `--json` output, one value per line: every line must be
/// JSON (the output is pure JSON Lines whatever the flags).
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// [`json_lines`] of a file portsnoop wrote with `-o`.
pub fn json_file(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    json_lines(&text.lines().map(String::from).collect::<Vec<_>>())
}

/// What `echo-load` reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Connections that finished without an error.
    pub ok_conns: u64,
    /// Messages echoed and checked.
    pub messages: u64,
    /// Bytes sent (and received back, checked).
    pub bytes: u64,
    /// Messages per second.
    pub msgs_per_sec: f64,
}

/// Runs `echo-load` against `addr` and returns its figures; panics (with
/// its stderr) if any echoed byte was wrong or a connection failed.
pub fn run_load(addr: SocketAddr, conns: u32, msgs: u32, size: u32) -> Load {
    let out = Command::new(bin("echo-load"))
        .args(["--addr", &addr.to_string()])
        .args([
            "--conns",
            &conns.to_string(),
            "--msgs",
            &msgs.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args(["--timeout", "60"])
        .output_bounded()
        .expect("running echo-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "echo-load failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    let field = |k: &str| -> f64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("echo-load printed no {k}: {last}"))
    };
    Load {
        ok_conns: (field("conns") - field("failed")) as u64,
        messages: field("messages") as u64,
        bytes: field("bytes") as u64,
        msgs_per_sec: field("msgs_per_sec"),
    }
}

/// How many sockets `pid` has open right now.
pub fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits (bounded) until `pid` has exactly `n` sockets, e.g. until a server
/// has closed every connection, so all of a load's syscalls have happened.
pub fn wait_for_sockets(pid: u32, n: usize) {
    let deadline = Instant::now() + WAIT;
    while socket_count(pid) != n {
        assert!(
            Instant::now() < deadline,
            "process {pid} still has {} sockets, want {n}",
            socket_count(pid)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is gone: no longer in `/proc`, or a zombie
/// (dead, waiting for a parent that may never reap it).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Waits (bounded by [`WAIT`]) until process `pid` is gone; panics with
/// `what` if it is still running then.
pub fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "{what}: process {pid} still running after {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A Perfetto trace as `tests/perfetto_nesting.py` reads it with the
/// protos the `perfetto` Python package ships (an independent reader: no
/// code of portsnoop's): tracks, slices with their parents, instants.
pub fn perfetto_nesting(trace: &Path) -> serde_json::Value {
    let script = workspace_root().join("tests").join("perfetto_nesting.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(trace)
        .output()
        .expect("running python3 (scripts/setup.sh installs it with the perfetto package)");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("perfetto_nesting.py prints JSON")
}

/// Each thread of `pid` with its state, its wait channel and its kernel
/// stack (root can read it): what a process that will not exit waits on.
fn where_threads_wait(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_string();
        out.push_str(&format!(
            "  {} {} {state} wchan {}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}

/// A new empty directory for one test's files (recordings, traces, copies
/// of binaries), unique to this process and moment: `portsnoop-TAG-PID-NS`
/// under the system's temp dir. Tests remove it when they pass; a failed
/// one's is kept to look at.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("portsnoop-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The environment variable that turns a test binary into a server: see
/// [`serve_self`].
pub const SERVE: &str = "EVLOOP_TEST_SERVE";

/// The running test binary started again as a server: only its
/// `serve_helper` test runs, with [`SERVE`] set to `mode`, which that test
/// reads to know what to serve. Returns the process and what it printed
/// after `listening on ` once it did.
pub fn serve_self(mode: &str) -> (Proc, String) {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args([
        "--exact",
        "serve_helper",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(SERVE, mode);
    let proc = Proc::spawn(cmd);
    // libtest prints `test serve_helper ... ` on the same line first.
    const MARK: &str = "listening on ";
    let line = proc
        .stdout
        .wait_for(WAIT, |l| l.contains(MARK))
        .unwrap_or_else(|e| panic!("{mode} did not start: {e}"));
    let addr = line[line.find(MARK).unwrap() + MARK.len()..]
        .trim()
        .to_string();
    (proc, addr)
}

/// How long a command run to its end ([`OutputBounded`]) may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// [`Command::output`] with a bound: a command that hangs (a portsnoop
/// that does not exit) fails its test with where its threads wait, instead
/// of holding up the whole suite until CI gives up on it.
pub trait OutputBounded {
    /// Runs to the end within [`RUN_LIMIT`] and returns its status and
    /// output; panics if it takes longer. Unlike `output`, stdin is
    /// inherited unless the command sets it (a `Command` does not say).
    fn output_bounded(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputBounded for Command {
    fn output_bounded(&mut self) -> std::io::Result<std::process::Output> {
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let drain = |mut r: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = drain(Box::new(child.stdout.take().expect("piped")));
        let err = drain(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let threads = where_threads_wait(child.id());
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} did not end within {RUN_LIMIT:?}; its threads:\n{threads}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(std::process::Output {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        })
    }
}
