#!/usr/bin/env bash
# The main job, on a fresh machine: install what is needed, build, start the
# instrumented echo server, load it, trace it with portsnoop, show the
# lined-up output and the summary.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --release --workspace --bins

bin=target/release
out=$(mktemp -d)
trap 'kill "$server" "$snoop" 2>/dev/null || true; rm -rf "$out"' EXIT

"$bin/echo-mio" --listen 127.0.0.1:0 >"$out/server.log" &
server=$!
for _ in $(seq 100); do grep -q '^listening on ' "$out/server.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out/server.log")
[ -n "$addr" ] || { echo "demo: echo-mio did not start" >&2; exit 1; }
echo "demo: echo-mio (pid $server) listening on $addr"

"$bin/portsnoop" -p "$server" --summary -o "$out/trace.txt" 2>"$out/portsnoop.err" &
snoop=$!
for _ in $(seq 300); do grep -q 'ready' "$out/portsnoop.err" 2>/dev/null && break; sleep 0.1; done
grep -q 'ready' "$out/portsnoop.err" || { cat "$out/portsnoop.err" >&2; echo "demo: portsnoop did not attach" >&2; exit 1; }

"$bin/echo-load" --addr "$addr" --conns 4 --msgs 200 --size 64
kill -INT "$snoop"; wait "$snoop" || true
cat "$out/portsnoop.err" >&2

echo
echo "=== portsnoop: the first 60 rows (per fd: what the loop meant, what the kernel did) ==="
head -n 60 "$out/trace.txt"
echo "..."
echo
echo "=== portsnoop: summary ==="
sed -n '/^=== summary/,$p' "$out/trace.txt" | head -n 120
