#!/usr/bin/env bash
# Installs what evloop needs on a fresh Debian machine and makes tracing
# available. Idempotent: a second run installs nothing. Sourced by demo.sh,
# test.sh and .ci/run, so every entry point sets up the same way.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have bpftrace || need_pkgs+=(bpftrace)
have clang || need_pkgs+=(clang)
have strace || need_pkgs+=(strace)
have make || need_pkgs+=(make)
have perf || need_pkgs+=(linux-perf)
have pkg-config || need_pkgs+=(pkg-config)
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/zlib.h ] || need_pkgs+=(zlib1g-dev)
[ -e /usr/include/linux/bpf.h ] || need_pkgs+=(linux-libc-dev)
have python3 || need_pkgs+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)

if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${need_pkgs[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# bpftrace (in the tests, and for the README's one-liners) finds its tracepoints in
# tracefs; some machines boot without it mounted. portsnoop itself does not need it.
if [ ! -d /sys/kernel/tracing/events/syscalls ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -d /sys/kernel/tracing/events/syscalls ]; then
    echo "setup: /sys/kernel/tracing/events/syscalls is missing: tracefs could not be mounted (are you root?)" >&2
    exit 1
fi

# tests/perfetto_nesting.py reads portsnoop's Perfetto traces with the trace
# protos the perfetto package ships (its trace processor, which downloads a
# binary, is not used). Debian's own python3 refuses a plain pip install.
if ! python3 -c 'import perfetto.protos.perfetto.trace.perfetto_trace_pb2' >/dev/null 2>&1; then
    echo "setup: installing the perfetto Python package" >&2
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    python3 -m pip install --quiet 'perfetto==0.59.1' protobuf 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'perfetto==0.59.1' protobuf
    python3 -c 'import perfetto.protos.perfetto.trace.perfetto_trace_pb2'
fi

rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
