//! The cost of a probe site while no tracer is attached, next to the same
//! loop without it. Each iteration runs 1000 sites, so criterion's time per
//! iteration in ns divided by 1000 is the ns per site.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use usdt_provider::{mask, Callback, Io};

const SITES: u64 = 1000;

fn disabled(c: &mut Criterion) {
    let mut g = c.benchmark_group("disabled_probe_x1000");
    g.throughput(Throughput::Elements(SITES));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("baseline_empty_loop", |b| {
        b.iter(|| {
            for i in 0..SITES {
                black_box(i);
            }
        })
    });
    g.bench_function("read_entry", |b| {
        b.iter(|| {
            for i in 0..SITES {
                let fd = black_box(i) as i32;
                usdt_provider::read_entry(|| Io {
                    fd,
                    buf: 0,
                    len: 4096,
                    mask: mask::READ,
                    closure: 1,
                });
            }
        })
    });
    g.bench_function("callback_entry_with_name", |b| {
        b.iter(|| {
            for i in 0..SITES {
                let fd = black_box(i) as i32;
                usdt_provider::callback_entry(|| Callback {
                    closure: 1,
                    event: 1,
                    name: "echo",
                    fd,
                    mask: mask::READ,
                    newmask: mask::READ,
                });
            }
        })
    });
    g.finish();
}

criterion_group!(benches, disabled);
criterion_main!(benches);
