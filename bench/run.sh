#!/usr/bin/env bash
# Every comparison, side by side in one run: the disabled-probe cost
# (criterion), echo throughput of the servers (mio and tokio, each against its
# uninstrumented baseline), hyper on tokio's vs evloop's sockets (requests/s
# untraced and under portsnoop -q, syscalls per request), the cost per traced
# event of portsnoop vs strace vs bpftrace, the cost per syscall of portsnoop
# count vs strace -c vs bpftrace vs bcc's syscount, and portsnoop's capacity. Prints
# medians and ratios; writes bench/results/latest.json. About 7 minutes on 2
# cores; BENCH_QUICK=1 bench/run.sh is a ~2-minute check that it all runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
cargo build --release -p examples --no-default-features --target-dir target/noprobes
if [ -z "${BENCH_QUICK:-}" ] || [ "${BENCH_QUICK}" = 0 ]; then
    echo "== disabled probe site (criterion; ns per 1000 sites) =="
    cargo bench -q -p usdt-provider 2>/dev/null | grep -E "^disabled|time:"
else
    echo "== BENCH_QUICK: criterion skipped, every part short; figures only show that the bench runs =="
fi
python3 bench/bench.py "$@"
