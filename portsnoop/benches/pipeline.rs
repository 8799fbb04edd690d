//! portsnoop's userland cost per event, without a kernel: a synthetic echo
//! session (the shape echo-mio produces) through the correlator alone, and
//! through the correlator and each writer into a sink.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portsnoop::correlate::{Correlator, Filter};
use portsnoop::event::{EpollWait, Event, Probe, ProbeName, ReadyEvent, Syscall, SyscallName};
use portsnoop::output::{json::Json, perfetto::Perfetto, table::Table, Output};

fn echo_session(rounds: u64) -> Vec<Event> {
    let mut ev = Vec::new();
    let mut ts = 1_000_000u64;
    let mut next = |n: u64| {
        ts += n;
        ts
    };
    let probe = |ts, name, args| {
        Event::Probe(Probe {
            ts_ns: ts,
            pid: 1,
            tid: 7,
            name,
            args,
            strings: vec![],
        })
    };
    let sys = |ts, name, rv| {
        Event::Syscall(Syscall {
            ts_ns: ts,
            pid: 1,
            tid: 7,
            name,
            fd: 9,
            rv,
            dur_ns: 900,
            arg: 16384,
        })
    };
    for _ in 0..rounds {
        ev.push(Event::EpollWait(EpollWait {
            ts_ns: next(500),
            pid: 1,
            tid: 7,
            name: "epoll_wait",
            epfd: 4,
            rv: 1,
            dur_ns: 2000,
            events: vec![ReadyEvent { events: 1, data: 2 }],
        }));
        ev.push(Event::Probe(Probe {
            // After the wait has returned (it lasted 2000 ns): one thread.
            ts_ns: next(2300),
            pid: 1,
            tid: 7,
            name: ProbeName::CallbackEntry,
            args: [2, 2, 0, 9, 1, 1],
            strings: vec!["echo".into()],
        }));
        for (entry, ret, call, rv) in [
            (
                ProbeName::ReadEntry,
                ProbeName::ReadReturn,
                SyscallName::Recvfrom,
                64,
            ),
            (
                ProbeName::WriteEntry,
                ProbeName::WriteReturn,
                SyscallName::Sendto,
                64,
            ),
            (
                ProbeName::ReadEntry,
                ProbeName::ReadReturn,
                SyscallName::Recvfrom,
                -11,
            ),
        ] {
            ev.push(probe(next(200), entry, [9, 0, 16384, 1, 2, 0]));
            ev.push(sys(next(100), call, rv));
            ev.push(probe(next(900), ret, [9, 0, 16384, 1, 2, rv as u64]));
        }
        ev.push(Event::Probe(Probe {
            ts_ns: next(200),
            pid: 1,
            tid: 7,
            name: ProbeName::CallbackReturn,
            args: [2, 2, 0, 1, 0, 0],
            strings: vec!["echo".into()],
        }));
    }
    ev
}

/// A correlator that knows the session's registration (fd 9 as data 2 on
/// epoll fd 4), as a live one learns it from `/proc/PID/fdinfo` or the
/// `epoll_ctl`: without it every wait would wait for it, out of order.
fn correlator() -> Correlator {
    let mut c = Correlator::new(Filter::default());
    c.known_registration(1, 4, 9, 2);
    c
}

fn pipeline(c: &mut Criterion) {
    let events = echo_session(2000);
    let mut g = c.benchmark_group("userland_per_event");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    g.bench_function("correlate", |b| {
        b.iter(|| {
            let mut c = correlator();
            let mut out = Vec::new();
            for e in events.iter().cloned() {
                c.push(e, &mut out);
                out.clear();
            }
            black_box(c.finish(&mut out))
        })
    });
    let run = |out: &mut dyn Output| {
        let mut c = correlator();
        let mut recs = Vec::new();
        for e in events.iter().cloned() {
            c.push(e, &mut recs);
            for r in recs.drain(..) {
                out.record(&r).unwrap();
            }
        }
        let s = c.finish(&mut recs);
        out.finish(&s).unwrap();
    };
    // Through a buffer as in portsnoop itself: straight into `sink()`, a
    // writer's many small writes would cost nothing and hide its copying.
    let sink = || std::io::BufWriter::with_capacity(1 << 16, std::io::sink());
    g.bench_function("correlate_and_table", |b| {
        b.iter(|| run(&mut Table::new(sink())))
    });
    g.bench_function("correlate_and_json", |b| {
        b.iter(|| run(&mut Json::new(sink())))
    });
    g.bench_function("correlate_and_perfetto", |b| {
        b.iter(|| run(&mut Perfetto::new(sink())))
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
