#!/usr/bin/env bash
# Every comparison, side by side in one run: the disabled-probe cost
# (criterion), echo throughput of the four servers, the cost per traced event
# of portsnoop vs strace vs bpftrace, and portsnoop's capacity. Prints medians
# and ratios; writes bench/results/latest.json. About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
cargo build --release -p examples --no-default-features --target-dir target/noprobes
echo "== disabled probe site (criterion; ns per 1000 sites) =="
cargo bench -q -p usdt-provider 2>/dev/null | grep -E "^disabled|time:"
python3 bench/bench.py "$@"
