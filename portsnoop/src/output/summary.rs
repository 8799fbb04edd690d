//! The end-of-run report: per fd and per operation, counts, bytes, errors
//! and latency distributions printed the way DTrace's `quantize()` does.

use std::io::{self, Write};

use super::escape::Escaped;
use crate::correlate::{Log2Hist, OpStats, Summary};

/// How many callback names the stall report lists.
const TOP_STALLS: usize = 10;

/// Renders a [`Summary`] as text.
pub struct SummaryReport<'a> {
    summary: &'a Summary,
}

impl<'a> SummaryReport<'a> {
    /// A report of `summary`.
    pub fn new(summary: &'a Summary) -> SummaryReport<'a> {
        SummaryReport { summary }
    }

    /// Writes the report.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = self.summary;
        writeln!(out, "\n=== summary")?;
        writeln!(
            out,
            "events {}  lost {}  ops {}  mismatches {}  incomplete {}  orphan syscalls {}  waits {}",
            s.events, s.lost_events, s.ops, s.mismatches, s.incomplete, s.orphan_syscalls, s.waits
        )?;
        if s.lost_events > 0 {
            writeln!(
                out,
                "WARNING: {} events were lost; ops around them are marked incomplete, not mismatched",
                s.lost_events
            )?;
        }
        if let Some(end) = &s.process_end {
            writeln!(out, "process: {end}")?;
        }
        writeln!(
            out,
            "\n{:>6} {:<9} {:>9} {:>12} {:>9} {:>10} {:>12} {:>12}  ERRORS",
            "FD", "OP", "COUNT", "BYTES", "MISMATCH", "INCOMPLETE", "USER ns/op", "KERNEL ns/op"
        )?;
        for (fd, ops) in &s.per_fd {
            for (i, (kind, st)) in ops.iter().enumerate() {
                // The fd's connection after its first row's errors.
                let conn = match s.fd_names.get(fd) {
                    Some(name) if i == 0 => format!("  [{name}]"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{:>6} {:<9} {:>9} {:>12} {:>9} {:>10} {:>12} {:>12}  {}{conn}",
                    fd,
                    kind.as_str(),
                    st.count,
                    st.bytes,
                    st.mismatches,
                    st.incomplete,
                    mean(st.user_ns_mean()),
                    mean(st.kernel_ns_mean()),
                    errors(st)
                )?;
            }
        }
        self.connections(out)?;
        for (kind, st) in s.per_op() {
            writeln!(
                out,
                "\n{} ops: {} (bytes {}, errors: {})",
                kind.as_str(),
                st.count,
                st.bytes,
                errors(&st)
            )?;
            quantize(out, "  user time (ns)", &st.user_ns)?;
            quantize(out, "  kernel time (ns)", &st.kernel_ns)?;
        }
        self.write_stalls(out)
    }

    /// The top stalls by callback name: totals, then each name's
    /// durations as a quantize histogram. Names are the app's: escaped.
    fn write_stalls(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = self.summary;
        let top = s.top_stalls();
        if top.is_empty() && s.stalls_incomplete == 0 {
            return Ok(());
        }
        writeln!(
            out,
            "\ntop stalls (callbacks that ran past the --stall threshold):"
        )?;
        writeln!(
            out,
            "{:>9} {:>12} {:>12} {:>12}  CALLBACK",
            "COUNT", "TOTAL ms", "MAX ms", "OFF-CPU ms"
        )?;
        for (name, st) in top.iter().take(TOP_STALLS) {
            writeln!(
                out,
                "{:>9} {:>12.1} {:>12.1} {:>12.1}  {}",
                st.count,
                st.total_ns as f64 / 1e6,
                st.max_ns as f64 / 1e6,
                st.off_cpu_ns_total as f64 / 1e6,
                Escaped(name)
            )?;
        }
        if top.len() > TOP_STALLS {
            writeln!(out, "(and {} more callback names)", top.len() - TOP_STALLS)?;
        }
        if s.stalls_incomplete > 0 {
            writeln!(
                out,
                "{} more callbacks ran past the threshold while events were being lost: not reported",
                s.stalls_incomplete
            )?;
        }
        for (name, st) in top.iter().take(TOP_STALLS) {
            quantize(out, &format!("\n{} stalls (ns)", Escaped(name)), &st.dur_ns)?;
        }
        Ok(())
    }
}

impl SummaryReport<'_> {
    /// Each connection (states, retransmits, resets, bytes kernel vs
    /// syscalls), then accepted connections by host and port as
    /// tcpaccept2 shows them. Nothing when there were none.
    fn connections(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = self.summary;
        if !s.connections.is_empty() {
            writeln!(out, "\nconnections:")?;
        }
        for c in &s.connections {
            let b = &c.bytes;
            let kernel = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            let diff = match (&b.not_compared, b.unread, b.unacked) {
                (Some(why), _, _) => format!(" (not compared: {why})"),
                (None, Some(0), Some(0)) => String::new(),
                (None, unread, unacked) => format!(
                    " (differs: unread {}, unacked {})",
                    unread.unwrap_or(0),
                    unacked.unwrap_or(0)
                ),
            };
            let tcp = c.socket.as_ref().is_none_or(|s| s.is_tcp());
            if !tcp || (c.states.is_empty() && b.ops_read == 0 && b.ops_written == 0) {
                // Nothing of TCP to say: the name and what moved, if anything.
                writeln!(
                    out,
                    "  fd {} {}  bytes read {} written {}",
                    c.fd,
                    c.name(),
                    b.ops_read,
                    b.ops_written
                )?;
                continue;
            }
            writeln!(
                out,
                "  fd {} {}: {}",
                c.fd,
                c.name(),
                if c.states.is_empty() {
                    "-".to_string()
                } else {
                    c.states.join(" -> ")
                }
            )?;
            writeln!(
                out,
                "    retransmits {}  resets sent {} received {}  bytes read {} kernel received {}  written {} kernel acked {}{diff}",
                c.retransmits,
                c.resets_sent,
                c.resets_received,
                b.ops_read,
                kernel(b.kernel_received),
                b.ops_written,
                kernel(b.kernel_acked),
            )?;
        }
        if s.connections_omitted > 0 {
            writeln!(
                out,
                "  ... and {} more connections, not listed",
                s.connections_omitted
            )?;
        }
        if s.tcp_untracked > 0 {
            writeln!(
                out,
                "WARNING: {} TCP sockets were not followed (the kernel side's socket table was full)",
                s.tcp_untracked
            )?;
        }
        if !s.accepted.is_empty() {
            writeln!(out, "\naccepted connections:")?;
            writeln!(out, "   {:<40} {:<12} {:>7}", "HOST", "PORT", "COUNT")?;
            for ((host, port), n) in &s.accepted {
                writeln!(out, "   {host:<40} {port:<12} {n:>7}")?;
            }
        }
        Ok(())
    }
}

fn mean(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn errors(st: &OpStats) -> String {
    if st.errors.is_empty() {
        return "-".into();
    }
    st.errors
        .iter()
        .map(|(e, n)| {
            format!(
                "{}x{n}",
                crate::event::errno_name(*e).map_or(e.to_string(), str::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints a histogram as `quantize()` does: value, a 40-column bar of `@`,
/// count; with the empty bucket after the last one, as DTrace shows it.
pub fn quantize(out: &mut dyn Write, title: &str, h: &Log2Hist) -> io::Result<()> {
    let buckets = h.buckets();
    if buckets.is_empty() {
        return Ok(());
    }
    let total = h.total().max(1);
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "{:>16}  ------------- Distribution ------------- count",
        "value"
    )?;
    for (lo, n) in &buckets {
        let width = ((n * 40 + total / 2) / total) as usize;
        writeln!(out, "{:>16} |{:<40} {}", lo, "@".repeat(width), n)?;
    }
    let next = buckets
        .last()
        .map_or(0, |(lo, _)| if *lo == 0 { 1 } else { lo.saturating_mul(2) });
    writeln!(out, "{:>16} |{:<40} {}", next, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_prints_like_dtrace() {
        let mut h = Log2Hist::default();
        for v in [1000, 1500, 3000, 3000, 70_000] {
            h.record(v);
        }
        let mut out = Vec::new();
        quantize(&mut out, "read latency", &h).unwrap();
        let text = String::from_utf8(out).unwrap();
        let want = "\
read latency
           value  ------------- Distribution ------------- count
             512 |@@@@@@@@                                 1
            1024 |@@@@@@@@                                 1
            2048 |@@@@@@@@@@@@@@@@                         2
            4096 |                                         0
            8192 |                                         0
           16384 |                                         0
           32768 |                                         0
           65536 |@@@@@@@@                                 1
          131072 |                                         0
";
        assert_eq!(text, want);
    }

    #[test]
    fn an_empty_histogram_prints_nothing() {
        let mut out = Vec::new();
        quantize(&mut out, "nothing", &Log2Hist::default()).unwrap();
        assert!(out.is_empty());
    }
}
