//! The kernel's table as rows: merged, named and sorted. Pure: no I/O, no
//! kernel.

use std::collections::HashMap;

use crate::syscalls::{self, Abi};

/// A row's key as the kernel side keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The process (tgid).
    pub pid: u32,
    /// The calling thread's name at the call (the app controls it:
    /// escape it before a terminal sees it).
    pub comm: String,
    /// The syscall number.
    pub nr: u32,
    /// The numbering `nr` is in.
    pub abi: Abi,
    /// The fd the call was given first (`--by-fd`, and a call that takes
    /// one), else `None`.
    pub fd: Option<i32>,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The process.
    pub pid: u32,
    /// The thread name (unescaped).
    pub comm: String,
    /// The syscall's name (`syscall_N` when unknown).
    pub syscall: String,
    /// The fd, with `--by-fd`, for calls that take one.
    pub fd: Option<i32>,
    /// Calls entered.
    pub count: u64,
}

/// `entries` as rows: equal keys merged (names decoded lossily can meet),
/// most calls first; ties by pid, name, syscall and fd, so that the same
/// counts always print the same way.
pub fn rows(entries: impl IntoIterator<Item = (Key, u64)>) -> Vec<Row> {
    let mut merged: HashMap<Key, u64> = HashMap::new();
    for (key, n) in entries {
        let c = merged.entry(key).or_default();
        *c = c.saturating_add(n);
    }
    let mut rows: Vec<Row> = merged
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(k, count)| Row {
            pid: k.pid,
            syscall: syscalls::name(k.abi, k.nr).into_owned(),
            comm: k.comm,
            fd: k.fd,
            count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.pid.cmp(&b.pid))
            .then_with(|| a.comm.cmp(&b.comm))
            .then_with(|| a.syscall.cmp(&b.syscall))
            .then(a.fd.cmp(&b.fd))
    });
    rows
}

/// Calls counted in all rows.
pub fn total(rows: &[Row]) -> u64 {
    rows.iter().fold(0, |t, r| t.saturating_add(r.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, comm: &str, name: &str, fd: Option<i32>) -> Key {
        Key {
            pid,
            comm: comm.into(),
            nr: syscalls::number(name).unwrap(),
            abi: Abi::Native,
            fd,
        }
    }

    #[test]
    fn most_calls_first_then_a_stable_order() {
        let r = rows([
            (key(20, "b", "write", None), 5),
            (key(10, "a", "read", None), 7),
            (key(10, "a", "write", None), 5),
            (key(5, "z", "close", None), 5),
        ]);
        let seen: Vec<(u32, &str, u64)> = r
            .iter()
            .map(|r| (r.pid, r.syscall.as_str(), r.count))
            .collect();
        assert_eq!(
            seen,
            [
                (10, "read", 7),
                (5, "close", 5),
                (10, "write", 5),
                (20, "write", 5)
            ]
        );
        assert_eq!(total(&r), 22);
    }

    #[test]
    fn equal_keys_merge_and_empty_rows_go() {
        let r = rows([
            (key(1, "x", "read", Some(3)), 2),
            (key(1, "x", "read", Some(3)), 3),
            (key(1, "x", "read", Some(4)), 1),
            (key(1, "x", "close", None), 0),
        ]);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].fd, r[0].count), (Some(3), 5));
        assert_eq!((r[1].fd, r[1].count), (Some(4), 1));
    }

    #[test]
    fn unknown_numbers_keep_a_name() {
        let r = rows([(
            Key {
                pid: 1,
                comm: "x".into(),
                nr: 99_999,
                abi: Abi::Native,
                fd: None,
            },
            1,
        )]);
        assert_eq!(r[0].syscall, "syscall_99999");
    }
}
