//! portsnoop beside other tracers: another tool's uprobe on an `evloop`
//! probe site, without the semaphore as its reference counter, is shared,
//! not a reason to refuse to start.
//!
//! The kernel keeps one uprobe per file and offset with one reference
//! counter, so these tests put real uprobes on a site of the real
//! `echo-mio` binary: through tracefs (as `perf probe` does) and through the
//! perf uprobe PMU (as bpftrace and libbpf do). bpftrace itself cannot be
//! the other tool here: 0.17 refuses `uprobe:BIN:0xADDR` inside a function
//! ("compiled without (k|u)probe offset support"), `--unsafe` or not.
//!
//! A uprobe is global to the binary (every process running it), so the tests
//! take turns ([`one_at_a_time`]): each counts the sites its portsnoop
//! shares, and a parallel test's uprobe would add to them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use portsnoop::engine::{sites_in, Site};
use portsnoop::event::ProbeName;
use serde_json::Value;
use tests::{bin, json_lines, run_load, socket_count, wait_for_sockets, Portsnoop, Server};

const TRACEFS: &str = "/sys/kernel/tracing";

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The live sites of `probe` in `exe` (a probe the compiler inlined in
/// several places has several).
fn sites_of(exe: &Path, probe: ProbeName) -> Vec<Site> {
    let sites = sites_in(exe, "evloop").expect("reading echo-mio's notes");
    let of_probe: Vec<Site> = sites
        .sites
        .into_iter()
        .filter(|s| s.probe == probe)
        .collect();
    assert!(!of_probe.is_empty(), "no {} site", probe.as_str());
    for site in &of_probe {
        assert_ne!(site.semaphore_offset, 0, "the probe has a semaphore");
    }
    of_probe
}

/// The first live site of `probe` in `exe`.
fn site_of(exe: &Path, probe: ProbeName) -> Site {
    sites_of(exe, probe).remove(0)
}

/// The semaphore of `site` in process `pid`, read from its memory. Found
/// independently of portsnoop's own search: echo-mio is a PIE whose first
/// segment is at address 0, so the semaphore is at the load base plus its
/// link-time address.
fn semaphore(pid: u32, exe: &Path, site: &Site) -> u16 {
    let header = std::fs::read(exe).unwrap();
    assert_eq!(header[16..18], [3, 0], "echo-mio is a PIE (ET_DYN)");
    let exe = exe.canonicalize().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && Path::new(f[5]) == exe && f[2] == "00000000")
                .then(|| u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap())
        })
        .expect("echo-mio's first mapping");
    let mut bytes = [0u8; 2];
    File::open(format!("/proc/{pid}/mem"))
        .unwrap()
        .read_exact_at(&mut bytes, base + site.semaphore_address)
        .unwrap();
    u16::from_ne_bytes(bytes)
}

/// A tracefs uprobe event, enabled; disabled and removed on drop, also when
/// the test fails.
struct TracefsUprobe {
    name: String,
}

impl TracefsUprobe {
    /// `p:evloop_test/EVENT EXE:0xOFFSET[(0xREF_CTR)]`, then enabled: only
    /// then does the kernel register the uprobe.
    fn add(event: &str, exe: &Path, offset: u64, ref_ctr: Option<u64>) -> TracefsUprobe {
        // Unique per test run: a parallel run or a crashed one keeps its own.
        let name = format!("evloop_test/{event}_{}", std::process::id());
        let ref_ctr = ref_ctr.map(|r| format!("({r:#x})")).unwrap_or_default();
        append(
            &format!("{TRACEFS}/uprobe_events"),
            &format!("p:{name} {}:{offset:#x}{ref_ctr}", exe.display()),
        );
        let probe = TracefsUprobe { name };
        append(&probe.enable_path(), "1");
        probe
    }

    fn enable_path(&self) -> String {
        format!("{TRACEFS}/events/{}/enable", self.name)
    }
}

impl Drop for TracefsUprobe {
    fn drop(&mut self) {
        let _ = std::fs::write(self.enable_path(), "0");
        let _ = OpenOptions::new()
            .append(true)
            .open(format!("{TRACEFS}/uprobe_events"))
            .and_then(|mut f| f.write_all(format!("-:{}\n", self.name).as_bytes()));
    }
}

fn append(path: &str, line: &str) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .unwrap_or_else(|e| {
            panic!("writing {line:?} to {path} (tracefs mounted? scripts/setup.sh mounts it): {e}")
        });
}

/// A uprobe made through the perf uprobe PMU, as bpftrace's and libbpf's
/// are, without a reference counter: a counting perf event on process
/// `pid`, closed on drop.
struct PmuUprobe {
    fd: OwnedFd,
    _path: std::ffi::CString,
}

impl PmuUprobe {
    fn open(exe: &Path, offset: u64, pid: u32) -> PmuUprobe {
        let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
            .expect("the uprobe PMU")
            .trim()
            .parse()
            .unwrap();
        let path = std::ffi::CString::new(exe.to_str().unwrap()).unwrap();
        // struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes):
        // type, size, then config1 (the path) at byte 56 and config2 (the
        // file offset) at 64. Everything else 0: enabled, counting.
        let mut attr = [0u64; 14];
        attr[0] = u64::from(pmu) | (112 << 32);
        attr[7] = path.as_ptr() as u64;
        attr[8] = offset;
        // SAFETY: perf_event_open reads `attr` (and the path it points to,
        // alive in `path`) and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid as libc::pid_t,
                -1,
                -1,
                libc::c_ulong::from(8u8), // PERF_FLAG_FD_CLOEXEC
            )
        };
        assert!(
            fd >= 0,
            "perf_event_open of a uprobe: {}",
            std::io::Error::last_os_error()
        );
        PmuUprobe {
            // SAFETY: a new fd we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            _path: path,
        }
    }

    /// How often the site fired in the process so far.
    fn hits(&self) -> u64 {
        let mut bytes = [0u8; 8];
        File::from(self.fd.try_clone().unwrap())
            .read_exact(&mut bytes)
            .expect("reading the perf counter");
        u64::from_ne_bytes(bytes)
    }
}

fn probes_named(records: &[Value], probe: ProbeName) -> usize {
    records
        .iter()
        .filter(|r| r["type"] == "probe" && r["name"] == probe.as_str())
        .count()
}

/// What one portsnoop run beside another tool's uprobe showed.
struct Run {
    records: Vec<Value>,
    stderr: String,
    messages: u64,
}

/// Traces `server` with `portsnoop -p PID --json` under a small load; checks
/// that the semaphore of `site` is held up while it runs if `shared`.
fn trace(server: &Server, exe: &Path, site: &Site, before: u16, shared: bool) -> Run {
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    let during = semaphore(server.pid(), exe, site);
    if shared {
        assert_eq!(during, before + 1, "portsnoop holds the semaphore up");
    }
    let load = run_load(server.addr, 2, 50, 32);
    wait_for_sockets(server.pid(), baseline);
    let (status, out, err) = snoop.finish();
    let stderr = err.join("\n");
    assert!(status.success(), "portsnoop failed: {status}\n{stderr}");
    Run {
        records: json_lines(&out),
        stderr,
        messages: load.messages,
    }
}

fn echo_mio() -> PathBuf {
    bin("echo-mio").canonicalize().unwrap()
}

#[test]
fn a_tracefs_uprobe_on_a_probe_site_is_shared() {
    let _turn = one_at_a_time();
    let exe = echo_mio();
    let site = site_of(&exe, ProbeName::ReadEntry);
    let server = Server::start("echo-mio", &[]);
    let before = semaphore(server.pid(), &exe, &site);
    let other = TracefsUprobe::add("tracefs", &exe, site.offset, None);

    let run = trace(&server, &exe, &site, before, true);
    let warning = format!(
        "another uprobe on evloop:eventer-read-entry at {:#x} has no semaphore reference counter \
         (tracefs has uprobe {} there); portsnoop sets the semaphore itself",
        site.offset, other.name
    );
    assert!(run.stderr.contains(&warning), "says so:\n{}", run.stderr);
    assert!(
        run.stderr
            .contains("11 evloop probes (1 site shared with another uprobe, 0 skipped)"),
        "ready line counts it:\n{}",
        run.stderr
    );
    let reads = probes_named(&run.records, ProbeName::ReadEntry);
    assert!(
        reads as u64 >= run.messages,
        "every message's read is seen at the shared site: {reads} reads for {} messages",
        run.messages
    );
    assert_eq!(
        semaphore(server.pid(), &exe, &site),
        before,
        "the semaphore is given back"
    );
}

#[test]
fn a_perf_pmu_uprobe_on_a_probe_site_is_shared_and_keeps_working() {
    let _turn = one_at_a_time();
    let exe = echo_mio();
    let site = site_of(&exe, ProbeName::WriteEntry);
    let server = Server::start("echo-mio", &[]);
    let before = semaphore(server.pid(), &exe, &site);
    let other = PmuUprobe::open(&exe, site.offset, server.pid());

    let run = trace(&server, &exe, &site, before, true);
    let warning = format!(
        "another uprobe on evloop:eventer-write-entry at {:#x} has no semaphore reference counter; \
         portsnoop sets the semaphore itself",
        site.offset
    );
    assert!(run.stderr.contains(&warning), "says so:\n{}", run.stderr);
    assert!(
        run.stderr
            .contains("(1 site shared with another uprobe, 0 skipped)"),
        "{}",
        run.stderr
    );
    let writes = probes_named(&run.records, ProbeName::WriteEntry);
    assert!(
        writes as u64 >= run.messages,
        "{writes} writes for {} messages",
        run.messages
    );
    // The other tool saw the site fire too while portsnoop held the
    // semaphore up...
    let hits = other.hits();
    assert!(hits >= run.messages, "the other uprobe fired {hits} times");
    // ...and once portsnoop is gone the probe is disabled again: a load
    // makes no more fires.
    assert_eq!(semaphore(server.pid(), &exe, &site), before);
    run_load(server.addr, 1, 20, 32);
    assert_eq!(other.hits(), hits, "the probe is disabled again");
}

#[test]
fn a_uprobe_with_another_reference_counter_skips_only_that_site() {
    let _turn = one_at_a_time();
    let exe = echo_mio();
    // Every site of the probe, so that none of its events come through.
    let sites = sites_of(&exe, ProbeName::CloseEntry);
    let site = sites[0].clone();
    // Another probe's semaphore as the other uprobe's counter: the kernel
    // then increments that one, which only enables a probe.
    let other_counter = site_of(&exe, ProbeName::AcceptEntry).semaphore_offset;
    let server = Server::start("echo-mio", &[]);
    let before = semaphore(server.pid(), &exe, &site);
    let others: Vec<TracefsUprobe> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            TracefsUprobe::add(&format!("refctr{i}"), &exe, s.offset, Some(other_counter))
        })
        .collect();
    let other = &others[0];

    let run = trace(&server, &exe, &site, before, false);
    let warning = format!(
        "cannot share evloop:eventer-close-entry at {:#x} with another uprobe (tracefs has uprobe {} there): \
         the kernel allows one semaphore reference counter per site",
        site.offset, other.name
    );
    assert!(run.stderr.contains(&warning), "says so:\n{}", run.stderr);
    assert!(run.stderr.contains("skipping this site"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "10 evloop probes (0 sites shared with another uprobe, {} skipped)",
            sites.len()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(probes_named(&run.records, ProbeName::CloseEntry), 0);
    assert!(
        probes_named(&run.records, ProbeName::ReadEntry) as u64 >= run.messages,
        "the other sites are traced"
    );
    assert_eq!(semaphore(server.pid(), &exe, &site), before);
}
