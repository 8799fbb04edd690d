#!/usr/bin/env bash
# What one traced probe fire costs, by the form of its site, all in one
# throwaway Rust program (rustc only) with one stapsdt note per form:
#   nop     the usdt crate's site: a 1-byte `nop` in an #[inline(never)] fn
#   nop5    a 5-byte `nop` (`0f 1f 44 00 00`) inline in such a fn (what the
#           usdt crate would emit with nop5: red-zone unsafe, measured only)
#   naked5  the provider's Linux x86-64 site: a naked fn whose first
#           instruction is that nop5, then `ret` (usdt-provider/src/nop5_site.rs)
#   nop10   libbpf's newer `nop; nop10` form, the note on the 10-byte nop
# Linux 6.18 turns a uprobe on a nop5 into a call to a uprobe trampoline
# after its first hit, instead of an int3 trap on every fire. Every form is
# a site of `evloop:eventer-read-entry` (same arguments and semaphore as the
# provider's), told apart by its first argument (the form's number). Each
# form fires BENCH_FIRES times (500k; nop10 a twentieth) per round, the
# order rotating round by round (BENCH_ROUNDS rounds, 7), twice: under one
# bpftrace session counting every fire in the kernel by form (`count()`:
# the cheapest a tracer can do), then under one `portsnoop -q` session
# (which also runs its raw syscall tracepoints on every syscall, and the
# trampoline enters the kernel by one). Prints each round, the medians per
# fire, each form's ratio to `nop` (the median of the rounds' own ratios:
# steadier on a noisy machine), and whether bpftrace counted every fire.
# Needs root, bpftrace, rustc and a release build of portsnoop.
#
# Not the probes' code path: the site alone, so the ratio is the trap's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTSNOOP=${PORTSNOOP:-$ROOT/target/release/portsnoop}
FIRES=${BENCH_FIRES:-500000}
ROUNDS=${BENCH_ROUNDS:-7}
dir=$(mktemp -d /tmp/evloop-site-form.XXXXXX)
bt_pid=
cleanup() {
    [ -n "$bt_pid" ] && kill -INT "$bt_pid" 2>/dev/null || true
    [ -n "${prog_pid:-}" ] && kill "$prog_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/sites.rs" <<'RS'
// The semaphore is a named symbol, defined once (.ifndef), as the usdt crate does.
#![allow(named_asm_labels)]
use std::arch::{asm, naked_asm};
use std::time::Instant;

/// A stapsdt note for the site at label 990: `evloop:eventer-read-entry`,
/// with the provider's semaphore and argument specs.
macro_rules! note {
    () => {
        concat!(
            ".ifndef __usdt_sema_evloop_eventer__read__entry\n",
            ".pushsection .probes, \"aw\", \"progbits\"\n",
            ".weak __usdt_sema_evloop_eventer__read__entry\n",
            ".hidden __usdt_sema_evloop_eventer__read__entry\n",
            "__usdt_sema_evloop_eventer__read__entry: .zero 2\n",
            ".popsection\n",
            ".endif\n",
            ".pushsection .note.stapsdt,\"\",\"note\"\n",
            ".balign 4\n",
            ".4byte 992f-991f, 994f-993f, 3\n",
            "991: .asciz \"stapsdt\"\n",
            "992: .balign 4\n",
            "993: .8byte 990b\n",
            ".8byte _.stapsdt.base\n",
            ".8byte __usdt_sema_evloop_eventer__read__entry\n",
            ".asciz \"evloop\"\n",
            ".asciz \"eventer-read-entry\"\n",
            ".asciz \"-4@%edi 8@%rsi 8@%rdx -4@%ecx 8@%r8\"\n",
            "994: .balign 4\n",
            ".popsection\n",
            ".ifndef _.stapsdt.base\n",
            ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n",
            ".weak _.stapsdt.base\n",
            ".hidden _.stapsdt.base\n",
            "_.stapsdt.base: .space 1\n",
            ".size _.stapsdt.base, 1\n",
            ".popsection\n",
            ".endif\n",
        )
    };
}

// Each form takes the probe's arguments in the C argument registers, where
// the note says they are, so its asm needs no moves.
#[inline(never)]
extern "C" fn nop(_fd: i32, _buf: u64, _len: u64, _mask: i32, _closure: u64) {
    unsafe { asm!(concat!("990: nop\n", note!()), options(nomem, nostack, preserves_flags)) }
}

#[inline(never)]
extern "C" fn nop5(_fd: i32, _buf: u64, _len: u64, _mask: i32, _closure: u64) {
    // Not nostack: the trampoline's call writes below rsp.
    unsafe { asm!(concat!("990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n", note!()), options(nomem, preserves_flags)) }
}

#[unsafe(naked)]
extern "C" fn naked5(_fd: i32, _buf: u64, _len: u64, _mask: i32, _closure: u64) {
    naked_asm!(concat!("990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\nret\n.p2align 4\n", note!()))
}

#[inline(never)]
extern "C" fn nop10(_fd: i32, _buf: u64, _len: u64, _mask: i32, _closure: u64) {
    unsafe {
        asm!(
            concat!("nop\n990: .byte 0x66, 0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00\n", note!()),
            options(nomem, preserves_flags)
        )
    }
}

type Site = extern "C" fn(i32, u64, u64, i32, u64);

/// Each form, and the share of the fires it makes (nop10 traps and is
/// single-stepped: a twentieth of the fires is plenty).
const FORMS: [(&str, Site, u64); 4] =
    [("nop", nop, 1), ("nop5", nop5, 1), ("naked5", naked5, 1), ("nop10", nop10, 20)];

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (fires, rounds) = (args[0], args[1]);
    let mut line = String::new();
    println!("ready");
    // The tracer is attached when a line arrives on stdin.
    std::io::stdin().read_line(&mut line).unwrap();
    for r in 0..rounds as usize {
        let mut ns = [0f64; 4];
        // Rotate which form goes first, so none always runs warm.
        for k in 0..FORMS.len() {
            let i = (k + r) % FORMS.len();
            let site = std::hint::black_box(FORMS[i].1);
            let n = fires / FORMS[i].2;
            let t0 = Instant::now();
            for _ in 0..n {
                site(i as i32, 0x2000, 4096, 1, 0xc0ffee);
            }
            ns[i] = t0.elapsed().as_nanos() as f64 / n as f64;
        }
        let cols: Vec<String> = FORMS.iter().zip(ns).map(|((n, _, _), v)| format!("{n} {v:.1}")).collect();
        println!("round {} {}", r + 1, cols.join(" "));
    }
}
RS
rustc --edition 2021 -C opt-level=2 -o "$dir/sites" "$dir/sites.rs"
[ -x "$PORTSNOOP" ] || { echo "site-form: no $PORTSNOOP (cargo build --release -p portsnoop)" >&2; exit 1; }

# Untraced, a fire is a call to a nop: the floor under every form.
echo | "$dir/sites" 2000000 1 >"$dir/untraced"

# One session of the program under tracer $1 (bpftrace | portsnoop); its
# rounds go to $dir/rounds.$1, the tracer's output to $dir/$1.
session() {
    local tracer=$1
    rm -f "$dir/go" "$dir/out"
    mkfifo "$dir/go" "$dir/out"
    "$dir/sites" "$FIRES" "$ROUNDS" <"$dir/go" >"$dir/out" &
    prog_pid=$!
    exec 4>"$dir/go" 3<"$dir/out"
    read -r line <&3
    [ "$line" = ready ] || { echo "site-form: program said: $line" >&2; exit 1; }
    if [ "$tracer" = bpftrace ]; then
        bpftrace -p "$prog_pid" -e "
usdt:$dir/sites:evloop:eventer-read-entry { @[arg0] = count(); }
BEGIN { printf(\"attached\\n\"); }" >"$dir/$tracer" 2>&1 &
        bt_pid=$!
        ready=attached
    else
        "$PORTSNOOP" -q -p "$prog_pid" -o /dev/null 2>"$dir/$tracer" &
        bt_pid=$!
        ready="; ready"
    fi
    for _ in $(seq 300); do
        grep -q "$ready" "$dir/$tracer" && break
        sleep 0.1
    done
    grep -q "$ready" "$dir/$tracer" || { echo "site-form: $tracer did not attach:" >&2; cat "$dir/$tracer" >&2; exit 1; }
    echo go >&4
    cat <&3 >"$dir/rounds.$tracer"
    exec 3<&- 4>&-
    wait "$prog_pid" || true
    prog_pid=
    kill -INT "$bt_pid"
    wait "$bt_pid" || true
    bt_pid=
}
session bpftrace
session portsnoop

python3 - "$dir" "$FIRES" "$ROUNDS" <<'PY'
import re, statistics, sys
d, fires, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def parse(line):
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", line.split(" ", 2)[2])}
floor = [parse(l) for l in open(f"{d}/untraced") if l.startswith("round")]
for tracer, what in (("bpftrace", "bpftrace count()"), ("portsnoop", "portsnoop -q")):
    rows = [parse(l) for l in open(f"{d}/rounds.{tracer}") if l.startswith("round")]
    forms = list(rows[0])
    print(f"site form, per traced fire (ns; {what}; {fires} fires per form per round, {rounds} rounds)")
    print(f"{'round':>6}" + "".join(f"{f:>10}" for f in forms))
    for i, row in enumerate(rows, 1):
        print(f"{i:>6}" + "".join(f"{row[f]:>10.1f}" for f in forms))
    med = {f: statistics.median(r[f] for r in rows) for f in forms}
    print(f"{'median':>6}" + "".join(f"{med[f]:>10.1f}" for f in forms))
    print(f"{'/nop':>6}" + "".join(f"{statistics.median(r[f] / r['nop'] for r in rows):>10.2f}" for f in forms)
          + "   (median of the rounds' own ratios)")
    out = open(f"{d}/{tracer}").read()
    if tracer == "bpftrace":
        counts = {int(k): int(v) for k, v in re.findall(r"@\[(\d+)\]: (\d+)", out)}
        for i, form in enumerate(forms):
            want = fires // (20 if form == "nop10" else 1) * rounds
            got = counts.get(i, 0)
            print(f"fires counted by bpftrace, {form}: {got} of {want}" + ("" if got == want else "  <-- NOT ALL COUNTED"))
    else:
        m = re.search(r"portsnoop: \d+ events.*", out)
        print(m.group(0) if m else "portsnoop said: " + out.strip()[-300:])
    print()
if floor:
    print("untraced, per call: " + ", ".join(f"{f} {v:.1f} ns" for f, v in floor[0].items()))
PY
