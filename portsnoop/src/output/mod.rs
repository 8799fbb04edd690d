//! Writers for correlated records: the seed's table, JSON Lines, summaries.
//! (Interface stub: the bodies are being written.)

use crate::correlate::{Record, Summary};
use std::io;

/// Something that writes records as they come and a summary at the end.
pub trait Output {
    /// Writes one record.
    fn record(&mut self, record: &Record) -> io::Result<()>;
    /// Writes the end-of-run summary (and flushes).
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}
