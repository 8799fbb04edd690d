//! Built with `--cfg evloop_nop5` (test.sh does, in target/nop5), the Linux
//! x86-64 probe sites are the 5-byte nop the kernel optimizes (a uprobe
//! there becomes a call to a trampoline instead of a trap), and the
//! optimized path harms nothing: values the firing code keeps live across a
//! fire come back unchanged while a tracer reads every fire's exact
//! arguments.
#![cfg(all(target_os = "linux", target_arch = "x86_64", evloop_nop5))]

use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;

use portsnoop::engine::sites_in;
use tests::{bin, Bpftrace, Proc, WAIT};

/// Through the harness, not `CARGO_BIN_EXE_probe-fixture`: `cargo test` and the
/// harness's `cargo build` link it with different features and each puts its
/// own copy at that path, so a fixture started from it can be running a
/// deleted file by the time a probe is attached by path.
static FIXTURE: LazyLock<String> =
    LazyLock::new(|| tests::bin("probe-fixture").to_str().unwrap().to_string());

/// `nopl 0x0(%rax,%rax,1)`: the one 5-byte nop Linux optimizes
/// (`x86_nops[5]`, compared byte for byte in `arch/x86/kernel/uprobes.c`).
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const RET: u8 = 0xc3;

#[test]
fn every_site_is_an_optimizable_nop5_in_a_function_of_its_own() {
    for path in [bin("echo-mio"), bin("echo-tokio"), PathBuf::from(&*FIXTURE)] {
        let sites = sites_in(&path, "evloop").unwrap();
        assert_eq!(sites.sites.len(), 11, "{}", path.display());
        let image = std::fs::read(&path).unwrap();
        for site in &sites.sites {
            let at = usize::try_from(site.offset).unwrap();
            let bytes = &image[at..at + 6];
            assert_eq!(
                bytes[..5],
                NOP5,
                "{}: {} is not the optimizable nop5: {bytes:02x?}",
                path.display(),
                site.probe.as_str()
            );
            // Then `ret`: the site is its whole function, so the nop5 is
            // its first instruction and no frame is below it.
            assert_eq!(bytes[5], RET, "{}: {}", path.display(), site.probe.as_str());
            // Functions start 16-byte aligned: the nop5 never crosses a
            // page, which the kernel would not optimize.
            assert_eq!(
                site.address % 16,
                0,
                "{}: {}",
                path.display(),
                site.probe.as_str()
            );
        }
    }
}

/// Fires of one round of `--hold`.
const FIRES: u32 = 20_000;

#[test]
fn values_held_across_optimized_fires_survive_and_every_fire_is_read_exactly() {
    tests::require_bpftrace();
    let mut fixture = Proc::spawn({
        let mut c = Command::new(&*FIXTURE);
        c.args(["--hold", &FIRES.to_string()]);
        c
    });
    fixture
        .stdout
        .wait_for(WAIT, |l| l == "ready")
        .expect("fixture ready");
    // The fixture's len is fd * 3 + 1 on every fire: fires are counted by
    // whether all their arguments are what the fixture passed (key 1).
    let bt = Bpftrace::start(
        "usdt:$BIN:evloop:eventer-read-entry { @exact[arg2 == arg0 * 3 + 1 && arg3 == 1 && arg4 == 0xc0ffee] = count(); }",
        fixture.pid(),
    );
    for round in 1..=2 {
        fixture.signal(libc::SIGUSR1);
        let held = fixture
            .stdout
            .wait_for(WAIT, |l| l.starts_with("held "))
            .expect("a round held");
        assert_eq!(held, format!("held {FIRES} changed 0"), "round {round}");
        fixture
            .stdout
            .wait_for(WAIT, |l| l == format!("fired {round}"))
            .expect("round done");
    }
    // The kernel maps its trampoline into a process when it optimizes a
    // uprobe there: the fires above took the optimized path.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", fixture.pid())).unwrap();
    assert!(
        maps.contains("[uprobes-trampoline]"),
        "no uprobe trampoline: the site was not optimized\n{maps}"
    );
    let out = bt.finish().join("\n");
    assert!(
        out.contains(&format!("@exact[1]: {}", 2 * FIRES)),
        "bpftrace did not read every fire exactly:\n{out}"
    );
    assert!(!out.contains("@exact[0]"), "{out}");
}
