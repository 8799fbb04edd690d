#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, builds
# every binary the end-to-end tests run, then runs unit, doc and end-to-end
# tests (real bpftrace and portsnoop against real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --release --workspace --bins
# The same servers with every probe compiled out: a test checks they carry
# no probes, and the benchmarks compare against them.
cargo build --release -p examples --no-default-features --target-dir target/noprobes
# Every stage runs, and every test binary in it (--no-fail-fast), even
# after a failure: one CI run shows all that fails, not the first.
failed=0
cargo test --release --workspace --no-fail-fast "$@" || failed=1
# Tokio's task hooks exist only under --cfg tokio_unstable: frame_all_tasks
# (unit, doc and its portsnoop end-to-end test) in its own target dir, so
# the flag does not rebuild the main one; just eventloop-probes' tests.
RUSTFLAGS="--cfg tokio_unstable" RUSTDOCFLAGS="--cfg tokio_unstable" \
    cargo test --release -p eventloop-probes --features axum --target-dir target/unstable \
    --no-fail-fast "$@" || failed=1
# The provider's own naked nop5 probe sites (`--cfg evloop_nop5`, Linux
# x86-64; not the default, see README "A probe fire is a trap"): the tests
# that read the sites, in their own target dir. CARGO_TARGET_DIR, absolute:
# the tests' harness builds and finds the servers there.
RUSTFLAGS="--cfg evloop_nop5" CARGO_TARGET_DIR="$PWD/target/nop5" \
    cargo test --release -p tests --test optimized_sites --test provider --test probe_sites --test portsnoop \
    --no-fail-fast "$@" || failed=1
exit "$failed"
