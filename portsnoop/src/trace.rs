//! A tracing session: start or find the target, attach, then pump events
//! from the engine through the correlator to the output until told to stop,
//! the time is up, or the target is gone.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::correlate::{Correlator, Filter, Summary};
use crate::engine::{self, Engine, Options, Target};
use crate::event::{Event, ProcessEvent, ProcessEventKind};
use crate::output::{json::Json, summary::SummaryReport, table::Table, Output, SummaryOnly};

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
    /// Print the summary at the end.
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
pub fn run(config: TraceConfig) -> Result<Summary, Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    // Before looking at the target: without the rights, nothing else matters.
    engine::check_privileges()?;
    let mut target = match config.pid {
        Some(pid) => Target::existing(pid)?,
        None => Target::spawn_held(&config.command)?,
    };
    let sink: Box<dyn Write> = match &config.output {
        Some(path) => Box::new(
            File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    // Rows are small and many: write them out in large blocks.
    let sink = BufWriter::with_capacity(1 << 16, sink);
    let mut output: Box<dyn Output> = match (config.format, config.quiet) {
        (Format::Table, false) => Box::new(Table::new(sink)),
        (Format::Json, false) => Box::new(Json::new(sink)),
        (Format::Table, true) => Box::new(SummaryOnly(Table::new(sink))),
        (Format::Json, true) => Box::new(SummaryOnly(Json::new(sink))),
    };
    let mut engine = Engine::attach(
        &target,
        &Options {
            buffer_bytes: config.buffer_bytes,
        },
    )?;
    let attached = engine.attached().clone();
    if attached.probes == 0 {
        eprintln!(
            "portsnoop: {} has no {} probes: tracing the kernel side only",
            attached.exe.display(),
            engine::PROVIDER
        );
    }
    for warning in &attached.warnings {
        eprintln!("portsnoop: {warning}");
    }
    eprintln!(
        "portsnoop: tracing pid {} ({}): {} {} probes{}, {} tracepoints; ready",
        attached.pid,
        attached.exe.display(),
        attached.probes,
        engine::PROVIDER,
        attached.sharing(),
        attached.tracepoints
    );
    target.release();

    let mut correlator = Correlator::new(config.filter.clone());
    correlator.threads_before_trace(attached.threads_before_trace.iter().copied());
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
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut ended: Option<ProcessEventKind> = None;
    loop {
        engine.poll(POLL_INTERVAL, &mut events)?;
        feed(&mut correlator, &mut *output, &mut events, &mut records)?;
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
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
    feed(&mut correlator, &mut *output, &mut events, &mut records)?;
    let mut summary = correlator.finish(&mut records);
    for r in records.drain(..) {
        output.record(&r)?;
    }
    summary.lost_events = summary.lost_events.max(engine.lost_total());
    output.finish(&summary)?;
    if config.summary {
        let mut out: Box<dyn Write> = match &config.output {
            Some(path) => Box::new(std::fs::OpenOptions::new().append(true).open(path)?),
            None => Box::new(io::stdout().lock()),
        };
        SummaryReport::new(&summary).write(&mut out)?;
        out.flush()?;
    }
    if let Some(ProcessEventKind::Exit { code }) = ended {
        eprintln!(
            "portsnoop: pid {} exited ({})",
            target.pid,
            describe_exit(code)
        );
    }
    eprintln!(
        "portsnoop: {} events, {} lost, {} ops, {} mismatches",
        summary.events, summary.lost_events, summary.ops, summary.mismatches
    );
    if config.pid.is_none() && ended.is_none() {
        // We started it; don't leave it running unsupervised.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(target.pid as i32, libc::SIGTERM) };
        let _ = wait_child(target.pid, true);
    }
    Ok(summary)
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
