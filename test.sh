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
cargo test --release --workspace "$@"
# Tokio's task hooks exist only under --cfg tokio_unstable: frame_all_tasks
# (unit, doc and its portsnoop end-to-end test) in its own target dir, so
# the flag does not rebuild the main one; just eventloop-probes' tests.
RUSTFLAGS="--cfg tokio_unstable" RUSTDOCFLAGS="--cfg tokio_unstable" \
    cargo test --release -p eventloop-probes --features axum --target-dir target/unstable "$@"
