//! Which fd each epoll event is about: epoll hands back the user data given
//! to `epoll_ctl` (mio's token), so remember it per epoll instance.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::event::EpollCtl;

const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CTL_DEL: i32 = 2;
const EPOLL_CTL_MOD: i32 = 3;

/// Entries per epoll instance before those of closed fds are purged.
const PURGE_AT: usize = 65536;

/// `(epfd, data) -> fd`, from the `epoll_ctl` calls seen.
///
/// A closed fd's entries stay until a new registration reuses their data:
/// a wait on another thread can return an event harvested just before the
/// close, and its record arrives after the close's. They are purged only
/// when an instance's map grows large.
#[derive(Debug, Default)]
pub struct EpollMap {
    by_epfd: HashMap<i32, HashMap<u64, i32>>,
    closed: HashSet<i32>,
}

impl EpollMap {
    /// Learns from one finished `epoll_ctl` (failed calls change nothing).
    pub fn apply(&mut self, ctl: &EpollCtl) {
        if ctl.rv != 0 {
            return;
        }
        let map = self.by_epfd.entry(ctl.epfd).or_default();
        match ctl.op {
            EPOLL_CTL_ADD | EPOLL_CTL_MOD => {
                self.closed.remove(&ctl.fd);
                map.insert(ctl.data, ctl.fd);
                if map.len() > PURGE_AT {
                    let closed = &self.closed;
                    map.retain(|_, fd| !closed.contains(fd));
                }
            }
            EPOLL_CTL_DEL => map.retain(|_, fd| *fd != ctl.fd),
            _ => {}
        }
    }

    /// Learns a registration made before tracing began (read from
    /// `/proc/PID/fdinfo`), without a row of its own.
    pub fn known(&mut self, epfd: i32, fd: i32, data: u64) {
        self.by_epfd.entry(epfd).or_default().insert(data, fd);
    }

    /// Notes that `fd` was closed (it left every epoll set).
    pub fn closed(&mut self, fd: i32) {
        self.closed.insert(fd);
    }

    /// The fd an event with `data` from `epfd` is about, if known.
    ///
    /// An epoll instance can have several fds (mio's `Registry::try_clone`
    /// dups it; tokio registers through the copy and waits on the
    /// original), so when `epfd` itself does not know `data`, a single
    /// match in another instance's map is taken.
    pub fn resolve(&self, epfd: i32, data: u64) -> Option<i32> {
        if let Some(fd) = self.by_epfd.get(&epfd).and_then(|m| m.get(&data)) {
            return Some(*fd);
        }
        let mut others = self
            .by_epfd
            .iter()
            .filter(|(e, _)| **e != epfd)
            .filter_map(|(_, m)| m.get(&data));
        match (others.next(), others.next()) {
            (Some(fd), None) => Some(*fd),
            _ => None,
        }
    }

    /// The `epoll_ctl` op with this name (`"?"`, an op it has no name
    /// for, is 0).
    pub fn op_number(name: &str) -> Option<i32> {
        Some(match name {
            "ADD" => EPOLL_CTL_ADD,
            "DEL" => EPOLL_CTL_DEL,
            "MOD" => EPOLL_CTL_MOD,
            "?" => 0,
            _ => return None,
        })
    }

    /// The name of an `epoll_ctl` op.
    pub fn op_name(op: i32) -> &'static str {
        match op {
            EPOLL_CTL_ADD => "ADD",
            EPOLL_CTL_DEL => "DEL",
            EPOLL_CTL_MOD => "MOD",
            _ => "?",
        }
    }
}

/// The registrations of every epoll instance `pid` has open, as
/// `(epfd, fd, data)`, from `/proc/PID/fdinfo` (lines `tfd: N events: X
/// data: X ...`). Unreadable entries are skipped: this only improves how
/// many epoll events resolve to an fd.
pub fn registrations_of(pid: u32) -> Vec<(i32, i32, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in fds.flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        let Some(epfd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_epoll {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).unwrap_or_default();
        out.extend(
            parse_fdinfo(&info)
                .into_iter()
                .map(|(fd, data)| (epfd, fd, data)),
        );
    }
    out
}

/// `(fd, data)` of each `tfd:` line of an epoll fd's fdinfo.
pub fn parse_fdinfo(info: &str) -> Vec<(i32, u64)> {
    info.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "tfd:" {
                return None;
            }
            let fd = words.next()?.parse().ok()?;
            let mut rest = words.skip_while(|w| *w != "data:");
            rest.next()?;
            let data = u64::from_str_radix(rest.next()?, 16).ok()?;
            Some((fd, data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(op: i32, fd: i32, data: u64) -> EpollCtl {
        EpollCtl {
            ts_ns: 0,
            pid: 1,
            tid: 1,
            epfd: 3,
            op,
            fd,
            events: 1,
            data,
            rv: 0,
            dur_ns: 0,
        }
    }

    #[test]
    fn add_mod_del_and_close() {
        let mut m = EpollMap::default();
        m.apply(&ctl(EPOLL_CTL_ADD, 7, 100));
        assert_eq!(m.resolve(3, 100), Some(7));
        assert_eq!(
            m.resolve(4, 100),
            Some(7),
            "a dup of the epoll fd sees the same registrations"
        );
        assert_eq!(m.resolve(4, 555), None);
        m.apply(&ctl(EPOLL_CTL_MOD, 7, 100));
        m.apply(&ctl(EPOLL_CTL_DEL, 7, 0));
        assert_eq!(m.resolve(3, 100), None);
        m.apply(&ctl(EPOLL_CTL_ADD, 8, 101));
        m.closed(8);
        assert_eq!(
            m.resolve(3, 101),
            Some(8),
            "a late event for a closed fd still names it"
        );
        m.apply(&ctl(EPOLL_CTL_ADD, 9, 101));
        assert_eq!(m.resolve(3, 101), Some(9), "reused data names the new fd");
    }

    #[test]
    fn reads_registrations_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\ntfd:        3 events: 80002019 data:                0  pos:0 ino:b38e sdev:9\ntfd:        5 events: 80002019 data: ffffffffffffffff  pos:0 ino:40e sdev:10\n";
        assert_eq!(parse_fdinfo(info), vec![(3, 0), (5, u64::MAX)]);
        assert!(parse_fdinfo("tfd: x events: 1 data: zz").is_empty());
    }

    #[test]
    fn failed_ctl_changes_nothing() {
        let mut m = EpollMap::default();
        let mut c = ctl(EPOLL_CTL_ADD, 7, 100);
        c.rv = -9;
        m.apply(&c);
        assert_eq!(m.resolve(3, 100), None);
    }
}
