//! Why a target could not be found, started or followed.
//!
//! Each variant says what portsnoop was doing in its own words; the
//! system's reason, when there is one, is its [`source`](std::error::Error::source)
//! and is not repeated in the message.

use std::fmt;
use std::io;

/// Why a target could not be found, started or followed (see the module
/// docs of `target::error`).
#[derive(Debug)]
pub enum Error {
    /// No process or thread with this id.
    NoSuchProcess(u32),
    /// The id is a kernel thread: it has no user-space image to trace.
    KernelThread(u32),
    /// The command after `--` is not in `PATH`, or its path does not exist.
    NotFound(String),
    /// The command's `exec` failed (permission denied, exec format error,
    /// a missing interpreter...).
    Exec {
        /// The command as given (escaped).
        command: String,
        /// The errno `execve` returned in the child.
        cause: io::Error,
    },
    /// The command line after `--` was unusable.
    Usage(String),
    /// Starting, holding or following the process failed.
    Process {
        /// What portsnoop was doing.
        what: String,
        /// Why it failed.
        cause: io::Error,
    },
}

impl Error {
    pub(crate) fn process(what: impl Into<String>, cause: io::Error) -> Error {
        Error::Process {
            what: what.into(),
            cause,
        }
    }

    /// The last OS error, for the step `what` that just failed.
    pub(crate) fn last_os(what: impl Into<String>) -> Error {
        Error::process(what, io::Error::last_os_error())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchProcess(pid) => write!(f, "no such process: {pid}"),
            Error::KernelThread(pid) => write!(
                f,
                "{pid} is a kernel thread: it runs no program that portsnoop could trace"
            ),
            Error::NotFound(cmd) => write!(f, "command not found: {cmd}"),
            Error::Exec { command, cause } => {
                let hint = match cause.raw_os_error() {
                    Some(libc::EACCES) => " (is it executable?)",
                    Some(libc::ENOENT) => " (the file is there: is its #! interpreter or its ELF interpreter missing?)",
                    Some(libc::ENOEXEC) => " (neither a binary for this machine nor a #! script)",
                    _ => "",
                };
                write!(f, "cannot run {command}{hint}")
            }
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Process { what, .. } => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Exec { cause, .. } | Error::Process { cause, .. } => Some(cause),
            _ => None,
        }
    }
}
