#!/usr/bin/env bash
# What one traced probe fire costs, by the form of its site: the usdt
# crate's 1-byte `nop` against a 5-byte `nop` (`0f 1f 44 00 00`), which
# Linux 6.18 turns into a call to a uprobe trampoline instead of an int3
# trap. A throwaway C program carries one stapsdt note per form and fires
# each BENCH_FIRES times (500k) per round, alternating forms round by round
# (BENCH_ROUNDS pairs, 7), all under one bpftrace session counting every
# fire in the kernel (`count()`: the cheapest a tracer can do). Prints each
# round, the medians per fire and their ratio, and each round's own ratio
# (median), steadier on a noisy machine. Needs root, bpftrace and cc.
#
# Not the probes' code path: the site alone, so the ratio is the trap's.
set -euo pipefail
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

cat >"$dir/sites.c" <<'C'
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* A stapsdt note (no semaphore, no arguments) for a site made of INSN. */
#define SITE(name, insn)                                                   \
    __asm__ __volatile__("990: " insn "\n"                                 \
        ".pushsection .note.stapsdt,\"\",\"note\"\n"                       \
        ".balign 4\n"                                                      \
        ".4byte 992f-991f, 994f-993f, 3\n"                                 \
        "991: .asciz \"stapsdt\"\n"                                        \
        "992: .balign 4\n"                                                 \
        "993: .8byte 990b\n"                                               \
        ".8byte _.stapsdt.base\n"                                          \
        ".8byte 0\n"                                                       \
        ".asciz \"bench\"\n"                                               \
        ".asciz \"" name "\"\n"                                            \
        ".asciz \"\"\n"                                                    \
        "994: .balign 4\n"                                                 \
        ".popsection\n"                                                    \
        ".ifndef _.stapsdt.base\n"                                         \
        ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n" \
        ".weak _.stapsdt.base\n"                                           \
        ".hidden _.stapsdt.base\n"                                         \
        "_.stapsdt.base: .space 1\n"                                       \
        ".size _.stapsdt.base, 1\n"                                        \
        ".popsection\n"                                                    \
        ".endif\n")

__attribute__((noinline)) static void nop1(void) { SITE("nop1", "nop"); }
__attribute__((noinline)) static void nop5(void) { SITE("nop5", ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00"); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long fires = atol(argv[1]), rounds = atol(argv[2]);
    sigset_t set;
    int sig;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("ready\n");
    fflush(stdout);
    sigwait(&set, &sig); /* the tracer is attached */
    for (long r = 0; r < rounds; r++) {
        /* Alternate which form goes first, so neither always runs warm. */
        double ns[2];
        for (int k = 0; k < 2; k++) {
            int form = (k + r) % 2;
            double t0 = now();
            for (long i = 0; i < fires; i++)
                form ? nop5() : nop1();
            ns[form] = (now() - t0) / fires;
        }
        printf("round %ld nop1 %.1f nop5 %.1f\n", r + 1, ns[0], ns[1]);
        fflush(stdout);
    }
    return 0;
}
C
cc -O2 -o "$dir/sites" "$dir/sites.c"

# Untraced, a fire is a call to a nop: the floor under both.
"$dir/sites" 2000000 1 >"$dir/untraced" 2>&1 &
prog_pid=$!
sleep 0.2
kill -USR1 "$prog_pid"
wait "$prog_pid"
prog_pid=

mkfifo "$dir/out"
"$dir/sites" "$FIRES" "$ROUNDS" >"$dir/out" &
prog_pid=$!
exec 3<"$dir/out"
read -r line <&3
[ "$line" = ready ] || { echo "site-form: program said: $line" >&2; exit 1; }
bpftrace -p "$prog_pid" -e "
usdt:$dir/sites:bench:nop1 { @[\"nop1\"] = count(); }
usdt:$dir/sites:bench:nop5 { @[\"nop5\"] = count(); }
BEGIN { printf(\"attached\\n\"); }" >"$dir/bt" 2>&1 &
bt_pid=$!
for _ in $(seq 300); do
    grep -q attached "$dir/bt" && break
    sleep 0.1
done
grep -q attached "$dir/bt" || { echo "site-form: bpftrace did not attach:" >&2; cat "$dir/bt" >&2; exit 1; }
kill -USR1 "$prog_pid"
cat <&3 >"$dir/rounds"
wait "$prog_pid"
prog_pid=
kill -INT "$bt_pid"
wait "$bt_pid" || true
bt_pid=

python3 - "$dir/rounds" "$dir/bt" "$dir/untraced" "$FIRES" "$ROUNDS" <<'PY'
import re, statistics, sys
rounds_file, bt_file, untraced_file, fires, rounds = sys.argv[1:]
fires, rounds = int(fires), int(rounds)
rows = [tuple(map(float, re.findall(r"nop[15] ([\d.]+)", l))) for l in open(rounds_file) if l.startswith("round")]
counts = dict(re.findall(r'@\[(nop[15])\]: (\d+)', open(bt_file).read()))
floor = re.findall(r"nop1 ([\d.]+) nop5 ([\d.]+)", open(untraced_file).read())
print(f"site form, per traced fire (ns; bpftrace count(); {fires} fires per form per round, {rounds} paired rounds)")
print(f"{'round':>6} {'nop (1 byte)':>14} {'nop5 (5 bytes)':>15} {'nop5/nop':>9}")
for i, (a, b) in enumerate(rows, 1):
    print(f"{i:>6} {a:>14.1f} {b:>15.1f} {b / a:>9.2f}")
m1 = statistics.median(a for a, _ in rows)
m5 = statistics.median(b for _, b in rows)
print(f"{'median':>6} {m1:>14.1f} {m5:>15.1f} {m5 / m1:>9.2f}   (median of the rounds' own ratios: {statistics.median(b / a for a, b in rows):.2f})")
if floor:
    print(f"untraced, per call: nop {float(floor[0][0]):.1f} ns, nop5 {float(floor[0][1]):.1f} ns")
want = fires * rounds
for form in ("nop1", "nop5"):
    got = int(counts.get(form, 0))
    print(f"fires counted by bpftrace, {form}: {got} of {want}" + ("" if got == want else "  <-- NOT ALL COUNTED"))
PY
