#!/usr/bin/env python3
"""Side-by-side benchmarks on one machine in one run: echo throughput of the
servers with no tracer, a real framework (hyper) on plain vs evloop tokio
sockets (requests/s untraced and under portsnoop -q and --json, what tracing
costs per event, socket syscalls per request counted in the kernel), then
the cost per traced event of portsnoop,
strace and bpftrace on the same workload, what counting syscalls costs a
syscall-bound dd (portsnoop count, strace -c, bpftrace, bcc's syscount), the
cost per event with stall tracking on next to off, then portsnoop's capacity
and its own footprint. Rounds alternate between contenders so drift hits all alike;
medians and ratios are printed and written as JSON.

BENCH_QUICK=1 runs every part short (2 rounds, small loads): a check that
the bench works, not figures to quote.

Run through bench/run.sh, which builds everything first.
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
NOPROBES = os.path.join(ROOT, "target", "noprobes", "release")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2" if QUICK else "5"))
WAIT = 30


class Proc:
    """A child whose stdout and stderr lines are collected by threads."""

    def __init__(self, argv, stdout=True):
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, errors="replace")
        self.out, self.err, self.out_count, self.data_lines = [], [], 0, 0
        self.cv = threading.Condition()
        if stdout:
            threading.Thread(target=self._pump, args=(self.p.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, False), daemon=True).start()

    def _pump(self, pipe, is_out):
        for line in pipe:
            with self.cv:
                if is_out:
                    self.out_count += 1
                    # Event lines start with their timestamp; headers don't.
                    self.data_lines += line[:1].isdigit()
                    if len(self.out) < 64:
                        self.out.append(line.rstrip("\n"))
                else:
                    self.err.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, pred, where="out", timeout=WAIT):
        deadline = time.time() + timeout
        with self.cv:
            while True:
                lines = self.out if where == "out" else self.err
                for l in lines:
                    if pred(l):
                        return l
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None and not self.cv.wait(0.2):
                    raise RuntimeError(f"{self.p.args[0]}: no expected line; stderr: {self.err[-5:]}")
                self.cv.wait(min(left, 0.2))

    def stop(self, sig=signal.SIGINT, timeout=WAIT):
        deadline = time.time() + timeout
        while self.p.poll() is None and time.time() < deadline:
            self.p.send_signal(sig)
            try:
                self.p.wait(1)
            except subprocess.TimeoutExpired:
                pass
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        time.sleep(0.05)


def server(path, *extra):
    s = Proc([path, "--listen", "127.0.0.1:0", *extra])
    addr = s.wait_line(lambda l: l.startswith("listening on ")).split()[-1]
    return s, addr


def load(addr, conns, msgs, size):
    t0 = time.time()
    r = subprocess.run([os.path.join(REL, "echo-load"), "--addr", addr, "--conns", str(conns), "--msgs", str(msgs),
                        "--size", str(size), "--timeout", "120"], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"echo-load failed: {r.stderr}")
    kv = dict(x.split("=") for x in r.stdout.strip().splitlines()[-1].split())
    return float(kv["msgs_per_sec"]), float(kv["secs"]), wall


def busy_cpu_seconds():
    """CPU time spent by every process and the kernel on all cores, so far."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def strace_events(path):
    """Syscalls in an strace -f log: one per line, except the second half of
    a call that another thread interrupted and exits/signals."""
    n = 0
    with open(path, errors="replace") as f:
        for line in f:
            if "resumed>" in line or "+++" in line or "---" in line:
                continue
            n += 1
    return n


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmHWM:\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


def echo_throughput(results):
    servers = {
        "echo-mio-plain": os.path.join(REL, "echo-mio-plain"),
        "echo-mio": os.path.join(REL, "echo-mio"),
        "echo-mio (probes compiled out)": os.path.join(NOPROBES, "echo-mio"),
        "echo-tokio": os.path.join(REL, "echo-tokio"),
        "echo-tokio-plain": os.path.join(REL, "echo-tokio-plain"),
    }
    conns, msgs = (4, 2000) if QUICK else (8, 10000)
    rates = {k: [] for k in servers}
    for _ in range(ROUNDS):
        for name, path in servers.items():
            s, addr = server(path)
            rate, _, _ = load(addr, conns, msgs, 64)
            rates[name].append(rate)
            s.stop(signal.SIGTERM)
    base = statistics.median(rates["echo-mio-plain"])
    rows = []
    for name, r in rates.items():
        med = statistics.median(r)
        rows.append({"server": name, "median_msgs_per_sec": round(med), "ratio_to_plain_mio": round(med / base, 3),
                     "runs": [round(x) for x in r]})
    # The probes' own cost: each round's instrumented run against the same
    # round's compiled-out run (the machine drifts between rounds).
    paired = statistics.median(a / b for a, b in zip(rates["echo-mio"], rates["echo-mio (probes compiled out)"]))
    # evloop's tokio sockets against tokio's own, the same way.
    tokio_rounds = [a / b for a, b in zip(rates["echo-tokio"], rates["echo-tokio-plain"])]
    tokio_paired = statistics.median(tokio_rounds)
    results["echo_throughput"] = {"load": f"{conns} conns x {msgs} msgs x 64 B, no tracer", "rows": rows,
                                  "instrumented_vs_compiled_out_paired": round(paired, 3),
                                  "echo_tokio_vs_tokio_plain_paired": round(tokio_paired, 3),
                                  "echo_tokio_vs_tokio_plain_rounds": [round(x, 3) for x in tokio_rounds]}
    print("\n== echo throughput, no tracer attached (%d conns x %d msgs x 64 B; median of %d) ==" % (conns, msgs, ROUNDS))
    print("%-34s %14s %10s" % ("server", "msgs/s", "vs plain"))
    for row in rows:
        print("%-34s %14d %10.3f" % (row["server"], row["median_msgs_per_sec"], row["ratio_to_plain_mio"]))
    print("echo-mio vs its probes compiled out, round by round (median): %.3f" % paired)
    print("echo-tokio (evloop sockets, instrumented tasks) vs echo-tokio-plain (tokio's sockets), round by round: "
          "median %.3f, rounds %s" % (tokio_paired, " ".join("%.3f" % x for x in tokio_rounds)))


HYPER_BUILDS = {"plain": ["--plain"], "evloop": []}
HELLO = "Hello, World!"


def http_load(addr, conns, reqs):
    r = subprocess.run([os.path.join(REL, "http-load"), "--addr", addr, "--conns", str(conns), "--reqs", str(reqs),
                        "--body", HELLO, "--timeout", "60"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"http-load failed: {r.stderr}")
    kv = dict(x.split("=") for x in r.stdout.strip().splitlines()[-1].split())
    return float(kv["reqs_per_sec"]), int(kv["requests"])


def syscall_names():
    """x86-64/arm64 syscall numbers -> names, from the kernel headers that
    scripts/setup.sh installs (linux-libc-dev)."""
    names = {}
    for path in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/aarch64-linux-gnu/asm/unistd.h",
                 "/usr/include/asm-generic/unistd.h"):
        if os.path.exists(path):
            with open(path) as f:
                for m in re.finditer(r"#define __NR3?2?_(\w+)\s+(\d+)\b", f.read()):
                    names.setdefault(int(m.group(2)), m.group(1))
            break
    return names


# The socket and readiness syscalls a request costs; the rest (futex,
# sched_yield, timers) is runtime housekeeping, listed separately.
SOCKET_CALLS = {"read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "accept", "accept4",
                "close", "shutdown", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "setsockopt",
                "getsockopt", "getpeername", "getsockname"}


def count_syscalls(argv, conns, reqs):
    """One load against a fresh server while bpftrace counts the server's
    syscalls in the kernel (raw_syscalls, one probe; strace would stop the
    process at each and change what it measures). Returns ({name: count},
    requests)."""
    s, addr = server(*argv)
    pid = s.p.pid
    script = ('BEGIN { printf("counting\\n"); } '
              f'tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @[args->id] = count(); }}')
    bt = Proc(["bpftrace", "-B", "line", "-e", script])
    bt.wait_line(lambda l: l == "counting")  # printed by BEGIN, after attaching
    _, requests = http_load(addr, conns, reqs)
    bt.stop()
    s.stop(signal.SIGTERM)
    names = syscall_names()
    counts = {}
    for l in bt.out:
        m = re.match(r"@\[(\d+)\]: (\d+)", l)
        if m:
            n = int(m.group(1))
            counts[names.get(n, f"sys_{n}")] = int(m.group(2))
    # bt.out keeps 64 lines: enough, a server makes a few dozen kinds.
    return counts, requests


def http_bench(results):
    """hello-hyper on tokio's sockets vs evloop's: the same hyper server,
    alternating build and tracer round by round."""
    hyper = os.path.join(REL, "hello-hyper")
    conns, reqs = (4, 1000) if QUICK else (8, 5000)
    # -q: the cheapest way to watch a service; --json: every event written
    # out (to /dev/null, so the writing is measured, not a disk).
    modes = {"untraced": None, "portsnoop -q": ["-q"], "portsnoop --json": ["--json"]}
    rates = {(b, m): [] for b in HYPER_BUILDS for m in modes}
    # Per traced run: (requests, events portsnoop saw, that round's untraced rate).
    traced = {(b, m): [] for b in HYPER_BUILDS for m in modes if modes[m]}
    for _ in range(ROUNDS):
        for build, extra in HYPER_BUILDS.items():
            for mode, flags in modes.items():
                s, addr = server(hyper, *extra)
                tracer = None
                if flags:
                    tracer = Proc([os.path.join(REL, "portsnoop"), *flags, "-p", str(s.p.pid), "-o", "/dev/null"],
                                  stdout=False)
                    tracer.wait_line(lambda l: l.endswith("; ready"), where="err")
                rate, requests = http_load(addr, conns, reqs)
                rates[(build, mode)].append(rate)
                if tracer is not None:
                    tracer.stop()
                    events = next((int(m.group(1)) for l in reversed(tracer.err)
                                   if (m := re.match(r"portsnoop: (\d+) events, ", l))), 0)
                    traced[(build, mode)].append((requests, events, rates[(build, "untraced")][-1], rate))
                s.stop(signal.SIGTERM)

    def paired(a, b):
        rounds = [x / y for x, y in zip(rates[a], rates[b])]
        return round(statistics.median(rounds), 3), [round(x, 3) for x in rounds]

    ratios = {
        "evloop_vs_plain_untraced": paired(("evloop", "untraced"), ("plain", "untraced")),
        "evloop_vs_plain_traced": paired(("evloop", "portsnoop -q"), ("plain", "portsnoop -q")),
        "plain_traced_vs_untraced": paired(("plain", "portsnoop -q"), ("plain", "untraced")),
        "evloop_traced_vs_untraced": paired(("evloop", "portsnoop -q"), ("evloop", "untraced")),
        "evloop_json_vs_untraced": paired(("evloop", "portsnoop --json"), ("evloop", "untraced")),
    }
    # What tracing costs per event on this real server: the load's extra
    # time (traced run minus its round's untraced run) over the events
    # portsnoop saw, as the trace part measures it for echo.
    per_event = {}
    for (b, m), runs in traced.items():
        if not runs or not all(e for _, e, _, _ in runs):
            continue
        per_event[f"{b} {m}"] = {
            "events_per_request": round(statistics.median(e / n for n, e, _, _ in runs), 2),
            "us_per_event": round(statistics.median((n / r - n / u) / e * 1e6 for n, e, u, r in runs), 3),
        }
    per_req = {}
    for build, extra in HYPER_BUILDS.items():
        counts, requests = count_syscalls([hyper, *extra], conns, reqs)
        sock = {k: v for k, v in counts.items() if k in SOCKET_CALLS}
        per_req[build] = {
            "requests": requests,
            "all_per_request": round(sum(counts.values()) / requests, 3),
            "socket_per_request": round(sum(sock.values()) / requests, 3),
            "by_name_per_request": {k: round(v / requests, 3)
                                    for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v / requests >= 0.01},
        }
    results["http_hyper"] = {
        "load": f"http-load: {conns} keep-alive conns x {reqs} GET / each; hello-hyper, 2 tokio workers",
        "rows": [{"build": b, "tracer": m, "median_reqs_per_sec": round(statistics.median(r)),
                  "runs": [round(x) for x in r]} for (b, m), r in rates.items()],
        "paired_ratios": {k: {"median": v[0], "rounds": v[1]} for k, v in ratios.items()},
        "syscalls": per_req,
        "tracing_cost": per_event,
    }
    print(f"\n== hyper hello-world: tokio sockets (plain) vs evloop sockets ({conns} keep-alive conns x {reqs} "
          f"requests; median of {ROUNDS}) ==")
    print("%-8s %-14s %12s   %s" % ("build", "tracer", "reqs/s", "rounds"))
    for (b, m), r in rates.items():
        print("%-8s %-14s %12d   %s" % (b, m, statistics.median(r), " ".join("%d" % x for x in r)))
    print("paired ratios (round by round, median; rounds):")
    for k, (med, rounds) in ratios.items():
        print("  %-28s %.3f   %s" % (k, med, " ".join("%.3f" % x for x in rounds)))
    print("tracing cost (extra load time of each traced run over its round's untraced run / events seen; median):")
    for k, v in per_event.items():
        print(f"  {k:24s} {v['events_per_request']:6.2f} events/request  {v['us_per_event']:.3f} us/event")
    print("syscalls per request, counted in the kernel (bpftrace raw_syscalls, one run each):")
    for b, p in per_req.items():
        top = ", ".join(f"{k} {v}" for k, v in list(p["by_name_per_request"].items())[:8])
        print(f"  {b:7s} all {p['all_per_request']:.2f}, socket/epoll {p['socket_per_request']:.2f}  ({top})")


STRACE_CALLS = "read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,accept,accept4,connect,shutdown,close," \
               "epoll_ctl,epoll_wait,epoll_pwait,epoll_pwait2"


def traced_run(mode, conns, msgs, size, portsnoop_flags=()):
    """One load against a fresh echo-mio under `mode`. Returns the load's
    seconds, the events the tracer saw (None untraced), the CPU seconds the
    whole machine was busy during the load, and the tracer's own CPU and
    peak RSS."""
    s, addr = server(os.path.join(REL, "echo-mio"))
    pid = s.p.pid
    tracer, events = None, None
    strace_log = f"/dev/shm/evloop-bench-strace.{os.getpid()}"
    if mode == "portsnoop":
        tracer = Proc([os.path.join(REL, "portsnoop"), *portsnoop_flags, "-p", str(pid), "-o", "/dev/null"],
                      stdout=False)
        tracer.wait_line(lambda l: l.endswith("; ready"), where="err")
    elif mode == "strace":
        # To tmpfs, not /dev/null, to count what it traced; the writes are
        # buffered and cost nothing next to its ptrace stops.
        tracer = Proc(["strace", "-f", "-qq", "-e", "trace=" + STRACE_CALLS, "-o", strace_log, "-p", str(pid)],
                      stdout=False)
        # strace says nothing once attached; wait until the target is traced.
        deadline = time.time() + WAIT
        while time.time() < deadline:
            with open(f"/proc/{pid}/status") as f:
                if re.search(r"TracerPid:\s+[1-9]", f.read()):
                    break
            time.sleep(0.02)
        time.sleep(0.2)  # the other threads are attached right after
    elif mode == "bpftrace":
        script = subprocess.run([os.path.join(REL, "portsnoop"), "--bpftrace", "-p", str(pid)], capture_output=True,
                                text=True, check=True).stdout
        tracer = Proc(["bpftrace", "-B", "line", "-p", str(pid), "-e", script])
        tracer.wait_line(lambda l: l.startswith("TIME(ns)"))  # printed by BEGIN, after attaching
    busy0 = busy_cpu_seconds()
    _, secs, wall = load(addr, conns, msgs, size)
    busy = busy_cpu_seconds() - busy0
    if tracer is not None:
        cpu = cpu_seconds(tracer.p.pid)
        rss = peak_rss_kb(tracer.p.pid)
        tracer.stop()
        if mode == "portsnoop":
            line = next((l for l in tracer.err if re.search(r"\d+ events, \d+ lost", l)), "")
            m = re.search(r"(\d+) events, (\d+) lost", line)
            events = (int(m.group(1)), int(m.group(2))) if m else None
        elif mode == "bpftrace":
            events = (tracer.data_lines, 0)
        elif mode == "strace":
            events = (strace_events(strace_log), 0)
            os.unlink(strace_log)
    else:
        cpu, rss = 0.0, 0
    s.stop(signal.SIGTERM)
    return secs, events, busy, cpu, rss


def trace_cost(results):
    # 60k messages, ~650k events: long enough that one-time costs (portsnoop's buffers
    # growing, first touches) are amortized as they are in a real trace. BENCH_TRACE_MSGS
    # (per connection) changes it; strace takes about 1 s per 1000.
    conns, msgs, size = 4, int(os.environ.get("BENCH_TRACE_MSGS", "2000" if QUICK else "15000")), 64
    modes = ["untraced", "portsnoop", "bpftrace", "strace"]
    secs = {m: [] for m in modes}
    busy = {m: [] for m in modes}
    seen = {m: [] for m in modes}
    lost, cpu, rss = [], [], []
    for _ in range(max(3, ROUNDS - 2)):
        for m in modes:
            s, ev, b, c, r = traced_run(m, conns, msgs, size)
            secs[m].append(s)
            busy[m].append(b)
            if ev:
                seen[m].append(ev[0])
            if m == "portsnoop" and ev:
                lost.append(ev[1])
                cpu.append(c)
                rss.append(r)
    # The same load makes about the same events in every run; portsnoop
    # sees all of them (syscalls and probes), strace only the syscalls.
    n_events = statistics.median(seen["portsnoop"])
    rows = []
    for m in modes:
        # Each traced run against the untraced run of the same round: the
        # machine's speed drifts between rounds more than tracing costs.
        extra = statistics.median(t - u for t, u in zip(secs[m], secs["untraced"]))
        extra_busy = statistics.median(t - u for t, u in zip(busy[m], busy["untraced"]))
        own = statistics.median(seen[m]) if seen[m] else 0
        rows.append({
            "mode": m, "median_secs": round(statistics.median(secs[m]), 4), "events_seen": int(own),
            # Extra wall time of the load, per event of the workload...
            "us_per_event": round(extra / n_events * 1e6, 3),
            # ...per event this tracer traced (its own count)...
            "us_per_own_event": round(extra / own * 1e6, 3) if own else None,
            # ...and extra CPU of the whole machine (target, tracer, kernel).
            "cpu_us_per_own_event": round(extra_busy / own * 1e6, 3) if own else None,
        })
    strace = next(r for r in rows if r["mode"] == "strace")
    for r in rows:
        for k in ("us_per_event", "us_per_own_event"):
            if r[k] is not None and strace[k]:
                r[k.replace("us_per", "x_cheaper_than_strace_per")] = round(strace[k] / r[k], 1) if r[k] > 0 else None
    results["trace_cost"] = {
        "load": f"echo-mio, {conns} conns x {msgs} msgs x {size} B",
        "events_per_run": int(n_events), "lost_per_run": lost, "rows": rows,
        "portsnoop_cpu_secs": round(statistics.median(cpu), 3), "portsnoop_peak_rss_kb": max(rss),
    }
    print(f"\n== cost per traced event (echo-mio, {conns} conns x {msgs} msgs x {size} B; "
          f"{int(n_events)} events per run by portsnoop's count; median of {len(secs['untraced'])}) ==")
    print("us/event: extra load time (median over rounds of traced minus that round's untraced run) / the "
          "workload's events. own: / the events that tracer saw (strace sees only the syscalls). cpu own: extra "
          "busy CPU of the whole machine / own events.")
    print("%-10s %9s %9s %10s %9s %9s %10s %10s" % ("tracer", "load s", "seen", "us/event", "own", "cpu own",
                                                   "x strace", "x str own"))
    for r in rows:
        if r["mode"] == "untraced":
            print("%-10s %9.4f" % (r["mode"], r["median_secs"]))
            continue
        print("%-10s %9.4f %9d %10.3f %9.3f %9.3f %10s %10s" % (
            r["mode"], r["median_secs"], r["events_seen"], r["us_per_event"], r["us_per_own_event"],
            r["cpu_us_per_own_event"], r.get("x_cheaper_than_strace_per_event"),
            r.get("x_cheaper_than_strace_per_own_event")))
    print(f"portsnoop: lost {lost}, own CPU {statistics.median(cpu):.3f} s per run, peak RSS {max(rss)} KiB")


def churn(results):
    """Cost per traced event when connections churn: many short connections
    (each one an accept, a socket identity record, its TCP state changes
    and a close), where the connection tracing (identity at accept, TCP
    tracepoints filtered by socket) does its work, untraced vs portsnoop,
    paired round by round. Compare the us/event with the `trace` part's
    (long connections) and with the same part on an earlier commit."""
    batches = int(os.environ.get("BENCH_CHURN_BATCHES", "3" if QUICK else "20"))
    conns, msgs, size = 50, 4, 64
    secs = {"untraced": [], "portsnoop": []}
    seen, lost, tcp_rows = [], [], []
    for _ in range(ROUNDS):
        for mode in secs:
            s, addr = server(os.path.join(REL, "echo-mio"))
            tracer = None
            if mode == "portsnoop":
                out = f"/dev/shm/evloop-bench-churn.{os.getpid()}"
                tracer = Proc([os.path.join(REL, "portsnoop"), "-p", str(s.p.pid), "-q", "--json", "-o", out],
                              stdout=False)
                tracer.wait_line(lambda l: l.endswith("; ready"), where="err")
            t = 0.0
            for _ in range(batches):
                t += load(addr, conns, msgs, size)[1]
            secs[mode].append(t)
            if tracer is not None:
                tracer.stop()
                line = next((l for l in tracer.err if re.search(r"\d+ events, \d+ lost", l)), "")
                m = re.search(r"(\d+) events, (\d+) lost", line)
                if m:
                    seen.append(int(m.group(1)))
                    lost.append(int(m.group(2)))
                with open(out) as f:
                    summary = json.loads(f.read().strip().splitlines()[-1])
                os.unlink(out)
                tcp_rows.append(len(summary.get("connections", [])))
            s.stop(signal.SIGTERM)
    extra = statistics.median(t - u for t, u in zip(secs["portsnoop"], secs["untraced"]))
    n = statistics.median(seen) if seen else 0
    results["churn"] = {
        "load": f"echo-mio, {batches} x ({conns} conns x {msgs} msgs x {size} B)",
        "untraced_secs": round(statistics.median(secs["untraced"]), 4),
        "portsnoop_secs": round(statistics.median(secs["portsnoop"]), 4),
        "events_per_run": int(n), "connections_per_run": tcp_rows, "lost_per_run": lost,
        "us_per_event": round(extra / n * 1e6, 3) if n else None,
    }
    print(f"\n== connection churn (echo-mio, {batches} batches of {conns} short connections x {msgs} msgs; "
          f"median of {len(secs['untraced'])} paired rounds) ==")
    print(f"untraced {results['churn']['untraced_secs']} s, portsnoop -q {results['churn']['portsnoop_secs']} s, "
          f"{int(n)} events per run, connections in the summary {tcp_rows}, lost {lost}")
    print(f"us/event (median of each round's traced minus untraced load time, / events): "
          f"{results['churn']['us_per_event']}")
def paired_modes(modes, conns, msgs, size):
    """Rounds of an untraced run and one run per portsnoop mode (its flags)
    on echo-mio; each traced run is taken against its round's untraced run.
    Returns the untraced load seconds, a row per mode, and per mode its us
    per event round by round."""
    secs = {m: [] for m in modes}
    busy = {m: [] for m in modes}
    seen = {m: [] for m in modes}
    for _ in range(ROUNDS):
        for m, flags in modes.items():
            s, ev, b, _, _ = traced_run("portsnoop" if flags else "untraced", conns, msgs, size, flags or ())
            secs[m].append(s)
            busy[m].append(b)
            if ev:
                seen[m].append(ev[0])
    rows = []
    per_round = {}
    for m in modes:
        if m == "untraced":
            continue
        extra = [t - u for t, u in zip(secs[m], secs["untraced"])]
        extra_busy = [t - u for t, u in zip(busy[m], busy["untraced"])]
        per_round[m] = [x / n * 1e6 for x, n in zip(extra, seen[m])]
        rows.append({"mode": m, "median_secs": round(statistics.median(secs[m]), 4),
                     "events_seen": int(statistics.median(seen[m])),
                     "us_per_event": round(statistics.median(per_round[m]), 3),
                     "cpu_us_per_event": round(statistics.median(
                         x / n * 1e6 for x, n in zip(extra_busy, seen[m])), 3)})
    return statistics.median(secs["untraced"]), rows, per_round


def print_paired(title, untraced_secs, rows):
    print(f"\n== {title} ==")
    print("%-12s %9s %9s %10s %12s" % ("portsnoop", "load s", "seen", "us/event", "cpu us/event"))
    print("%-12s %9.4f" % ("untraced", untraced_secs))
    for r in rows:
        print("%-12s %9.4f %9d %10.3f %12.3f" % (r["mode"], r["median_secs"], r["events_seen"], r["us_per_event"],
                                                 r["cpu_us_per_event"]))


def difference(per_round, a, b):
    """a - b, us per event, round by round (a difference: on a noisy machine
    a round's untraced run can come out slower than a traced one, and a
    ratio of two such is meaningless)."""
    return [x - y for x, y in zip(per_round[a], per_round[b])]


def stall_cost(results):
    """Cost per traced event with stall tracking on (portsnoop's default,
    --stall 10) next to off (--stall 0: nothing of it loaded), on echo-mio,
    whose callbacks never stall: what tracking costs when nothing stalls.
    The machine's busy CPU is shown too (a first version's sched_switch
    program ran on every context switch of the machine)."""
    conns, msgs, size = 4, int(os.environ.get("BENCH_TRACE_MSGS", "2000" if QUICK else "15000")), 64
    modes = {"untraced": None, "stall off": ["--stall", "0"], "stall on": ["--stall", "10"]}
    untraced, rows, per_round = paired_modes(modes, conns, msgs, size)
    on_minus_off = difference(per_round, "stall on", "stall off")
    results["stall_cost"] = {"load": f"echo-mio, {conns} conns x {msgs} msgs x {size} B", "rows": rows,
                             "on_minus_off_us_per_event_rounds": [round(x, 3) for x in on_minus_off],
                             "on_minus_off_us_per_event_median": round(statistics.median(on_minus_off), 3)}
    print_paired(f"stall tracking: cost per traced event on vs off (echo-mio, {conns} conns x {msgs} msgs x {size} "
                 f"B, no stalls; median of {ROUNDS})", untraced, rows)
    print("on - off, us per event, round by round: median %+.3f, rounds %s" % (
        statistics.median(on_minus_off), " ".join("%+.3f" % x for x in on_minus_off)))


def output_cost(results):
    """What each output costs per traced event on echo-mio, side by side:
    -q (only the summary), the table, --json, and --perfetto (with -q), each
    paired with its round's untraced run; the table and JSON go to
    /dev/null, the Perfetto trace to tmpfs (a file is what it writes)."""
    conns, msgs, size = 4, int(os.environ.get("BENCH_TRACE_MSGS", "2000" if QUICK else "15000")), 64
    trace_file = f"/dev/shm/evloop-bench.{os.getpid()}.pftrace"
    # The table's flags are the default spelled out: a mode without flags
    # is the untraced run.
    modes = {"untraced": None, "-q": ["-q"], "table": ["--stall", "10"], "--json": ["--json"],
             "--perfetto": ["-q", "--perfetto", trace_file]}
    untraced, rows, per_round = paired_modes(modes, conns, msgs, size)
    trace_bytes = os.path.getsize(trace_file) if os.path.exists(trace_file) else 0
    if os.path.exists(trace_file):
        os.unlink(trace_file)
    over_q = {m: difference(per_round, m, "-q") for m in modes if m not in ("untraced", "-q")}
    results["output_cost"] = {"load": f"echo-mio, {conns} conns x {msgs} msgs x {size} B", "rows": rows,
                              "over_q_us_per_event_median": {m: round(statistics.median(d), 3)
                                                             for m, d in over_q.items()},
                              "perfetto_bytes": trace_bytes}
    print_paired(f"outputs: cost per traced event of each (echo-mio, {conns} conns x {msgs} msgs x {size} B; median "
                 f"of {ROUNDS})", untraced, rows)
    for m, d in over_q.items():
        print("%s - (-q), us per event, round by round: median %+.3f, rounds %s" % (
            m, statistics.median(d), " ".join("%+.3f" % x for x in d)))
    print(f"the last Perfetto trace: {trace_bytes} bytes")


def capacity(results):
    out = {}
    # Closed-loop load on 2 cores: the client and the server bound the rate;
    # what matters is whether portsnoop keeps up for 10 s without losing any.
    s, addr = server(os.path.join(REL, "echo-mio"))
    t0 = time.time()
    snoop = Proc([os.path.join(REL, "portsnoop"), "-p", str(s.p.pid), "-o", "/dev/null"], stdout=False)
    snoop.wait_line(lambda l: l.endswith("; ready"), where="err")
    ready = time.time() - t0
    conns, size, msgs = 16, 16, 1000
    deadline, done, t1 = time.time() + (3 if QUICK else 10), 0, time.time()
    while time.time() < deadline:
        load(addr, conns, msgs, size)
        done += conns * msgs
    dur = time.time() - t1
    cpu, rss = cpu_seconds(snoop.p.pid), peak_rss_kb(snoop.p.pid)
    snoop.stop()
    m = re.search(r"(\d+) events, (\d+) lost", " ".join(snoop.err))
    ev, lost = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    s.stop(signal.SIGTERM)
    out["sustained"] = {"secs": round(dur, 1), "events": ev, "events_per_sec": round(ev / dur), "lost": lost,
                        "portsnoop_cpu_share": round(cpu / dur, 3), "portsnoop_peak_rss_kb": rss,
                        "secs_to_ready": round(ready, 3)}
    # Above capacity: a 16 KiB ring buffer cannot hold a 10 ms burst.
    s, addr = server(os.path.join(REL, "echo-mio"))
    snoop = Proc([os.path.join(REL, "portsnoop"), "-p", str(s.p.pid), "--buffer-kb", "16", "-o", "/dev/null"],
                 stdout=False)
    snoop.wait_line(lambda l: l.endswith("; ready"), where="err")
    load(addr, 16, 2000, 16)  # raises if any echoed byte is wrong
    snoop.stop()
    m = re.search(r"(\d+) events, (\d+) lost", " ".join(snoop.err))
    ev2, lost2 = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    s.stop(signal.SIGTERM)
    out["overflow_16k_buffer"] = {"events": ev2, "lost": lost2, "target_echoes_correct": True}
    results["capacity"] = out
    print("\n== capacity ==")
    su = out["sustained"]
    print(f"sustained {su['secs']} s of closed-loop load: {su['events_per_sec']} events/s, lost {su['lost']}, "
          f"portsnoop CPU {su['portsnoop_cpu_share'] * 100:.1f}% of one core, peak RSS {su['portsnoop_peak_rss_kb']} KiB, "
          f"ready {su['secs_to_ready']} s after start")
    print(f"16 KiB buffer: {ev2} events delivered, {lost2} lost (counted and reported); echoes still correct")


def held_dd(calls):
    """A shell that becomes `dd bs=1 count=CALLS` (CALLS reads and CALLS
    writes) once a line arrives on its stdin: a tracer can attach to its pid
    first, and the clock starts at the release."""
    return subprocess.Popen(["sh", "-c", f"read _; exec dd if=/dev/zero of=/dev/null bs=1 count={calls}"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def release_and_time(dd):
    t0 = time.perf_counter()
    dd.stdin.write("go\n")
    dd.stdin.close()
    dd.wait(timeout=600)
    secs = time.perf_counter() - t0
    if dd.returncode != 0:
        raise RuntimeError(f"dd failed: {dd.returncode}")
    return secs


def wait_traced(pid):
    """strace says nothing once attached: wait until the process is."""
    deadline = time.time() + WAIT
    while time.time() < deadline:
        with open(f"/proc/{pid}/status") as f:
            if re.search(r"TracerPid:\s+[1-9]", f.read()):
                return
        time.sleep(0.02)
    raise RuntimeError(f"strace did not attach to {pid}")


def counted_run(mode, calls):
    """One dd under `mode`. Returns (seconds from release to exit, dd's
    reads as the counter saw them or None)."""
    dd = held_dd(calls)
    pid = dd.pid
    tracer, reads = None, None
    try:
        if mode in ("portsnoop -p", "portsnoop all"):
            argv = [os.path.join(REL, "portsnoop"), "count", "--json"] + (["-p", str(pid)] if mode.endswith("-p") else [])
            tracer = Proc(argv)
            tracer.wait_line(lambda l: l.endswith("; ready"), where="err")
        elif mode == "strace -c":
            tracer = Proc(["strace", "-c", "-f", "-p", str(pid)], stdout=False)
            wait_traced(pid)
        elif mode == "bpftrace":
            script = ('BEGIN { printf("counting\\n"); } '
                      f'tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @[comm, args->id] = count(); }}')
            tracer = Proc(["bpftrace", "-B", "line", "-e", script])
            tracer.wait_line(lambda l: l == "counting")  # BEGIN runs after attaching
        elif mode == "syscount":
            tracer = Proc(["syscount-bpfcc", "-p", str(pid)])
            tracer.wait_line(lambda l: l.startswith("Tracing"))
        secs = release_and_time(dd)
        if tracer is not None:
            if mode == "portsnoop -p":
                tracer.p.wait(WAIT)  # ends by itself with its process
            tracer.stop()
            if mode.startswith("portsnoop"):
                reads = sum(json.loads(l)["count"] for l in tracer.out
                            if '"syscall":"read"' in l and f'"pid":{pid},"comm":"dd"' in l)
            elif mode == "strace -c":
                # % time, seconds, usecs/call, calls, [errors,] syscall
                row = next((l.split() for l in tracer.err if l.split()[-1:] == ["read"]), None)
                reads = int(row[3]) if row else None
            elif mode == "bpftrace":
                m = next((re.match(r"@\[dd, 0\]: (\d+)", l) for l in tracer.out if l.startswith("@[dd, 0]")), None)
                reads = int(m.group(1)) if m else None
        return secs, reads
    finally:
        if dd.poll() is None:
            dd.kill()
            dd.wait()
        if tracer is not None and tracer.p.poll() is None:
            tracer.stop()


def syscount_usable():
    """Whether bcc's syscount runs here; else why not (it compiles its BPF
    program at run time and needs the running kernel's headers)."""
    try:
        r = subprocess.run(["syscount-bpfcc", "-d", "1"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "syscount-bpfcc is not installed (Debian: bpfcc-tools)"
    except subprocess.TimeoutExpired:
        return "syscount-bpfcc -d 1 did not end within 60 s"
    if r.returncode == 0 and "SYSCALL" in r.stdout:
        return None
    lines = (r.stdout + r.stderr).splitlines()  # bcc says what is missing on stdout
    why = next((l for l in lines if "kernel headers" in l), None) or next(
        (l.strip() for l in lines if "Exception" in l), r.stderr.strip()[-200:])
    return f"syscount-bpfcc fails here: {why}"


def count_cost(results):
    """What counting costs each syscall of a syscall-bound process: dd bs=1
    untraced, under portsnoop count -p and system-wide, strace -c -f, bpftrace's
    count() on raw_syscalls:sys_enter, and bcc's syscount where it runs; each
    traced run against the same round's untraced run."""
    calls = int(os.environ.get("BENCH_COUNT_CALLS", "20000" if QUICK else "200000"))
    syscalls = 2 * calls  # dd bs=1: one read and one write per byte
    modes = ["untraced", "portsnoop -p", "portsnoop all", "strace -c", "bpftrace"]
    skipped = syscount_usable()
    if skipped is None:
        modes.append("syscount")
    secs = {m: [] for m in modes}
    reads = {m: [] for m in modes}
    for _ in range(ROUNDS):
        for m in modes:
            s, r = counted_run(m, calls)
            secs[m].append(s)
            if r is not None:
                reads[m].append(r)
    rows = []
    for m in modes:
        extra = [t - u for t, u in zip(secs[m], secs["untraced"])]
        rows.append({
            "mode": m, "median_secs": round(statistics.median(secs[m]), 4),
            "ns_per_syscall_added": round(statistics.median(extra) / syscalls * 1e9, 1),
            "x_untraced": round(statistics.median(t / u for t, u in zip(secs[m], secs["untraced"])), 2),
            "reads_seen": reads[m],
        })
    strace = next(r for r in rows if r["mode"] == "strace -c")
    for r in rows:
        if r["mode"] != "untraced" and r["ns_per_syscall_added"] > 0:
            r["x_cheaper_than_strace"] = round(strace["ns_per_syscall_added"] / r["ns_per_syscall_added"], 1)
    results["count_cost"] = {"load": f"dd if=/dev/zero of=/dev/null bs=1 count={calls} ({syscalls} syscalls)",
                             "rounds": ROUNDS, "rows": rows, "syscount_skipped": skipped}
    print(f"\n== cost of counting syscalls (dd bs=1 count={calls}: {syscalls} read+write; median of {ROUNDS} "
          f"paired rounds) ==")
    print("ns/syscall: (traced - that round's untraced seconds) / syscalls. x untraced: traced / untraced, per round.")
    print("%-14s %9s %11s %10s %10s  %s" % ("counter", "dd s", "ns/syscall", "x untraced", "x strace", "reads seen"))
    for r in rows:
        print("%-14s %9.4f %11.1f %10.2f %10s  %s" % (r["mode"], r["median_secs"], r["ns_per_syscall_added"],
                                                      r["x_untraced"], r.get("x_cheaper_than_strace", ""),
                                                      r["reads_seen"] or ""))
    if skipped:
        print(f"bcc syscount skipped: {skipped}")


def main():
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, {os.uname().release}"}
    parts = ["echo", "http", "trace", "churn", "count", "stall", "outputs", "capacity"]
    which = sys.argv[1:] or parts
    unknown = set(which) - set(parts)
    if unknown:
        sys.exit(f"bench.py: unknown part(s) {sorted(unknown)}; parts: {' '.join(parts)}")
    if "echo" in which:
        echo_throughput(results)
    if "http" in which:
        http_bench(results)
    if "trace" in which:
        trace_cost(results)
    if "churn" in which:
        churn(results)
    if "count" in which:
        count_cost(results)
    if "stall" in which:
        stall_cost(results)
    if "outputs" in which:
        output_cost(results)
    if "capacity" in which:
        capacity(results)
    out = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench", "results", "latest.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
