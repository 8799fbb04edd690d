//! The `tracing` and `log` bridges under real bpftrace: what a service logs
//! through either crate arrives at the `log` probe with the exact facility
//! (target), file, line and message, and nothing is formatted while no
//! tracer has the probe enabled. bpftrace attaches to this test process
//! itself (`-p`), which is where the events are made.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use eventloop_probes::{log_bridge, tracing_bridge};
use tracing_subscriber::layer::SubscriberExt;

use tests::{require_bpftrace, Bpftrace, WAIT};

/// One test at a time: the "nothing formatted without a tracer" checks
/// need no bpftrace attached to this process, and both tests attach one.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SCRIPT: &str = r#"
usdt:$BIN:evloop:log { printf("log [%s] [%s] %d [%s]\n", str(arg0), str(arg1), (int32)arg2, str(arg3)); }
"#;

/// Counts how often it is formatted.
struct Counted<'a>(&'a AtomicUsize);

impl fmt::Display for Counted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        write!(f, "formatted#{n}")
    }
}

fn attach() -> Bpftrace {
    require_bpftrace();
    Bpftrace::start(SCRIPT, std::process::id())
}

/// Waits for a line that starts with `prefix`, then stops bpftrace and
/// returns everything it printed.
fn finish_after(bt: Bpftrace, prefix: &str) -> Vec<String> {
    bt.stdout()
        .wait_for(WAIT, |l| l.starts_with(prefix))
        .unwrap_or_else(|e| panic!("no line {prefix:?}: {e}"));
    bt.finish()
}

fn has(out: &[String], want: &str) {
    assert!(
        out.iter().any(|l| l == want),
        "no line {want:?} in:\n{}",
        out.join("\n")
    );
}

#[test]
fn tracing_events_reach_the_log_probe_formatted_only_when_traced() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let subscriber = tracing_subscriber::registry().with(tracing_bridge::Layer);
    let _default = tracing::subscriber::set_default(subscriber);
    let formats = AtomicUsize::new(0);

    // No tracer: the layer sees the event but formats nothing.
    tracing::info!(target: "bridge-tracing", n = 1, "untraced {}", Counted(&formats));
    assert_eq!(
        formats.load(Ordering::SeqCst),
        0,
        "formatted with no tracer"
    );

    let bt = attach();
    let line = line!() + 1;
    tracing::info!(target: "bridge-tracing", bytes = 42, peer = "10.0.0.1", "served {}", "ok");
    let line2 = line!() + 1;
    tracing::warn!(target: "bridge-tracing", "traced {}", Counted(&formats));
    // A message-less event: just its fields.
    tracing::error!(target: "bridge-tracing-end", code = 7);
    let out = finish_after(bt, "log [bridge-tracing-end]");
    assert_eq!(formats.load(Ordering::SeqCst), 1, "formatted once, traced");

    let file = "tests/tests/log_bridges.rs";
    has(
        &out,
        &format!(r#"log [bridge-tracing] [{file}] {line} [served ok bytes=42 peer="10.0.0.1"]"#),
    );
    has(
        &out,
        &format!("log [bridge-tracing] [{file}] {line2} [traced formatted#1]"),
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("log [bridge-tracing-end] ") && l.ends_with(" [code=7]")),
        "{out:?}"
    );
    assert!(!out.iter().any(|l| l.contains("untraced")), "{out:?}");
}

#[test]
fn log_records_reach_the_log_probe_formatted_only_when_traced() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The process's one logger: only this test sets it.
    log_bridge::init(log::LevelFilter::Info).expect("no other logger in this test binary");
    let formats = AtomicUsize::new(0);

    log::info!(target: "bridge-log", "untraced {}", Counted(&formats));
    assert_eq!(
        formats.load(Ordering::SeqCst),
        0,
        "formatted with no tracer"
    );

    let bt = attach();
    let line = line!() + 1;
    log::info!(target: "bridge-log", "served {} bytes to {}", 42, "10.0.0.1");
    let line2 = line!() + 1;
    log::warn!(target: "bridge-log", "traced {}", Counted(&formats));
    // Below the max level: the log macro itself drops it.
    log::debug!(target: "bridge-log", "too verbose");
    log::error!(target: "bridge-log-end", "done");
    let out = finish_after(bt, "log [bridge-log-end]");
    assert_eq!(formats.load(Ordering::SeqCst), 1, "formatted once, traced");

    let file = "tests/tests/log_bridges.rs";
    has(
        &out,
        &format!("log [bridge-log] [{file}] {line} [served 42 bytes to 10.0.0.1]"),
    );
    has(
        &out,
        &format!("log [bridge-log] [{file}] {line2} [traced formatted#1]"),
    );
    assert!(
        !out.iter()
            .any(|l| l.contains("untraced") || l.contains("too verbose")),
        "{out:?}"
    );
}
