//! `portsnoop count` end to end: a workload with known counts (`dd bs=1
//! count=N` reads and writes at least N times) counted for its pid,
//! system-wide and by fd; the JSON Lines' fields; a table too small to
//! hold the rows reported, never silent; bad input refused clearly.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{bin, json_lines, Portsnoop, Proc, Server, WAIT};

/// dd's calls: N reads of one byte from fd 0 and N writes to fd 1.
const N: u64 = 20_000;

/// A workload that waits for a line on its stdin: its pid is known before
/// it starts, so it can be counted from its first call.
struct Held {
    child: Child,
}

impl Held {
    /// A shell that becomes `dd bs=1 count=N` once released.
    fn dd() -> Held {
        Held::command(Command::new("sh").args([
            "-c",
            &format!("read _; exec dd if=/dev/zero of=/dev/null bs=1 count={N}"),
        ]))
    }

    fn command(cmd: &mut Command) -> Held {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the workload");
        Held { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it run and waits (bounded) for it to finish.
    fn run(&mut self) {
        self.child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("waking sh");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "the workload failed: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the workload did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for a `count -p` to end by itself (its process exited) and
/// returns (status, stdout, stderr).
fn ends_by_itself(mut snoop: Portsnoop) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
    let status = snoop.proc.wait_exit(WAIT);
    let _ = snoop
        .proc
        .stdout
        .wait_for(Duration::from_secs(5), |_| false);
    let _ = snoop
        .proc
        .stderr
        .wait_for(Duration::from_secs(5), |_| false);
    (status, snoop.proc.stdout.all(), snoop.proc.stderr.all())
}

/// The count of `syscall` in `pid`'s rows of the table for comm `dd`.
fn table_count(out: &[String], pid: u32, syscall: &str) -> u64 {
    out.iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == pid.to_string() && f[1] == "dd" && f[2] == syscall)
                .then(|| f[3].parse::<u64>().expect("a count"))
        })
        .sum()
}

fn rows_of<'a>(records: &'a [Value], pid: u32, comm: &str, syscall: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["pid"] == pid && r["comm"] == comm && r["syscall"] == syscall)
        .collect()
}

#[test]
fn count_p_sees_dd_read_and_write_at_least_n_times_and_only_its_pid() {
    let mut dd = Held::dd();
    let pid = dd.pid();
    let snoop = Portsnoop::start(&["count", "-p", &pid.to_string()]);
    dd.run();
    let (status, out, err) = ends_by_itself(snoop);
    assert!(status.success(), "{status}: {err:?}");
    assert_eq!(
        out[0].split_whitespace().collect::<Vec<_>>(),
        ["PID", "CMD", "SYSCALL", "COUNT"],
        "the seed's columns"
    );
    assert!(table_count(&out, pid, "read") >= N, "{out:#?}");
    assert!(table_count(&out, pid, "write") >= N, "{out:#?}");
    // Most calls first, and no other process.
    let counts: Vec<u64> = out[1..]
        .iter()
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{out:#?}");
    assert!(
        out[1..].iter().all(|l| l.starts_with(&format!("{pid} "))),
        "only pid {pid}: {out:#?}"
    );
    // The shell dd replaced is named as it was: a row per image.
    assert!(
        out[1..]
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("sh")),
        "{out:#?}"
    );
}

#[test]
fn count_system_wide_json_has_the_fields_and_the_workload() {
    let mut dd = Held::dd();
    let pid = dd.pid();
    // Room for every row of a busy CI machine while dd runs.
    let snoop = Portsnoop::start(&["count", "--json", "--max-entries", "65536"]);
    dd.run();
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "{status}: {err:?}");
    let records = json_lines(&out);
    let (last, rows) = records.split_last().expect("some output");
    assert_eq!(last["uncounted"], 0, "the table holds it: {last}");
    assert_eq!(last["rows"], rows.len());
    for r in rows {
        assert!(r["pid"].is_u64() && r["comm"].is_string(), "{r}");
        assert!(r["syscall"].is_string() && r["count"].is_u64(), "{r}");
        assert!(r.get("fd").is_none(), "no fd without --by-fd: {r}");
    }
    let read: u64 = rows_of(rows, pid, "dd", "read")
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert!(read >= N, "dd's reads: {read}");
    let pids: std::collections::BTreeSet<u64> =
        rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert!(pids.len() > 1, "system-wide sees more than dd: {pids:?}");
}

#[test]
fn count_by_fd_puts_dd_reads_on_fd_0_and_writes_on_fd_1() {
    let mut dd = Held::dd();
    let pid = dd.pid();
    let snoop = Portsnoop::start(&["count", "--by-fd", "--json", "-p", &pid.to_string()]);
    dd.run();
    let (status, out, err) = ends_by_itself(snoop);
    assert!(status.success(), "{status}: {err:?}");
    let records = json_lines(&out);
    let on = |syscall: &str, fd: i64| -> u64 {
        rows_of(&records, pid, "dd", syscall)
            .iter()
            .filter(|r| r["fd"] == fd)
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    assert!(on("read", 0) >= N, "{records:#?}");
    assert!(on("write", 1) >= N, "{records:#?}");
    // A call without an fd argument has a null fd.
    let exit = rows_of(&records, pid, "dd", "exit_group");
    assert!(exit.len() == 1 && exit[0]["fd"].is_null(), "{exit:?}");
}

#[test]
fn a_full_table_is_reported_with_what_went_uncounted() {
    let mut dd = Held::dd();
    let snoop = Portsnoop::start(&["count", "--json", "--max-entries", "2"]);
    // dd alone makes over 20 kinds of calls: at most 2 rows fit.
    dd.run();
    let (status, out, err) = snoop.finish();
    assert_eq!(
        status.code(),
        Some(3),
        "exit 3: the counts are incomplete; {err:?}"
    );
    let records = json_lines(&out);
    let (last, rows) = records.split_last().expect("some output");
    assert!(rows.len() <= 2, "{rows:?}");
    let uncounted = last["uncounted"].as_u64().expect("an uncounted record");
    assert!(uncounted > 0, "{last}");
    assert_eq!(last["max_entries"], 2);
    let warning = err
        .iter()
        .find(|l| l.contains("WARNING: the count table filled up"))
        .unwrap_or_else(|| panic!("a warning on stderr: {err:?}"));
    assert!(
        warning.contains(&format!(": {uncounted} syscalls went uncounted")),
        "{warning}"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn count_names_32_bit_calls_by_the_i386_table() {
    let mut fixture = Held::command(Command::new(bin("compat-syscall-fixture")).arg(N.to_string()));
    let pid = fixture.pid();
    let snoop = Portsnoop::start(&["count", "--json", "-p", &pid.to_string()]);
    fixture.run();
    let (status, out, err) = ends_by_itself(snoop);
    assert!(status.success(), "{status}: {err:?}");
    let records = json_lines(&out);
    let count = |syscall: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["pid"] == pid && r["syscall"] == syscall)
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    // i386's 20 is getpid; x86-64's 20, writev, must not get them.
    assert!(count("i386:getpid") >= N, "{records:#?}");
    assert!(count("writev") < N, "{records:#?}");
}

#[test]
fn count_p_of_a_thread_counts_its_process() {
    let server = Server::start("echo-tokio", &[]);
    let pid = server.pid();
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("its threads")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != pid)
        .expect("echo-tokio has worker threads");
    let snoop = Portsnoop::start(&["count", "-p", &tid.to_string(), "-d", "0.2"]);
    let (status, _, err) = ends_by_itself(snoop);
    assert!(status.success(), "{status}: {err:?}");
    assert!(
        err.iter()
            .any(|l| l.starts_with(&format!("portsnoop: counting the syscalls of pid {pid} "))),
        "thread {tid} maps to pid {pid}: {err:?}"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin("portsnoop"));
        cmd.arg("count").args(args);
        let mut p = Proc::spawn(cmd);
        let status = p.wait_exit(WAIT);
        let _ = p.stderr.wait_for(Duration::from_secs(5), |_| false);
        (status.code(), p.stderr.all().join("\n"))
    };
    let (code, err) = run(&["-p", "999999999"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such process: 999999999"), "{err}");
    let (code, err) = run(&["--max-entries", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-entries"), "{err}");
    for bad in ["0", "abc", "-1"] {
        let (code, err) = run(&[&format!("--duration={bad}")]);
        assert_eq!(code, Some(2), "-d {bad}: {err}");
        assert!(err.contains("--duration"), "-d {bad}: {err}");
    }
    let (code, err) = run(&["-p", "2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("kernel thread"), "{err}");
    for (code, err) in [run(&["-p", "999999999"]), run(&["-p", "2"])] {
        assert!(!err.contains("panicked"), "{code:?} {err}");
    }
}

#[test]
fn count_in_a_pid_namespace_counts_its_processes_by_its_pids() {
    let snoop = Portsnoop::start_under(
        &["unshare", "-pf", "--kill-child", "--mount-proc"],
        &["count", "--json", "-d", "1"],
    );
    let (status, out, err) = ends_by_itself(snoop);
    assert!(status.success(), "{status}: {err:?}");
    let records = json_lines(&out);
    let (_, rows) = records.split_last().expect("some output");
    // Only portsnoop lives there, as pid 1 (its sleeping and its watchdog
    // thread's polls); the host's processes (pids in the thousands, the
    // test's own among them) have no pid there and are not counted.
    assert!(
        rows.iter()
            .any(|r| r["pid"] == 1 && r["comm"] == "portsnoop"),
        "{rows:#?}"
    );
    assert!(
        rows.iter().all(|r| r["pid"].as_u64() < Some(20)),
        "{rows:#?}"
    );
}
