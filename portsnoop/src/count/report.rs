//! The rows written out: the seed's table (`PID CMD SYSCALL COUNT`, with
//! an `FD` column by fd) or JSON Lines, then what went uncounted. Pure:
//! writes to any `Write`.
//!
//! JSON Lines: one `{"pid","comm","syscall","count"}` object per row (and
//! `"fd"`, a number or `null`, with `--by-fd`), most calls first, then
//! always one last `{"uncounted","max_entries","rows","counted"}` object:
//! `uncounted` is the calls that found the table full (0 when nothing was
//! missed), so a reader can tell a complete count from a cut one without
//! looking at stderr.

use std::io::{self, Write};

use super::rows::{total, Row};
use crate::output::line::Line;

/// What one run counted.
#[derive(Clone, Debug)]
pub struct Report {
    /// The rows, in the order they are written.
    pub rows: Vec<Row>,
    /// Calls that got no row because the table was full.
    pub uncounted: u64,
    /// The table's size (`--max-entries`).
    pub max_entries: u32,
    /// Whether rows are by fd (the `FD` column / field).
    pub by_fd: bool,
}

impl Report {
    /// The table, with a header; thread names escaped for a terminal.
    pub fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut line = Line::default();
        // The seed's widths: %-8s %-16s %-22s %10s.
        line.str_left("PID", 8)
            .byte(b' ')
            .str_left("CMD", 16)
            .byte(b' ')
            .str_left("SYSCALL", 22);
        if self.by_fd {
            line.str_right("FD", 6);
        }
        line.str_right("COUNT", 11).byte(b'\n');
        out.write_all(line.as_bytes())?;
        for r in &self.rows {
            line.clear();
            let at = line.mark();
            line.u64(u64::from(r.pid)).pad_after(at, 8).byte(b' ');
            let at = line.mark();
            line.str_escaped(&r.comm).pad_after(at, 16).byte(b' ');
            let at = line.mark();
            line.str(&r.syscall).pad_after(at, 22);
            if self.by_fd {
                match r.fd {
                    Some(fd) => line.i64_right(i64::from(fd), 6),
                    None => line.str_right("-", 6),
                };
            }
            line.i64_right(r.count.min(i64::MAX as u64) as i64, 11)
                .byte(b'\n');
            out.write_all(line.as_bytes())?;
        }
        out.flush()
    }

    /// JSON Lines (see the module doc).
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut line = Line::default();
        for r in &self.rows {
            line.clear();
            line.str("{\"pid\":")
                .u64(u64::from(r.pid))
                .str(",\"comm\":")
                .json_str(&r.comm)
                .str(",\"syscall\":")
                .json_str(&r.syscall);
            if self.by_fd {
                line.str(",\"fd\":");
                match r.fd {
                    Some(fd) => line.i64(i64::from(fd)),
                    None => line.str("null"),
                };
            }
            line.str(",\"count\":").u64(r.count).str("}\n");
            out.write_all(line.as_bytes())?;
        }
        line.clear();
        line.str("{\"uncounted\":")
            .u64(self.uncounted)
            .str(",\"max_entries\":")
            .u64(u64::from(self.max_entries))
            .str(",\"rows\":")
            .u64(self.rows.len() as u64)
            .str(",\"counted\":")
            .u64(total(&self.rows))
            .str("}\n");
        out.write_all(line.as_bytes())?;
        out.flush()
    }

    /// The warning for a table that filled up, or `None` when every call
    /// was counted. Loud on purpose: the counts are then lower bounds.
    pub fn overflow_warning(&self) -> Option<String> {
        (self.uncounted > 0).then(|| {
            format!(
                "WARNING: the count table filled up ({} rows, --max-entries {}): {} syscalls went \
                 uncounted; the counts are lower bounds (rerun with a larger --max-entries)",
                self.rows.len(),
                self.max_entries,
                self.uncounted
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(by_fd: bool, uncounted: u64) -> Report {
        Report {
            rows: vec![
                Row {
                    pid: 4283,
                    comm: "curl".into(),
                    syscall: "read".into(),
                    fd: Some(3),
                    count: 32,
                },
                Row {
                    pid: 14409,
                    comm: "evil\x1b[2J\n".into(),
                    syscall: "rt_sigaction".into(),
                    fd: None,
                    count: 1,
                },
            ],
            uncounted,
            max_entries: 10240,
            by_fd,
        }
    }

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_table_has_the_seeds_columns_and_escapes_names() {
        let t = text(|o| report(false, 0).write_table(o).unwrap());
        assert_eq!(
            t,
            "PID      CMD              SYSCALL                     COUNT\n\
             4283     curl             read                           32\n\
             14409    evil\\x1b[2J\\n    rt_sigaction                    1\n"
        );
    }

    #[test]
    fn by_fd_adds_a_column() {
        let t = text(|o| report(true, 0).write_table(o).unwrap());
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "4283     curl             read                       3         32"
        );
        assert_eq!(
            t.lines().nth(2).unwrap(),
            format!(
                "14409    evil\\x1b[2J\\n    rt_sigaction{}-{}1",
                " ".repeat(15),
                " ".repeat(10)
            )
        );
    }

    #[test]
    fn json_lines_parse_and_end_with_the_uncounted_record() {
        for by_fd in [false, true] {
            let t = text(|o| report(by_fd, 5).write_json(o).unwrap());
            let v: Vec<serde_json::Value> = t
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(v.len(), 3);
            assert_eq!(v[0]["pid"], 4283);
            assert_eq!(v[0]["comm"], "curl");
            assert_eq!(v[0]["syscall"], "read");
            assert_eq!(v[0]["count"], 32);
            assert_eq!(
                v[1]["comm"], "evil\x1b[2J\n",
                "escaped, decoding to the name"
            );
            assert_eq!(v[0].get("fd").is_some(), by_fd);
            if by_fd {
                assert_eq!(v[0]["fd"], 3);
                assert!(v[1]["fd"].is_null());
            }
            assert_eq!(v[2]["uncounted"], 5);
            assert_eq!(v[2]["max_entries"], 10240);
            assert_eq!(v[2]["rows"], 2);
            assert_eq!(v[2]["counted"], 33);
        }
    }

    #[test]
    fn a_full_table_is_warned_about() {
        assert!(report(false, 0).overflow_warning().is_none());
        let w = report(false, 7).overflow_warning().unwrap();
        assert!(w.contains("7 syscalls went uncounted"), "{w}");
    }
}
