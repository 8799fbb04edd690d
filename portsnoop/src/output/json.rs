//! JSON Lines: one object per record, each with a `"type"`.
//!
//! The contract: `syscall` {ts_ns, tid, name, fd, rv, errno, dur_ns, arg};
//! `probe` {ts_ns, tid, name, fd, args (the probe's `arg_count`, C ints
//! signed), strings}; `wait` {ts_ns, tid, name, epfd, rv, errno, dur_ns,
//! events: [{fd (null: its `epoll_ctl` was not seen), events, data}]}; `op`
//! {op, tid, fd, entry_ts_ns, return_ts_ns, user_rv, syscalls: [{name, rv,
//! errno, ts_ns, dur_ns}], kernel_ns, user_ns, mismatch, incomplete,
//! closure, callback}. Also `epoll_ctl` {ts_ns, tid, name: "epoll_ctl",
//! epfd, op ("ADD"/"DEL"/"MOD"), fd, events, data, rv, errno, dur_ns},
//! `lost` {ts_ns, count} and `process` {ts_ns, tid, event ("exit"/"exec"),
//! status}. `summary` is the last line: {events, lost_events, ops,
//! mismatches, incomplete, orphan_syscalls, syscalls_cut, waits,
//! process_end, per_fd: {FD: {OP: STATS}}, per_op: {OP: STATS}} with STATS
//! {count, bytes, mismatches, errors: {ERRNO: n}, user_ns_log2,
//! kernel_ns_log2 ([[bucket lower bound, count], ...]), user_ns_total,
//! kernel_ns_total}.
//!
//! Every line but `op` and `summary` carries its whole event, so a JSON
//! trace can be replayed through the correlator (the crate's tests do).

use std::io::{self, Write};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::Output;
use crate::correlate::{Log2Hist, OpStats, Record, Summary};
use crate::event::{errno_of, Event, ProcessEventKind};

/// Writes JSON Lines to `W`.
pub struct Json<W: Write> {
    out: W,
}

impl<W: Write> Json<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Json<W> {
        Json { out }
    }

    fn line(&mut self, v: Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &v)?;
        self.out.write_all(b"\n")
    }
}

/// Each line type as a struct borrowing from the record: serialized
/// straight to the writer, with no intermediate `serde_json::Value`
/// (building those was most of this writer's cost).
#[derive(Serialize)]
struct SyscallLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts_ns: u64,
    tid: u32,
    name: &'a str,
    fd: i32,
    rv: i64,
    errno: Option<i32>,
    dur_ns: u64,
    arg: u64,
}

#[derive(Serialize)]
struct OpSyscall<'a> {
    name: &'a str,
    rv: i64,
    errno: Option<i32>,
    ts_ns: u64,
    dur_ns: u64,
}

#[derive(Serialize)]
struct CtlLine {
    #[serde(rename = "type")]
    kind: &'static str,
    ts_ns: u64,
    tid: u32,
    name: &'static str,
    epfd: i32,
    op: &'static str,
    fd: i32,
    events: u32,
    data: u64,
    rv: i64,
    errno: Option<i32>,
    dur_ns: u64,
}

#[derive(Serialize)]
struct ReadyLine {
    fd: Option<i32>,
    events: u32,
    data: u64,
}

#[derive(Serialize)]
struct WaitLine {
    #[serde(rename = "type")]
    kind: &'static str,
    ts_ns: u64,
    tid: u32,
    name: &'static str,
    epfd: i32,
    rv: i64,
    errno: Option<i32>,
    dur_ns: u64,
    events: Vec<ReadyLine>,
}

#[derive(Serialize)]
struct ProbeLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts_ns: u64,
    tid: u32,
    name: &'static str,
    fd: Option<i32>,
    args: Vec<ProbeArg>,
    strings: &'a [Arc<str>],
}

/// A probe argument with its C signedness.
#[derive(Serialize)]
#[serde(untagged)]
enum ProbeArg {
    Signed(i64),
    Unsigned(u64),
}

#[derive(Serialize)]
struct OpLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    op: &'static str,
    tid: u32,
    fd: i32,
    entry_ts_ns: u64,
    return_ts_ns: Option<u64>,
    user_rv: Option<i64>,
    syscalls: Vec<OpSyscall<'a>>,
    kernel_ns: u64,
    user_ns: u64,
    mismatch: Option<&'a str>,
    incomplete: bool,
    closure: Option<u64>,
    callback: Option<&'a str>,
}

fn wait_line(w: &crate::event::EpollWait, fds: Option<&[Option<i32>]>) -> WaitLine {
    WaitLine {
        kind: "wait",
        ts_ns: w.ts_ns,
        tid: w.tid,
        name: w.name,
        epfd: w.epfd,
        rv: w.rv,
        errno: w.errno(),
        dur_ns: w.dur_ns,
        events: w
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| ReadyLine {
                fd: fds.and_then(|f| f.get(i).copied().flatten()),
                events: e.events,
                data: e.data,
            })
            .collect(),
    }
}

/// Writes one record as a JSON object (no newline).
pub fn write_record<W: Write>(out: &mut W, record: &Record) -> serde_json::Result<()> {
    match record {
        Record::Event(Event::Syscall(s)) => serde_json::to_writer(
            out,
            &SyscallLine {
                kind: "syscall",
                ts_ns: s.ts_ns,
                tid: s.tid,
                name: s.name.as_str(),
                fd: s.fd,
                rv: s.rv,
                errno: s.errno(),
                dur_ns: s.dur_ns,
                arg: s.arg,
            },
        ),
        Record::Event(Event::EpollCtl(c)) => serde_json::to_writer(
            out,
            &CtlLine {
                kind: "epoll_ctl",
                ts_ns: c.ts_ns,
                tid: c.tid,
                name: "epoll_ctl",
                epfd: c.epfd,
                op: crate::correlate::EpollMap::op_name(c.op),
                fd: c.fd,
                events: c.events,
                data: c.data,
                rv: c.rv,
                errno: errno_of(c.rv),
                dur_ns: c.dur_ns,
            },
        ),
        Record::Event(Event::EpollWait(w)) => serde_json::to_writer(out, &wait_line(w, None)),
        Record::Wait(w) => serde_json::to_writer(out, &wait_line(&w.wait, Some(&w.fds))),
        Record::Event(Event::Probe(p)) => serde_json::to_writer(
            out,
            &ProbeLine {
                kind: "probe",
                ts_ns: p.ts_ns,
                tid: p.tid,
                name: p.name.as_str(),
                fd: p.fd(),
                args: p.args[..p.name.arg_count()]
                    .iter()
                    .enumerate()
                    .map(|(i, a)| probe_arg(p.name, i, *a))
                    .collect(),
                strings: &p.strings,
            },
        ),
        Record::Event(Event::Lost { ts_ns, count }) => serde_json::to_writer(
            out,
            &json!({"type": "lost", "ts_ns": ts_ns, "count": count}),
        ),
        Record::Event(Event::Process(p)) => {
            let (event, status) = match &p.kind {
                ProcessEventKind::Exit { code } => ("exit", Some(*code)),
                ProcessEventKind::Exec => ("exec", None),
            };
            serde_json::to_writer(
                out,
                &json!({"type": "process", "ts_ns": p.ts_ns, "tid": p.tid, "event": event, "status": status}),
            )
        }
        Record::Op(op) => serde_json::to_writer(
            out,
            &OpLine {
                kind: "op",
                op: op.kind.as_str(),
                tid: op.tid,
                fd: op.fd,
                entry_ts_ns: op.entry_ts_ns,
                return_ts_ns: op.return_ts_ns,
                user_rv: op.user_rv,
                syscalls: op
                    .syscalls
                    .iter()
                    .map(|s| OpSyscall {
                        name: s.name.as_str(),
                        rv: s.rv,
                        errno: s.errno(),
                        ts_ns: s.ts_ns,
                        dur_ns: s.dur_ns,
                    })
                    .collect(),
                kernel_ns: op.kernel_ns,
                user_ns: op.user_ns,
                mismatch: op.mismatch.as_deref(),
                incomplete: op.incomplete,
                closure: op.closure,
                callback: op.callback.as_deref(),
            },
        ),
    }
}

/// Probe arguments as numbers with their C signedness: `int` arguments
/// (fds, masks, rv) signed, addresses and lengths unsigned.
fn probe_arg(probe: crate::event::ProbeName, i: usize, raw: u64) -> ProbeArg {
    use crate::event::ProbeName::*;
    let signed = match probe {
        AcceptEntry | AcceptReturn => matches!(i, 0 | 2 | 3 | 5),
        ReadEntry | ReadReturn | WriteEntry | WriteReturn => matches!(i, 0 | 3 | 5),
        CloseEntry | CloseReturn => matches!(i, 0 | 1 | 3),
        CallbackEntry => matches!(i, 3..=5),
        CallbackReturn => i == 3,
        Log => i == 2,
    };
    if signed {
        ProbeArg::Signed(raw as i64)
    } else {
        ProbeArg::Unsigned(raw)
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
        "count": s.count, "bytes": s.bytes, "mismatches": s.mismatches,
        "errors": s.errors.iter().map(|(e, n)| (e.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "user_ns_log2": hist_json(&s.user_ns), "kernel_ns_log2": hist_json(&s.kernel_ns),
        "user_ns_total": s.user_ns_total, "kernel_ns_total": s.kernel_ns_total,
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
    json!({
        "type": "summary", "events": s.events, "lost_events": s.lost_events, "ops": s.ops,
        "mismatches": s.mismatches, "incomplete": s.incomplete, "orphan_syscalls": s.orphan_syscalls,
        "syscalls_cut": s.syscalls_cut, "waits": s.waits, "process_end": s.process_end,
        "per_fd": per_fd, "per_op": per_op,
    })
}

impl<W: Write> Output for Json<W> {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        write_record(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary_json(summary))?;
        self.out.flush()
    }
}
