//! The `evloop` provider as tracers see it: ELF notes, the D definition,
//! exact argument values under real bpftrace, bad input, and the README's
//! one-liners, each run for real.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use portsnoop::list::probes_in;
use tests::{bin, workspace_root, Bpftrace, OutputBounded, Proc, WAIT};

/// Through the harness, not `CARGO_BIN_EXE_probe-fixture`: `cargo test` and the
/// harness's `cargo build` link it with different features and each puts its
/// own copy at that path, so a fixture started from it can be running a
/// deleted file by the time a probe is attached by path.
static FIXTURE: LazyLock<String> =
    LazyLock::new(|| tests::bin("probe-fixture").to_str().unwrap().to_string());

/// `(size in bytes, signed)` of each argument, from a stapsdt spec such as
/// `-4@%edi 8@%rsi`.
fn note_args(spec: &str) -> Vec<(u32, bool)> {
    spec.split_whitespace()
        .map(|a| {
            let size: i32 = a.split('@').next().unwrap().parse().unwrap();
            (size.unsigned_abs(), size < 0)
        })
        .collect()
}

/// The probes of `evloop.d`: name as tracers see it -> argument shapes.
fn d_probes() -> BTreeMap<String, Vec<(u32, bool)>> {
    let text = std::fs::read_to_string(workspace_root().join("usdt-provider/evloop.d")).unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("probe "))
    {
        let (name, rest) = line["probe ".len()..].split_once('(').unwrap();
        let args = rest.trim_end_matches(");");
        let shapes = args
            .split(',')
            .map(|a| {
                let a = a.trim();
                match a {
                    _ if a.starts_with("char *") => (8, false),
                    _ if a.starts_with("int32_t") => (4, true),
                    _ if a.starts_with("int64_t") => (8, true),
                    _ if a.starts_with("uint64_t") => (8, false),
                    other => panic!("evloop.d: type of {other:?} not known to this test"),
                }
            })
            .collect();
        out.insert(name.replace("__", "-"), shapes);
    }
    out
}

/// The `evloop` probes in a binary's notes: name -> argument shapes (every
/// site of a probe must agree).
fn elf_probes(path: &Path) -> BTreeMap<String, Vec<(u32, bool)>> {
    let mut out: BTreeMap<String, Vec<(u32, bool)>> = BTreeMap::new();
    for p in probes_in(path)
        .unwrap()
        .into_iter()
        .filter(|p| p.provider == "evloop")
    {
        assert_ne!(p.semaphore, 0, "{} has a semaphore", p.name);
        let args = note_args(&p.args);
        if let Some(seen) = out.insert(p.name.clone(), args.clone()) {
            assert_eq!(
                seen, args,
                "every site of {} has the same arguments",
                p.name
            );
        }
    }
    out
}

#[test]
fn every_probe_is_in_the_elf_notes_as_the_d_file_declares_it() {
    let d = d_probes();
    assert_eq!(d.len(), 11, "evloop.d declares 11 probes: {:?}", d.keys());
    for binary in [PathBuf::from(&*FIXTURE), bin("echo-mio")] {
        let notes = elf_probes(&binary);
        assert_eq!(notes, d, "{} agrees with evloop.d", binary.display());
    }
    // Spot-check the shapes against libmtev's: (int fd, ..., int rv).
    assert_eq!(
        d["eventer-read-return"],
        vec![
            (4, true),
            (8, false),
            (8, false),
            (4, true),
            (8, false),
            (8, true)
        ]
    );
    assert_eq!(d["eventer-callback-return"].len(), 4);
}

fn start_fixture() -> Proc {
    let proc = Proc::spawn(Command::new(&*FIXTURE));
    proc.stdout
        .wait_for(WAIT, |l| l == "ready")
        .expect("fixture ready");
    proc
}

/// Fires one round and waits until the fixture says it is done; returns
/// the line number its `log` probe reported.
fn fire(fixture: &mut Proc, round: u32) -> u32 {
    fixture.signal(libc::SIGUSR1);
    fixture
        .stdout
        .wait_for(WAIT, |l| l == format!("fired {round}"))
        .expect("round fired");
    let lines = fixture.stdout.all();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("log-line "))
        .unwrap()
        .parse()
        .unwrap()
}

const EVERY_PROBE: &str = r#"
usdt:$BIN:evloop:eventer-accept-entry { printf("accept-entry %d %lu %d %d %lu\n", arg0, arg1, arg2, arg3, arg4); }
usdt:$BIN:evloop:eventer-accept-return { printf("accept-return %d %lu %d %d %lu %ld\n", arg0, arg1, arg2, arg3, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-read-entry { printf("read-entry %d %lu %lu %d %lu\n", arg0, arg1, arg2, arg3, arg4); }
usdt:$BIN:evloop:eventer-read-return { printf("read-return %d %lu %lu %d %lu %ld\n", arg0, arg1, arg2, arg3, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-write-entry { printf("write-entry %d %lu %lu %d %lu\n", arg0, arg1, arg2, arg3, arg4); }
usdt:$BIN:evloop:eventer-write-return { printf("write-return %d %lu %lu %d %lu %ld\n", arg0, arg1, arg2, arg3, arg4, (int64)arg5); }
usdt:$BIN:evloop:eventer-close-entry { printf("close-entry %d %d %lu\n", arg0, arg1, arg2); }
usdt:$BIN:evloop:eventer-close-return { printf("close-return %d %d %lu %ld\n", arg0, arg1, arg2, (int64)arg3); }
usdt:$BIN:evloop:eventer-callback-entry { printf("callback-entry %lu %lu [%s] %d %d %d\n", arg0, arg1, str(arg2), arg3, arg4, arg5); }
usdt:$BIN:evloop:eventer-callback-return { printf("callback-return %lu %lu [%s] %d\n", arg0, arg1, str(arg2), arg3); }
usdt:$BIN:evloop:log { printf("log [%s] [%s] %d [%s]\n", str(arg0), str(arg1), arg2, str(arg3)); }
"#;

/// The tests that attach bpftrace take turns: two attaching to the same
/// binary at once made one of them exit before its BEGIN now and then
/// ("bpftrace did not attach: stream closed").
fn one_bpftrace_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn bpftrace_sees_exactly_the_values_passed_including_bad_input() {
    let _turn = one_bpftrace_at_a_time();
    tests::require_bpftrace();
    let mut fixture = start_fixture();
    let bt = Bpftrace::start(EVERY_PROBE, fixture.pid());
    let log_line = fire(&mut fixture, 1);
    // The bad-input round ends with read-entry on fd 102.
    bt.stdout()
        .wait_for(WAIT, |l| l.starts_with("read-entry 102 "))
        .expect("every probe printed");
    let out = bt.finish();
    let has = |want: &str| {
        assert!(
            out.iter().any(|l| l == want),
            "no line {want:?} in:\n{}",
            out.join("\n")
        )
    };
    let c = 0xc0ffee;
    has(&format!("accept-entry 3 4096 16 1 {c}"));
    has(&format!("accept-return 3 4096 16 1 {c} 7"));
    has(&format!("read-entry 7 8192 4096 1 {c}"));
    has(&format!("read-return 7 8192 4096 1 {c} -11"));
    has(&format!("read-return 7 8192 4096 1 {c} 100"));
    has(&format!("write-entry 7 12288 512 2 {c}"));
    has(&format!("write-return 7 12288 512 2 {c} 512"));
    has(&format!("close-entry 7 4 {c}"));
    has(&format!("close-return 7 4 {c} 0"));
    has(&format!("callback-entry {c} 42 [fixture-cb] 7 1 3"));
    has(&format!("callback-return {c} 42 [fixture-cb] 2"));
    has(&format!(
        "log [fixture] [tests/src/bin/probe-fixture.rs] {log_line} [hello 123]"
    ));
    // Bad input: an interior NUL ends the name; a 64 KiB name is cut by the
    // tracer; invalid UTF-8 arrives as replacement characters; and the probe
    // after each is intact.
    has(&format!("callback-entry {c} 42 [bad] 7 1 3"));
    assert!(out.iter().any(
        |l| l.starts_with(&format!("callback-entry {c} 42 [xxxxxxxx")) && l.ends_with("] 7 1 3")
    ));
    has(&format!("callback-entry {c} 42 [b\u{fffd}\u{fffd}d] 7 1 3"));
    for fd in 100..103 {
        has(&format!("read-entry {fd} 16384 99 1 {c}"));
    }
}

/// The fenced ```bpftrace blocks of the crate README, with their
/// `// expect:` lines.
fn readme_one_liners() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(workspace_root().join("usdt-provider/README.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```bpftrace" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let expect = body
            .iter()
            .filter_map(|l| l.trim().strip_prefix("// expect:"))
            .map(|e| e.trim().to_string())
            .collect();
        out.push((body.join("\n").replace("BIN", "$BIN"), expect));
    }
    out
}

#[test]
fn the_readme_one_liners_run_and_print_what_they_promise() {
    let _turn = one_bpftrace_at_a_time();
    tests::require_bpftrace();
    let one_liners = readme_one_liners();
    assert!(
        one_liners.len() >= 4,
        "README has its one-liners: {}",
        one_liners.len()
    );
    let mut fixture = start_fixture();
    for (round, (script, expect)) in one_liners.iter().enumerate() {
        assert!(
            !expect.is_empty(),
            "each one-liner says what it prints:\n{script}"
        );
        let bt = Bpftrace::start(script, fixture.pid());
        fire(&mut fixture, round as u32 + 1);
        // Aggregations print at exit; give the last events a moment to land.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let out = bt.finish().join("\n");
        for e in expect {
            assert!(
                out.contains(e.as_str()),
                "one-liner\n{script}\nprinted no {e:?}:\n{out}"
            );
        }
    }
    // And the listing one.
    let list = Command::new("bpftrace")
        .args(["-l", &format!("usdt:{}:evloop:*", *FIXTURE)])
        .output_bounded()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains(":evloop:")).count(),
        11,
        "{listed}"
    );
}
