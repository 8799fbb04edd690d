//! One JSON line of a `--json` recording back into what the correlator
//! produced: the inverse of [`crate::output::json`], field by field as its
//! contract documents them. Fields the writer derives from others (a
//! syscall's `errno`, a probe's `fd`, a wait's `events_omitted`, the
//! summary's `per_op`) are not read back: they are made again.
//!
//! A new record type is one arm in [`entry`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::sock::{
    tcp_state_of, Endpoint, SocketInfo, SocketOrigin, TcpEvent, TcpEventKind, AF_INET, AF_INET6,
    AF_UNIX,
};

use crate::correlate::{
    ConnBytes, ConnSummary, EpollMap, Log2Hist, Op, OpStats, Record, Stall, StallStats,
    StallSyscall, Summary, Wait,
};
use crate::event::{
    CloseEnter, EpollCtl, EpollWait, Event, OffCpu, OpKind, Probe, ProbeName, ProcessEvent,
    ProcessEventKind, ReadyEvent, SlowSyscall, Syscall, SyscallName,
};

/// What one line holds.
#[derive(Debug)]
pub enum Entry {
    /// A record, as the correlator emitted it.
    Record(Record),
    /// The summary (the last line).
    Summary(Box<Summary>),
    /// A line of a type this portsnoop does not know (written by a newer
    /// one): its type.
    Unknown(String),
}

/// Why a line is not what the contract says: a sentence, without the
/// line number (the caller adds it).
pub type Why = String;

/// Parses one line.
pub fn entry(line: &str) -> Result<Entry, Why> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = &v else {
        return Err("not a JSON object".into());
    };
    let ty = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err("no \"type\" string".into()),
    };
    let o = Obj { map, ty };
    let record = match ty {
        "syscall" => Record::Event(Event::Syscall(syscall(&o)?)),
        "close_enter" => Record::Event(Event::CloseEnter(CloseEnter {
            ts_ns: o.u64("ts_ns")?,
            pid: o.u32("pid")?,
            tid: o.u32("tid")?,
            fd: o.i32("fd")?,
        })),
        "epoll_ctl" => Record::Event(Event::EpollCtl(epoll_ctl(&o)?)),
        "wait" => Record::Wait(wait(&o)?),
        "probe" => Record::Event(Event::Probe(probe(&o)?)),
        "op" => Record::Op(Box::new(op(&o)?)),
        "lost" => Record::Event(Event::Lost {
            ts_ns: o.u64("ts_ns")?,
            count: o.u64("count")?,
        }),
        "process" => Record::Event(Event::Process(process(&o)?)),
        "stall" => Record::Stall(Box::new(stall(&o)?)),
        "slow_syscall" => Record::Event(Event::SlowSyscall(SlowSyscall {
            ts_ns: o.u64("ts_ns")?,
            pid: o.u32("pid")?,
            tid: o.u32("tid")?,
            nr: o.u32("nr")?,
            arg0: o.u64("arg0")?,
            rv: o.i64("rv")?,
            dur_ns: o.u64("dur_ns")?,
        })),
        "off_cpu" => Record::Event(Event::OffCpu(OffCpu {
            ts_ns: o.u64("ts_ns")?,
            pid: o.u32("pid")?,
            tid: o.u32("tid")?,
            total_ns: o.u64("total_ns")?,
        })),
        "socket" => Record::Event(Event::Socket(socket(&o)?)),
        "tcp" => Record::Event(Event::Tcp(tcp(&o)?)),
        "summary" => return Ok(Entry::Summary(Box::new(summary(&o)?))),
        other => return Ok(Entry::Unknown(other.to_string())),
    };
    Ok(Entry::Record(record))
}

/// A JSON object of a known type, read field by field.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    ty: &'a str,
}

impl<'a> Obj<'a> {
    fn get(&self, k: &str) -> Result<&'a Value, Why> {
        self.map
            .get(k)
            .ok_or_else(|| format!("{}: no \"{k}\"", self.ty))
    }

    fn bad(&self, k: &str, want: &str) -> Why {
        format!("{}: \"{k}\" is not {want}", self.ty)
    }

    fn u64(&self, k: &str) -> Result<u64, Why> {
        self.get(k)?
            .as_u64()
            .ok_or_else(|| self.bad(k, "an unsigned 64-bit integer"))
    }

    fn i64(&self, k: &str) -> Result<i64, Why> {
        self.get(k)?
            .as_i64()
            .ok_or_else(|| self.bad(k, "a signed 64-bit integer"))
    }

    fn u32(&self, k: &str) -> Result<u32, Why> {
        u32::try_from(self.u64(k)?).map_err(|_| self.bad(k, "a 32-bit unsigned integer"))
    }

    fn i32(&self, k: &str) -> Result<i32, Why> {
        i32::try_from(self.i64(k)?).map_err(|_| self.bad(k, "a 32-bit integer"))
    }

    fn str(&self, k: &str) -> Result<&'a str, Why> {
        self.get(k)?.as_str().ok_or_else(|| self.bad(k, "a string"))
    }

    /// A field that may be `null`.
    fn opt<T>(
        &self,
        k: &str,
        f: impl FnOnce(&Self, &str) -> Result<T, Why>,
    ) -> Result<Option<T>, Why> {
        match self.get(k)? {
            Value::Null => Ok(None),
            _ => f(self, k).map(Some),
        }
    }

    /// A field a recording from an older portsnoop may not have: None
    /// when missing (null is no value of it either).
    fn opt_missing<T>(
        &self,
        k: &str,
        f: impl Fn(&Self, &str) -> Result<T, Why>,
    ) -> Result<Option<T>, Why> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => f(self, k).map(Some),
        }
    }

    fn array(&self, k: &str) -> Result<&'a [Value], Why> {
        self.get(k)?
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| self.bad(k, "an array"))
    }

    fn object(&self, k: &str) -> Result<&'a Map<String, Value>, Why> {
        self.get(k)?
            .as_object()
            .ok_or_else(|| self.bad(k, "an object"))
    }

    /// A nested object of this one, read the same way.
    fn nested(&self, v: &'a Value, what: &'a str) -> Result<Obj<'a>, Why> {
        match v {
            Value::Object(map) => Ok(Obj { map, ty: what }),
            _ => Err(format!("{what} is not an object")),
        }
    }
}

fn syscall_name(o: &Obj<'_>, k: &str) -> Result<SyscallName, Why> {
    let name = o.str(k)?;
    SyscallName::from_name(name).ok_or_else(|| format!("{}: unknown syscall {name:?}", o.ty))
}

fn syscall(o: &Obj<'_>) -> Result<Syscall, Why> {
    Ok(Syscall {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        name: syscall_name(o, "name")?,
        fd: o.i32("fd")?,
        rv: o.i64("rv")?,
        dur_ns: o.u64("dur_ns")?,
        arg: o.u64("arg")?,
    })
}

fn epoll_ctl(o: &Obj<'_>) -> Result<EpollCtl, Why> {
    let op = o.str("op")?;
    Ok(EpollCtl {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        epfd: o.i32("epfd")?,
        op: EpollMap::op_number(op).ok_or_else(|| format!("epoll_ctl: unknown op {op:?}"))?,
        fd: o.i32("fd")?,
        events: o.u32("events")?,
        data: o.u64("data")?,
        rv: o.i64("rv")?,
        dur_ns: o.u64("dur_ns")?,
    })
}

fn wait(o: &Obj<'_>) -> Result<Wait, Why> {
    // The names the kernel side gives waits: static, as in a live record.
    const NAMES: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];
    let name = o.str("name")?;
    let name = NAMES
        .into_iter()
        .find(|n| *n == name)
        .ok_or_else(|| format!("wait: unknown wait {name:?}"))?;
    let mut events = Vec::new();
    let mut fds = Vec::new();
    for e in o.array("events")? {
        let e = o.nested(e, "wait event")?;
        events.push(ReadyEvent {
            events: e.u32("events")?,
            data: e.u64("data")?,
        });
        fds.push(e.opt("fd", Obj::i32)?);
    }
    if events.len() > EpollWait::MAX_EVENTS {
        return Err(format!(
            "wait: {} events, more than the {} a wait records",
            events.len(),
            EpollWait::MAX_EVENTS
        ));
    }
    Ok(Wait {
        wait: EpollWait {
            ts_ns: o.u64("ts_ns")?,
            pid: o.u32("pid")?,
            tid: o.u32("tid")?,
            name,
            epfd: o.i32("epfd")?,
            rv: o.i64("rv")?,
            dur_ns: o.u64("dur_ns")?,
            events,
        },
        fds,
    })
}

fn probe(o: &Obj<'_>) -> Result<Probe, Why> {
    let name = o.str("name")?;
    let name =
        ProbeName::from_name(name).ok_or_else(|| format!("probe: unknown probe {name:?}"))?;
    let given = o.array("args")?;
    if given.len() != name.arg_count() {
        return Err(format!(
            "probe: {} has {} arguments, the line {}",
            name.as_str(),
            name.arg_count(),
            given.len()
        ));
    }
    let mut args = [0u64; 6];
    for (a, v) in args.iter_mut().zip(given) {
        // Signed arguments are written as i64 of the sign-extended value,
        // the others as u64: either way the same 64 bits.
        *a = match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err("probe: an argument is not a 64-bit integer".into()),
        };
    }
    let strings = o
        .array("strings")?
        .iter()
        .map(|s| s.as_str().map(Arc::from))
        .collect::<Option<Vec<Arc<str>>>>()
        .ok_or_else(|| o.bad("strings", "an array of strings"))?;
    Ok(Probe {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        name,
        args,
        strings,
    })
}

fn op(o: &Obj<'_>) -> Result<Op, Why> {
    let kind = o.str("op")?;
    let kind = OpKind::from_name(kind).ok_or_else(|| format!("op: unknown op {kind:?}"))?;
    let mut op = Op::new(
        kind,
        o.u32("pid")?,
        o.u32("tid")?,
        o.i32("fd")?,
        o.u64("entry_ts_ns")?,
    );
    op.return_ts_ns = o.opt("return_ts_ns", Obj::u64)?;
    op.user_rv = o.opt("user_rv", Obj::i64)?;
    for s in o.array("syscalls")? {
        let s = o.nested(s, "op syscall")?;
        // The op line keeps what the writers show of its syscalls; the
        // rest is the op's (its thread, its fd) or not kept (the size
        // argument, which the syscall's own line has).
        op.syscalls.push(Syscall {
            ts_ns: s.u64("ts_ns")?,
            pid: op.pid,
            tid: op.tid,
            name: syscall_name(&s, "name")?,
            fd: op.fd,
            rv: s.i64("rv")?,
            dur_ns: s.u64("dur_ns")?,
            arg: 0,
        });
    }
    op.kernel_ns = o.u64("kernel_ns")?;
    op.user_ns = o.u64("user_ns")?;
    op.mismatch = o.opt("mismatch", |o, k| o.str(k).map(String::from))?;
    op.incomplete = o.opt("incomplete", |o, k| o.str(k).map(String::from))?;
    op.closure = o.opt("closure", Obj::u64)?;
    op.callback = o.opt("callback", |o, k| o.str(k).map(Arc::from))?;
    if kind == OpKind::Accept {
        let local = o.opt("local", |o, k| o.str(k).map(String::from))?;
        let peer = o.opt("peer", |o, k| o.str(k).map(String::from))?;
        if let (Some(local), Some(peer)) = (local, peer) {
            op.conn = Some(Arc::new(conn_socket(&op, &local, &peer)));
        }
    }
    Ok(op)
}

/// An accept op's connection from the two ends its line shows (all the
/// writers show of it): the family from the addresses.
fn conn_socket(op: &Op, local: &str, peer: &str) -> SocketInfo {
    let family = match local.parse::<std::net::SocketAddr>() {
        Ok(a) if a.is_ipv4() => AF_INET,
        Ok(_) => AF_INET6,
        Err(_) => AF_UNIX,
    };
    SocketInfo {
        ts_ns: op.entry_ts_ns,
        pid: op.pid,
        tid: op.tid,
        fd: op
            .user_rv
            .and_then(|rv| i32::try_from(rv).ok())
            .unwrap_or(-1),
        origin: SocketOrigin::Accept,
        family,
        sock_type: 1,
        protocol: if family == AF_UNIX { 0 } else { 6 },
        local: Endpoint::parse(family, local),
        peer: Endpoint::parse(family, peer),
        inode: 0,
        sk: 0,
    }
}

fn family_of(name: &str) -> Result<u16, Why> {
    Ok(match name {
        "inet" => AF_INET,
        "inet6" => AF_INET6,
        "unix" => AF_UNIX,
        n => n.parse().map_err(|_| format!("unknown family {n:?}"))?,
    })
}

fn socket(o: &Obj<'_>) -> Result<SocketInfo, Why> {
    let family = family_of(o.str("family")?)?;
    let origin = o.str("origin")?;
    Ok(SocketInfo {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        fd: o.i32("fd")?,
        origin: SocketOrigin::from_name(origin)
            .ok_or_else(|| format!("socket: unknown origin {origin:?}"))?,
        family,
        sock_type: o.u32("sock_type")? as u16,
        protocol: o.u32("protocol")? as u16,
        local: Endpoint::parse(family, o.str("local")?),
        peer: Endpoint::parse(family, o.str("peer")?),
        inode: o.u64("inode")?,
        sk: o.u64("sk")?,
    })
}

fn tcp(o: &Obj<'_>) -> Result<TcpEvent, Why> {
    let state = |k: &str| {
        let name = o.str(k)?;
        tcp_state_of(name).ok_or_else(|| format!("tcp: unknown state {name:?}"))
    };
    let event = o.str("event")?;
    let flag = |k: &str| match o.get(k)? {
        Value::Bool(b) => Ok(*b),
        _ => Err(o.bad(k, "a boolean")),
    };
    Ok(TcpEvent {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        fd: o.i32("fd")?,
        kind: TcpEventKind::from_name(event)
            .ok_or_else(|| format!("tcp: unknown event {event:?}"))?,
        from: state("from")?,
        to: state("to")?,
        sk: o.u64("sk")?,
        bytes_received: o.u64("bytes_received")?,
        bytes_acked: o.u64("bytes_acked")?,
        fin_received: flag("fin_received")?,
        fin_acked: flag("fin_acked")?,
    })
}

/// A summary's connection back: its socket from the ends and kinds the
/// line keeps (what the writers show of it).
fn connection(o: &Obj<'_>) -> Result<ConnSummary, Why> {
    let socket = match o.opt("origin", |o, k| o.str(k).map(String::from))? {
        None => None,
        Some(origin) => {
            let family = o.u32("family")? as u16;
            Some(Arc::new(SocketInfo {
                ts_ns: 0,
                pid: o.u32("pid")?,
                tid: 0,
                fd: o.i32("fd")?,
                origin: SocketOrigin::from_name(&origin)
                    .ok_or_else(|| format!("connection: unknown origin {origin:?}"))?,
                family,
                sock_type: o.u32("sock_type")? as u16,
                protocol: o.u32("protocol")? as u16,
                local: Endpoint::parse(family, o.str("local")?),
                peer: Endpoint::parse(family, o.str("peer")?),
                inode: 0,
                sk: 0,
            }))
        }
    };
    let b = o.nested(o.get("bytes")?, "connection bytes")?;
    Ok(ConnSummary {
        pid: o.u32("pid")?,
        fd: o.i32("fd")?,
        socket,
        states: o
            .array("states")?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| o.bad("states", "strings"))
            })
            .collect::<Result<_, Why>>()?,
        retransmits: o.u64("retransmits")?,
        resets_sent: o.u64("resets_sent")?,
        resets_received: o.u64("resets_received")?,
        bytes: ConnBytes {
            ops_read: b.u64("ops_read")?,
            ops_written: b.u64("ops_written")?,
            kernel_received: b.opt("kernel_received", Obj::u64)?,
            kernel_acked: b.opt("kernel_acked", Obj::u64)?,
            not_compared: b.opt("not_compared", |o, k| o.str(k).map(String::from))?,
            unread: b.opt("unread", Obj::i64)?,
            unacked: b.opt("unacked", Obj::i64)?,
        },
    })
}

fn process(o: &Obj<'_>) -> Result<ProcessEvent, Why> {
    let kind = match o.str("event")? {
        "exit" => ProcessEventKind::Exit {
            code: o.i32("status")?,
        },
        "exec" => ProcessEventKind::Exec,
        "fork" => ProcessEventKind::Fork {
            child: o.u32("child")?,
        },
        "traced" => ProcessEventKind::Traced {
            exe: o.str("exe")?.to_string(),
            probes: usize::try_from(o.u64("probes")?).map_err(|_| o.bad("probes", "a count"))?,
        },
        other => return Err(format!("process: unknown event {other:?}")),
    };
    Ok(ProcessEvent {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        kind,
    })
}

fn summary(o: &Obj<'_>) -> Result<Summary, Why> {
    let mut per_fd = BTreeMap::new();
    for (fd, ops) in o.object("per_fd")? {
        let fd: i32 = fd
            .parse()
            .map_err(|_| format!("summary: per_fd key {fd:?} is not an fd"))?;
        let ops = o.nested(ops, "summary per_fd entry")?;
        let mut kinds = BTreeMap::new();
        for (kind, stats) in ops.map {
            let k =
                OpKind::from_name(kind).ok_or_else(|| format!("summary: unknown op {kind:?}"))?;
            kinds.insert(k, op_stats(&o.nested(stats, "summary stats")?)?);
        }
        per_fd.insert(fd, kinds);
    }
    // A recording from before stall tracking has neither stall field.
    let had_stalls = o.map.contains_key("stalls");
    let mut stalls = BTreeMap::new();
    for v in if had_stalls { o.array("stalls")? } else { &[] } {
        let st = o.nested(v, "summary stall")?;
        let name: Arc<str> = st.str("name")?.into();
        let stats = StallStats {
            count: st.u64("count")?,
            total_ns: st.u64("total_ns")?,
            max_ns: st.u64("max_ns")?,
            off_cpu_ns_total: st.u64("off_cpu_ns_total")?,
            dur_ns: hist(&st, "dur_ns_log2")?,
        };
        stalls.insert(name, stats);
    }
    Ok(Summary {
        events: o.u64("events")?,
        lost_events: o.u64("lost_events")?,
        ops: o.u64("ops")?,
        mismatches: o.u64("mismatches")?,
        incomplete: o.u64("incomplete")?,
        orphan_syscalls: o.u64("orphan_syscalls")?,
        syscalls_cut: o.u64("syscalls_cut")?,
        waits: o.u64("waits")?,
        per_fd,
        process_end: o.opt("process_end", |o, k| o.str(k).map(String::from))?,
        stalls,
        stalls_incomplete: if had_stalls {
            o.u64("stalls_incomplete")?
        } else {
            0
        },
        // A summary from before connection tracing has none of these.
        connections: match o.map.contains_key("connections") {
            false => Vec::new(),
            true => o
                .array("connections")?
                .iter()
                .map(|v| connection(&o.nested(v, "summary connection")?))
                .collect::<Result<_, Why>>()?,
        },
        connections_omitted: o.opt_missing("connections_omitted", Obj::u64)?.unwrap_or(0),
        accepted: match o.map.contains_key("accepted") {
            false => BTreeMap::new(),
            true => o
                .array("accepted")?
                .iter()
                .map(|v| {
                    let a = o.nested(v, "summary accepted")?;
                    Ok((
                        (a.str("host")?.to_string(), a.str("local")?.to_string()),
                        a.u64("count")?,
                    ))
                })
                .collect::<Result<_, Why>>()?,
        },
        fd_names: match o.map.contains_key("fd_connections") {
            false => BTreeMap::new(),
            true => o
                .object("fd_connections")?
                .iter()
                .map(|(fd, n)| {
                    let fd: i32 = fd
                        .parse()
                        .map_err(|_| format!("summary: fd_connections key {fd:?} is not an fd"))?;
                    let n = n
                        .as_str()
                        .ok_or("summary: a connection name is not a string")?;
                    Ok((fd, n.to_string()))
                })
                .collect::<Result<_, Why>>()?,
        },
        tcp_untracked: o.opt_missing("tcp_untracked", Obj::u64)?.unwrap_or(0),
    })
}

fn stall(o: &Obj<'_>) -> Result<Stall, Why> {
    let syscalls = o
        .array("syscalls")?
        .iter()
        .map(|v| {
            let c = o.nested(v, "stall syscall")?;
            Ok(StallSyscall {
                ts_ns: c.u64("ts_ns")?,
                name: c.str("name")?.to_string().into(),
                fd: c.opt("fd", Obj::i32)?,
                rv: c.i64("rv")?,
                dur_ns: c.u64("dur_ns")?,
            })
        })
        .collect::<Result<Vec<_>, Why>>()?;
    Ok(Stall {
        ts_ns: o.u64("ts_ns")?,
        pid: o.u32("pid")?,
        tid: o.u32("tid")?,
        fd: o.i32("fd")?,
        name: o.str("name")?.into(),
        closure: o.opt("closure", Obj::u64)?,
        dur_ns: o.u64("dur_ns")?,
        off_cpu_ns: o.u64("off_cpu_ns")?,
        syscalls,
        syscalls_cut: o.u64("syscalls_cut")?,
    })
}

/// A log2 histogram as the summary writes it: `[[lower bound, count], ...]`.
fn hist(o: &Obj<'_>, k: &str) -> Result<Log2Hist, Why> {
    let buckets = o
        .array(k)?
        .iter()
        .map(|b| match b.as_array().map(Vec::as_slice) {
            Some([lo, n]) => Some((lo.as_u64()?, n.as_u64()?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| o.bad(k, "[[lower bound, count], ...]"))?;
    Log2Hist::from_buckets(&buckets).ok_or_else(|| o.bad(k, "a log2 histogram"))
}

fn op_stats(o: &Obj<'_>) -> Result<OpStats, Why> {
    let mut errors = BTreeMap::new();
    for (errno, n) in o.object("errors")? {
        let errno: i32 = errno
            .parse()
            .map_err(|_| format!("summary: errno {errno:?} is not a number"))?;
        let n = n.as_u64().ok_or_else(|| o.bad("errors", "counts"))?;
        errors.insert(errno, n);
    }
    Ok(OpStats {
        count: o.u64("count")?,
        bytes: o.u64("bytes")?,
        errors,
        mismatches: o.u64("mismatches")?,
        incomplete: o.u64("incomplete")?,
        user_ns: hist(o, "user_ns_log2")?,
        kernel_ns: hist(o, "kernel_ns_log2")?,
        user_ns_total: o.u64("user_ns_total")?,
        kernel_ns_total: o.u64("kernel_ns_total")?,
    })
}
