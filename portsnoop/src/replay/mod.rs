//! `portsnoop replay FILE.jsonl`: a `--json` recording rendered again,
//! offline, by the same writers as a live run (table, `--summary`,
//! `--json`, `--perfetto`).
//!
//! Each line is parsed back into the record the correlator produced
//! ([`parse`]) and handed to the outputs in the recorded order; the last
//! line's summary goes to their `finish`. So `replay --json` writes the
//! recording again byte for byte, and `--perfetto` the file a live
//! `--perfetto` of the same run wrote.
//!
//! The live table also writes rows out as the wall clock passes (a quiet
//! target's last rows show within a second), and a row whose record comes
//! after rows that began later were written is shown late, `(began ...)`.
//! A recording has no wall clock, but each record was submitted when what
//! it records ended, so the clock had reached that time when it came:
//! replay moves the outputs' clock there before each record (at most once
//! per live poll interval), and places late rows as the live run did.
//! Where the live clock read a few milliseconds less than that, a late
//! row can still fall otherwise: the table is the same rows, byte for
//! byte when no row was late, and `tests/tests/replay.rs` compares it
//! that way.
//!
//! A line that is not what the JSON contract says is an error naming its
//! line; lines of a type this portsnoop does not know (a newer one wrote
//! them) are skipped and counted on stderr. A recording cut short, without
//! its summary line, still replays: the summary is rebuilt from its ops,
//! and stderr says so.

pub mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use crate::correlate::{Record, Summary};
use crate::output::perfetto::Perfetto;
use crate::output::{escape, note, Output, Tee};
use crate::trace::{make_output, Format};
use parse::Entry;

/// What to replay, and how to show it.
#[derive(Debug)]
pub struct ReplayConfig {
    /// The recording (`-`: stdin).
    pub input: PathBuf,
    /// The main output's format.
    pub format: Format,
    /// The text summary after the table.
    pub summary: bool,
    /// No rows, only what the output writes at the end.
    pub quiet: bool,
    /// A PID column in the table, as a live `-f` run has.
    pub pids: bool,
    /// Write here instead of stdout.
    pub output: Option<PathBuf>,
    /// Also write a Perfetto trace here.
    pub perfetto: Option<PathBuf>,
}

/// Why a replay failed.
#[derive(Debug)]
pub enum Error {
    /// The recording could not be opened.
    Open(PathBuf, io::Error),
    /// Reading it failed.
    Read(PathBuf, io::Error),
    /// A line is not what the JSON contract says.
    Line {
        /// The recording.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// An output file could not be created.
    CreateOutput(PathBuf, io::Error),
    /// An output file is the recording itself: creating it would empty
    /// the recording before it is read.
    OutputIsInput(PathBuf),
    /// Writing the output failed (a closed pipe too, which the CLI takes
    /// as a normal end).
    Write(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(p, _) => write!(f, "cannot open {}", escape::path(p)),
            Error::Read(p, _) => write!(f, "reading {}", escape::path(p)),
            Error::Line { path, line, why } => {
                write!(
                    f,
                    "{}: line {line}: {}",
                    escape::path(path),
                    escape::escape(why)
                )
            }
            Error::CreateOutput(p, _) => write!(f, "cannot write {}", escape::path(p)),
            Error::OutputIsInput(p) => write!(
                f,
                "{} is the recording being replayed: write the output elsewhere",
                escape::path(p)
            ),
            Error::Write(_) => write!(f, "writing the replay"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open(_, e) | Error::Read(_, e) | Error::CreateOutput(_, e) | Error::Write(e) => {
                Some(e)
            }
            Error::Line { .. } | Error::OutputIsInput(_) => None,
        }
    }
}

/// Replays `config.input` to its outputs and returns the summary.
pub fn run(config: &ReplayConfig) -> Result<Summary, Error> {
    for out in config.output.iter().chain(&config.perfetto) {
        if same_file(&config.input, out) {
            return Err(Error::OutputIsInput(out.clone()));
        }
    }
    let input: Box<dyn BufRead> = if config.input.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let f = File::open(&config.input).map_err(|e| Error::Open(config.input.clone(), e))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let sink: Box<dyn Write> = match &config.output {
        Some(path) => {
            Box::new(File::create(path).map_err(|e| Error::CreateOutput(path.clone(), e))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let sink = BufWriter::with_capacity(1 << 16, sink);
    let mut output = make_output(
        config.format,
        config.quiet,
        config.summary,
        config.pids,
        sink,
    );
    if let Some(path) = &config.perfetto {
        let file = File::create(path).map_err(|e| Error::CreateOutput(path.clone(), e))?;
        let perfetto = Perfetto::new(BufWriter::with_capacity(1 << 16, file));
        output = Box::new(Tee(vec![output, Box::new(perfetto)]));
    }
    replay(&config.input, input, &mut *output)
}

/// Whether `a` and `b` are one existing file (by device and inode, so
/// `./x` and a link to it are too).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Feeds every record of `input` to `output`, then the summary.
pub fn replay(
    path: &std::path::Path,
    mut input: impl BufRead,
    output: &mut dyn Output,
) -> Result<Summary, Error> {
    let mut buf = Vec::new();
    let mut line = 0;
    let mut summary: Option<Summary> = None;
    // Rebuilt from the records in case the summary line is missing.
    let mut rebuilt = Summary::default();
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_tick = 0;
    let bad = |line: usize, why: String| Error::Line {
        path: path.to_path_buf(),
        line,
        why,
    };
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::Read(path.to_path_buf(), e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let text = std::str::from_utf8(&buf).map_err(|_| bad(line, "not UTF-8".into()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if summary.is_some() {
            return Err(bad(
                line,
                "a line after the summary, which ends a recording".into(),
            ));
        }
        match parse::entry(text).map_err(|why| bad(line, why))? {
            Entry::Record(r) => {
                let now = submitted_at(&r);
                if now >= next_tick {
                    output.tick(now).map_err(Error::Write)?;
                    next_tick = now.saturating_add(TICK_NS);
                }
                rebuild(&mut rebuilt, &r);
                output.record(&r).map_err(Error::Write)?;
            }
            Entry::Summary(s) => summary = Some(*s),
            Entry::Unknown(ty) => *unknown.entry(ty).or_default() += 1,
        }
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|(ty, n)| format!("{} ({n})", escape::escape(ty)))
            .collect();
        note(format_args!(
            "skipped {} lines of record types this portsnoop does not know: {}",
            unknown.values().sum::<u64>(),
            list.join(", ")
        ));
    }
    let summary = summary.unwrap_or_else(|| {
        note(format_args!(
            "{} has no summary line (the recording was cut short): the summary is rebuilt from its records",
            escape::path(path)
        ));
        rebuilt
    });
    output.finish(&summary).map_err(Error::Write)?;
    Ok(summary)
}

/// How often a live session's clock moves its outputs on: its poll
/// interval.
const TICK_NS: u64 = crate::trace::POLL_INTERVAL.as_nanos() as u64;

/// When the kernel side submitted (or the correlator let go of) what a
/// record says: the end of what it records.
fn submitted_at(r: &Record) -> u64 {
    use crate::event::Event;
    match r {
        Record::Event(Event::Syscall(s)) => s.ts_ns.saturating_add(s.dur_ns),
        Record::Event(Event::EpollCtl(c)) => c.ts_ns.saturating_add(c.dur_ns),
        Record::Event(Event::EpollWait(w)) => w.ts_ns.saturating_add(w.dur_ns),
        Record::Wait(w) => w.wait.ts_ns.saturating_add(w.wait.dur_ns),
        Record::Event(e) => e.ts_ns(),
        Record::Op(op) => op
            .syscalls
            .iter()
            .map(|s| s.ts_ns.saturating_add(s.dur_ns))
            .chain(op.return_ts_ns)
            .fold(op.entry_ts_ns, u64::max),
        Record::Stall(st) => st.ts_ns.saturating_add(st.dur_ns),
    }
}

/// What a record adds to the summary a recording without one gets.
fn rebuild(s: &mut Summary, r: &Record) {
    match r {
        Record::Op(op) => s.add_op(op),
        Record::Wait(_) => {
            s.waits += 1;
            s.events += 1;
        }
        Record::Event(crate::event::Event::Lost { count, .. }) => {
            s.lost_events = s.lost_events.saturating_add(*count)
        }
        Record::Stall(st) => s.add_stall(st),
        Record::Event(_) => s.events += 1,
    }
}

#[cfg(test)]
mod tests;
