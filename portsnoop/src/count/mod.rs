//! `portsnoop count`: syscall counts by process, thread name and syscall
//! (and fd, with `--by-fd`), aggregated in the kernel, system-wide or for
//! one process, like SystemTap's `syscallbypid` (the seed) and bcc's
//! `syscount`.
//!
//! The kernel side ([`kernel`], `bpf/count.bpf.c`) adds one to a per-CPU
//! table row on every `sys_enter`: no event per syscall leaves the kernel.
//! At the end (`-d`, a signal, or with `-p` the process's exit) the
//! program is detached and the table read once, turned into rows
//! ([`rows`], pure) and written ([`report`], pure): the seed's columns,
//! most calls first, or JSON Lines.
//!
//! Calls are counted as they are entered (the seed counts completions: the
//! difference is `exit`, `exit_group` and calls still blocked at the end).
//! The table is bounded (`--max-entries`): a call whose row does not fit
//! is counted as uncounted in the kernel, and a run that missed any says
//! so loudly, on stderr and in the JSON's last line, and [`run`]'s caller
//! exits with [`INCOMPLETE_EXIT`] (the seed fails with "Array overflow"
//! and status 1; here the rows that fit are still written).

pub mod kernel;
pub mod report;
pub mod rows;

use std::fmt;
use std::io::{self, BufWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::engine;
use crate::output::note;
use crate::stop::{pidfd_open, Stop};
use crate::target;
pub use report::Report;

/// The exit status when some calls went uncounted (the table filled up):
/// the output is whole, but its counts are lower bounds.
pub const INCOMPLETE_EXIT: u8 = 3;

/// The default `--max-entries`: rows of (process, thread name, syscall);
/// 10240 rows of per-CPU counts are ~0.4 MiB plus 8 bytes per row and CPU.
pub const DEFAULT_MAX_ENTRIES: u32 = 10240;

/// What to count, and how to write it.
#[derive(Clone, Debug)]
pub struct CountConfig {
    /// Only this process (or the process of this thread id); `None`: all.
    pub pid: Option<u32>,
    /// Stop after this long (else on a signal, or the process's exit).
    pub duration: Option<Duration>,
    /// JSON Lines instead of the table.
    pub json: bool,
    /// Rows by fd too.
    pub by_fd: bool,
    /// The table's size in rows (at least 1).
    pub max_entries: u32,
}

/// Why counting failed.
#[derive(Debug)]
pub enum Error {
    /// The signal handlers or the watchdog could not be set up.
    Setup(io::Error),
    /// `-p` names no process portsnoop can count.
    Target(target::Error),
    /// Loading, attaching or reading the BPF side failed.
    Engine(engine::Error),
    /// Writing the report failed (a broken pipe too, which the CLI takes
    /// as a normal end).
    Write(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Setup(_) => write!(f, "setting up signal handling"),
            Error::Target(e) => e.fmt(f),
            Error::Engine(e) => e.fmt(f),
            Error::Write(_) => write!(f, "writing the counts"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the target's or the engine's error is this one.
            Error::Target(e) => e.source(),
            Error::Engine(e) => e.source(),
            Error::Setup(e) | Error::Write(e) => Some(e),
        }
    }
}

/// Counts until stopped, writes the report on stdout, and returns it. A
/// full table is warned about on stderr here; the caller picks the exit
/// status ([`INCOMPLETE_EXIT`]).
pub fn run(config: &CountConfig) -> Result<Report, Error> {
    let stop = Stop::install().map_err(Error::Setup)?;
    let pid = config
        .pid
        .map(target::process_of)
        .transpose()
        .map_err(Error::Target)?;
    // Held from before the attach, so an exit in between is still seen.
    let gone = match pid {
        Some(pid) => Some(pidfd_open(pid).ok_or(Error::Target(target::Error::NoSuchProcess(pid)))?),
        None => None,
    };
    let counter = kernel::Counter::attach(&kernel::Options {
        pid,
        by_fd: config.by_fd,
        max_entries: config.max_entries,
    })
    .map_err(Error::Engine)?;
    match pid {
        Some(pid) => note(format_args!(
            "counting the syscalls of pid {pid} until {}; ready",
            until(config.duration, "it exits or Ctrl-C")
        )),
        None => note(format_args!(
            "counting every process's syscalls until {}; ready",
            until(config.duration, "Ctrl-C")
        )),
    }
    stop.running(config.duration);
    while !stop.requested() {
        if gone
            .as_ref()
            .is_some_and(|fd| exited(fd, Duration::from_millis(100)))
        {
            break;
        }
        if gone.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let counts = counter.finish().map_err(Error::Engine)?;
    let report = Report {
        rows: rows::rows(counts.entries),
        uncounted: counts.uncounted,
        max_entries: config.max_entries,
        by_fd: config.by_fd,
    };
    let mut out = BufWriter::with_capacity(1 << 16, stop.progress(io::stdout().lock()));
    let written = if config.json {
        report.write_json(&mut out)
    } else {
        report.write_table(&mut out)
    };
    drop(out);
    stop.output_done();
    // Said even when the output failed: it is what the run missed.
    if let Some(warning) = report.overflow_warning() {
        note(format_args!("{warning}"));
    }
    written.map_err(Error::Write)?;
    Ok(report)
}

/// `"2 s"`, or `otherwise` without a duration.
fn until(duration: Option<Duration>, otherwise: &str) -> String {
    duration.map_or_else(
        || otherwise.to_string(),
        |d| format!("{} s", d.as_secs_f64()),
    )
}

/// Waits up to `timeout` for the process behind `pidfd` to exit.
fn exited(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own. A pidfd is readable once its process has
    // exited; EINTR (a signal) just ends the wait early.
    let n = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as i32) };
    n > 0 && fds.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn until_says_the_duration_or_what_ends_it() {
        assert_eq!(
            super::until(Some(std::time::Duration::from_millis(1500)), "x"),
            "1.5 s"
        );
        assert_eq!(super::until(None, "Ctrl-C"), "Ctrl-C");
    }
}
