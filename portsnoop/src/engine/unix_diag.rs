//! Unix sockets' peers from `NETLINK_SOCK_DIAG` (`man 7 sock_diag`,
//! `include/uapi/linux/unix_diag.h`): `/proc/net/unix` does not say which
//! socket is at the other end, the diag dump does (`UNIX_DIAG_PEER`, the
//! peer's inode). The dump covers the network namespace of the thread that
//! asks, so it runs in the target's: on a short-lived thread that joined
//! it (`setns` changes only the calling thread), or on this one when the
//! target shares portsnoop's. Anything failing (no permission, no module,
//! the process gone) gives nothing: the peers stay unknown. Only
//! [`unix_sockets_of`] does I/O; [`parse_dump`] is pure, tested on bytes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// One Unix socket as the diag dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixDiag {
    /// `SOCK_*`.
    pub sock_type: u8,
    /// Its bound address's `sun_path` bytes (`UNIX_DIAG_NAME`; empty if
    /// unnamed).
    pub name: Vec<u8>,
    /// The peer's inode (`UNIX_DIAG_PEER`; 0: none, or not connected).
    pub peer: u64,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct unix_diag_msg`.
const UNIX_DIAG_MSG: usize = 16;

/// The Unix sockets of `pid`'s network namespace, by inode; empty if the
/// dump cannot be had.
pub fn unix_sockets_of(pid: u32) -> HashMap<u64, UnixDiag> {
    let ns = format!("/proc/{pid}/ns/net");
    let same = match (
        std::fs::metadata("/proc/self/ns/net"),
        std::fs::metadata(&ns),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => return HashMap::new(),
    };
    let dumped = if same {
        dump()
    } else {
        std::thread::scope(|s| {
            s.spawn(|| {
                let target = std::fs::File::open(&ns)?;
                // SAFETY: setns on an fd this thread holds open; it moves
                // only this thread, which ends after the dump.
                if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                dump()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the dump thread panicked")))
        })
    };
    dumped.unwrap_or_default()
}

/// Dumps this thread's network namespace's Unix sockets.
fn dump() -> io::Result<HashMap<u64, UnixDiag>> {
    // SAFETY: a plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A receive never blocks for long: the kernel answers a dump at once;
    // the timeout bounds a kernel that does not.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let req = request();
    // SAFETY: send(2) of a buffer of the length given.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    // The kernel sizes a dump's datagrams by the reader's largest recv,
    // capped at 32 KiB; MSG_TRUNC makes a longer one (which would be cut)
    // an error rather than a short read.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize > buf.len() {
            return Err(io::Error::other("a sock_diag datagram larger than 64 KiB"));
        }
        match parse_dump(&buf[..n as usize], &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) if n > 0 => continue,
            Ok(false) => return Err(io::Error::other("the dump ended without NLMSG_DONE")),
            Err(e) => return Err(e),
        }
    }
}

/// The dump request: every Unix socket in any state, with its name and
/// peer (`struct nlmsghdr` + `struct unix_diag_req`).
fn request() -> Vec<u8> {
    let len = NLMSG_HDR + 24;
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r.extend_from_slice(&1u32.to_ne_bytes()); // seq
    r.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    r.push(libc::AF_UNIX as u8); // sdiag_family
    r.push(0); // sdiag_protocol
    r.extend_from_slice(&0u16.to_ne_bytes()); // pad
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    r.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    r.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    r.extend_from_slice(&[0xff; 8]); // udiag_cookie: INET_DIAG_NOCOOKIE
    r
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Netlink's 4-byte alignment.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Adds the sockets of one datagram of the dump's reply to `out`: true
/// once it holds `NLMSG_DONE`. An `NLMSG_ERROR` is that error; a message
/// cut short is an error too (a dump's messages never span datagrams).
pub fn parse_dump(buf: &[u8], out: &mut HashMap<u64, UnixDiag>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a sock_diag message cut short");
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(bad)? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(bad)?;
        if len < NLMSG_HDR || at + len > buf.len() {
            return Err(bad());
        }
        let body = &buf[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                let (inode, sock) = parse_socket(body).ok_or_else(bad)?;
                out.insert(inode, sock);
            }
            _ => {}
        }
        at += align(len);
    }
    Ok(false)
}

/// A `struct unix_diag_msg` and its attributes: (inode, what it says).
fn parse_socket(body: &[u8]) -> Option<(u64, UnixDiag)> {
    let sock_type = *body.get(1)?;
    let inode = u64::from(u32_at(body, 4)?);
    let mut sock = UnixDiag {
        sock_type,
        name: Vec::new(),
        peer: 0,
    };
    let mut at = UNIX_DIAG_MSG;
    // struct rtattr { u16 len; u16 type; } + payload, 4-aligned.
    while at + 4 <= body.len() {
        let len = usize::from(u16_at(body, at)?);
        let kind = u16_at(body, at + 2)?;
        let payload = body.get(at + 4..at + len.max(4))?;
        match kind {
            UNIX_DIAG_NAME => sock.name = payload.to_vec(),
            UNIX_DIAG_PEER => sock.peer = u64::from(u32_at(payload, 0)?),
            _ => {}
        }
        at += align(len.max(4));
    }
    Some((inode, sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align(m.len()), 0);
        m
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align(a.len()), 0);
        a
    }

    fn socket(sock_type: u8, inode: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![1, sock_type, 1, 0];
        b.extend_from_slice(&inode.to_ne_bytes());
        b.extend_from_slice(&[0xff; 8]);
        for a in attrs {
            b.extend_from_slice(a);
        }
        msg(SOCK_DIAG_BY_FAMILY, &b)
    }

    #[test]
    fn names_and_peers_by_inode() {
        let mut buf = socket(
            1,
            100,
            &[
                attr(UNIX_DIAG_NAME, b"/run/x.sock"), // 11 bytes: padded
                attr(UNIX_DIAG_PEER, &101u32.to_ne_bytes()),
            ],
        );
        buf.extend(socket(
            1,
            101,
            &[attr(UNIX_DIAG_PEER, &100u32.to_ne_bytes())],
        ));
        buf.extend(socket(2, 102, &[attr(UNIX_DIAG_NAME, b"\0abs")]));
        let mut out = HashMap::new();
        assert!(!parse_dump(&buf, &mut out).unwrap(), "no NLMSG_DONE yet");
        assert_eq!(
            out[&100],
            UnixDiag {
                sock_type: 1,
                name: b"/run/x.sock".to_vec(),
                peer: 101
            }
        );
        assert_eq!(out[&101].name, b"");
        assert_eq!(out[&101].peer, 100);
        assert_eq!(out[&102].name, b"\0abs");
        assert_eq!(out[&102].peer, 0);
        assert!(parse_dump(&msg(NLMSG_DONE, &0i32.to_ne_bytes()), &mut out).unwrap());
    }

    #[test]
    fn an_error_reply_is_its_errno() {
        let mut body = (-libc::EPERM).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        let e = parse_dump(&msg(NLMSG_ERROR, &body), &mut HashMap::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn truncated_messages_are_refused_not_read_past() {
        let whole = socket(1, 7, &[attr(UNIX_DIAG_PEER, &8u32.to_ne_bytes())]);
        for cut in [NLMSG_HDR + 3, whole.len() - 2] {
            let mut part = whole[..cut].to_vec();
            // The header still claims the whole length.
            assert!(parse_dump(&part, &mut HashMap::new()).is_err(), "{cut}");
            // A header whose length is what is there, but an attribute
            // claiming more.
            part.truncate(cut);
            part[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let r = parse_dump(&part, &mut HashMap::new());
            assert!(r.is_err(), "{cut}: {r:?}");
        }
    }

    #[test]
    fn the_request_asks_for_names_and_peers_of_all_states() {
        let r = request();
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), Some(40));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(r[16], libc::AF_UNIX as u8);
        assert_eq!(u32_at(&r, 20), Some(u32::MAX));
        assert_eq!(u32_at(&r, 28), Some(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER));
    }
}
