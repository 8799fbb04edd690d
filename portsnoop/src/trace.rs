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
use std::path::PathBuf;
use std::time::Duration;

use crate::correlate::{Correlator, Filter, StallConfig, Summary};
use crate::engine::{self, Engine, Options};
use crate::event::{Event, ProcessEvent, ProcessEventKind};
use crate::output::escape;
use crate::output::perfetto::Perfetto;
use crate::output::{error_chain, json::Json, note, table::Table, Output, SummaryOnly, Tee};
use crate::stop::Stop;
use crate::target::{ChildStdout, Target};

/// How often the ring buffer is drained when nothing forces a wakeup.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

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

/// Why a session could not start or did not end well.
#[derive(Debug)]
pub enum Error {
    /// The signal handlers or the watchdog could not be set up.
    Setup(io::Error),
    /// Finding, starting or following the target failed.
    Target(crate::target::Error),
    /// Attaching or polling failed.
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
            Error::Target(e) => e.fmt(f),
            Error::Engine(e) => e.fmt(f),
            Error::CreateOutput(path, _) => write!(f, "cannot write {}", path.display()),
            Error::Write(_) => write!(f, "writing the trace"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the target's or the engine's error is this one.
            Error::Target(e) => e.source(),
            Error::Engine(e) => e.source(),
            Error::Setup(e) | Error::CreateOutput(_, e) | Error::Write(e) => Some(e),
        }
    }
}

impl From<crate::target::Error> for Error {
    fn from(e: crate::target::Error) -> Error {
        Error::Target(e)
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
    /// `--json=FILE`: JSON Lines here too, every record whatever `quiet`
    /// says (a recording for `portsnoop replay`).
    pub json_file: Option<PathBuf>,
    /// `--perfetto FILE`: a Perfetto trace here too.
    pub perfetto: Option<PathBuf>,
    /// Which fds/threads to keep.
    pub filter: Filter,
    /// Ring buffer size.
    pub buffer_bytes: usize,
    /// `-f`: also trace the processes the target forks, and theirs.
    pub follow_forks: bool,
    /// `--stall`: report callbacks that run past a threshold (None: off,
    /// and nothing of it in the kernel).
    pub stall: Option<StallConfig>,
}

/// Runs a session to its end and returns its summary.
pub fn run(config: TraceConfig) -> Result<Summary, Error> {
    let stop = Stop::install().map_err(Error::Setup)?;
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
        note(format_args!(
            "{tid} is a thread of process {}: tracing the process",
            target.pid()
        ));
    }
    if target.is_child() {
        stop.watch_child(target.pid());
        if child_stdout == ChildStdout::Stderr {
            note(format_args!(
                "the command's stdout goes to stderr, to keep portsnoop's output on stdout clean \
                 (use -o FILE to keep them apart)"
            ));
        }
    }
    let sink: Box<dyn Write> = match &config.output {
        Some(path) => {
            Box::new(File::create(path).map_err(|e| Error::CreateOutput(path.clone(), e))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    // Rows are small and many: write them out in large blocks.
    let sink = BufWriter::with_capacity(1 << 16, stop.progress(sink));
    let mut output = make_output(
        config.format,
        config.quiet,
        config.summary,
        config.follow_forks,
        sink,
    );
    let extra = extra_outputs(&config, &stop)?;
    if !extra.is_empty() {
        output = Box::new(Tee(std::iter::once(output).chain(extra).collect()));
    }
    let mut engine = Engine::attach(
        &target,
        &Options {
            buffer_bytes: config.buffer_bytes,
            follow_forks: config.follow_forks,
            stall_syscall_min_ns: config.stall.map(|c| c.syscall_min_ns),
        },
    )?;
    let attached = engine.attached().clone();
    // Its sockets were open before we looked: named from /proc, and handed
    // to the kernel side before the ready line, so a test (or an operator)
    // acting on that line finds their TCP events followed.
    let sockets_before_trace = engine.sockets_before_trace(attached.pid);
    if attached.probes == 0 {
        note(format_args!(
            "{} has no {} probes: tracing the kernel side only",
            attached.exe,
            engine::PROVIDER
        ));
    }
    for warning in &attached.warnings {
        note(format_args!("{}", escape::escape(warning)));
    }
    note(format_args!(
        "tracing pid {} ({}): {} {} probes{}, {} tracepoints; ready",
        attached.pid,
        attached.exe,
        attached.probes,
        engine::PROVIDER,
        attached.sharing(),
        attached.tracepoints
    ));
    target.release();

    let mut correlator = Correlator::new(config.filter.clone());
    if let Some(stall) = config.stall {
        correlator = correlator.with_stalls(stall);
    }
    if config.follow_forks {
        correlator.set_root(attached.pid);
    }
    correlator.threads_before_trace(attached.threads_before_trace.iter().copied());
    // Attached to a running loop: its fds were registered before we looked.
    for (epfd, fd, data) in crate::correlate::registrations_of(attached.pid) {
        correlator.known_registration(attached.pid, epfd, fd, data);
    }
    let (mut events, mut records) = (Vec::new(), Vec::new());
    for ev in sockets_before_trace {
        correlator.push(ev, &mut records);
    }
    stop.running(config.duration);
    let mut ended: Option<ProcessEventKind> = None;
    // The first write error ends the session; the rest of it still runs.
    let mut write_error: Option<io::Error> = None;
    loop {
        engine.poll(POLL_INTERVAL, &mut events)?;
        let fed = feed(&mut correlator, &mut *output, &mut events, &mut records)
            .and_then(|()| output.tick(engine::monotonic_ns()));
        if let Err(e) = fed {
            write_error = Some(e);
            break;
        }
        if stop.requested() {
            break;
        }
        if !engine.is_recording() {
            // It exec'd (the kernel side stopped recording there): the
            // exec's record first, then the new image.
            engine.poll(Duration::ZERO, &mut events)?;
            events.extend(follow_exec(&mut target, &mut engine, &mut correlator));
            if let Err(e) = feed(&mut correlator, &mut *output, &mut events, &mut records) {
                write_error = Some(e);
                break;
            }
        }
        // -f: after the fork records just fed (a child's own records come
        // only once it is attached here, so its threads are known first).
        let changes = engine.follow_changes();
        if !changes.is_empty() {
            events.extend(follow_processes(&changes, &mut engine, &mut correlator));
            if let Err(e) = feed(&mut correlator, &mut *output, &mut events, &mut records) {
                write_error = Some(e);
                break;
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
            pid: target.pid(),
            tid: target.pid(),
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
            target.pid(),
            describe_exit(code)
        ));
    }
    note(format_args!(
        "{} events, {} lost, {} ops, {} mismatches",
        summary.events, summary.lost_events, summary.ops, summary.mismatches
    ));
    // Stalls are what an operator asks first: said on stderr too, so a run
    // with -q or -o FILE shows them at once. Names are the app's: escaped.
    if let Some(stall) = config.stall {
        let top = summary.top_stalls();
        let count: u64 = top.iter().map(|(_, st)| st.count).sum();
        let worst: Vec<String> = top
            .iter()
            .take(3)
            .map(|(name, st)| {
                format!(
                    "{} x{} (max {:.1} ms)",
                    escape::escape(name),
                    st.count,
                    st.max_ns as f64 / 1e6
                )
            })
            .collect();
        note(format_args!(
            "{count} stall{} (callbacks that ran {} ms or more){}{}",
            if count == 1 { "" } else { "s" },
            stall.threshold_ns as f64 / 1e6,
            if worst.is_empty() { "" } else { ": " },
            worst.join(", ")
        ));
    }
    // We started it: it ends with us (on an error return too, when the
    // target is dropped).
    target.end();
    match write_error {
        Some(e) => Err(Error::Write(e)),
        None => Ok(summary),
    }
}

/// The writer for the chosen format: JSON Lines only JSON (its summary is
/// its last line); the table with the text summary after it if asked, and
/// a PID column if `pids`. `quiet`: no rows, only the end.
pub(crate) fn make_output<W: Write + 'static>(
    format: Format,
    quiet: bool,
    summary: bool,
    pids: bool,
    sink: W,
) -> Box<dyn Output> {
    if format == Format::Json {
        return match quiet {
            false => Box::new(Json::new(sink)),
            true => Box::new(SummaryOnly(Json::new(sink))),
        };
    }
    let mut table = Table::new(sink);
    if pids {
        table = table.with_pids();
    }
    if summary {
        table = table.with_summary();
    }
    match quiet {
        false => Box::new(table),
        true => Box::new(SummaryOnly(table)),
    }
}

/// The files `--json=FILE` and `--perfetto FILE` ask for, created now so
/// a path that cannot be written fails before anything is traced.
fn extra_outputs(config: &TraceConfig, stop: &Stop) -> Result<Vec<Box<dyn Output>>, Error> {
    let create = |path: &PathBuf| {
        let file = File::create(path).map_err(|e| Error::CreateOutput(path.clone(), e))?;
        Ok::<_, Error>(BufWriter::with_capacity(1 << 16, stop.progress(file)))
    };
    let mut outputs: Vec<Box<dyn Output>> = Vec::new();
    if let Some(path) = &config.json_file {
        outputs.push(Box::new(Json::new(create(path)?)));
    }
    if let Some(path) = &config.perfetto {
        outputs.push(Box::new(Perfetto::new(create(path)?)));
    }
    Ok(outputs)
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
    summary.tcp_untracked = engine.tcp_untracked();
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
        Ok(false) => note(format_args!(
            "pid {pid}: {}'s loader did not finish within {EXEC_SETTLE:?}: attaching anyway, \
             some probes may stay silent",
            target.image().shown
        )),
        Err(_) if !target.is_alive() => return None,
        Err(e) => note(format_args!("pid {pid} exec'd: {}", error_chain(&e))),
    }
    match engine.reattach(target) {
        Ok(a) if a.probes == 0 => note(format_args!(
            "pid {pid} exec'd {}, which has no {} probes: tracing the kernel side only",
            a.exe,
            engine::PROVIDER
        )),
        Ok(a) => note(format_args!(
            "pid {pid} exec'd {}: now tracing {} {} probes",
            a.exe,
            a.probes,
            engine::PROVIDER
        )),
        Err(e) => note(format_args!(
            "pid {pid} exec'd {}: tracing the kernel side only: {}",
            target.image().shown,
            error_chain(&e)
        )),
    }
    let attached = engine.attached();
    for warning in &attached.warnings {
        note(format_args!("{}", escape::escape(warning)));
    }
    correlator.threads_before_trace(attached.threads_before_trace.iter().copied());
    Some(now_tracing(attached))
}

/// The event that says what is traced of a process now (after its exec).
fn now_tracing(attached: &engine::Attached) -> Event {
    Event::Process(ProcessEvent {
        ts_ns: engine::monotonic_ns(),
        pid: attached.pid,
        tid: attached.pid,
        kind: ProcessEventKind::Traced {
            exe: attached.exe.clone(),
            probes: attached.probes,
        },
    })
}

/// With `-f`: attaches each new child's probes (its image is its parent's,
/// loaded already: nothing to wait for), re-attaches a child that exec'd
/// (after its loader, as [`follow_exec`] does for the target), and
/// detaches the ones gone. Returns the events that say what is traced
/// after an exec.
///
/// What a child did between its fork (or exec) and this attach is not in
/// the trace: the kernel side records it only from here on, and its
/// threads are handed to the correlator as begun before the trace, so
/// nothing it was in the middle of becomes a mismatch. An exec pauses
/// only its own process; the wait for its loader holds up this loop (not
/// the others' recording: their records wait in the ring buffer).
fn follow_processes(
    changes: &[engine::Change],
    engine: &mut Engine,
    correlator: &mut Correlator,
) -> Vec<Event> {
    let mut events = Vec::new();
    for change in changes {
        let (pid, image) = match *change {
            engine::Change::Gone(pid) => {
                engine.detach_process(pid);
                continue;
            }
            engine::Change::Forked(pid) => (pid, crate::target::Image::of(pid).map(|i| (i, true))),
            engine::Change::Exec(pid) => (pid, crate::target::exec_image(pid, EXEC_SETTLE)),
        };
        let image = match image {
            Ok((image, true)) => image,
            Ok((image, false)) => {
                note(format_args!(
                    "pid {pid}: {}'s loader did not finish within {EXEC_SETTLE:?}: attaching \
                     anyway, some probes may stay silent",
                    image.shown
                ));
                image
            }
            // Gone already (its exit comes from the kernel side), or its
            // image unreadable: recorded on the kernel side only, so it is
            // not tried again every poll.
            Err(e) => {
                if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    note(format_args!(
                        "pid {pid}: tracing the kernel side only: {}",
                        error_chain(&e)
                    ));
                }
                engine.record_without_sites(pid);
                continue;
            }
        };
        let attached = match engine.attach_process(pid, &image) {
            Ok(a) => a,
            Err(e) => {
                note(format_args!(
                    "pid {pid} ({}): tracing the kernel side only: {}",
                    image.shown,
                    error_chain(&e)
                ));
                continue;
            }
        };
        for warning in &attached.warnings {
            note(format_args!("{}", escape::escape(warning)));
        }
        correlator.threads_before_trace(attached.threads_before_trace.iter().copied());
        // Epoll registrations it inherited or made before the attach.
        for (epfd, fd, data) in crate::correlate::registrations_of(pid) {
            correlator.known_registration(pid, epfd, fd, data);
        }
        // As strace -f says "Process N attached": from here on its events
        // are in the trace (the exe is shown escaped).
        if matches!(change, engine::Change::Forked(_)) {
            note(format_args!(
                "following pid {pid} ({}): {} {} probes{}",
                attached.exe,
                attached.probes,
                engine::PROVIDER,
                attached.sharing()
            ));
        }
        if matches!(change, engine::Change::Exec(_)) {
            events.push(now_tracing(&attached));
        }
    }
    // A new child's fds are its parent's, sockets included: named from
    // /proc as the target's are at the start, now that it is recorded.
    for change in changes {
        if let engine::Change::Forked(pid) = *change {
            events.extend(engine.sockets_before_trace(pid));
        }
    }
    events
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
