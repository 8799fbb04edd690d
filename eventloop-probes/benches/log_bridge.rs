//! What the `tracing` and `log` bridges cost per event while no tracer has
//! the `log` probe enabled, next to the same event with no bridge:
//!
//! - tracing: `tracing::info!` with two fields under a bare `Registry`, vs
//!   the same registry with the bridge's `Layer`;
//! - log: `log::info!` with an argument and no logger (log's no-op), vs
//!   the bridge's `Logger`.
//!
//! Each iteration makes 1000 events, so criterion's ns per iteration / 1000
//! is the ns per event. The ratios (bridge / none) are printed at the end,
//! from criterion's own estimates. Run: `cargo bench -p eventloop-probes
//! --features tracing,log --bench log_bridge`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use eventloop_probes::{log_bridge, tracing_bridge};
use tracing_subscriber::layer::SubscriberExt;

const EVENTS: u64 = 1000;
const GROUP: &str = "disabled_log_bridge_x1000";

fn tracing_events() {
    for i in 0..EVENTS {
        tracing::info!(target: "bench", n = black_box(i), peer = "10.0.0.1", "served {}", black_box(i));
    }
}

fn log_records() {
    for i in 0..EVENTS {
        log::info!(target: "bench", "served {} bytes", black_box(i));
    }
}

fn bridges(c: &mut Criterion) {
    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(EVENTS));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    let bare = tracing::Dispatch::new(tracing_subscriber::registry());
    g.bench_function("tracing_no_layer", |b| {
        tracing::dispatcher::with_default(&bare, || b.iter(tracing_events))
    });
    let bridged =
        tracing::Dispatch::new(tracing_subscriber::registry().with(tracing_bridge::Layer));
    g.bench_function("tracing_bridge_layer", |b| {
        tracing::dispatcher::with_default(&bridged, || b.iter(tracing_events))
    });

    // log has one logger per process, set once: "no logger" runs first,
    // with the max level already open so the macro gets as far as the
    // (no-op) logger call in both.
    log::set_max_level(log::LevelFilter::Info);
    g.bench_function("log_no_logger", |b| b.iter(log_records));
    log_bridge::init(log::LevelFilter::Info).unwrap();
    g.bench_function("log_bridge_logger", |b| b.iter(log_records));
    g.finish();
}

/// criterion's estimate (ns per iteration) of one benchmark, from the
/// files it just wrote.
fn mean_ns(bench: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir
        .join("criterion")
        .join(GROUP)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    // The slope (what criterion prints as "time" for its linear sampling),
    // else the mean.
    v["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| v["mean"]["point_estimate"].as_f64())
}

criterion_group!(benches, bridges);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    for (what, none, bridge) in [
        ("tracing", "tracing_no_layer", "tracing_bridge_layer"),
        ("log", "log_no_logger", "log_bridge_logger"),
    ] {
        match (mean_ns(none), mean_ns(bridge)) {
            (Some(a), Some(b)) => println!(
                "{what}: {:.2} ns/event without the bridge, {:.2} ns/event with it (disabled probe): ratio {:.2}, +{:.2} ns/event",
                a / EVENTS as f64,
                b / EVENTS as f64,
                b / a,
                (b - a) / EVENTS as f64
            ),
            _ => println!("{what}: no estimates found (was the benchmark filtered out?)"),
        }
    }
}
