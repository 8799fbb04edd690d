//! The probe sites as other tracers see them: every note live (bpftrace and
//! bcc list the probes without an "invalid address" warning), one site per
//! probe, and `portsnoop list --perf`'s tracefs definitions accepted by the
//! kernel and reading the exact values fired, through tracefs and through
//! `perf record`.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use portsnoop::engine::sites_in;
use tests::{bin, OutputBounded, Proc, WAIT};

/// Through the harness, not `CARGO_BIN_EXE_probe-fixture`: `cargo test` and the
/// harness's `cargo build` link it with different features and each puts its
/// own copy at that path, so a fixture started from it can be running a
/// deleted file by the time a probe is attached by path.
static FIXTURE: LazyLock<String> =
    LazyLock::new(|| tests::bin("probe-fixture").to_str().unwrap().to_string());
const TRACEFS: &str = "/sys/kernel/tracing";

/// The binaries built with the provider that tracers are pointed at.
fn probed_binaries() -> Vec<PathBuf> {
    vec![bin("echo-mio"), bin("echo-tokio"), PathBuf::from(&*FIXTURE)]
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn every_note_is_a_live_site_and_each_probe_has_one() {
    for path in probed_binaries() {
        let sites = sites_in(&path, "evloop").unwrap();
        assert_eq!(sites.dead, 0, "{}: dead notes", path.display());
        let names: Vec<&str> = sites.sites.iter().map(|s| s.probe.as_str()).collect();
        let distinct: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(distinct.len(), 11, "{}: {names:?}", path.display());
        assert_eq!(
            names.len(),
            11,
            "{}: one site per probe: {names:?}",
            path.display()
        );
    }
}

/// Runs a lister; returns (evloop probe names listed, everything it said).
fn run_lister(cmd: &mut Command) -> (BTreeSet<String>, String) {
    let out = cmd.output_bounded().expect("running the lister");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let all = format!("{stdout}{stderr}");
    assert!(out.status.success(), "{cmd:?} failed:\n{all}");
    let names = stdout
        .lines()
        .filter_map(|l| l.split_once("evloop:").map(|(_, n)| n.trim().to_string()))
        .collect();
    (names, all)
}

#[test]
fn bpftrace_and_bcc_list_every_probe_without_a_warning() {
    tests::require_bpftrace();
    // bcc's tplist, if installed (Debian: bpfcc-tools).
    let tplist = ["tplist-bpfcc", "tplist"].into_iter().find(|t| have(t));
    if tplist.is_none() {
        eprintln!("tplist not installed (bpfcc-tools): checking bpftrace only");
    }
    for path in probed_binaries() {
        let p = path.to_str().unwrap();
        let (names, all) =
            run_lister(Command::new("bpftrace").args(["-l", &format!("usdt:{p}:*")]));
        assert!(!all.contains("invalid address"), "bpftrace -l {p}:\n{all}");
        assert_eq!(names.len(), 11, "bpftrace -l {p}:\n{all}");
        if let Some(tplist) = tplist {
            let (names, all) = run_lister(Command::new(tplist).args(["-l", p]));
            assert!(!all.contains("invalid address"), "{tplist} -l {p}:\n{all}");
            assert!(
                !all.to_lowercase().contains("warn"),
                "{tplist} -l {p}:\n{all}"
            );
            assert_eq!(names.len(), 11, "{tplist} -l {p}:\n{all}");
        }
    }
}

/// The lines of `portsnoop list --perf ARGS`, and whether it succeeded.
fn list_perf(args: &[&str]) -> Vec<String> {
    let out = Command::new(bin("portsnoop"))
        .args(["list", "--perf"])
        .args(args)
        .output_bounded()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// Uprobe events this test added under its own group, removed on drop
/// (events disabled and the tracefs instance gone first), however the
/// test ends.
struct UprobeEvents {
    group: String,
    names: Vec<String>,
    instance: PathBuf,
}

impl UprobeEvents {
    /// Adds `portsnoop list --perf`'s definitions with the group renamed
    /// to one unique to this test, and makes a tracefs instance (a trace
    /// buffer of its own) for reading them.
    fn add(definitions: &[String], tag: &str) -> UprobeEvents {
        static N: AtomicU32 = AtomicU32::new(0);
        let group = format!(
            "evlooptest{}_{}{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let instance = Path::new(TRACEFS).join("instances").join(&group);
        let mut events = UprobeEvents {
            group: group.clone(),
            names: Vec::new(),
            instance,
        };
        // Append: opening uprobe_events with O_TRUNC would remove every
        // other uprobe event on the machine.
        let mut f = OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))
            .expect("opening uprobe_events (root, tracefs mounted)");
        for def in definitions {
            let def = def
                .strip_prefix("p:evloop/")
                .unwrap_or_else(|| panic!("a definition of the evloop group: {def}"));
            let name = def.split_whitespace().next().unwrap().to_string();
            let line = format!("p:{group}/{def}\n");
            f.write_all(line.as_bytes())
                .unwrap_or_else(|e| panic!("the kernel refused {line:?}: {e}"));
            events.names.push(name);
        }
        std::fs::create_dir(&events.instance).expect("making a tracefs instance");
        events
    }

    /// Starts recording every event of the group into the instance's buffer.
    fn enable(&self) {
        std::fs::write(
            self.instance
                .join("events")
                .join(&self.group)
                .join("enable"),
            "1",
        )
        .unwrap();
    }

    /// What the instance's buffer holds.
    fn trace(&self) -> String {
        std::fs::read_to_string(self.instance.join("trace")).unwrap()
    }

    /// How many times event `name` on the fixture was hit, as
    /// `uprobe_profile` counts (its lines: path, event, hits). The line
    /// does not name the group: [`KERNEL`] keeps this test's groups apart.
    fn hits(&self, name: &str) -> u64 {
        let profile = std::fs::read_to_string(Path::new(TRACEFS).join("uprobe_profile")).unwrap();
        profile
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[0] == *FIXTURE && f[1] == name).then(|| f[2].parse::<u64>().ok())
            })
            .flatten()
            .sum()
    }
}

/// Held by each test that adds uprobe events on the fixture, one at a time.
static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for UprobeEvents {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.instance
                .join("events")
                .join(&self.group)
                .join("enable"),
            "0",
        );
        let _ = std::fs::remove_dir(&self.instance);
        if let Ok(mut f) = OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))
        {
            for name in &self.names {
                let _ = f.write_all(format!("-:{}/{name}\n", self.group).as_bytes());
            }
        }
    }
}

fn start_fixture() -> Proc {
    let proc = Proc::spawn(Command::new(&*FIXTURE));
    proc.stdout
        .wait_for(WAIT, |l| l == "ready")
        .expect("fixture ready");
    proc
}

fn fire(fixture: &mut Proc, round: u32) {
    fixture.signal(libc::SIGUSR1);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == format!("fired {round}"))
        .expect("round fired");
}

/// The values the fixture fires, as tracefs prints the definitions' fetches.
fn expected_fields() -> Vec<&'static str> {
    vec![
        "eventer_accept_entry: (",
        "fd=3 addr=4096 addrlen=16 mask=1 closure=12648430",
        "fd=3 addr=4096 addrlen=16 mask=1 closure=12648430 rv=7",
        "fd=7 buf=8192 len=4096 mask=1 closure=12648430",
        "fd=7 buf=8192 len=4096 mask=1 closure=12648430 rv=-11",
        "fd=7 buf=8192 len=4096 mask=1 closure=12648430 rv=100",
        "fd=7 buf=12288 len=512 mask=2 closure=12648430 rv=512",
        "fd=7 mask=4 closure=12648430",
        "fd=7 mask=4 closure=12648430 rv=0",
        "fd=7 mask=1 newmask=3",
        "closure=12648430 event=42 ",
        " rv=2",
        "line=",
        "fd=102 buf=16384 len=99 mask=1 closure=12648430",
    ]
}

fn definitions(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .cloned()
        .collect()
}

#[test]
fn list_perf_definitions_are_accepted_and_read_the_exact_values() {
    tests::require_bpftrace(); // root and tracefs, as bpftrace needs
    let _one = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fixture = start_fixture();
    let pid = fixture.pid().to_string();
    // By path and by pid: the same sites, one definition per probe.
    let by_path = list_perf(&[FIXTURE.as_str()]);
    let by_pid = list_perf(&["-p", &pid]);
    assert!(by_path[0].starts_with("# as root: "), "{by_path:?}");
    let defs = definitions(&by_path);
    assert_eq!(defs.len(), 11, "{by_path:#?}");
    assert_eq!(definitions(&by_pid).len(), 11, "{by_pid:#?}");
    let read_return = defs
        .iter()
        .find(|d| d.starts_with("p:evloop/eventer_read_return "))
        .expect("read-return defined");
    assert!(
        read_return.ends_with(
            " fd=%di:s32 buf=%si:u64 len=%dx:u64 mask=%cx:s32 closure=%r8:u64 rv=%r9:s64"
        ),
        "{read_return}"
    );
    let site = &sites_in(Path::new(&*FIXTURE), "evloop")
        .unwrap()
        .sites
        .into_iter()
        .find(|s| s.probe.as_str() == "eventer-read-return")
        .unwrap();
    assert!(
        read_return.contains(&format!(
            "{}:{:#x}({:#x}) ",
            *FIXTURE, site.offset, site.semaphore_offset
        )),
        "file offsets of the site and its semaphore: {read_return}"
    );

    let events = UprobeEvents::add(&defs, "");
    events.enable();
    fire(&mut fixture, 1);
    let trace = events.trace();
    for want in expected_fields() {
        assert!(trace.contains(want), "no {want:?} in:\n{trace}");
    }
    // The whole line of one probe, fetch by fetch.
    assert!(
        trace.lines().any(|l| l.contains(" eventer_read_return: (")
            && l.ends_with(") fd=7 buf=8192 len=4096 mask=1 closure=12648430 rv=-11")),
        "{trace}"
    );
}

#[test]
fn perf_record_reads_the_exact_values_through_the_definitions() {
    tests::require_bpftrace();
    if !have("perf") {
        eprintln!("perf not installed (Debian: linux-perf): skipped");
        return;
    }
    let _one = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fixture = start_fixture();
    let defs = definitions(&list_perf(&[FIXTURE.as_str()]));
    let events = UprobeEvents::add(&defs, "p");
    let data = std::env::temp_dir().join(format!("{}.perf.data", events.group));
    let mut perf = Proc::spawn({
        let mut c = Command::new("perf");
        c.args(["record", "-q", "-e"])
            .arg(format!("{}:*", events.group))
            .args(["-p", &fixture.pid().to_string(), "-o"])
            .arg(&data);
        c
    });
    // perf says nothing once it is attached: fire until the kernel counts
    // hits on the event (the uprobe exists and is enabled).
    let deadline = Instant::now() + WAIT;
    let mut round = 0;
    while events.hits("eventer_read_return") == 0 {
        assert!(
            Instant::now() < deadline,
            "perf never enabled the events; perf said:\n{}\nuprobe_profile:\n{}",
            perf.stderr.all().join("\n"),
            std::fs::read_to_string(Path::new(TRACEFS).join("uprobe_profile")).unwrap()
        );
        round += 1;
        fire(&mut fixture, round);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kernel counts hits from when perf opens the event, and perf
    // enables recording a moment later (after mapping its buffers), which
    // it does not say either: every round fires the same values, so go on
    // firing for a second; perf records the later rounds.
    for _ in 0..10 {
        round += 1;
        fire(&mut fixture, round);
        std::thread::sleep(Duration::from_millis(100));
    }
    perf.signal(libc::SIGINT);
    let status = perf.wait_exit(WAIT);
    // perf record ends a SIGINT by raising it again once its data is written.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGINT),
        "perf record: {status}: {}",
        perf.stderr.all().join("\n")
    );
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .output_bounded()
        .unwrap();
    let _ = std::fs::remove_file(&data);
    let out = String::from_utf8_lossy(&script.stdout);
    for want in expected_fields() {
        assert!(out.contains(want), "no {want:?} in perf script:\n{out}");
    }
}

#[test]
fn probes_compiled_out_leave_no_note() {
    // The examples call `usdt_provider::register()` either way: that alone
    // must not link the sites (or their notes) in.
    for name in ["echo-mio", "echo-tokio"] {
        let path = tests::noprobes_bin(name);
        let notes = portsnoop::list::probes_in(&path).unwrap();
        assert!(notes.is_empty(), "{}: {notes:?}", path.display());
    }
}
