//! A tracing session: start or find the target, attach, then pump events
//! from the engine through the correlator to the output until told to stop,
//! the time is up, or the target is gone.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::correlate::{Correlator, Filter, Summary};
use crate::engine::{self, Engine, Options};
use crate::event::{Event, ProcessEvent, ProcessEventKind};
use crate::output::{json::Json, summary::SummaryReport, table::Table, Output, SummaryOnly};
use crate::target::{ChildStdout, Target};

/// How often the ring buffer is drained when nothing forces a wakeup.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long an exec'd image's loader may take before its probes are
/// attached anyway.
const EXEC_SETTLE: Duration = Duration::from_secs(2);

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
    // portsnoop's output owns stdout unless it goes to a file.
    let child_stdout = if config.output.is_some() {
        ChildStdout::Inherit
    } else {
        ChildStdout::Stderr
    };
    let mut target = match config.pid {
        Some(pid) => Target::attach(pid)?,
        None => Target::spawn(&config.command, child_stdout)?,
    };
    if let Some(tid) = target.given_thread() {
        eprintln!(
            "portsnoop: {tid} is a thread of process {}: tracing the process",
            target.pid()
        );
    }
    if target.is_child() && child_stdout == ChildStdout::Stderr {
        eprintln!(
            "portsnoop: the command's stdout goes to stderr, to keep portsnoop's output on stdout clean \
             (use -o FILE to keep them apart)"
        );
    }
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
            attached.exe,
            engine::PROVIDER
        );
    }
    for warning in &attached.warnings {
        eprintln!("portsnoop: {warning}");
    }
    eprintln!(
        "portsnoop: tracing pid {} ({}): {} {} probes{}, {} tracepoints; ready",
        attached.pid,
        attached.exe,
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
    let deadline = config.duration.map(|d| Instant::now() + d);
    let mut ended: Option<ProcessEventKind> = None;
    loop {
        engine.poll(POLL_INTERVAL, &mut events)?;
        feed(&mut correlator, &mut *output, &mut events, &mut records)?;
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if !engine.is_recording() {
            // It exec'd (the kernel side stopped recording there): the
            // exec's record first, then the new image.
            engine.poll(Duration::ZERO, &mut events)?;
            feed(&mut correlator, &mut *output, &mut events, &mut records)?;
            if let Some(traced) = follow_exec(&mut target, &mut engine, &mut correlator) {
                events.push(traced);
                feed(&mut correlator, &mut *output, &mut events, &mut records)?;
            }
        }
        if let Some(code) = target.exit_status() {
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
            tid: target.pid(),
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
            target.pid(),
            describe_exit(code)
        );
    }
    eprintln!(
        "portsnoop: {} events, {} lost, {} ops, {} mismatches",
        summary.events, summary.lost_events, summary.ops, summary.mismatches
    );
    // We started it: it ends with us (on an error return too, when the
    // target is dropped).
    target.end();
    Ok(summary)
}

/// After the target exec'd: waits for the new image's loader, attaches
/// its probes and tells the correlator which threads were running by then;
/// returns the event that says what is traced now. Whatever fails,
/// recording goes on (kernel side only if need be); a target that is gone
/// is noticed by the exit check.
fn follow_exec(
    target: &mut Target,
    engine: &mut Engine,
    correlator: &mut Correlator,
) -> Option<Event> {
    let pid = target.pid();
    match target.reload(EXEC_SETTLE) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "portsnoop: pid {pid}: {}'s loader did not finish within {EXEC_SETTLE:?}: attaching anyway, \
             some probes may stay silent",
            target.image().shown
        ),
        Err(_) if !target.is_alive() => return None,
        Err(e) => eprintln!("portsnoop: pid {pid} exec'd: {}", error_chain(&e)),
    }
    match engine.reattach(target) {
        Ok(a) if a.probes == 0 => eprintln!(
            "portsnoop: pid {pid} exec'd {}, which has no {} probes: tracing the kernel side only",
            a.exe,
            engine::PROVIDER
        ),
        Ok(a) => eprintln!(
            "portsnoop: pid {pid} exec'd {}: now tracing {} {} probes",
            a.exe,
            a.probes,
            engine::PROVIDER
        ),
        Err(e) => eprintln!(
            "portsnoop: pid {pid} exec'd {}: tracing the kernel side only: {e}",
            target.image().shown
        ),
    }
    let attached = engine.attached();
    for warning in &attached.warnings {
        eprintln!("portsnoop: {warning}");
    }
    correlator.threads_before_trace(attached.threads_before_trace.iter().copied());
    Some(Event::Process(ProcessEvent {
        ts_ns: engine::monotonic_ns(),
        tid: pid,
        kind: ProcessEventKind::Traced {
            exe: attached.exe.clone(),
            probes: attached.probes,
        },
    }))
}

/// An error and its causes, as one line: what portsnoop was doing, then
/// why, as deep as the causes go.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
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
