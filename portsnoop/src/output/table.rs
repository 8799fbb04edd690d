//! The seed's table: `TIME TID SYSCALL FD DETAILS ERROR` (with `-f`,
//! `TIME PID TID ...`: fd numbers are per process), with the
//! userland probe rows interleaved with the kernel's rows in time order.
//!
//! Records reach us in ring-buffer order, which across CPUs is only nearly
//! time order, so rows wait in a short window and leave sorted by time.
//!
//! Strings from the traced program (callback names, log messages) are
//! escaped ([`super::escape`]): a row is always one line, and nothing in it
//! reaches the terminal as a control.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use super::escape::Escaped;
use super::line::Line;
use super::summary::SummaryReport;
use super::{events_omitted, Output, EPOLL_MASK_NAMES};
use crate::correlate::{name_of, EpollMap, Record, Stall, Summary};
use crate::event::{errno_name, errno_of, Event, ProbeName, ProcessEventKind, SyscallName};
use crate::sock::{tcp_state_name, SocketOrigin, TcpEventKind};

/// Rows are held this long (in trace time) for late arrivals to sort in.
const REORDER_WINDOW_NS: u64 = 50_000_000;

/// Writes the table to `W`.
pub struct Table<W: Write> {
    out: W,
    /// Trace time of the first row: TIME counts from here.
    t0: Option<u64>,
    /// Rows waiting for late arrivals, sorted by time; equal times keep
    /// arrival order. Rows come nearly in order, so the sorted insert scans
    /// a few rows from the back and the flush pops from the front: both
    /// cheap, where a tree paid a rebalance per row.
    pending: VecDeque<(u64, Row)>,
    newest: u64,
    /// Time of the last row written: nothing may go out before it.
    last_written: Option<u64>,
    header_done: bool,
    line: Line,
    /// Write the text summary at the end.
    summary: bool,
    /// A PID column (`-f`: several processes, each fd number one
    /// process's). Without `-f` there is one process, named on stderr.
    pids: bool,
    /// The last socket identity per thread, named, for its accept's or
    /// connect's row (the kernel side submits it just before).
    sockets: rustc_hash::FxHashMap<u32, (u32, i32, Arc<str>)>,
}

/// A row waiting in the window. It keeps the values, not their text: rows
/// are the writer's hot path, and allocating and formatting each piece was
/// most of its cost. The text is made once, in [`Table::write_row`].
struct Row {
    /// The process (shown with `-f` only).
    pid: u32,
    tid: u32,
    what: Cow<'static, str>,
    fd: FdCol,
    details: Details,
    /// ERROR column: the errno in `rv`, if it holds one.
    rv: i64,
    /// A row placed late, after rows that started after it: when it began.
    began: Option<u64>,
}

/// The DETAILS column.
enum Details {
    /// `= rv` (or `= -1` with an errno), `(arg N)` if any, duration.
    Syscall { rv: i64, arg: u64, dur_ns: u64 },
    /// An accept's or connect's row with its connection named after the
    /// duration, as `strace -yy` names an fd: `tcp LOCAL <- PEER`.
    SyscallConn {
        rv: i64,
        arg: u64,
        dur_ns: u64,
        conn: Arc<str>,
    },
    /// `ADD 0x01 IN data 42`.
    EpollCtl { op: i32, events: u32, data: u64 },
    /// `N events`, then the duration if known.
    Wait { n: i64, dur_ns: Option<u64> },
    /// A returned epoll event: `fdevents 0x01 IN`.
    FdEvents(u32),
    /// Returned events the kernel side did not record: `+N more events
    /// not recorded`.
    Omitted(u64),
    /// Read and write entries: `len N closure C`.
    LenClosure { len: u64, closure: u64 },
    /// Accept and close entries: `closure C`.
    Closure(u64),
    /// `name mask 0x01 closure C`.
    CallbackEntry {
        name: Arc<str>,
        mask: i32,
        closure: u64,
    },
    /// `name = 0x01`.
    CallbackReturn { name: Arc<str>, mask: i32 },
    /// A return probe's `= rv` (or `= -1` with an errno).
    Rv(i64),
    /// Rare rows, formatted when made.
    Text(String),
}

/// The FD column: a number, `-` (no fd), or `?` (not resolved).
#[derive(Clone, Copy)]
enum FdCol {
    Num(i32),
    Dash,
    Unknown,
}

impl<W: Write> Table<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Table<W> {
        Table {
            out,
            t0: None,
            pending: VecDeque::new(),
            newest: 0,
            last_written: None,
            header_done: false,
            line: Line::default(),
            summary: false,
            pids: false,
            sockets: Default::default(),
        }
    }

    /// Shows a PID column before TID (for `-f`).
    pub fn with_pids(mut self) -> Table<W> {
        self.pids = true;
        self
    }

    /// Also writes the text summary ([`SummaryReport`]) after the last row,
    /// to the same output.
    pub fn with_summary(mut self) -> Table<W> {
        self.summary = true;
        self
    }

    fn push(&mut self, ts: u64, row: Row) -> io::Result<()> {
        self.push_spanning(ts, ts, row)
    }

    /// Queues a row for something that began at `ts` and took `dur_ns`.
    fn push_lasting(&mut self, ts: u64, dur_ns: u64, row: Row) -> io::Result<()> {
        self.push_spanning(ts, ts.saturating_add(dur_ns), row)
    }

    /// Queues a row for something that began at `ts` and ended at `end`.
    /// If rows after `ts` are already out (a syscall blocked for longer
    /// than the window, or a CPU fell far behind), the row goes where it can
    /// still go in order, at `end` or later, and says when it began: TIME
    /// never goes backwards.
    fn push_spanning(&mut self, ts: u64, end: u64, mut row: Row) -> io::Result<()> {
        let key = match self.last_written {
            Some(last) if ts < last => {
                row.began = Some(ts);
                end.max(last)
            }
            Some(_) => ts,
            None => {
                self.t0 = Some(self.t0.map_or(ts, |t| t.min(ts)));
                ts
            }
        };
        // Nearly always the newest row: append without insert's shuffling.
        if self.pending.back().is_none_or(|(t, _)| *t <= key) {
            self.pending.push_back((key, row));
        } else {
            let at = self
                .pending
                .iter()
                .rposition(|(t, _)| *t <= key)
                .map_or(0, |i| i + 1);
            self.pending.insert(at, (key, row));
        }
        self.advance(key)
    }

    /// Time has reached `now`: writes the rows that have left the reorder
    /// window.
    fn advance(&mut self, now: u64) -> io::Result<()> {
        self.newest = self.newest.max(now);
        let watermark = self.newest.saturating_sub(REORDER_WINDOW_NS);
        while self.pending.front().is_some_and(|(t, _)| *t <= watermark) {
            let (ts, row) = self.pending.pop_front().expect("front exists");
            self.write_row(ts, &row)?;
        }
        Ok(())
    }

    fn write_row(&mut self, ts: u64, row: &Row) -> io::Result<()> {
        self.last_written = Some(ts);
        if !self.header_done {
            if self.pids {
                write!(self.out, "{:>12} {:>7}", "TIME", "PID")?;
            } else {
                write!(self.out, "{:>12}", "TIME")?;
            }
            writeln!(
                self.out,
                " {:>7} {:<18} {:>5} {:<40} ERROR",
                "TID", "SYSCALL", "FD", "DETAILS"
            )?;
            self.header_done = true;
        }
        // t0 is frozen once a row is out, so a late row's `began` is read
        // against the same origin as every TIME before it.
        let t0 = self.t0.unwrap_or(ts);
        let l = &mut self.line;
        l.clear();
        let t = ts.saturating_sub(t0);
        l.i64_right((t / 1_000_000_000) as i64, 5)
            .byte(b'.')
            .u64_06((t % 1_000_000_000) / 1000)
            .byte(b' ');
        if self.pids {
            l.i64_right(row.pid as i64, 7).byte(b' ');
        }
        l.i64_right(row.tid as i64, 7)
            .byte(b' ')
            .str_left(&row.what, 18)
            .byte(b' ');
        match row.fd {
            FdCol::Num(n) => l.i64_right(n as i64, 5),
            FdCol::Dash => l.str_right("-", 5),
            FdCol::Unknown => l.str_right("?", 5),
        };
        l.byte(b' ');
        let details = l.mark();
        row.details.write(l);
        if let Some(began) = row.began {
            l.str(" (began ");
            clock(l, began, t0);
            l.byte(b')');
        }
        // Padding only where an ERROR follows: no trailing blanks for
        // diff, grep and golden files.
        if let Some(errno) = errno_of(row.rv) {
            l.pad_after(details, 40).byte(b' ');
            errno_text(l, errno);
        }
        l.byte(b'\n');
        self.out.write_all(l.as_bytes())
    }
}

/// `ts` as TIME shows it, signed: a late row may have begun before the
/// first row.
fn clock(l: &mut Line, ts: u64, t0: u64) {
    let t = if ts >= t0 {
        ts - t0
    } else {
        l.byte(b'-');
        t0 - ts
    };
    l.u64(t / 1_000_000_000)
        .byte(b'.')
        .u64_06((t % 1_000_000_000) / 1000);
}

/// `errno = 11 (EAGAIN)`.
fn errno_text(l: &mut Line, errno: i32) {
    l.str("errno = ").i64(errno as i64);
    if let Some(name) = errno_name(errno) {
        l.str(" (").str(name).byte(b')');
    }
}

/// `= rv`, or `= -1` when rv holds an errno (which ERROR then shows).
fn rv_text(l: &mut Line, rv: i64) {
    l.str("= ");
    if errno_of(rv).is_some() {
        l.str("-1");
    } else {
        l.i64(rv);
    }
}

/// `IN|OUT`; `-` for none.
fn mask_names(l: &mut Line, mask: u32) {
    let mut first = true;
    for (bit, name) in EPOLL_MASK_NAMES {
        if mask & bit != 0 {
            if !first {
                l.byte(b'|');
            }
            l.str(name);
            first = false;
        }
    }
    if first {
        l.byte(b'-');
    }
}

impl Details {
    fn write(&self, l: &mut Line) {
        match self {
            Details::Syscall { rv, arg, dur_ns } => {
                rv_text(l, *rv);
                if *arg != 0 {
                    l.str(" (arg ").u64(*arg).byte(b')');
                }
                l.byte(b' ').u64(dur_ns / 1000).str("us");
            }
            Details::SyscallConn {
                rv,
                arg,
                dur_ns,
                conn,
            } => {
                rv_text(l, *rv);
                if *arg != 0 {
                    l.str(" (arg ").u64(*arg).byte(b')');
                }
                l.byte(b' ').u64(dur_ns / 1000).str("us ");
                // Named escaped already (name_of).
                l.str(conn);
            }
            Details::EpollCtl { op, events, data } => {
                l.str(EpollMap::op_name(*op))
                    .str(" 0x")
                    .hex2(*events as u64)
                    .byte(b' ');
                mask_names(l, *events);
                l.str(" data ").u64(*data);
            }
            Details::Wait { n, dur_ns } => {
                l.i64((*n).max(0)).str(" events");
                if let Some(d) = dur_ns {
                    l.byte(b' ').u64(d / 1000).str("us");
                }
            }
            Details::FdEvents(events) => {
                l.str("fdevents 0x").hex2(*events as u64).byte(b' ');
                mask_names(l, *events);
            }
            Details::Omitted(n) => {
                l.byte(b'+').u64(*n).str(" more events not recorded");
            }
            Details::LenClosure { len, closure } => {
                l.str("len ").u64(*len).str(" closure ").u64(*closure);
            }
            Details::Closure(closure) => {
                l.str("closure ").u64(*closure);
            }
            Details::CallbackEntry {
                name,
                mask,
                closure,
            } => {
                l.str_escaped(name)
                    .str(" mask 0x")
                    .hex2(*mask as u32 as u64)
                    .str(" closure ")
                    .u64(*closure);
            }
            Details::CallbackReturn { name, mask } => {
                l.str_escaped(name).str(" = 0x").hex2(*mask as u32 as u64);
            }
            Details::Rv(rv) => rv_text(l, *rv),
            Details::Text(text) => {
                l.str(text);
            }
        }
    }
}

/// `NAME 45.0ms: off-CPU 40.6ms, on-CPU 4.4ms; fsync fd 14 30.2ms (8
/// calls), unlink 11.8ms, write fd 14 2.1ms (8 calls)`: the syscalls
/// grouped by name, fd and errno, the most time first (three groups at
/// most). The name is the app's: escaped.
fn stall_details(st: &Stall) -> String {
    let mut text = format!(
        "{} {}: off-CPU {}, on-CPU {}",
        Escaped(&st.name),
        duration(st.dur_ns),
        duration(st.off_cpu_ns),
        duration(st.dur_ns.saturating_sub(st.off_cpu_ns))
    );
    // (name, fd, errno) -> (calls, total ns), in first-seen order.
    type Key<'a> = (&'a str, Option<i32>, Option<i32>);
    let mut groups: Vec<(Key<'_>, (u64, u64))> = Vec::new();
    for s in &st.syscalls {
        let key = (&*s.name, s.fd, errno_of(s.rv));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, (n, total))) => {
                *n += 1;
                *total = total.saturating_add(s.dur_ns);
            }
            None => groups.push((key, (1, s.dur_ns))),
        }
    }
    groups.sort_by_key(|(_, (_, total))| std::cmp::Reverse(*total));
    for (i, ((name, fd, errno), (n, total))) in groups.iter().take(3).enumerate() {
        text.push_str(if i == 0 { "; " } else { ", " });
        text.push_str(name);
        if let Some(fd) = fd {
            text.push_str(&format!(" fd {fd}"));
        }
        if let Some(errno) = errno {
            text.push_str(&format!(" {}", errno_name(*errno).unwrap_or("error")));
        }
        text.push(' ');
        text.push_str(&duration(*total));
        if *n > 1 {
            text.push_str(&format!(" ({n} calls)"));
        }
    }
    let more = groups.len().saturating_sub(3);
    if more > 0 {
        text.push_str(&format!(", +{more} more kinds"));
    }
    if st.syscalls_cut > 0 {
        text.push_str(&format!(", +{} calls not kept", st.syscalls_cut));
    }
    text
}

/// `12.3ms` from 1 ms up, else `45us`.
fn duration(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{}.{}ms", ns / 1_000_000, (ns % 1_000_000) / 100_000)
    } else {
        format!("{}us", ns / 1000)
    }
}

/// A row whose ERROR column stays empty.
fn row(pid: u32, tid: u32, what: impl Into<Cow<'static, str>>, fd: FdCol, details: Details) -> Row {
    Row {
        pid,
        tid,
        what: what.into(),
        fd,
        details,
        rv: 0,
        began: None,
    }
}

/// A row whose ERROR column shows the errno in `rv`, if any.
fn row_rv(
    pid: u32,
    tid: u32,
    what: impl Into<Cow<'static, str>>,
    fd: FdCol,
    details: Details,
    rv: i64,
) -> Row {
    Row {
        rv,
        ..row(pid, tid, what, fd, details)
    }
}

impl<W: Write> Output for Table<W> {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::Event(Event::Syscall(s)) => {
                let conn_fd = match s.name {
                    SyscallName::Accept | SyscallName::Accept4 => i32::try_from(s.rv).ok(),
                    SyscallName::Connect => Some(s.fd),
                    _ => None,
                };
                let conn = match (conn_fd, self.sockets.get(&s.tid)) {
                    (Some(fd), Some((pid, sfd, _))) if *sfd == fd && *pid == s.pid => {
                        self.sockets.remove(&s.tid).map(|(_, _, name)| name)
                    }
                    _ => None,
                };
                let details = match conn {
                    Some(conn) => Details::SyscallConn {
                        rv: s.rv,
                        arg: s.arg,
                        dur_ns: s.dur_ns,
                        conn,
                    },
                    None => Details::Syscall {
                        rv: s.rv,
                        arg: s.arg,
                        dur_ns: s.dur_ns,
                    },
                };
                self.push_lasting(
                    s.ts_ns,
                    s.dur_ns,
                    row_rv(
                        s.pid,
                        s.tid,
                        s.name.as_str(),
                        FdCol::Num(s.fd),
                        details,
                        s.rv,
                    ),
                )
            }
            Record::Event(Event::Socket(i)) => {
                let name: Arc<str> = name_of(i).into();
                if i.origin != SocketOrigin::BeforeTrace {
                    // Shown on its syscall's row.
                    self.sockets.insert(i.tid, (i.pid, i.fd, name));
                    return Ok(());
                }
                self.push(
                    i.ts_ns,
                    row(
                        i.pid,
                        i.tid,
                        "SOCKET",
                        FdCol::Num(i.fd),
                        Details::Text(format!("{name} (open before the trace)")),
                    ),
                )
            }
            Record::Event(Event::Tcp(t)) => {
                let (what, details) = match t.kind {
                    TcpEventKind::State => (
                        "tcp-state",
                        format!("{} -> {}", tcp_state_name(t.from), tcp_state_name(t.to)),
                    ),
                    TcpEventKind::Retransmit => {
                        ("tcp-retransmit", format!("in {}", tcp_state_name(t.to)))
                    }
                    TcpEventKind::ResetSent => {
                        ("tcp-reset-sent", format!("in {}", tcp_state_name(t.to)))
                    }
                    TcpEventKind::ResetReceived => {
                        ("tcp-reset-received", format!("in {}", tcp_state_name(t.to)))
                    }
                };
                self.push(
                    t.ts_ns,
                    row(t.pid, t.tid, what, FdCol::Num(t.fd), Details::Text(details)),
                )
            }
            Record::Event(Event::EpollCtl(c)) => self.push_lasting(
                c.ts_ns,
                c.dur_ns,
                row_rv(
                    c.pid,
                    c.tid,
                    "epoll_ctl",
                    FdCol::Num(c.fd),
                    Details::EpollCtl {
                        op: c.op,
                        events: c.events,
                        data: c.data,
                    },
                    c.rv,
                ),
            ),
            Record::Event(Event::EpollWait(w)) => self.push_lasting(
                w.ts_ns,
                w.dur_ns,
                row_rv(
                    w.pid,
                    w.tid,
                    w.name,
                    FdCol::Dash,
                    Details::Wait {
                        n: w.rv,
                        dur_ns: None,
                    },
                    w.rv,
                ),
            ),
            Record::Wait(w) => {
                let ts = w.wait.ts_ns;
                // The events are returned at the wait's end; they sort after it.
                let end = ts.saturating_add(w.wait.dur_ns);
                self.push_spanning(
                    ts,
                    end,
                    row_rv(
                        w.wait.pid,
                        w.wait.tid,
                        w.wait.name,
                        FdCol::Dash,
                        Details::Wait {
                            n: w.wait.rv,
                            dur_ns: Some(w.wait.dur_ns),
                        },
                        w.wait.rv,
                    ),
                )?;
                for (e, fd) in w.wait.events.iter().zip(&w.fds) {
                    let fd = fd.map_or(FdCol::Unknown, FdCol::Num);
                    self.push(
                        end,
                        row(
                            w.wait.pid,
                            w.wait.tid,
                            "EPOLL_EVENT",
                            fd,
                            Details::FdEvents(e.events),
                        ),
                    )?;
                }
                let omitted = events_omitted(&w.wait);
                if omitted > 0 {
                    self.push(
                        end,
                        row(
                            w.wait.pid,
                            w.wait.tid,
                            "EPOLL_EVENT",
                            FdCol::Dash,
                            Details::Omitted(omitted),
                        ),
                    )?;
                }
                Ok(())
            }
            Record::Event(Event::Probe(p)) => {
                let short = p.name.as_str();
                let short = short.strip_prefix("eventer-").unwrap_or(short);
                let fd = p.fd().map_or(FdCol::Dash, FdCol::Num);
                let name = || p.strings.first().cloned().unwrap_or_else(|| "".into());
                let details = match p.name {
                    ProbeName::ReadEntry | ProbeName::WriteEntry => Details::LenClosure {
                        len: p.args[2],
                        closure: p.args[4],
                    },
                    ProbeName::AcceptEntry => Details::Closure(p.args[4]),
                    ProbeName::CloseEntry => Details::Closure(p.args[2]),
                    ProbeName::CallbackEntry => Details::CallbackEntry {
                        name: name(),
                        mask: p.args[4] as i32,
                        closure: p.args[0],
                    },
                    ProbeName::CallbackReturn => Details::CallbackReturn {
                        name: name(),
                        mask: p.args[3] as i32,
                    },
                    ProbeName::Log => {
                        let s = |i: usize| Escaped(p.strings.get(i).map_or("", |s| &**s));
                        Details::Text(format!(
                            "{}: {} ({}:{})",
                            s(0),
                            s(2),
                            s(1),
                            p.args[2] as i32
                        ))
                    }
                    _ => {
                        let rv = p.rv().unwrap_or(0);
                        return self.push(
                            p.ts_ns,
                            row_rv(p.pid, p.tid, short, fd, Details::Rv(rv), rv),
                        );
                    }
                };
                self.push(p.ts_ns, row(p.pid, p.tid, short, fd, details))
            }
            Record::Event(Event::Lost { ts_ns, count }) => self.push(
                *ts_ns,
                row(
                    0,
                    0,
                    "LOST",
                    FdCol::Dash,
                    Details::Text(format!("{count} events dropped by the kernel side")),
                ),
            ),
            Record::Event(Event::Process(p)) => {
                let details = match &p.kind {
                    ProcessEventKind::Exit { code } => format!("exited (wait status {code})"),
                    ProcessEventKind::Exec => "exec: the old image's probes are gone".into(),
                    ProcessEventKind::Fork { child } => format!("fork: child {child}"),
                    ProcessEventKind::Traced { exe, probes: 0 } => {
                        format!("exec: now tracing {exe}: no evloop probes, kernel side only")
                    }
                    ProcessEventKind::Traced { exe, probes } => {
                        format!("exec: now tracing {exe}: {probes} evloop probes")
                    }
                };
                self.push(
                    p.ts_ns,
                    row(p.pid, p.tid, "PROCESS", FdCol::Dash, Details::Text(details)),
                )
            }
            // Seen as the close's own row when it returns.
            Record::Event(Event::CloseEnter(_)) => Ok(()),
            // Bookkeeping for stalls: the STALL row says what came of it.
            Record::Event(Event::OffCpu(_)) => Ok(()),
            Record::Event(Event::SlowSyscall(s)) => {
                let what = s.display_name();
                self.push_lasting(
                    s.ts_ns,
                    s.dur_ns,
                    row_rv(
                        s.pid,
                        s.tid,
                        what,
                        s.fd().map_or(FdCol::Dash, FdCol::Num),
                        Details::Syscall {
                            rv: s.rv,
                            arg: 0,
                            dur_ns: s.dur_ns,
                        },
                        s.rv,
                    ),
                )
            }
            // Shown where the callback returned, when it was known.
            Record::Stall(st) => self.push(
                st.ts_ns.saturating_add(st.dur_ns),
                row(
                    st.pid,
                    st.tid,
                    "STALL",
                    if st.fd < 0 {
                        FdCol::Dash
                    } else {
                        FdCol::Num(st.fd)
                    },
                    Details::Text(stall_details(st)),
                ),
            ),
            Record::Op(op) => match (&op.mismatch, &op.incomplete) {
                // Agreeing ops are already visible as their rows; only
                // disagreements and gaps get a row of their own.
                (None, None) => Ok(()),
                (mismatch, incomplete) => {
                    // An op that never returned is shown where it was last
                    // seen: after the syscalls it holds, not before them.
                    let ts = op.return_ts_ns.unwrap_or_else(|| {
                        op.syscalls
                            .iter()
                            .map(|s| s.ts_ns.saturating_add(s.dur_ns))
                            .fold(op.entry_ts_ns, u64::max)
                    });
                    let (label, why) = match (mismatch, incomplete) {
                        (Some(m), None) => ("MISMATCH", m.clone()),
                        (Some(m), Some(i)) => ("MISMATCH", format!("{m}; incomplete: {i}")),
                        (None, Some(i)) => ("INCOMPLETE", i.clone()),
                        (None, None) => unreachable!("matched above"),
                    };
                    self.push(
                        ts,
                        row(
                            op.pid,
                            op.tid,
                            format!("{label} {}", op.kind.as_str()),
                            FdCol::Num(op.fd),
                            Details::Text(why),
                        ),
                    )
                }
            },
        }
    }

    fn tick(&mut self, now_ns: u64) -> io::Result<()> {
        // Only once rows have been seen: before the first, `now` would
        // become the start of the table's clock.
        if self.t0.is_some() {
            self.advance(now_ns)?;
        }
        self.out.flush()
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        for (ts, row) in std::mem::take(&mut self.pending) {
            self.write_row(ts, &row)?;
        }
        if self.summary {
            SummaryReport::new(summary).write(&mut self.out)?;
        }
        self.out.flush()
    }
}
