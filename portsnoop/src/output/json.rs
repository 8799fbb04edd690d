//! JSON Lines: one object per record, each with a `"type"`.
//!
//! The contract: `syscall` {ts_ns, pid, tid, name, fd, rv, errno, dur_ns, arg};
//! `probe` {ts_ns, pid, tid, name, fd, args (the probe's `arg_count`, C ints
//! signed), strings}; `wait` {ts_ns, pid, tid, name, epfd, rv, errno, dur_ns,
//! events: [{fd (null: its `epoll_ctl` was not seen), events, data}],
//! events_omitted (how many more events the wait returned than `events`
//! holds: the kernel side records the first 30; `rv` minus those, 0 when
//! all are there or the wait failed)}; `op`
//! {op, pid, tid, fd, entry_ts_ns, return_ts_ns, user_rv, syscalls: [{name, rv,
//! errno, ts_ns, dur_ns}], kernel_ns, user_ns, mismatch (null, or the
//! disagreement between the app and the kernel), incomplete (null, or why
//! the trace cannot see the op whole: "began before the trace", "events
//! lost", "trace ended", ...; never a mismatch),
//! closure, callback}. Also `epoll_ctl` {ts_ns, pid, tid, name: "epoll_ctl",
//! epfd, op ("ADD"/"DEL"/"MOD"), fd, events, data, rv, errno, dur_ns},
//! `stall` {ts_ns (the callback's entry), pid, tid, fd (the callback's; -1:
//! none), name (the callback's), closure (as on its op line), dur_ns, off_cpu_ns (of dur_ns, time off
//! the CPU: blocked, or waiting for one), syscalls: [{name, fd (null: its
//! first argument is no fd), rv, dur_ns, ts_ns}] (in time order: every
//! syscall of any kind the thread made inside the callback that lasted at
//! least the minimum), syscalls_cut (how many more than the 64 kept)}: a
//! callback that ran at least the `--stall` threshold, after its `op`;
//! nested callbacks: the innermost. With stall tracking on, also
//! `slow_syscall` {ts_ns, pid, tid, nr, name (null: a number this build
//! does not know), fd, rv, errno, dur_ns, arg0} (a syscall portsnoop does
//! not otherwise trace, made inside a callback, that lasted at least the
//! minimum) and `off_cpu` {ts_ns, pid, tid, total_ns} (the thread's
//! off-CPU time inside callbacks so far, by the scheduler's accounting,
//! said at a callback's entry or return when it changed).
//! `close_enter` {ts_ns, pid, tid, fd} (a thread entered close(2): the fd's
//! number is free from then on), `lost` {ts_ns, count} and `process` {ts_ns, pid, tid, event
//! ("exit"/"exec"/"fork"/"traced"), status; "fork" (with `-f`): child, the new process's pid;
//! "traced", after an exec: exe, probes}.
//!
//! `pid` is the process (tgid) the event or op is from: with `-f` several
//! processes are traced, and an fd number is one process's; the same `fd`
//! under two pids is two fds. Every line but `lost` and `summary` has it.
//! The summary's `per_fd` is keyed by fd number alone: with `-f`, the
//! same number in several processes is counted in one entry. `summary` is the last line: {events, lost_events, ops,
//! mismatches, incomplete, orphan_syscalls, syscalls_cut, waits,
//! process_end, per_fd: {FD: {OP: STATS}}, per_op: {OP: STATS}, stalls:
//! [{name, count, total_ns, max_ns, off_cpu_ns_total, dur_ns_log2}] (by
//! callback name, the most total time first), stalls_incomplete (callbacks
//! past the threshold whose off-CPU time a loss left unknown)} with STATS
//! {count, bytes, mismatches, incomplete, errors: {ERRNO: n}, user_ns_log2,
//! kernel_ns_log2 ([[bucket lower bound, count], ...]), user_ns_total,
//! kernel_ns_total}.
//!
//! Connections (appended fields, at the ends of their objects): `syscall`
//! lines of `accept`/`accept4` (about the new fd, the rv) and `connect`
//! (about its fd) carry `"local"` and `"peer"` (`"IP:PORT"`, IPv6 as
//! `"[addr]:port"`, IPv4-mapped as the kernel keeps it; a Unix socket's
//! bound path, `"@name"` for an abstract one, `"unnamed"`) when the kernel
//! side read its socket; an accept `op` carries them too (null if not
//! seen). `socket` {ts_ns, pid, tid, fd, origin ("accept"/"connect"/
//! "before_trace": read from /proc at attach, tid 0), family
//! ("inet"/"inet6"/"unix"), sock_type, protocol, local, peer, inode, sk}
//! comes just before its syscall; a Unix socket's `peer` is the peer's
//! bound path, `"unnamed"`, `"fd N"` for one open before the trace whose
//! unnamed peer is fd N of the same process (a socketpair; the lowest fd
//! if dup'd, as read at attach), or `"?"` (not connected, or sock_diag
//! could not be had). `tcp` {ts_ns, pid, tid, fd, event
//! ("state"/"retransmit"/"reset_sent"/"reset_received"), from, to (the
//! kernel's state names: "ESTABLISHED", "CLOSE_WAIT", ...; for the other
//! events both are the state then), sk, bytes_received, bytes_acked (the
//! kernel's counters then), fin_received, fin_acked}: `pid`/`fd` are the
//! fd that holds the socket or held it last (TCP goes on after close(2):
//! `LAST_ACK -> CLOSE`); `tid` is the thread the kernel ran it on if one
//! of `pid`'s, else 0 (softirq). The summary adds `connections`: [{pid, fd,
//! name, origin, family, sock_type, protocol (numbers), local, peer, states (in order), retransmits, resets_sent,
//! resets_received, bytes: {ops_read, ops_written, kernel_received,
//! kernel_acked (data bytes: a FIN received, the SYN and FIN acked taken
//! off), unread (kernel_received - ops_read), unacked (ops_written -
//! kernel_acked), not_compared (null, or why not: "opened before the
//! trace", "events lost", "not closed when the trace ended", ...)}}]; a
//! difference is a fact about the connection, never a mismatch;
//! `accepted`: [{host, local, count}] (accepted connections by remote host
//! and local port or path, as tcpaccept2); `fd_connections`: {FD: name of
//! the connection it held last}; `tcp_untracked` (sockets whose TCP events
//! were missed: the kernel side's socket table was full);
//! `connections_omitted` (connections past the first 10,000, not listed).
//!
//! Every line but `op` and `summary` carries its whole event, so a JSON
//! trace can be replayed through the correlator (the crate's tests do).
//! `portsnoop replay` reads every line back into its record
//! (`replay/parse.rs`) and writes it again byte for byte: a line type or
//! field added here is read there too (until then, replay skips and counts
//! lines of a type it does not know).
//!
//! Strings are JSON strings: the C0 controls escaped as JSON requires, and
//! DEL, C1 and the other characters a terminal must not get raw escaped
//! too (`\u0080`), so the stream is safe to print ([`super::escape`]).
//! The output is JSON Lines and nothing else, whatever the other flags.

use std::io::{self, Write};

use serde_json::{json, Value};

use super::line::Line;
use super::{events_omitted, Output};
use crate::correlate::{EpollMap, Log2Hist, Op, OpStats, Record, Stall, Summary, Wait};
use crate::event::{
    errno_of, EpollCtl, Event, Probe, ProbeName, ProcessEventKind, SlowSyscall, Syscall,
    SyscallName,
};
use crate::sock::{tcp_state_name, SocketInfo};

/// Writes JSON Lines to `W`.
pub struct Json<W: Write> {
    out: W,
    line: Line,
    /// The last socket identity per thread, for its accept's or connect's
    /// syscall line (the kernel side submits it just before).
    sockets: rustc_hash::FxHashMap<u32, SocketInfo>,
}

impl<W: Write> Json<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Json<W> {
        Json {
            out,
            line: Line::default(),
            sockets: Default::default(),
        }
    }

    fn line(&mut self, v: Value) -> io::Result<()> {
        let text = v.to_string();
        // serde_json leaves DEL, the C1 controls and the like raw (it
        // escapes only C0): escaped here as `Line::json_str` does, since
        // the summary carries callback names. They can only be inside
        // strings, where `\uNNNN` decodes to the same text.
        let mut safe = String::with_capacity(text.len());
        for c in text.chars() {
            if super::escape::unsafe_char(c) {
                safe.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                safe.push(c);
            }
        }
        self.out.write_all(safe.as_bytes())?;
        self.out.write_all(b"\n")
    }
}

// The record lines are written by hand, field by field in the contract's
// order, into one reused line: serde_json escaped every key anew and wrote
// each piece separately, three times the table's cost per event. Strings
// are escaped as serde_json escapes them, so the output is the same to the
// byte (the golden tests compare it).

/// Writes one record as a JSON object (no newline).
fn write_record(l: &mut Line, record: &Record, conn: Option<&SocketInfo>) {
    match record {
        Record::Event(Event::Syscall(s)) => syscall(l, s, conn),
        Record::Event(Event::Socket(i)) => socket(l, i),
        Record::Event(Event::Tcp(t)) => {
            l.str(r#"{"type":"tcp","ts_ns":"#).u64(t.ts_ns);
            l.str(r#","pid":"#).u64(t.pid.into());
            l.str(r#","tid":"#).u64(t.tid.into());
            l.str(r#","fd":"#).i64(t.fd.into());
            l.str(r#","event":""#).str(t.kind.as_str());
            l.str(r#"","from":""#).str(tcp_state_name(t.from));
            l.str(r#"","to":""#).str(tcp_state_name(t.to));
            l.str(r#"","sk":"#).u64(t.sk);
            l.str(r#","bytes_received":"#).u64(t.bytes_received);
            l.str(r#","bytes_acked":"#).u64(t.bytes_acked);
            l.str(r#","fin_received":"#)
                .str(if t.fin_received { "true" } else { "false" });
            l.str(r#","fin_acked":"#)
                .str(if t.fin_acked { "true" } else { "false" })
                .byte(b'}');
        }
        Record::Event(Event::CloseEnter(c)) => {
            l.str(r#"{"type":"close_enter","ts_ns":"#).u64(c.ts_ns);
            l.str(r#","pid":"#).u64(c.pid.into());
            l.str(r#","tid":"#).u64(c.tid.into());
            l.str(r#","fd":"#).i64(c.fd.into()).byte(b'}');
        }
        Record::Event(Event::EpollCtl(c)) => epoll_ctl(l, c),
        Record::Event(Event::EpollWait(w)) => wait(l, w, None),
        Record::Wait(Wait { wait: w, fds }) => wait(l, w, Some(fds)),
        Record::Event(Event::Probe(p)) => probe(l, p),
        Record::Op(op) => op_line(l, op),
        Record::Stall(s) => stall(l, s),
        Record::Event(Event::SlowSyscall(s)) => slow_syscall(l, s),
        Record::Event(Event::OffCpu(o)) => {
            l.str(r#"{"type":"off_cpu","ts_ns":"#).u64(o.ts_ns);
            l.str(r#","pid":"#).u64(o.pid.into());
            l.str(r#","tid":"#).u64(o.tid.into());
            l.str(r#","total_ns":"#).u64(o.total_ns).byte(b'}');
        }
        Record::Event(Event::Lost { ts_ns, count }) => {
            l.str(&json!({"type": "lost", "ts_ns": ts_ns, "count": count}).to_string());
        }
        Record::Event(Event::Process(p)) => {
            let line = match &p.kind {
                ProcessEventKind::Exit { code } => {
                    json!({"type": "process", "ts_ns": p.ts_ns, "pid": p.pid, "tid": p.tid, "event": "exit", "status": code})
                }
                ProcessEventKind::Exec => {
                    json!({"type": "process", "ts_ns": p.ts_ns, "pid": p.pid, "tid": p.tid, "event": "exec", "status": null})
                }
                ProcessEventKind::Fork { child } => json!({
                    "type": "process", "ts_ns": p.ts_ns, "pid": p.pid, "tid": p.tid, "event": "fork",
                    "status": null, "child": child
                }),
                ProcessEventKind::Traced { exe, probes } => json!({
                    "type": "process", "ts_ns": p.ts_ns, "pid": p.pid, "tid": p.tid, "event": "traced",
                    "status": null, "exe": exe, "probes": probes
                }),
            };
            l.str(&line.to_string());
        }
    }
}

fn socket(l: &mut Line, i: &SocketInfo) {
    l.str(r#"{"type":"socket","ts_ns":"#).u64(i.ts_ns);
    l.str(r#","pid":"#).u64(i.pid.into());
    l.str(r#","tid":"#).u64(i.tid.into());
    l.str(r#","fd":"#).i64(i.fd.into());
    l.str(r#","origin":""#).str(i.origin.as_str());
    l.str(r#"","family":"#).json_str(&i.family_name());
    l.str(r#","sock_type":"#).u64(i.sock_type.into());
    l.str(r#","protocol":"#).u64(i.protocol.into());
    l.str(r#","local":"#).json_str(&i.local.unescaped());
    l.str(r#","peer":"#).json_str(&i.peer.unescaped());
    l.str(r#","inode":"#).u64(i.inode);
    l.str(r#","sk":"#).u64(i.sk).byte(b'}');
}

fn syscall(l: &mut Line, s: &Syscall, conn: Option<&SocketInfo>) {
    l.str(r#"{"type":"syscall","ts_ns":"#).u64(s.ts_ns);
    l.str(r#","pid":"#).u64(s.pid.into());
    l.str(r#","tid":"#).u64(s.tid.into());
    l.str(r#","name":""#).str(s.name.as_str());
    l.str(r#"","fd":"#).i64(s.fd.into());
    l.str(r#","rv":"#).i64(s.rv);
    l.str(r#","errno":"#);
    opt_i64(l, s.errno().map(i64::from));
    l.str(r#","dur_ns":"#).u64(s.dur_ns);
    l.str(r#","arg":"#).u64(s.arg);
    if let Some(c) = conn {
        l.str(r#","local":"#).json_str(&c.local.unescaped());
        l.str(r#","peer":"#).json_str(&c.peer.unescaped());
    }
    l.byte(b'}');
}

/// The socket a syscall line is about: an accept's new fd, a connect's fd.
fn conn_of<'a>(s: &Syscall, socket: Option<&'a SocketInfo>) -> Option<&'a SocketInfo> {
    let fd = match s.name {
        SyscallName::Accept | SyscallName::Accept4 => i32::try_from(s.rv).ok()?,
        SyscallName::Connect => s.fd,
        _ => return None,
    };
    socket.filter(|i| i.fd == fd && i.pid == s.pid)
}

fn slow_syscall(l: &mut Line, s: &SlowSyscall) {
    l.str(r#"{"type":"slow_syscall","ts_ns":"#).u64(s.ts_ns);
    l.str(r#","pid":"#).u64(s.pid.into());
    l.str(r#","tid":"#).u64(s.tid.into());
    l.str(r#","nr":"#).u64(s.nr.into());
    l.str(r#","name":"#);
    opt_str(l, s.name());
    l.str(r#","fd":"#);
    opt_i64(l, s.fd().map(i64::from));
    l.str(r#","rv":"#).i64(s.rv);
    l.str(r#","errno":"#);
    opt_i64(l, s.errno().map(i64::from));
    l.str(r#","dur_ns":"#).u64(s.dur_ns);
    l.str(r#","arg0":"#).u64(s.arg0).byte(b'}');
}

fn stall(l: &mut Line, s: &Stall) {
    l.str(r#"{"type":"stall","ts_ns":"#).u64(s.ts_ns);
    l.str(r#","pid":"#).u64(s.pid.into());
    l.str(r#","tid":"#).u64(s.tid.into());
    l.str(r#","fd":"#).i64(s.fd.into());
    l.str(r#","name":"#).json_str(&s.name);
    l.str(r#","closure":"#);
    opt_u64(l, s.closure);
    l.str(r#","dur_ns":"#).u64(s.dur_ns);
    l.str(r#","off_cpu_ns":"#).u64(s.off_cpu_ns);
    l.str(r#","syscalls":["#);
    for (i, c) in s.syscalls.iter().enumerate() {
        if i > 0 {
            l.byte(b',');
        }
        l.str(r#"{"name":"#).json_str(&c.name);
        l.str(r#","fd":"#);
        opt_i64(l, c.fd.map(i64::from));
        l.str(r#","rv":"#).i64(c.rv);
        l.str(r#","dur_ns":"#).u64(c.dur_ns);
        l.str(r#","ts_ns":"#).u64(c.ts_ns).byte(b'}');
    }
    l.str(r#"],"syscalls_cut":"#).u64(s.syscalls_cut).byte(b'}');
}

fn epoll_ctl(l: &mut Line, c: &EpollCtl) {
    l.str(r#"{"type":"epoll_ctl","ts_ns":"#).u64(c.ts_ns);
    l.str(r#","pid":"#).u64(c.pid.into());
    l.str(r#","tid":"#).u64(c.tid.into());
    l.str(r#","name":"epoll_ctl","epfd":"#).i64(c.epfd.into());
    l.str(r#","op":""#).str(EpollMap::op_name(c.op));
    l.str(r#"","fd":"#).i64(c.fd.into());
    l.str(r#","events":"#).u64(c.events.into());
    l.str(r#","data":"#).u64(c.data);
    l.str(r#","rv":"#).i64(c.rv);
    l.str(r#","errno":"#);
    opt_i64(l, errno_of(c.rv).map(i64::from));
    l.str(r#","dur_ns":"#).u64(c.dur_ns).byte(b'}');
}

fn wait(l: &mut Line, w: &crate::event::EpollWait, fds: Option<&[Option<i32>]>) {
    l.str(r#"{"type":"wait","ts_ns":"#).u64(w.ts_ns);
    l.str(r#","pid":"#).u64(w.pid.into());
    l.str(r#","tid":"#).u64(w.tid.into());
    l.str(r#","name":""#).str(w.name);
    l.str(r#"","epfd":"#).i64(w.epfd.into());
    l.str(r#","rv":"#).i64(w.rv);
    l.str(r#","errno":"#);
    opt_i64(l, w.errno().map(i64::from));
    l.str(r#","dur_ns":"#).u64(w.dur_ns);
    l.str(r#","events":["#);
    for (i, e) in w.events.iter().enumerate() {
        if i > 0 {
            l.byte(b',');
        }
        l.str(r#"{"fd":"#);
        opt_i64(
            l,
            fds.and_then(|f| f.get(i).copied().flatten()).map(i64::from),
        );
        l.str(r#","events":"#).u64(e.events.into());
        l.str(r#","data":"#).u64(e.data).byte(b'}');
    }
    l.str(r#"],"events_omitted":"#).u64(events_omitted(w));
    l.byte(b'}');
}

fn probe(l: &mut Line, p: &Probe) {
    l.str(r#"{"type":"probe","ts_ns":"#).u64(p.ts_ns);
    l.str(r#","pid":"#).u64(p.pid.into());
    l.str(r#","tid":"#).u64(p.tid.into());
    l.str(r#","name":""#).str(p.name.as_str());
    l.str(r#"","fd":"#);
    opt_i64(l, p.fd().map(i64::from));
    l.str(r#","args":["#);
    for (i, a) in p.args[..p.name.arg_count()].iter().enumerate() {
        if i > 0 {
            l.byte(b',');
        }
        if signed_arg(p.name, i) {
            l.i64(*a as i64);
        } else {
            l.u64(*a);
        }
    }
    l.str(r#"],"strings":["#);
    for (i, s) in p.strings.iter().enumerate() {
        if i > 0 {
            l.byte(b',');
        }
        l.json_str(s);
    }
    l.str("]}");
}

fn op_line(l: &mut Line, op: &Op) {
    l.str(r#"{"type":"op","op":""#).str(op.kind.as_str());
    l.str(r#"","pid":"#).u64(op.pid.into());
    l.str(r#","tid":"#).u64(op.tid.into());
    l.str(r#","fd":"#).i64(op.fd.into());
    l.str(r#","entry_ts_ns":"#).u64(op.entry_ts_ns);
    l.str(r#","return_ts_ns":"#);
    opt_u64(l, op.return_ts_ns);
    l.str(r#","user_rv":"#);
    opt_i64(l, op.user_rv);
    l.str(r#","syscalls":["#);
    for (i, s) in op.syscalls.iter().enumerate() {
        if i > 0 {
            l.byte(b',');
        }
        l.str(r#"{"name":""#).str(s.name.as_str());
        l.str(r#"","rv":"#).i64(s.rv);
        l.str(r#","errno":"#);
        opt_i64(l, s.errno().map(i64::from));
        l.str(r#","ts_ns":"#).u64(s.ts_ns);
        l.str(r#","dur_ns":"#).u64(s.dur_ns).byte(b'}');
    }
    l.str(r#"],"kernel_ns":"#).u64(op.kernel_ns);
    l.str(r#","user_ns":"#).u64(op.user_ns);
    l.str(r#","mismatch":"#);
    opt_str(l, op.mismatch.as_deref());
    l.str(r#","incomplete":"#);
    opt_str(l, op.incomplete.as_deref());
    l.str(r#","closure":"#);
    opt_u64(l, op.closure);
    l.str(r#","callback":"#);
    opt_str(l, op.callback.as_deref());
    if op.kind == crate::event::OpKind::Accept {
        l.str(r#","local":"#);
        opt_str(l, op.conn.as_ref().map(|c| c.local.unescaped()).as_deref());
        l.str(r#","peer":"#);
        opt_str(l, op.conn.as_ref().map(|c| c.peer.unescaped()).as_deref());
    }
    l.byte(b'}');
}

fn opt_i64(l: &mut Line, v: Option<i64>) {
    match v {
        Some(v) => l.i64(v),
        None => l.str("null"),
    };
}

fn opt_str(l: &mut Line, v: Option<&str>) {
    match v {
        Some(v) => l.json_str(v),
        None => l.str("null"),
    };
}

fn opt_u64(l: &mut Line, v: Option<u64>) {
    match v {
        Some(v) => l.u64(v),
        None => l.str("null"),
    };
}

/// Whether a probe argument is a C `int` (fds, masks, rv: shown signed)
/// rather than an address or a length (unsigned).
fn signed_arg(probe: ProbeName, i: usize) -> bool {
    use ProbeName::*;
    match probe {
        AcceptEntry | AcceptReturn => matches!(i, 0 | 2 | 3 | 5),
        ReadEntry | ReadReturn | WriteEntry | WriteReturn => matches!(i, 0 | 3 | 5),
        CloseEntry | CloseReturn => matches!(i, 0 | 1 | 3),
        CallbackEntry => matches!(i, 3..=5),
        CallbackReturn => i == 3,
        Log => i == 2,
    }
}

fn hist_json(h: &Log2Hist) -> Value {
    Value::Array(
        h.buckets()
            .into_iter()
            .map(|(lo, n)| json!([lo, n]))
            .collect(),
    )
}

fn stats_json(s: &OpStats) -> Value {
    json!({
        "count": s.count, "bytes": s.bytes, "mismatches": s.mismatches, "incomplete": s.incomplete,
        "errors": s.errors.iter().map(|(e, n)| (e.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "user_ns_log2": hist_json(&s.user_ns), "kernel_ns_log2": hist_json(&s.kernel_ns),
        "user_ns_total": s.user_ns_total, "kernel_ns_total": s.kernel_ns_total,
    })
}

fn conn_json(c: &crate::correlate::ConnSummary) -> Value {
    let sock = c.socket.as_deref();
    let b = &c.bytes;
    json!({
        "pid": c.pid, "fd": c.fd, "name": c.name(),
        "origin": sock.map(|s| s.origin.as_str()),
        "family": sock.map(|s| s.family), "sock_type": sock.map(|s| s.sock_type),
        "protocol": sock.map(|s| s.protocol),
        "local": sock.map(|s| s.local.unescaped()), "peer": sock.map(|s| s.peer.unescaped()),
        "states": c.states, "retransmits": c.retransmits,
        "resets_sent": c.resets_sent, "resets_received": c.resets_received,
        "bytes": {
            "ops_read": b.ops_read, "ops_written": b.ops_written,
            "kernel_received": b.kernel_received, "kernel_acked": b.kernel_acked,
            "unread": b.unread, "unacked": b.unacked, "not_compared": b.not_compared,
        },
    })
}

/// The summary's JSON object.
pub fn summary_json(s: &Summary) -> Value {
    let per_fd: serde_json::Map<String, Value> = s
        .per_fd
        .iter()
        .map(|(fd, ops)| {
            let ops: serde_json::Map<String, Value> = ops
                .iter()
                .map(|(k, st)| (k.as_str().to_string(), stats_json(st)))
                .collect();
            (fd.to_string(), Value::Object(ops))
        })
        .collect();
    let per_op: serde_json::Map<String, Value> = s
        .per_op()
        .iter()
        .map(|(k, st)| (k.as_str().to_string(), stats_json(st)))
        .collect();
    let stalls: Vec<Value> = s
        .top_stalls()
        .into_iter()
        .map(|(name, st)| {
            json!({
                "name": &**name, "count": st.count, "total_ns": st.total_ns, "max_ns": st.max_ns,
                "off_cpu_ns_total": st.off_cpu_ns_total, "dur_ns_log2": hist_json(&st.dur_ns),
            })
        })
        .collect();
    json!({
        "type": "summary", "events": s.events, "lost_events": s.lost_events, "ops": s.ops,
        "mismatches": s.mismatches, "incomplete": s.incomplete, "orphan_syscalls": s.orphan_syscalls,
        "syscalls_cut": s.syscalls_cut, "waits": s.waits, "process_end": s.process_end,
        "per_fd": per_fd, "per_op": per_op, "stalls": stalls, "stalls_incomplete": s.stalls_incomplete,
        "connections": s.connections.iter().map(conn_json).collect::<Vec<_>>(),
        "accepted": s.accepted.iter().map(|((host, local), n)| json!({"host": host, "local": local, "count": n})).collect::<Vec<_>>(),
        "fd_connections": s.fd_names.iter().map(|(fd, n)| (fd.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "tcp_untracked": s.tcp_untracked, "connections_omitted": s.connections_omitted,
    })
}

impl<W: Write> Output for Json<W> {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        let conn = match record {
            Record::Event(Event::Socket(i)) => {
                self.sockets.insert(i.tid, i.clone());
                None
            }
            // Taken, not kept: one identity per accept or connect.
            Record::Event(Event::Syscall(s)) if conn_of(s, self.sockets.get(&s.tid)).is_some() => {
                self.sockets.remove(&s.tid)
            }
            _ => None,
        };
        write_record(&mut self.line, record, conn.as_ref());
        self.line.byte(b'\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary_json(summary))?;
        self.out.flush()
    }

    fn tick(&mut self, _now_ns: u64) -> io::Result<()> {
        self.out.flush()
    }
}
