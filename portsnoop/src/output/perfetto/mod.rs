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
//!   row, a `STALL name` instant at a stalled callback's entry (with its
//!   off-CPU time and longest syscall), the untraced syscalls a callback
//!   made (stall tracking) as slices inside it, `log` probes as instants;
//! - on the process's track its exit, exec and forks, and its connections'
//!   TCP state changes, retransmits and resets (`tcp 8 ESTABLISHED ->
//!   CLOSE_WAIT`); lost events on a `portsnoop` track.
//!
//! Every slice carries its values as debug annotations (fd, rv, closure,
//! mismatch, incomplete, ...). Timestamps are the records' own:
//! `CLOCK_MONOTONIC` ns, written with `timestamp_clock_id`
//! `BUILTIN_CLOCK_MONOTONIC`, and a first clock snapshot that makes
//! MONOTONIC the trace's clock, so nothing is converted.
//!
//! Slices on a track must nest; the legacy JSON format cannot even say so
//! for overlapping ones. Records come in the correlator's order (an op
//! after its syscalls, a callback after its ops), so each thread's slices
//! wait until nothing still open can enclose them: the entry probes say
//! what is open, and its op record closes it. Then they are laid out
//! (sorted by start, longer first, each placed inside the ones still open)
//! and written, a thousand or more at a time, whole top-level slices with
//! all they hold: memory stays bounded by what is open, and a trace written
//! in parts nests as one written at once. A slice that would outlast its
//! parent (an op still open when its callback returned, which is a
//! mismatch) is cut at the parent's end and says so (`end_cut_ns`); what
//! it held after that is shown at its own time, outside. A callback never
//! seen to return ends with the last thing its thread had done by then.
//! The file is one packet sequence written by one writer, with no interned
//! data: nothing depends on incremental state.
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
use crate::correlate::{EpollMap, Op, Record, Stall, Summary, Wait};
use crate::event::{
    EpollCtl, Event, OpKind, Probe, ProbeName, ProcessEventKind, Syscall, SyscallName,
};
use crate::sock::{tcp_state_name, TcpEventKind};

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

/// A slice or an instant on a thread's track, waiting to be laid out.
#[derive(Debug)]
struct Item {
    start: u64,
    end: u64,
    rank: Rank,
    name: Cow<'static, str>,
    args: Vec<(&'static str, Value)>,
    /// A syscall record that an op may hold too: drawn only if none does.
    syscall: Option<SyscallName>,
}

/// A thread's slices not written yet, and what may still enclose them.
#[derive(Debug, Default)]
struct Thread {
    pid: u32,
    items: Vec<Item>,
    /// Entry times of the callbacks and ops its entry probes opened and no
    /// op record has closed yet (with how many at each time): their slices
    /// will enclose what comes after, so nothing from the first on is
    /// written.
    open: BTreeMap<u64, u32>,
    /// The syscalls its ops hold, as (entry time, name): their own records
    /// are not drawn a second time.
    in_ops: HashSet<(u64, SyscallName)>,
    /// The latest end of anything it did.
    last_end: u64,
    /// Lay out and write what can be written once `items` is this long.
    flush_at: usize,
    /// Its track descriptor is written.
    described: bool,
}

/// The fewest slices a thread gathers before they are laid out and
/// written: a few hundred KiB at most, sorted a few thousand at a time.
const FLUSH_MIN: usize = 1024;

/// Writes a Perfetto trace to `W` as records come: each thread's slices
/// are laid out and written once nothing still open can enclose them.
pub struct Perfetto<W: Write> {
    out: W,
    threads: BTreeMap<u32, Thread>,
    /// Processes whose track is written.
    processes: BTreeSet<u32>,
    /// The first packet (clock, sequence) is written.
    started: bool,
    /// The `portsnoop` track is written.
    portsnoop_track: bool,
    packet: Proto,
}

impl<W: Write> Perfetto<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Perfetto<W> {
        Perfetto {
            out,
            threads: BTreeMap::new(),
            processes: BTreeSet::new(),
            started: false,
            portsnoop_track: false,
            packet: Proto::default(),
        }
    }

    fn thread(&mut self, pid: u32, tid: u32) -> &mut Thread {
        let t = self.threads.entry(tid).or_insert_with(|| Thread {
            flush_at: FLUSH_MIN,
            ..Thread::default()
        });
        t.pid = pid;
        t
    }

    fn item(&mut self, pid: u32, tid: u32, item: Item) -> io::Result<()> {
        let t = self.thread(pid, tid);
        t.last_end = t.last_end.max(item.end);
        t.items.push(item);
        if t.items.len() >= t.flush_at {
            let horizon = t.open.keys().next().copied().unwrap_or(u64::MAX);
            self.write_thread(tid, horizon)?;
        }
        Ok(())
    }

    fn slice(
        &mut self,
        (pid, tid): (u32, u32),
        (start, end): (u64, u64),
        rank: Rank,
        name: impl Into<Cow<'static, str>>,
        args: Vec<(&'static str, Value)>,
    ) -> io::Result<()> {
        self.item(
            pid,
            tid,
            Item {
                start,
                end: end.max(start),
                rank,
                name: name.into(),
                args,
                syscall: None,
            },
        )
    }

    fn instant(
        &mut self,
        who: (u32, u32),
        ts: u64,
        name: impl Into<Cow<'static, str>>,
        args: Vec<(&'static str, Value)>,
    ) -> io::Result<()> {
        self.slice(who, (ts, ts), Rank::Instant, name, args)
    }

    /// An entry probe: a slice from `ts` is open on its thread.
    fn entered(&mut self, pid: u32, tid: u32, ts: u64) {
        *self.thread(pid, tid).open.entry(ts).or_default() += 1;
    }

    fn op(&mut self, op: &Op) -> io::Result<()> {
        let who = (op.pid, op.tid);
        let thread = self.thread(op.pid, op.tid);
        if let Some(n) = thread.open.get_mut(&op.entry_ts_ns) {
            *n -= 1;
            if *n == 0 {
                thread.open.remove(&op.entry_ts_ns);
            }
        }
        // Never seen to return (the trace or the process ended, events
        // were lost): it lasts as long as its thread was seen doing
        // anything.
        let unreturned_end = thread.last_end;
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
            let end = op.return_ts_ns.unwrap_or(unreturned_end);
            self.slice(who, (op.entry_ts_ns, end), Rank::Callback, name, args)?;
        } else {
            let end = op.return_ts_ns.unwrap_or(last_seen);
            self.slice(who, (op.entry_ts_ns, end), Rank::Op, op.kind.as_str(), args)?;
            for s in &op.syscalls {
                self.thread(op.pid, op.tid).in_ops.insert((s.ts_ns, s.name));
                // Only what the JSON op line says of its syscalls: a
                // replayed op has nothing more.
                self.slice(
                    who,
                    (s.ts_ns, s.ts_ns.saturating_add(s.dur_ns)),
                    Rank::Syscall,
                    s.name.as_str(),
                    vec![("fd", Value::Int(op.fd.into())), ("rv", Value::Int(s.rv))],
                )?;
            }
        }
        // Where the table shows its row: at its return, or after the last
        // thing it was seen doing.
        let label = match (&op.mismatch, &op.incomplete) {
            (Some(_), _) => "MISMATCH",
            (None, Some(_)) => "INCOMPLETE",
            (None, None) => return Ok(()),
        };
        let why: Vec<_> = [("mismatch", &op.mismatch), ("incomplete", &op.incomplete)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, Value::Str(v.clone()))))
            .chain([("fd", Value::Int(op.fd.into()))])
            .collect();
        let at = op.return_ts_ns.unwrap_or(last_seen);
        self.instant(who, at, format!("{label} {}", op.kind.as_str()), why)
    }

    /// A `STALL name` instant at the stalled callback's entry, so it is the
    /// first thing inside the callback's slice, with where the time went.
    fn stall(&mut self, st: &Stall) -> io::Result<()> {
        let mut args = vec![
            ("fd", Value::Int(st.fd.into())),
            ("dur_ns", Value::Uint(st.dur_ns)),
            ("off_cpu_ns", Value::Uint(st.off_cpu_ns)),
            (
                "on_cpu_ns",
                Value::Uint(st.dur_ns.saturating_sub(st.off_cpu_ns)),
            ),
        ];
        if let Some(longest) = st.syscalls.iter().max_by_key(|c| c.dur_ns) {
            let what = format!("{} {}ns", longest.name, longest.dur_ns);
            args.push(("longest_syscall", Value::Str(what)));
        }
        self.instant(
            (st.pid, st.tid),
            st.ts_ns,
            format!("STALL {}", st.name),
            args,
        )
    }

    fn syscall(&mut self, s: &Syscall) -> io::Result<()> {
        self.item(
            s.pid,
            s.tid,
            Item {
                start: s.ts_ns,
                end: s.ts_ns.saturating_add(s.dur_ns),
                rank: Rank::Syscall,
                name: s.name.as_str().into(),
                args: vec![
                    ("fd", Value::Int(s.fd.into())),
                    ("rv", Value::Int(s.rv)),
                    ("arg", Value::Uint(s.arg)),
                ],
                syscall: Some(s.name),
            },
        )
    }

    fn epoll_ctl(&mut self, c: &EpollCtl) -> io::Result<()> {
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
        )
    }

    fn wait(&mut self, w: &Wait) -> io::Result<()> {
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
        )
    }

    fn log(&mut self, p: &Probe) -> io::Result<()> {
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
        )
    }

    /// An instant on a process's track or on the `portsnoop` track,
    /// written now: nothing nests there.
    fn mark(
        &mut self,
        track: u64,
        ts: u64,
        name: &str,
        args: &[(&'static str, Value)],
    ) -> io::Result<()> {
        self.start(ts)?;
        self.track_event(ts, track, INSTANT, Some(name), args)
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

    /// The first packet, once: the sequence starts clean, and MONOTONIC
    /// (read at `ts`, the first thing written) is the trace's clock.
    fn start(&mut self, ts: u64) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let p = &mut self.packet;
        p.uint(field::SEQUENCE_ID, SEQUENCE)
            .uint(field::SEQUENCE_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED)
            .bool(field::FIRST_PACKET_ON_SEQUENCE, true);
        let snap = p.begin(field::CLOCK_SNAPSHOT);
        let clock = p.begin(field::CLOCKS);
        p.uint(field::CLOCK_ID, CLOCK_MONOTONIC)
            .uint(field::CLOCK_TIMESTAMP, ts);
        p.end(clock);
        p.uint(field::PRIMARY_TRACE_CLOCK, CLOCK_MONOTONIC);
        p.end(snap);
        self.flush_packet()
    }

    /// A track descriptor: `name` or a process or a thread.
    fn describe(
        &mut self,
        uuid: u64,
        parent: Option<u64>,
        name: Option<&str>,
        process: Option<u32>,
        thread: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let p = &mut self.packet;
        p.uint(field::SEQUENCE_ID, SEQUENCE);
        let d = p.begin(field::TRACK_DESCRIPTOR);
        p.uint(field::TRACK_UUID, uuid);
        if let Some(parent) = parent {
            p.uint(field::TRACK_PARENT_UUID, parent);
        }
        if let Some(name) = name {
            p.str(field::TRACK_NAME, name);
        }
        if let Some(pid) = process {
            let pd = p.begin(field::TRACK_PROCESS);
            p.uint(field::PID, pid.into());
            p.end(pd);
        }
        if let Some((pid, tid)) = thread {
            let td = p.begin(field::TRACK_THREAD);
            p.uint(field::PID, pid.into()).uint(field::TID, tid.into());
            p.end(td);
        }
        p.end(d);
        self.flush_packet()
    }

    /// The process's track, once, before anything on it or its threads'.
    fn process_track(&mut self, pid: u32) -> io::Result<()> {
        if self.processes.insert(pid) {
            self.describe(process_track(pid), None, None, Some(pid), None)?;
        }
        Ok(())
    }

    /// Lays out thread `tid`'s slices so they nest, and writes those that
    /// end by `horizon`, where something still open begins (nothing can
    /// enclose them any more); keeps the rest.
    ///
    /// Sorted by start, the longer (the outer) first, then callback, op,
    /// syscall, instant (the sort is stable: ties keep the records'
    /// order), each slice goes inside the ones still open; one that would
    /// outlast its parent is cut at the parent's end. What is written is
    /// whole top-level slices with everything inside them, so a trace
    /// written in parts nests as one written at once.
    fn write_thread(&mut self, tid: u32, horizon: u64) -> io::Result<()> {
        let Some(thread) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        let in_ops = &thread.in_ops;
        let mut items: Vec<Item> = std::mem::take(&mut thread.items)
            .into_iter()
            .filter(|it| {
                it.syscall
                    .is_none_or(|name| !in_ops.contains(&(it.start, name)))
            })
            .collect();
        items.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(a.rank.cmp(&b.rank))
        });
        // Where each top-level slice's items begin, and how far the
        // written ones go.
        let mut open: Vec<u64> = Vec::new();
        let mut cut: Vec<Option<u64>> = vec![None; items.len()];
        let mut written = 0;
        for (i, it) in items.iter().enumerate() {
            while open.last().is_some_and(|&e| e <= it.start) {
                open.pop();
            }
            // A top-level slice begins: all before it is whole, and it is
            // written if it ends by the horizon.
            if open.is_empty() && it.end > horizon {
                break;
            }
            written = i + 1;
            if it.rank == Rank::Instant {
                continue;
            }
            let parent = open.last().copied();
            let end = match parent {
                Some(p) if it.end > p => {
                    cut[i] = Some(p);
                    p
                }
                _ => it.end,
            };
            open.push(end);
        }
        let pid = thread.pid;
        let rest = items.split_off(written);
        let described = thread.described;
        thread.described |= !items.is_empty();
        // The rest: gathered again until there is twice as much, so a long
        // callback costs sorts in proportion to its slices, not to their
        // square.
        thread.flush_at = FLUSH_MIN.max(2 * rest.len());
        if let Some(last) = items.last() {
            let done = last.start;
            thread.in_ops.retain(|(ts, _)| *ts >= done);
        }
        thread.items = rest;
        if items.is_empty() {
            return Ok(());
        }
        self.start(items[0].start)?;
        self.process_track(pid)?;
        let track = thread_track(tid);
        if !described {
            self.describe(
                track,
                Some(process_track(pid)),
                None,
                None,
                Some((pid, tid)),
            )?;
        }
        let mut open: Vec<u64> = Vec::new();
        for (mut it, cut) in items.into_iter().zip(cut) {
            while open.last().is_some_and(|&e| e <= it.start) {
                let e = open.pop().expect("checked");
                self.track_event(e, track, SLICE_END, None, &[])?;
            }
            if it.rank == Rank::Instant {
                self.track_event(it.start, track, INSTANT, Some(&it.name), &it.args)?;
                continue;
            }
            if let Some(c) = cut {
                it.args.push(("end_cut_ns", Value::Uint(it.end - c)));
            }
            self.track_event(it.start, track, SLICE_BEGIN, Some(&it.name), &it.args)?;
            open.push(cut.unwrap_or(it.end));
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
            // Entry probes open what an op record closes; the returns are
            // the ops' ends, a close's entry its syscall's slice.
            Record::Event(Event::Probe(p)) => {
                if let Some((_, true)) = p.name.op() {
                    self.entered(p.pid, p.tid, p.ts_ns);
                }
                Ok(())
            }
            Record::Event(Event::CloseEnter(_)) => Ok(()),
            // Connections are the table's and JSON's: no track of their own.
            // Who an fd is: its op and syscall slices say the fd.
            Record::Event(Event::Socket(_)) => Ok(()),
            // The kernel's side of a connection, often in softirq on no
            // thread of the process: on the process's track.
            Record::Event(Event::Tcp(t)) => {
                let name = match t.kind {
                    TcpEventKind::State => format!(
                        "tcp {} {} -> {}",
                        t.fd,
                        tcp_state_name(t.from),
                        tcp_state_name(t.to)
                    ),
                    kind => format!("tcp {} {}", t.fd, kind.as_str()),
                };
                let args = [
                    ("fd", Value::Int(t.fd.into())),
                    ("tid", Value::Uint(t.tid.into())),
                    ("state", Value::Str(tcp_state_name(t.to).into())),
                ];
                self.start(t.ts_ns)?;
                self.process_track(t.pid)?;
                self.mark(process_track(t.pid), t.ts_ns, &name, &args)
            }
            // Inside its callback by its times, as the traced syscalls are.
            Record::Event(Event::SlowSyscall(s)) => {
                let mut args = vec![("nr", Value::Uint(s.nr.into())), ("rv", Value::Int(s.rv))];
                if let Some(fd) = s.fd() {
                    args.push(("fd", Value::Int(fd.into())));
                }
                let name = s.display_name();
                self.slice(
                    (s.pid, s.tid),
                    (s.ts_ns, s.ts_ns.saturating_add(s.dur_ns)),
                    Rank::Syscall,
                    name,
                    args,
                )
            }
            // Running totals: a stall says what they came to.
            Record::Event(Event::OffCpu(_)) => Ok(()),
            Record::Stall(st) => self.stall(st),
            Record::Event(Event::Lost { ts_ns, count }) => {
                self.start(*ts_ns)?;
                if !std::mem::replace(&mut self.portsnoop_track, true) {
                    self.describe(PORTSNOOP_TRACK, None, Some("portsnoop"), None, None)?;
                }
                self.mark(
                    PORTSNOOP_TRACK,
                    *ts_ns,
                    "LOST",
                    &[("count", Value::Uint(*count))],
                )
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
                self.start(p.ts_ns)?;
                self.process_track(p.pid)?;
                self.mark(process_track(p.pid), p.ts_ns, name, &args)
            }
        }
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        let tids: Vec<u32> = self.threads.keys().copied().collect();
        for tid in tids {
            self.write_thread(tid, u64::MAX)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests;
