//! Which fd each epoll event is about: epoll hands back the user data given
//! to `epoll_ctl` (mio's token), so remember it per epoll instance.

use std::collections::HashMap;

use crate::event::EpollCtl;

const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CTL_DEL: i32 = 2;
const EPOLL_CTL_MOD: i32 = 3;

/// `(epfd, data) -> fd`, from the `epoll_ctl` calls seen.
#[derive(Debug, Default)]
pub struct EpollMap {
    by_epfd: HashMap<i32, HashMap<u64, i32>>,
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
                map.insert(ctl.data, ctl.fd);
            }
            EPOLL_CTL_DEL => map.retain(|_, fd| *fd != ctl.fd),
            _ => {}
        }
    }

    /// Forgets `fd` everywhere: a closed fd leaves every epoll set.
    pub fn closed(&mut self, fd: i32) {
        for map in self.by_epfd.values_mut() {
            map.retain(|_, f| *f != fd);
        }
    }

    /// The fd an event with `data` from `epfd` is about, if known.
    pub fn resolve(&self, epfd: i32, data: u64) -> Option<i32> {
        self.by_epfd.get(&epfd)?.get(&data).copied()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(op: i32, fd: i32, data: u64) -> EpollCtl {
        EpollCtl {
            ts_ns: 0,
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
        assert_eq!(m.resolve(4, 100), None);
        m.apply(&ctl(EPOLL_CTL_MOD, 7, 100));
        m.apply(&ctl(EPOLL_CTL_DEL, 7, 0));
        assert_eq!(m.resolve(3, 100), None);
        m.apply(&ctl(EPOLL_CTL_ADD, 8, 101));
        m.closed(8);
        assert_eq!(m.resolve(3, 101), None);
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
