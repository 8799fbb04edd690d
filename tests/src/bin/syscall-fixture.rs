//! Makes each syscall portsnoop traces, once or twice, on fds it knows, and
//! writes what it did to the file named by its argument, one JSON object
//! per line: `{"name", "fd", "rv", "arg"}` (`arg`: the size-like argument
//! portsnoop keeps, or null where it keeps none) and, for epoll,
//! `{"name": "epoll_ctl", "epfd", "fd", "data"}` and
//! `{"name": "epoll_wait"|..., "epfd", "rv", "data"}`. A test traces it
//! with `portsnoop -- syscall-fixture FILE` and checks that every line
//! came through with the same values: the kernel side reads the syscall
//! number and the argument registers itself, per architecture.
//!
//! Raw libc calls, not std: std picks the syscall (recvfrom for a read,
//! writev for vectored writes, ...) and this must name each one.
//!
//! `syscall-fixture --many-ready N FILE` does only this instead: registers
//! N ready eventfds on a new epoll instance and makes one `epoll_wait`
//! that returns all N (more than the 30 a tracer records), logged as
//! `{"name": "epoll_wait", "epfd", "rv": N, "data"}` (`data`: the first
//! event's).

use std::fmt::Write as _;
use std::mem::{size_of, zeroed};

use libc::{c_int, c_void};

struct Log(String);

impl Log {
    /// Logs a call; `rv` comes through [`result`], straight after the call.
    fn io(&mut self, name: &str, fd: c_int, rv: i64, arg: Option<u64>) {
        let arg = arg.map_or("null".to_string(), |a| a.to_string());
        let _ = writeln!(
            self.0,
            r#"{{"name":"{name}","fd":{fd},"rv":{rv},"arg":{arg}}}"#
        );
    }
}

/// A syscall's result as the kernel returned it: `-errno` on failure.
fn result(r: isize) -> i64 {
    if r < 0 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        r as i64
    }
}

fn check(what: &str, rv: c_int) -> c_int {
    assert!(rv >= 0, "{what}: {}", std::io::Error::last_os_error());
    rv
}

/// Registers `n` ready eventfds and waits once for all of them.
fn many_ready(n: usize, log: &mut Log) {
    // SAFETY: plain syscalls on fds made here, into a buffer that outlives
    // the call.
    unsafe {
        let ep = check("epoll_create1", libc::epoll_create1(0));
        let mut fds = Vec::new();
        for i in 0..n {
            let fd = check("eventfd", libc::eventfd(1, 0));
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 1000 + i as u64,
            };
            check(
                "epoll_ctl",
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
            );
            fds.push(fd);
        }
        let mut ready: Vec<libc::epoll_event> = vec![zeroed(); n + 8];
        let rv = libc::epoll_wait(ep, ready.as_mut_ptr(), ready.len() as c_int, 1000);
        assert_eq!(rv as usize, n, "every eventfd is ready");
        let data = ready[0].u64;
        let _ = writeln!(
            log.0,
            r#"{{"name":"epoll_wait","epfd":{ep},"rv":{rv},"data":{data}}}"#
        );
        for fd in fds.into_iter().chain([ep]) {
            libc::close(fd);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, n, out] = args.as_slice() {
        if flag == "--many-ready" {
            let mut log = Log(String::new());
            many_ready(n.parse().expect("--many-ready N"), &mut log);
            std::fs::write(out, log.0).expect("writing the log");
            return;
        }
    }
    let out = args
        .first()
        .cloned()
        .expect("usage: syscall-fixture [--many-ready N] FILE");
    let mut log = Log(String::new());
    let mut buf = [0u8; 64];
    // SAFETY (every block below): plain syscalls on fds this process just
    // made, with buffers and structs that outlive the call.
    unsafe {
        // A pipe: read, write, readv, writev.
        let mut p = [0; 2];
        check("pipe", libc::pipe(p.as_mut_ptr()));
        let (r, w) = (p[0], p[1]);
        let rv = result(libc::write(w, b"hello".as_ptr().cast(), 5));
        log.io("write", w, rv, Some(5));
        let rv = result(libc::read(r, buf.as_mut_ptr().cast(), 64));
        log.io("read", r, rv, Some(64));
        let parts = [b"abc".as_slice(), b"defg".as_slice()];
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        let rv = result(libc::writev(w, iov.as_ptr(), 2));
        log.io("writev", w, rv, Some(2)); // writev keeps its iovcnt
        let riov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 64,
        };
        let rv = result(libc::readv(r, &riov, 1));
        log.io("readv", r, rv, Some(1));

        // A socket pair: sendto, recvfrom, sendmsg, recvmsg.
        let mut sp = [0; 2];
        check(
            "socketpair",
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sp.as_mut_ptr()),
        );
        let (a, b) = (sp[0], sp[1]);
        let rv = result(libc::sendto(
            a,
            b"sixsix".as_ptr().cast(),
            6,
            0,
            std::ptr::null(),
            0,
        ));
        log.io("sendto", a, rv, Some(6));
        let rv = result(libc::recvfrom(
            b,
            buf.as_mut_ptr().cast(),
            64,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ));
        log.io("recvfrom", b, rv, Some(64));
        let mut msg: libc::msghdr = zeroed();
        let siov = libc::iovec {
            iov_base: b"four".as_ptr() as *mut c_void,
            iov_len: 4,
        };
        msg.msg_iov = &siov as *const _ as *mut _;
        msg.msg_iovlen = 1;
        let rv = result(libc::sendmsg(a, &msg, 0));
        log.io("sendmsg", a, rv, None);
        let mut rmsg: libc::msghdr = zeroed();
        rmsg.msg_iov = &riov as *const _ as *mut _;
        rmsg.msg_iovlen = 1;
        let rv = result(libc::recvmsg(b, &mut rmsg, 0));
        log.io("recvmsg", b, rv, None);
        // Nothing left to read: EAGAIN, which portsnoop shows as rv -11.
        let rv = result(libc::recvfrom(
            b,
            buf.as_mut_ptr().cast(),
            32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ));
        log.io("recvfrom", b, rv, Some(32));

        // TCP on loopback: connect, accept4, accept, shutdown.
        let l = check("socket", libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
        let mut addr: libc::sockaddr_in = zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(
            "bind",
            libc::bind(l, (&addr as *const libc::sockaddr_in).cast(), len),
        );
        check("listen", libc::listen(l, 8));
        let mut len2 = len;
        check(
            "getsockname",
            libc::getsockname(l, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len2),
        );
        let mut clients = Vec::new();
        for _ in 0..2 {
            let c = check("socket", libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
            let res =
                result(libc::connect(c, (&addr as *const libc::sockaddr_in).cast(), len) as isize);
            log.io("connect", c, res, None);
            clients.push(c);
        }
        let n1 = libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0);
        log.io("accept4", l, result(n1 as isize), None);
        let n2 = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        log.io("accept", l, result(n2 as isize), None);
        let res = result(libc::shutdown(clients[0], libc::SHUT_WR) as isize);
        log.io("shutdown", clients[0], res, Some(libc::SHUT_WR as u64));

        // epoll: a registration, then each of the three waits returning it.
        let ep = check("epoll_create1", libc::epoll_create1(0));
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0x5eed,
        };
        check(
            "epoll_ctl",
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, r, &mut ev),
        );
        let _ = writeln!(
            log.0,
            r#"{{"name":"epoll_ctl","epfd":{ep},"fd":{r},"data":{}}}"#,
            0x5eed
        );
        let rv = result(libc::write(w, b"x".as_ptr().cast(), 1));
        log.io("write", w, rv, Some(1));
        let mut ready: [libc::epoll_event; 8] = zeroed();
        let waits: [(&str, c_int); 3] = [
            ("epoll_wait", libc::epoll_wait(ep, ready.as_mut_ptr(), 8, 0)),
            (
                "epoll_pwait",
                libc::epoll_pwait(ep, ready.as_mut_ptr(), 8, 0, std::ptr::null()),
            ),
            (
                "epoll_pwait2",
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    ep,
                    ready.as_mut_ptr(),
                    8,
                    &libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    std::ptr::null::<libc::sigset_t>(),
                    0,
                ) as c_int,
            ),
        ];
        for (name, rv) in waits {
            assert_eq!(rv, 1, "{name} returns the pipe");
            let _ = writeln!(
                log.0,
                r#"{{"name":"{name}","epfd":{ep},"rv":1,"data":{}}}"#,
                0x5eed
            );
        }

        // close, and a close that fails.
        for fd in [r, w, a, b, l, n1, n2, ep].into_iter().chain(clients) {
            let res = result(libc::close(fd) as isize);
            log.io("close", fd, res, None);
        }
        let res = result(libc::close(999) as isize);
        log.io("close", 999, res, None);
    }
    std::fs::write(&out, log.0).expect("writing the log");
}
