//! A native Perfetto trace (`--perfetto FILE`): protobuf `TracePacket`s
//! with `TrackEvent`s, which ui.perfetto.dev opens as it is.
//!
//! What it shows, per traced thread (a track per thread, under a track
//! per process):
//! - callbacks and task polls as slices named by the callback;
//! - the ops inside them (`read`, `write`, `accept`, ...) as slices, each
//!   holding its syscalls as slices;
//! - epoll waits, `epoll_ctl`s and the syscalls no op holds as slices;
//! - a `MISMATCH op` or `INCOMPLETE op` instant where the table shows its
//!   row, `log` probes as instants; on the process's track its exit, exec
//!   and forks; lost events on a `portsnoop` track.
//!
//! Every slice carries its values as debug annotations (fd, rv, closure,
//! mismatch, incomplete, ...). Timestamps are the records' own:
//! `CLOCK_MONOTONIC` ns, written with `timestamp_clock_id`
//! `BUILTIN_CLOCK_MONOTONIC`, and a first clock snapshot that makes
//! MONOTONIC the trace's clock, so nothing is converted.
//!
//! Slices on a track must nest; the legacy JSON format cannot even say so
//! for overlapping ones. Records come in the correlator's order (an op
//! after its syscalls, a callback after its ops), so the slices are kept
//! and laid out at the end: per thread, sorted by start (longer first),
//! each slice placed inside the ones still open; one that would outlast
//! its parent (an op still open when its callback returned, which is a
//! mismatch) is cut at the parent's end and says so (`end_cut_ns`); what
//! it held after that is shown at its own time, outside. A
//! callback the trace never saw return ends with the last thing its
//! thread did. The file is one packet sequence written by one writer, with
//! no interned data: nothing depends on incremental state.
//!
//! The same records make the same bytes (no clock read here, nothing taken
//! from a hash map's order), so `portsnoop replay --perfetto` of a
//! recording writes what the live run wrote. Strings from the traced
//! program are protobuf strings, data and not terminal text: they are
//! written as they are (Rust strings are UTF-8, as protobuf requires).

mod proto;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Write};

use self::proto::Proto;
use super::{events_omitted, Output, EPOLL_MASK_NAMES};
use crate::correlate::{EpollMap, Op, Record, Summary, Wait};
use crate::event::{
    EpollCtl, Event, OpKind, Probe, ProbeName, ProcessEventKind, Syscall, SyscallName,
};

/// Field numbers from perfetto's protos (`protos/perfetto/trace/`).
mod field {
    /// `Trace.packet`
    pub const TRACE_PACKET: u32 = 1;
    /// `TracePacket.timestamp`
    pub const TIMESTAMP: u32 = 8;
    /// `TracePacket.timestamp_clock_id`
    pub const TIMESTAMP_CLOCK_ID: u32 = 58;
    /// `TracePacket.trusted_packet_sequence_id`
    pub const SEQUENCE_ID: u32 = 10;
    /// `TracePacket.sequence_flags`
    pub const SEQUENCE_FLAGS: u32 = 13;
    /// `TracePacket.first_packet_on_sequence`
    pub const FIRST_PACKET_ON_SEQUENCE: u32 = 87;
    /// `TracePacket.clock_snapshot`
    pub const CLOCK_SNAPSHOT: u32 = 6;
    /// `TracePacket.track_event`
    pub const TRACK_EVENT: u32 = 11;
    /// `TracePacket.track_descriptor`
    pub const TRACK_DESCRIPTOR: u32 = 60;
    /// `ClockSnapshot.clocks`
    pub const CLOCKS: u32 = 1;
    /// `ClockSnapshot.primary_trace_clock`
    pub const PRIMARY_TRACE_CLOCK: u32 = 2;
    /// `ClockSnapshot.Clock.clock_id`
    pub const CLOCK_ID: u32 = 1;
    /// `ClockSnapshot.Clock.timestamp`
    pub const CLOCK_TIMESTAMP: u32 = 2;
    /// `TrackDescriptor.uuid`
    pub const TRACK_UUID: u32 = 1;
    /// `TrackDescriptor.parent_uuid`
    pub const TRACK_PARENT_UUID: u32 = 5;
    /// `TrackDescriptor.name`
    pub const TRACK_NAME: u32 = 2;
    /// `TrackDescriptor.process`
    pub const TRACK_PROCESS: u32 = 3;
    /// `TrackDescriptor.thread`
    pub const TRACK_THREAD: u32 = 4;
    /// `ProcessDescriptor.pid`, `ThreadDescriptor.pid`
    pub const PID: u32 = 1;
    /// `ThreadDescriptor.tid`
    pub const TID: u32 = 2;
    /// `TrackEvent.type`
    pub const EVENT_TYPE: u32 = 9;
    /// `TrackEvent.track_uuid`
    pub const EVENT_TRACK_UUID: u32 = 11;
    /// `TrackEvent.name`
    pub const EVENT_NAME: u32 = 23;
    /// `TrackEvent.debug_annotations`
    pub const DEBUG_ANNOTATIONS: u32 = 4;
    /// `DebugAnnotation.name`
    pub const ANNOTATION_NAME: u32 = 10;
    /// `DebugAnnotation.uint_value`
    pub const UINT_VALUE: u32 = 3;
    /// `DebugAnnotation.int_value`
    pub const INT_VALUE: u32 = 4;
    /// `DebugAnnotation.string_value`
    pub const STRING_VALUE: u32 = 6;
}

/// `BuiltinClock.BUILTIN_CLOCK_MONOTONIC`: what `bpf_ktime_get_ns` reads.
const CLOCK_MONOTONIC: u64 = 3;
/// `TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
/// Our one packet sequence.
const SEQUENCE: u64 = 1;
/// `TrackEvent.Type`
const SLICE_BEGIN: u64 = 1;
const SLICE_END: u64 = 2;
const INSTANT: u64 = 3;

/// Track uuids: our own, made from the ids so the same trace gets the same
/// ones. The `portsnoop` track (losses) is 1.
const PORTSNOOP_TRACK: u64 = 1;
fn process_track(pid: u32) -> u64 {
    1 << 40 | u64::from(pid)
}
fn thread_track(tid: u32) -> u64 {
    2 << 40 | u64::from(tid)
}

/// How deep a slice sits among slices of the same span: a callback holds
/// ops, an op holds syscalls, and an instant holds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Callback,
    Op,
    Syscall,
    Instant,
}

/// A debug annotation's value.
#[derive(Clone, Debug)]
enum Value {
    Int(i64),
    Uint(u64),
    Str(String),
}

/// A slice or an instant on a thread's track, waiting for the end.
#[derive(Debug)]
struct Item {
    start: u64,
    /// None: a callback the trace never saw return.
    end: Option<u64>,
    rank: Rank,
    name: Cow<'static, str>,
    args: Vec<(&'static str, Value)>,
    /// A syscall record that an op may hold too: drawn only if none does.
    syscall: Option<SyscallName>,
}

/// Slices and instants of one thread.
#[derive(Debug, Default)]
struct Thread {
    pid: u32,
    items: Vec<Item>,
}

/// An instant on a process's track or on the `portsnoop` track.
#[derive(Debug)]
struct Mark {
    track: u64,
    ts: u64,
    name: Cow<'static, str>,
    args: Vec<(&'static str, Value)>,
}

/// Writes a Perfetto trace to `W` at the end of the run.
pub struct Perfetto<W: Write> {
    out: W,
    threads: BTreeMap<u32, Thread>,
    processes: BTreeSet<u32>,
    marks: Vec<Mark>,
    /// The syscalls that ops hold, as (tid, entry time, name): their own
    /// records are not drawn a second time.
    in_ops: HashSet<(u32, u64, SyscallName)>,
    first_ts: Option<u64>,
    packet: Proto,
}

impl<W: Write> Perfetto<W> {
    /// A writer to `out`; nothing is written before [`Output::finish`].
    pub fn new(out: W) -> Perfetto<W> {
        Perfetto {
            out,
            threads: BTreeMap::new(),
            processes: BTreeSet::new(),
            marks: Vec::new(),
            in_ops: HashSet::new(),
            first_ts: None,
            packet: Proto::default(),
        }
    }

    fn seen(&mut self, ts: u64) {
        self.first_ts = Some(self.first_ts.map_or(ts, |t| t.min(ts)));
    }

    fn item(&mut self, pid: u32, tid: u32, item: Item) {
        self.seen(item.start);
        self.processes.insert(pid);
        let thread = self.threads.entry(tid).or_default();
        thread.pid = pid;
        thread.items.push(item);
    }

    fn slice(
        &mut self,
        (pid, tid): (u32, u32),
        (start, end): (u64, u64),
        rank: Rank,
        name: impl Into<Cow<'static, str>>,
        args: Vec<(&'static str, Value)>,
    ) {
        self.item(
            pid,
            tid,
            Item {
                start,
                end: Some(end.max(start)),
                rank,
                name: name.into(),
                args,
                syscall: None,
            },
        );
    }

    fn instant(
        &mut self,
        (pid, tid): (u32, u32),
        ts: u64,
        name: impl Into<Cow<'static, str>>,
        args: Vec<(&'static str, Value)>,
    ) {
        self.slice((pid, tid), (ts, ts), Rank::Instant, name, args);
    }

    fn op(&mut self, op: &Op) {
        let who = (op.pid, op.tid);
        let last_seen = op
            .syscalls
            .iter()
            .map(|s| s.ts_ns.saturating_add(s.dur_ns))
            .fold(op.entry_ts_ns, u64::max);
        let mut args = vec![("fd", Value::Int(op.fd.into()))];
        if let Some(rv) = op.user_rv {
            args.push(("rv", Value::Int(rv)));
        }
        if let Some(c) = op.closure {
            args.push(("closure", Value::Uint(c)));
        }
        if op.kind != OpKind::Callback {
            args.push(("kernel_ns", Value::Uint(op.kernel_ns)));
            args.push(("user_ns", Value::Uint(op.user_ns)));
            if let Some(cb) = &op.callback {
                args.push(("callback", Value::Str(cb.to_string())));
            }
        }
        if let Some(m) = &op.mismatch {
            args.push(("mismatch", Value::Str(m.clone())));
        }
        if let Some(i) = &op.incomplete {
            args.push(("incomplete", Value::Str(i.clone())));
        }
        if op.kind == OpKind::Callback {
            let name = op.callback.as_deref().unwrap_or("callback").to_string();
            self.item(
                op.pid,
                op.tid,
                Item {
                    start: op.entry_ts_ns,
                    // Never seen to return: it lasts as long as its thread
                    // is seen doing anything (decided at the end).
                    end: op.return_ts_ns,
                    rank: Rank::Callback,
                    name: name.into(),
                    args,
                    syscall: None,
                },
            );
        } else {
            let end = op.return_ts_ns.unwrap_or(last_seen);
            self.slice(who, (op.entry_ts_ns, end), Rank::Op, op.kind.as_str(), args);
            for s in &op.syscalls {
                self.in_ops.insert((op.tid, s.ts_ns, s.name));
                // Only what the JSON op line says of its syscalls: a replayed
                // op has nothing more.
                self.slice(
                    who,
                    (s.ts_ns, s.ts_ns.saturating_add(s.dur_ns)),
                    Rank::Syscall,
                    s.name.as_str(),
                    vec![("fd", Value::Int(op.fd.into())), ("rv", Value::Int(s.rv))],
                );
            }
        }
        // Where the table shows its row: at its return, or after the last
        // thing it was seen doing.
        let label = match (&op.mismatch, &op.incomplete) {
            (Some(_), _) => "MISMATCH",
            (None, Some(_)) => "INCOMPLETE",
            (None, None) => return,
        };
        let why: Vec<_> = [("mismatch", &op.mismatch), ("incomplete", &op.incomplete)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, Value::Str(v.clone()))))
            .chain([("fd", Value::Int(op.fd.into()))])
            .collect();
        let at = op.return_ts_ns.unwrap_or(last_seen);
        self.instant(who, at, format!("{label} {}", op.kind.as_str()), why);
    }

    fn syscall(&mut self, s: &Syscall) {
        self.item(
            s.pid,
            s.tid,
            Item {
                start: s.ts_ns,
                end: Some(s.ts_ns.saturating_add(s.dur_ns)),
                rank: Rank::Syscall,
                name: s.name.as_str().into(),
                args: vec![
                    ("fd", Value::Int(s.fd.into())),
                    ("rv", Value::Int(s.rv)),
                    ("arg", Value::Uint(s.arg)),
                ],
                syscall: Some(s.name),
            },
        );
    }

    fn epoll_ctl(&mut self, c: &EpollCtl) {
        self.slice(
            (c.pid, c.tid),
            (c.ts_ns, c.ts_ns.saturating_add(c.dur_ns)),
            Rank::Syscall,
            "epoll_ctl",
            vec![
                ("epfd", Value::Int(c.epfd.into())),
                ("op", Value::Str(EpollMap::op_name(c.op).into())),
                ("fd", Value::Int(c.fd.into())),
                ("events", Value::Str(mask_names(c.events))),
                ("data", Value::Uint(c.data)),
                ("rv", Value::Int(c.rv)),
            ],
        );
    }

    fn wait(&mut self, w: &Wait) {
        let ww = &w.wait;
        let ready: Vec<String> = ww
            .events
            .iter()
            .zip(&w.fds)
            .map(|(e, fd)| {
                let fd = fd.map_or_else(|| "?".to_string(), |fd| fd.to_string());
                format!("{fd} {}", mask_names(e.events))
            })
            .collect();
        let mut args = vec![
            ("epfd", Value::Int(ww.epfd.into())),
            ("rv", Value::Int(ww.rv)),
            ("ready", Value::Str(ready.join(", "))),
        ];
        let omitted = events_omitted(ww);
        if omitted > 0 {
            args.push(("events_omitted", Value::Uint(omitted)));
        }
        self.slice(
            (ww.pid, ww.tid),
            (ww.ts_ns, ww.ts_ns.saturating_add(ww.dur_ns)),
            Rank::Op,
            ww.name,
            args,
        );
    }

    fn log(&mut self, p: &Probe) {
        let s = |i: usize| Value::Str(p.strings.get(i).map_or("", |s| &**s).to_string());
        self.instant(
            (p.pid, p.tid),
            p.ts_ns,
            "log",
            vec![
                ("facility", s(0)),
                ("file", s(1)),
                ("line", Value::Int((p.args[2] as i32).into())),
                ("msg", s(2)),
            ],
        );
    }

    fn process_mark(
        &mut self,
        pid: u32,
        ts: u64,
        name: &'static str,
        args: Vec<(&'static str, Value)>,
    ) {
        self.seen(ts);
        self.processes.insert(pid);
        self.marks.push(Mark {
            track: process_track(pid),
            ts,
            name: name.into(),
            args,
        });
    }

    /// Writes the packet built in `self.packet` as one `Trace.packet`.
    fn flush_packet(&mut self) -> io::Result<()> {
        // The frame's key and length, then the packet: no second copy of
        // the body.
        let len = self.packet.as_bytes().len();
        let mut head = Vec::with_capacity(6);
        head.push((field::TRACE_PACKET << 3 | 2) as u8);
        let mut v = len;
        while v >= 0x80 {
            head.push((v as u8) | 0x80);
            v >>= 7;
        }
        head.push(v as u8);
        self.out.write_all(&head)?;
        self.out.write_all(self.packet.as_bytes())?;
        self.packet.clear();
        Ok(())
    }

    /// Starts a packet on our sequence at `ts` (MONOTONIC).
    fn timed_packet(&mut self, ts: u64) {
        self.packet
            .uint(field::TIMESTAMP, ts)
            .uint(field::TIMESTAMP_CLOCK_ID, CLOCK_MONOTONIC)
            .uint(field::SEQUENCE_ID, SEQUENCE);
    }

    fn track_event(
        &mut self,
        ts: u64,
        track: u64,
        kind: u64,
        name: Option<&str>,
        args: &[(&'static str, Value)],
    ) -> io::Result<()> {
        self.timed_packet(ts);
        let p = &mut self.packet;
        let ev = p.begin(field::TRACK_EVENT);
        p.uint(field::EVENT_TYPE, kind)
            .uint(field::EVENT_TRACK_UUID, track);
        if let Some(name) = name {
            p.str(field::EVENT_NAME, name);
        }
        for (k, v) in args {
            let a = p.begin(field::DEBUG_ANNOTATIONS);
            p.str(field::ANNOTATION_NAME, k);
            match v {
                Value::Int(i) => p.int(field::INT_VALUE, *i),
                Value::Uint(u) => p.uint(field::UINT_VALUE, *u),
                Value::Str(s) => p.str(field::STRING_VALUE, s),
            };
            p.end(a);
        }
        p.end(ev);
        self.flush_packet()
    }

    fn descriptors(&mut self) -> io::Result<()> {
        // First packet: the sequence starts clean, and MONOTONIC is the
        // trace's clock.
        let first = self.first_ts.unwrap_or(0);
        let p = &mut self.packet;
        p.uint(field::SEQUENCE_ID, SEQUENCE)
            .uint(field::SEQUENCE_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED)
            .bool(field::FIRST_PACKET_ON_SEQUENCE, true);
        let snap = p.begin(field::CLOCK_SNAPSHOT);
        let clock = p.begin(field::CLOCKS);
        p.uint(field::CLOCK_ID, CLOCK_MONOTONIC)
            .uint(field::CLOCK_TIMESTAMP, first);
        p.end(clock);
        p.uint(field::PRIMARY_TRACE_CLOCK, CLOCK_MONOTONIC);
        p.end(snap);
        self.flush_packet()?;

        if self.marks.iter().any(|m| m.track == PORTSNOOP_TRACK) {
            let p = &mut self.packet;
            p.uint(field::SEQUENCE_ID, SEQUENCE);
            let d = p.begin(field::TRACK_DESCRIPTOR);
            p.uint(field::TRACK_UUID, PORTSNOOP_TRACK)
                .str(field::TRACK_NAME, "portsnoop");
            p.end(d);
            self.flush_packet()?;
        }
        for pid in self.processes.clone() {
            let p = &mut self.packet;
            p.uint(field::SEQUENCE_ID, SEQUENCE);
            let d = p.begin(field::TRACK_DESCRIPTOR);
            p.uint(field::TRACK_UUID, process_track(pid));
            let proc_ = p.begin(field::TRACK_PROCESS);
            p.uint(field::PID, pid.into());
            p.end(proc_);
            p.end(d);
            self.flush_packet()?;
        }
        let threads: Vec<(u32, u32)> = self.threads.iter().map(|(t, th)| (*t, th.pid)).collect();
        for (tid, pid) in threads {
            let p = &mut self.packet;
            p.uint(field::SEQUENCE_ID, SEQUENCE);
            let d = p.begin(field::TRACK_DESCRIPTOR);
            p.uint(field::TRACK_UUID, thread_track(tid))
                .uint(field::TRACK_PARENT_UUID, process_track(pid));
            let th = p.begin(field::TRACK_THREAD);
            p.uint(field::PID, pid.into()).uint(field::TID, tid.into());
            p.end(th);
            p.end(d);
            self.flush_packet()?;
        }
        Ok(())
    }

    /// Lays out one thread's slices so they nest, and writes them.
    fn write_thread(&mut self, tid: u32, items: Vec<Item>) -> io::Result<()> {
        let track = thread_track(tid);
        let mut items: Vec<Item> = items
            .into_iter()
            .filter(|it| {
                it.syscall
                    .is_none_or(|name| !self.in_ops.contains(&(tid, it.start, name)))
            })
            .collect();
        let last = items
            .iter()
            .map(|it| it.end.unwrap_or(it.start))
            .max()
            .unwrap_or(0);
        for it in &mut items {
            it.end.get_or_insert(last);
        }
        // By start, the longer (the outer) first, then callback, op,
        // syscall; the sort is stable, so ties keep the records' order.
        items.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(a.rank.cmp(&b.rank))
        });
        let mut open: Vec<u64> = Vec::new();
        for mut it in items {
            let end = it.end.expect("set above");
            // What ended by this start is closed first: a slice that ends
            // where the next begins is its sibling, not its parent.
            while open.last().is_some_and(|&e| e <= it.start) {
                let e = open.pop().expect("checked");
                self.track_event(e, track, SLICE_END, None, &[])?;
            }
            if it.rank == Rank::Instant {
                self.track_event(it.start, track, INSTANT, Some(&it.name), &it.args)?;
                continue;
            }
            let end = match open.last() {
                Some(&parent) if end > parent => {
                    it.args.push(("end_cut_ns", Value::Uint(end - parent)));
                    parent
                }
                _ => end,
            };
            self.track_event(it.start, track, SLICE_BEGIN, Some(&it.name), &it.args)?;
            open.push(end);
        }
        while let Some(e) = open.pop() {
            self.track_event(e, track, SLICE_END, None, &[])?;
        }
        Ok(())
    }
}

/// `IN|OUT`, `-` for none.
fn mask_names(mask: u32) -> String {
    let names: Vec<&str> = EPOLL_MASK_NAMES
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join("|")
    }
}

impl<W: Write> Output for Perfetto<W> {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::Op(op) => self.op(op),
            Record::Wait(w) => self.wait(w),
            Record::Event(Event::EpollWait(w)) => self.wait(&Wait {
                fds: vec![None; w.events.len()],
                wait: w.clone(),
            }),
            Record::Event(Event::Syscall(s)) => self.syscall(s),
            Record::Event(Event::EpollCtl(c)) => self.epoll_ctl(c),
            Record::Event(Event::Probe(p)) if p.name == ProbeName::Log => self.log(p),
            // Entry and return probes are the ops' ends; a close's entry
            // is the close's syscall slice.
            Record::Event(Event::Probe(_)) | Record::Event(Event::CloseEnter(_)) => {}
            Record::Event(Event::Lost { ts_ns, count }) => {
                self.seen(*ts_ns);
                self.marks.push(Mark {
                    track: PORTSNOOP_TRACK,
                    ts: *ts_ns,
                    name: "LOST".into(),
                    args: vec![("count", Value::Uint(*count))],
                });
            }
            Record::Event(Event::Process(p)) => {
                let tid = ("tid", Value::Uint(p.tid.into()));
                let (name, args) = match &p.kind {
                    ProcessEventKind::Exit { code } => {
                        ("exit", vec![tid, ("status", Value::Int((*code).into()))])
                    }
                    ProcessEventKind::Exec => ("exec", vec![tid]),
                    ProcessEventKind::Fork { child } => {
                        ("fork", vec![tid, ("child", Value::Uint((*child).into()))])
                    }
                    ProcessEventKind::Traced { exe, probes } => (
                        "traced",
                        vec![
                            ("exe", Value::Str(exe.clone())),
                            ("probes", Value::Uint(*probes as u64)),
                        ],
                    ),
                };
                self.process_mark(p.pid, p.ts_ns, name, args);
            }
        }
        Ok(())
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        self.descriptors()?;
        for (tid, thread) in std::mem::take(&mut self.threads) {
            self.write_thread(tid, thread.items)?;
        }
        for m in std::mem::take(&mut self.marks) {
            self.track_event(m.ts, m.track, INSTANT, Some(&m.name), &m.args)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests;
