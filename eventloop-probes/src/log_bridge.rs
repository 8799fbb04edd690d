//! A [`log::Log`] that fires the `log` probe for every record, so a service
//! that logs through the `log` crate shows its messages to tracers next to
//! its I/O. Cargo feature `log`.
//!
//! The probe carries `facility` = the record's target (the module path
//! unless the call names one), `file` and `line` of the call, and `msg` =
//! the formatted message. Nothing is formatted, and no string is copied,
//! unless a tracer has the `log` probe enabled: a disabled record costs the
//! `log` macro's level check, a call and the probe's load and branch.

use std::borrow::Cow;

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

use crate::fire;

/// Fires the `log` probe for every record; optionally passes each record on
/// to another logger too (`log` allows one logger per process).
///
/// ```
/// use eventloop_probes::log_bridge::Logger;
///
/// // Alone, or in front of the logger the app already has:
/// # struct AppLogger;
/// # impl log::Log for AppLogger {
/// #     fn enabled(&self, _: &log::Metadata) -> bool { true }
/// #     fn log(&self, _: &log::Record) {}
/// #     fn flush(&self) {}
/// # }
/// let logger = Logger::new().tee(Box::new(AppLogger));
/// log::set_boxed_logger(Box::new(logger)).unwrap();
/// log::set_max_level(log::LevelFilter::Info);
/// log::info!(target: "http", "served {} bytes", 42); // a tracer sees facility "http", msg "served 42 bytes"
/// ```
#[derive(Default)]
pub struct Logger {
    inner: Option<Box<dyn Log>>,
}

impl Logger {
    /// A logger that only fires the probe.
    pub fn new() -> Logger {
        Logger::default()
    }

    /// Passes every record on to `inner` as well (after the probe), and
    /// asks it about `enabled` and `flush`.
    pub fn tee(self, inner: Box<dyn Log>) -> Logger {
        Logger { inner: Some(inner) }
    }
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("tee", &self.inner.is_some())
            .finish()
    }
}

impl Log for Logger {
    /// True: whether a tracer listens is known only at the probe site, and
    /// the probe costs nothing to ask there. (With a tee, the probe still
    /// sees every record the max level lets through.)
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        fire::log(
            record.target(),
            record.file().unwrap_or(""),
            record.line().unwrap_or(0),
            || message(record),
        );
        if let Some(inner) = &self.inner {
            if inner.enabled(record.metadata()) {
                inner.log(record);
            }
        }
    }

    fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.flush();
        }
    }
}

/// The record's message; a message without arguments is not copied.
fn message<'a>(record: &Record<'a>) -> Cow<'a, str> {
    match record.args().as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(record.args().to_string()),
    }
}

/// Installs a probe-only [`Logger`] as the process's logger and lets every
/// level through to it (`log::set_max_level(max)`).
///
/// Fails if a logger is already set: then wrap that one with
/// [`Logger::tee`] instead.
pub fn init(max: LevelFilter) -> Result<(), SetLoggerError> {
    log::set_boxed_logger(Box::new(Logger::new()))?;
    log::set_max_level(max);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_formatted_as_written() {
        let args = format_args!("served {} bytes", 42);
        let r = Record::builder().args(args).build();
        assert_eq!(message(&r), "served 42 bytes");
        let r = Record::builder().args(format_args!("plain")).build();
        assert!(matches!(message(&r), Cow::Borrowed("plain")));
    }
}
