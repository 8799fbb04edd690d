//! A tracing session: start or find the target, attach, then pump events
//! from the engine through the correlator to the output until told to stop
//! (SIGINT, SIGTERM, SIGHUP: see [`crate::stop`]), the time is up, the
//! target is gone, or the output is (a closed pipe: `portsnoop | head`).
//! Every way out goes through the same end: the target is ended if we
//! started it, and `run` returns.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::correlate::{Correlator, Filter, Summary};
use crate::engine::{self, Engine, Options, Target};
use crate::event::{Event, ProcessEvent, ProcessEventKind};
use crate::output::escape;
use crate::output::{json::Json, note, table::Table, Output, SummaryOnly};
use crate::stop::Stop;

/// How often the ring buffer is drained when nothing forces a wakeup.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The seed's columns.
    Table,
    /// JSON Lines.
    Json,
}

/// Why a session could not start or did not end well.
#[derive(Debug)]
pub enum Error {
    /// The signal handlers or the watchdog could not be set up.
    Setup(io::Error),
    /// Starting the target, attaching or polling failed.
    Engine(engine::Error),
    /// The `-o` file could not be created.
    CreateOutput(PathBuf, io::Error),
    /// Writing the trace failed; a broken pipe (`portsnoop | head`) too,
    /// which the CLI takes as a normal end.
    Write(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Setup(_) => write!(f, "setting up signal handling"),
            Error::Engine(e) => e.fmt(f),
            Error::CreateOutput(path, _) => write!(f, "cannot write {}", path.display()),
            Error::Write(_) => write!(f, "writing the trace"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the engine's error is this one.
            Error::Engine(e) => e.source(),
            Error::Setup(e) | Error::CreateOutput(_, e) | Error::Write(e) => Some(e),
        }
    }
}

impl From<engine::Error> for Error {
    fn from(e: engine::Error) -> Error {
        Error::Engine(e)
    }
}

/// Everything a session needs to know.
#[derive(Debug)]
pub struct TraceConfig {
    /// Attach to this process...
    pub pid: Option<u32>,
    /// ...or start this command.
    pub command: Vec<OsString>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Output format.
    pub format: Format,
    /// Write the text summary after the table. The table only: the JSON
    /// output's summary is its last line, always.
    pub summary: bool,
    /// Write no rows, only what the output writes at the end.
    pub quiet: bool,
    /// Write here instead of stdout.
    pub output: Option<PathBuf>,
    /// Which fds/threads to keep.
    pub filter: Filter,
    /// Ring buffer size.
    pub buffer_bytes: usize,
}

/// Runs a session to its end and returns its summary.
pub fn run(config: TraceConfig) -> Result<Summary, Error> {
    let stop = Stop::install().map_err(Error::Setup)?;
    // Before looking at the target: without the rights, nothing else matters.
    engine::check_privileges()?;
    let mut target = match config.pid {
        Some(pid) => Target::existing(pid)?,
        None => Target::spawn_held(&config.command)?,
    };
    if target.is_child() {
        stop.watch_child(target.pid);
    }
    let sink: Box<dyn Write> = match &config.output {
        Some(path) => {
            Box::new(File::create(path).map_err(|e| Error::CreateOutput(path.clone(), e))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    // Rows are small and many: write them out in large blocks.
    let sink = BufWriter::with_capacity(1 << 16, stop.progress(sink));
    let mut output = make_output(&config, sink);
    let mut engine = Engine::attach(
        &target,
        &Options {
            buffer_bytes: config.buffer_bytes,
        },
    )?;
    let attached = engine.attached().clone();
    if attached.probes == 0 {
        note(format_args!(
            "{} has no {} probes: tracing the kernel side only",
            escape::path(&attached.exe),
            engine::PROVIDER
        ));
    }
    note(format_args!(
        "tracing pid {} ({}): {} {} probes, {} tracepoints; ready",
        attached.pid,
        escape::path(&attached.exe),
        attached.probes,
        engine::PROVIDER,
        attached.tracepoints
    ));
    target.release();

    let mut correlator = Correlator::new(config.filter.clone());
    // Attached to a running loop: its fds were registered before we looked.
    for (epfd, fd, data) in crate::correlate::registrations_of(attached.pid) {
        correlator.known_registration(epfd, fd, data);
    }
    let (mut events, mut records) = (Vec::new(), Vec::new());
    // Asked every 10 ms whether the target is gone: a pidfd answers with one
    // poll(2), where reading /proc/PID/stat cost an open, a read and a close.
    let pidfd = (!target.is_child())
        .then(|| pidfd_open(target.pid))
        .flatten();
    stop.running(config.duration);
    let mut ended: Option<ProcessEventKind> = None;
    // The first write error ends the session; the rest of it still runs.
    let mut write_error: Option<io::Error> = None;
    loop {
        engine.poll(POLL_INTERVAL, &mut events)?;
        if let Err(e) = feed(&mut correlator, &mut *output, &mut events, &mut records) {
            write_error = Some(e);
            break;
        }
        if stop.requested() {
            break;
        }
        if let Some(code) = exit_status(&target, pidfd.as_ref()) {
            ended = Some(ProcessEventKind::Exit { code });
            break;
        }
    }
    // What the target did just before the end is still in the buffer.
    engine.poll(Duration::ZERO, &mut events)?;
    events.extend(engine.unreported_losses());
    if let Some(kind) = ended.clone() {
        events.push(Event::Process(ProcessEvent {
            ts_ns: engine::monotonic_ns(),
            tid: target.pid,
            kind,
        }));
    }
    let summary = finish_output(
        &mut correlator,
        &mut *output,
        &mut events,
        &mut records,
        &engine,
        &mut write_error,
    );
    drop(output);
    stop.output_done();
    if let Some(ProcessEventKind::Exit { code }) = ended {
        note(format_args!(
            "pid {} exited ({})",
            target.pid,
            describe_exit(code)
        ));
    }
    note(format_args!(
        "{} events, {} lost, {} ops, {} mismatches",
        summary.events, summary.lost_events, summary.ops, summary.mismatches
    ));
    if config.pid.is_none() && ended.is_none() {
        // We started it; don't leave it running unsupervised.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(target.pid as i32, libc::SIGTERM) };
        let _ = wait_child(target.pid, true);
    }
    match write_error {
        Some(e) => Err(Error::Write(e)),
        None => Ok(summary),
    }
}

/// The writer for the chosen format: JSON Lines only JSON (its summary is
/// its last line); the table with the text summary after it if asked.
fn make_output<W: Write + 'static>(config: &TraceConfig, sink: W) -> Box<dyn Output> {
    if config.format == Format::Json {
        return match config.quiet {
            false => Box::new(Json::new(sink)),
            true => Box::new(SummaryOnly(Json::new(sink))),
        };
    }
    let mut table = Table::new(sink);
    if config.summary {
        table = table.with_summary();
    }
    match config.quiet {
        false => Box::new(table),
        true => Box::new(SummaryOnly(table)),
    }
}

/// The end of the output: the last records, then the summary. After a
/// write error nothing more is written, but the summary is still made.
fn finish_output(
    correlator: &mut Correlator,
    output: &mut dyn Output,
    events: &mut Vec<Event>,
    records: &mut Vec<crate::correlate::Record>,
    engine: &Engine,
    write_error: &mut Option<io::Error>,
) -> Summary {
    let written = if write_error.is_some() {
        for ev in events.drain(..) {
            correlator.push(ev, records);
        }
        records.clear();
        Ok(())
    } else {
        feed(correlator, output, events, records)
    };
    let mut summary = correlator.finish(records);
    summary.lost_events = summary.lost_events.max(engine.lost_total());
    let written = written.and_then(|()| {
        for r in records.drain(..) {
            output.record(&r)?;
        }
        output.finish(&summary)
    });
    if let Err(e) = written {
        write_error.get_or_insert(e);
    }
    records.clear();
    summary
}

fn feed(
    correlator: &mut Correlator,
    output: &mut dyn Output,
    events: &mut Vec<Event>,
    records: &mut Vec<crate::correlate::Record>,
) -> io::Result<()> {
    for ev in events.drain(..) {
        correlator.push(ev, records);
    }
    for r in records.drain(..) {
        output.record(&r)?;
    }
    Ok(())
}

/// The target's wait status if it is gone; `-1` when it is not our child
/// and its status cannot be known.
fn exit_status(target: &Target, pidfd: Option<&OwnedFd>) -> Option<i32> {
    if target.is_child() {
        return wait_child(target.pid, false);
    }
    if let Some(fd) = pidfd {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, no wait. A pidfd is readable once the
        // process has exited (zombie included).
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r >= 0 {
            return (r > 0).then_some(-1);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", target.pid));
    match stat {
        Err(_) => Some(-1),
        // A zombie has exited; its parent has not reaped it yet.
        Ok(s)
            if s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z") =>
        {
            Some(-1)
        }
        Ok(_) => None,
    }
}

/// A pidfd for `pid`, if the kernel has them (5.3+).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh fd that we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn wait_child(pid: u32, block: bool) -> Option<i32> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: waitpid on our own child, writing into a local.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, flags) };
    (r == pid as i32).then_some(status)
}

fn describe_exit(status: i32) -> String {
    if status < 0 {
        "status unknown: not our child".into()
    } else if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}
