//! Writers for correlated records: the seed's table, JSON Lines, a
//! Perfetto trace, and the end-of-run summary with quantize-style
//! histograms; [`Tee`] feeds several at once; portsnoop's own lines on
//! stderr ([`note`]). Whatever the traced program controls is escaped
//! before a terminal sees it ([`escape`]).

pub mod escape;
pub mod json;
pub(crate) mod line;
pub mod perfetto;
pub mod summary;
pub mod table;

use std::fmt;
use std::io::{self, Write};

use crate::correlate::{Record, Summary};
use crate::event::EpollWait;

/// Writes `portsnoop: MSG` on stderr. Strings from the traced program in
/// `MSG` must already be escaped ([`escape::Escaped`]). A stderr that is
/// closed or broken (a hung-up terminal, `2>&1 | head`) is no reason to
/// fail, nor to panic as `eprintln!` does: the line is dropped.
pub fn note(msg: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "portsnoop: {msg}");
}

/// An error and its causes, as one line: what portsnoop was doing, then
/// why, as deep as the causes go. Escaped: causes can carry names the
/// traced app controls (a path, a probe's name).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = escape::escape(&e.to_string()).into_owned();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&escape::escape(&c.to_string()));
        cause = c.source();
    }
    text
}

/// How many of the events a wait returned the kernel side did not record:
/// it keeps the first [`EpollWait::MAX_EVENTS`], and `rv` says how many
/// there were.
pub fn events_omitted(w: &EpollWait) -> u64 {
    (w.rv.max(0) as u64).saturating_sub(w.events.len() as u64)
}

/// Something that writes records as they come and a summary at the end.
pub trait Output {
    /// Writes one record.
    fn record(&mut self, record: &Record) -> io::Result<()>;
    /// Writes the end-of-run summary (and flushes).
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
    /// Called on every poll of the kernel side with the events' clock
    /// (`CLOCK_MONOTONIC`): writes out what has waited long enough and
    /// flushes, so a trace that goes quiet still shows its last rows
    /// instead of keeping them until the next event or the end.
    fn tick(&mut self, _now_ns: u64) -> io::Result<()> {
        Ok(())
    }
}

/// An output with its rows turned off: records are dropped, the end (the
/// JSON summary line, the flush) still happens. The correlator still sees
/// every event, so the summary is whole.
pub struct SummaryOnly<O: Output>(pub O);

impl<O: Output> Output for SummaryOnly<O> {
    fn record(&mut self, _record: &Record) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.0.finish(summary)
    }
    // No rows: nothing waits to be written.
}

/// Several outputs fed the same records (`--json=FILE` and `--perfetto
/// FILE` beside the table): each gets every record, tick and the summary.
/// The first write error is returned, after every output has had its
/// turn.
pub struct Tee(pub Vec<Box<dyn Output>>);

impl Tee {
    fn each(&mut self, mut f: impl FnMut(&mut dyn Output) -> io::Result<()>) -> io::Result<()> {
        let mut first = Ok(());
        for o in &mut self.0 {
            let r = f(&mut **o);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Output for Tee {
    fn record(&mut self, record: &Record) -> io::Result<()> {
        self.each(|o| o.record(record))
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.each(|o| o.finish(summary))
    }

    fn tick(&mut self, now_ns: u64) -> io::Result<()> {
        self.each(|o| o.tick(now_ns))
    }
}

/// The epoll event bits that have names, in the order they are shown
/// (`IN|OUT`).
const EPOLL_MASK_NAMES: [(u32, &str); 8] = [
    (0x001, "IN"),
    (0x004, "OUT"),
    (0x002, "PRI"),
    (0x008, "ERR"),
    (0x010, "HUP"),
    (0x2000, "RDHUP"),
    (1 << 30, "ONESHOT"),
    (1 << 31, "ET"),
];
