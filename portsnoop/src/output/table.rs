//! The seed's table: `TIME TID SYSCALL FD DETAILS ERROR`, with the
//! userland probe rows interleaved with the kernel's rows in time order.
//!
//! Records reach us in ring-buffer order, which across CPUs is only nearly
//! time order, so rows wait in a short window and leave sorted by time.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};

use super::{epoll_mask_names, errno_text, Output};
use crate::correlate::{EpollMap, Record, Summary};
use crate::event::{errno_of, Event, ProbeName, ProcessEventKind};

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
}

/// A row waiting in the window. Only what must be formatted is a `String`:
/// rows are the writer's hot path, and allocation was most of its cost.
struct Row {
    tid: u32,
    what: Cow<'static, str>,
    fd: FdCol,
    details: String,
    error: String,
}

/// The FD column: a number, `-` (no fd), or `?` (not resolved).
#[derive(Clone, Copy)]
enum FdCol {
    Num(i32),
    Dash,
    Unknown,
}

impl fmt::Display for FdCol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdCol::Num(n) => fmt::Display::fmt(n, f),
            FdCol::Dash => f.pad("-"),
            FdCol::Unknown => f.pad("?"),
        }
    }
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
        }
    }

    fn push(&mut self, ts: u64, row: Row) -> io::Result<()> {
        self.push_spanning(ts, ts, row)
    }

    /// Queues a row for something that began at `ts` and ended at `end`.
    /// If rows after `ts` are already out (a syscall blocked for longer
    /// than the window, or a CPU fell far behind), the row goes where it can
    /// still go in order, at `end` or later, and says when it began: TIME
    /// never goes backwards.
    fn push_spanning(&mut self, ts: u64, end: u64, mut row: Row) -> io::Result<()> {
        let key = match self.last_written {
            Some(last) if ts < last => {
                let began = self.clock(ts);
                row.details.push_str(" (began ");
                row.details.push_str(&began);
                row.details.push(')');
                end.max(last)
            }
            Some(_) => ts,
            None => {
                self.t0 = Some(self.t0.map_or(ts, |t| t.min(ts)));
                ts
            }
        };
        let at = self
            .pending
            .iter()
            .rposition(|(t, _)| *t <= key)
            .map_or(0, |i| i + 1);
        self.pending.insert(at, (key, row));
        self.newest = self.newest.max(key);
        let watermark = self.newest.saturating_sub(REORDER_WINDOW_NS);
        while self.pending.front().is_some_and(|(t, _)| *t <= watermark) {
            let (ts, row) = self.pending.pop_front().expect("front exists");
            self.write_row(ts, &row)?;
        }
        Ok(())
    }

    /// `ts` as TIME shows it, signed: a late row may have begun before the
    /// first row.
    fn clock(&self, ts: u64) -> String {
        let t0 = self.t0.unwrap_or(ts);
        let (sign, t) = if ts >= t0 {
            ("", ts - t0)
        } else {
            ("-", t0 - ts)
        };
        format!(
            "{sign}{}.{:06}",
            t / 1_000_000_000,
            (t % 1_000_000_000) / 1000
        )
    }

    fn write_row(&mut self, ts: u64, row: &Row) -> io::Result<()> {
        self.last_written = Some(ts);
        if !self.header_done {
            writeln!(
                self.out,
                "{:>12} {:>7} {:<18} {:>5} {:<40} ERROR",
                "TIME", "TID", "SYSCALL", "FD", "DETAILS"
            )?;
            self.header_done = true;
        }
        let t = ts.saturating_sub(self.t0.unwrap_or(ts));
        write!(
            self.out,
            "{:>5}.{:06} {:>7} {:<18} {:>5} ",
            t / 1_000_000_000,
            (t % 1_000_000_000) / 1000,
            row.tid,
            row.what,
            row.fd,
        )?;
        // Padding only where an ERROR follows: no trailing blanks for
        // diff, grep and golden files.
        if row.error.is_empty() {
            writeln!(self.out, "{}", row.details)
        } else {
            writeln!(self.out, "{:<40} {}", row.details, row.error)
        }
    }
}

fn rv_text(rv: i64) -> (String, String) {
    match errno_of(rv) {
        Some(e) => ("= -1".into(), errno_text(e)),
        None => (format!("= {rv}"), String::new()),
    }
}

fn row(
    tid: u32,
    what: impl Into<Cow<'static, str>>,
    fd: FdCol,
    details: String,
    error: String,
) -> Row {
    Row {
        tid,
        what: what.into(),
        fd,
        details,
        error,
    }
}

impl<W: Write> Output for Table<W> {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::Event(Event::Syscall(s)) => {
                let (mut details, error) = rv_text(s.rv);
                if s.arg != 0 {
                    details.push_str(&format!(" (arg {})", s.arg));
                }
                details.push_str(&format!(" {}us", s.dur_ns / 1000));
                self.push_spanning(
                    s.ts_ns,
                    s.ts_ns.saturating_add(s.dur_ns),
                    row(s.tid, s.name.as_str(), FdCol::Num(s.fd), details, error),
                )
            }
            Record::Event(Event::EpollCtl(c)) => {
                let (_, error) = rv_text(c.rv);
                let details = format!(
                    "{} 0x{:02x} {} data {}",
                    EpollMap::op_name(c.op),
                    c.events,
                    epoll_mask_names(c.events),
                    c.data
                );
                self.push_spanning(
                    c.ts_ns,
                    c.ts_ns.saturating_add(c.dur_ns),
                    row(c.tid, "epoll_ctl", FdCol::Num(c.fd), details, error),
                )
            }
            Record::Event(Event::EpollWait(w)) => {
                let (_, error) = rv_text(w.rv);
                self.push_spanning(
                    w.ts_ns,
                    w.ts_ns.saturating_add(w.dur_ns),
                    row(
                        w.tid,
                        w.name,
                        FdCol::Dash,
                        format!("{} events", w.rv.max(0)),
                        error,
                    ),
                )
            }
            Record::Wait(w) => {
                let (_, error) = rv_text(w.wait.rv);
                let ts = w.wait.ts_ns;
                // The events are returned at the wait's end; they sort after it.
                let end = ts.saturating_add(w.wait.dur_ns);
                self.push_spanning(
                    ts,
                    end,
                    row(
                        w.wait.tid,
                        w.wait.name,
                        FdCol::Dash,
                        format!("{} events {}us", w.wait.rv.max(0), w.wait.dur_ns / 1000),
                        error,
                    ),
                )?;
                for (e, fd) in w.wait.events.iter().zip(&w.fds) {
                    let fd = fd.map_or(FdCol::Unknown, FdCol::Num);
                    let details =
                        format!("fdevents 0x{:02x} {}", e.events, epoll_mask_names(e.events));
                    self.push(
                        end,
                        row(w.wait.tid, "EPOLL_EVENT", fd, details, String::new()),
                    )?;
                }
                Ok(())
            }
            Record::Event(Event::Probe(p)) => {
                let short = p.name.as_str();
                let short = short.strip_prefix("eventer-").unwrap_or(short);
                let fd = p.fd().map_or(FdCol::Dash, FdCol::Num);
                let (details, error) = match p.name {
                    ProbeName::ReadEntry | ProbeName::WriteEntry => (
                        format!("len {} closure {}", p.args[2], p.args[4]),
                        String::new(),
                    ),
                    ProbeName::AcceptEntry => (format!("closure {}", p.args[4]), String::new()),
                    ProbeName::CloseEntry => (format!("closure {}", p.args[2]), String::new()),
                    ProbeName::CallbackEntry => (
                        format!(
                            "{} mask 0x{:02x} closure {}",
                            p.strings.first().map_or("", String::as_str),
                            p.args[4] as i32,
                            p.args[0]
                        ),
                        String::new(),
                    ),
                    ProbeName::CallbackReturn => (
                        format!(
                            "{} = 0x{:02x}",
                            p.strings.first().map_or("", String::as_str),
                            p.args[3] as i32
                        ),
                        String::new(),
                    ),
                    ProbeName::Log => (
                        format!(
                            "{}: {} ({}:{})",
                            p.strings.first().map_or("", String::as_str),
                            p.strings.get(2).map_or("", String::as_str),
                            p.strings.get(1).map_or("", String::as_str),
                            p.args[2] as i32
                        ),
                        String::new(),
                    ),
                    _ => rv_text(p.rv().unwrap_or(0)),
                };
                self.push(p.ts_ns, row(p.tid, short, fd, details, error))
            }
            Record::Event(Event::Lost { ts_ns, count }) => self.push(
                *ts_ns,
                row(
                    0,
                    "LOST",
                    FdCol::Dash,
                    format!("{count} events dropped by the kernel side"),
                    String::new(),
                ),
            ),
            Record::Event(Event::Process(p)) => {
                let details = match &p.kind {
                    ProcessEventKind::Exit { code } => format!("exited (wait status {code})"),
                    ProcessEventKind::Exec => "exec: its probes are gone".into(),
                };
                self.push(
                    p.ts_ns,
                    row(p.tid, "PROCESS", FdCol::Dash, details, String::new()),
                )
            }
            Record::Op(op) => match &op.mismatch {
                // Agreeing ops are already visible as their rows; only
                // disagreements get a row of their own.
                None => Ok(()),
                Some(why) => {
                    // An op that never returned is shown where it was last
                    // seen: after the syscalls it holds, not before them.
                    let ts = op.return_ts_ns.unwrap_or_else(|| {
                        op.syscalls
                            .iter()
                            .map(|s| s.ts_ns.saturating_add(s.dur_ns))
                            .fold(op.entry_ts_ns, u64::max)
                    });
                    let label = if op.incomplete {
                        "INCOMPLETE"
                    } else {
                        "MISMATCH"
                    };
                    self.push(
                        ts,
                        row(
                            op.tid,
                            format!("{label} {}", op.kind.as_str()),
                            FdCol::Num(op.fd),
                            why.clone(),
                            String::new(),
                        ),
                    )
                }
            },
        }
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        for (ts, row) in std::mem::take(&mut self.pending) {
            self.write_row(ts, &row)?;
        }
        self.out.flush()
    }
}
