//! JSON Lines: one object per record, each with a `"type"`.
//!
//! The contract: `syscall` {ts_ns, tid, name, fd, rv, errno, dur_ns};
//! `probe` {ts_ns, tid, name, fd, args, strings}; `wait` {ts_ns, tid, name,
//! rv, errno, events: [{fd, events, data}]}; `op` {op, tid, fd, entry_ts_ns,
//! return_ts_ns, user_rv, syscalls: [{name, rv, errno, ts_ns, dur_ns}],
//! kernel_ns, user_ns, mismatch, incomplete, closure, callback}; `summary`
//! last. Also `epoll_ctl` {ts_ns, tid, epfd, op, fd, events, data, rv,
//! errno, dur_ns}, `lost` {ts_ns, count} and `process` {ts_ns, tid, event,
//! status}.

use std::io::{self, Write};

use serde_json::{json, Value};

use super::Output;
use crate::correlate::{Log2Hist, OpStats, Record, Summary};
use crate::event::{errno_of, Event, ProcessEventKind, Syscall};

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

fn syscall_json(s: &Syscall) -> Value {
    json!({"name": s.name.as_str(), "rv": s.rv, "errno": s.errno(), "ts_ns": s.ts_ns, "dur_ns": s.dur_ns})
}

/// The JSON object for one record.
pub fn record_json(record: &Record) -> Value {
    match record {
        Record::Event(Event::Syscall(s)) => json!({
            "type": "syscall", "ts_ns": s.ts_ns, "tid": s.tid, "name": s.name.as_str(), "fd": s.fd,
            "rv": s.rv, "errno": s.errno(), "dur_ns": s.dur_ns, "arg": s.arg,
        }),
        Record::Event(Event::EpollCtl(c)) => json!({
            "type": "epoll_ctl", "ts_ns": c.ts_ns, "tid": c.tid, "name": "epoll_ctl", "epfd": c.epfd,
            "op": crate::correlate::EpollMap::op_name(c.op), "fd": c.fd, "events": c.events, "data": c.data,
            "rv": c.rv, "errno": errno_of(c.rv), "dur_ns": c.dur_ns,
        }),
        Record::Event(Event::EpollWait(w)) => json!({
            "type": "wait", "ts_ns": w.ts_ns, "tid": w.tid, "name": w.name, "epfd": w.epfd, "rv": w.rv,
            "errno": w.errno(), "dur_ns": w.dur_ns,
            "events": w.events.iter().map(|e| json!({"fd": null, "events": e.events, "data": e.data})).collect::<Vec<_>>(),
        }),
        Record::Wait(w) => {
            let events: Vec<Value> = w
                .wait
                .events
                .iter()
                .zip(&w.fds)
                .map(|(e, fd)| json!({"fd": fd, "events": e.events, "data": e.data}))
                .collect();
            json!({
                "type": "wait", "ts_ns": w.wait.ts_ns, "tid": w.wait.tid, "name": w.wait.name, "epfd": w.wait.epfd,
                "rv": w.wait.rv, "errno": w.wait.errno(), "dur_ns": w.wait.dur_ns, "events": events,
            })
        }
        Record::Event(Event::Probe(p)) => json!({
            "type": "probe", "ts_ns": p.ts_ns, "tid": p.tid, "name": p.name.as_str(), "fd": p.fd(),
            "args": p.args[..p.name.arg_count()].iter().enumerate().map(|(i, a)| probe_arg(p.name, i, *a)).collect::<Vec<_>>(),
            "strings": p.strings,
        }),
        Record::Event(Event::Lost { ts_ns, count }) => {
            json!({"type": "lost", "ts_ns": ts_ns, "count": count})
        }
        Record::Event(Event::Process(p)) => match &p.kind {
            ProcessEventKind::Exit { code } => {
                json!({"type": "process", "ts_ns": p.ts_ns, "tid": p.tid, "event": "exit", "status": code})
            }
            ProcessEventKind::Exec => {
                json!({"type": "process", "ts_ns": p.ts_ns, "tid": p.tid, "event": "exec", "status": null})
            }
        },
        Record::Op(op) => json!({
            "type": "op", "op": op.kind.as_str(), "tid": op.tid, "fd": op.fd,
            "entry_ts_ns": op.entry_ts_ns, "return_ts_ns": op.return_ts_ns, "user_rv": op.user_rv,
            "syscalls": op.syscalls.iter().map(syscall_json).collect::<Vec<_>>(),
            "kernel_ns": op.kernel_ns, "user_ns": op.user_ns, "mismatch": op.mismatch,
            "incomplete": op.incomplete, "closure": op.closure, "callback": op.callback,
        }),
    }
}

/// Probe arguments as numbers with their C signedness: `int` arguments
/// (fds, masks, rv) signed, addresses and lengths unsigned.
fn probe_arg(probe: crate::event::ProbeName, i: usize, raw: u64) -> Value {
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
        json!(raw as i64)
    } else {
        json!(raw)
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
        self.line(record_json(record))
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary_json(summary))?;
        self.out.flush()
    }
}
