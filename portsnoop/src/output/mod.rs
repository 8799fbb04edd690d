//! Writers for correlated records: the seed's table, JSON Lines, and the
//! end-of-run summary with quantize-style histograms.

pub mod json;
pub mod summary;
pub mod table;

use std::io;

use crate::correlate::{Record, Summary};

/// Something that writes records as they come and a summary at the end.
pub trait Output {
    /// Writes one record.
    fn record(&mut self, record: &Record) -> io::Result<()>;
    /// Writes the end-of-run summary (and flushes).
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// `EPOLLIN|EPOLLOUT`-style names for an epoll mask.
pub fn epoll_mask_names(mask: u32) -> String {
    const NAMES: [(u32, &str); 8] = [
        (0x001, "IN"),
        (0x004, "OUT"),
        (0x002, "PRI"),
        (0x008, "ERR"),
        (0x010, "HUP"),
        (0x2000, "RDHUP"),
        (1 << 30, "ONESHOT"),
        (1 << 31, "ET"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join("|")
    }
}

/// `errno = 11 (EAGAIN)`, as the table's ERROR column shows it.
pub fn errno_text(errno: i32) -> String {
    match crate::event::errno_name(errno) {
        Some(name) => format!("errno = {errno} ({name})"),
        None => format!("errno = {errno}"),
    }
}
