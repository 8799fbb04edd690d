//! Sockets a process held before the trace began: `/proc/PID/fd` names
//! each fd's socket inode (`socket:[INODE]`), and the process's own
//! network namespace's tables (`/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`,
//! which are the target's namespace, not portsnoop's) give the addresses;
//! a Unix socket's peer, which `/proc/net/unix` does not give, comes from
//! sock_diag ([`super::unix_diag`]) when it can be had.
//! The parsing is pure and tested on text; only [`sockets_of`] reads.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::unix_diag::UnixDiag;
use crate::sock::{Endpoint, SocketInfo, SocketOrigin, AF_INET, AF_INET6, AF_UNIX};

/// One socket from a `/proc/net` table, by inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// `AF_*`.
    pub family: u16,
    /// `SOCK_*`.
    pub sock_type: u16,
    /// `IPPROTO_*` (0 for Unix).
    pub protocol: u16,
    /// This end.
    pub local: Endpoint,
    /// The other end.
    pub peer: Endpoint,
}

/// The sockets `pid` holds now, as identity events stamped `ts_ns`. What
/// cannot be read (the process is gone, a table is missing) is left out:
/// those fds are only unnamed.
pub fn sockets_of(pid: u32, ts_ns: u64) -> Vec<SocketInfo> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(i32, u64)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            Some((fd, socket_inode(link.to_str()?)?))
        })
        .collect();
    if fds.is_empty() {
        return Vec::new();
    }
    fds.sort_unstable();
    let mut table = HashMap::new();
    for (name, family, sock_type, protocol) in [
        ("tcp", AF_INET, 1, 6),
        ("tcp6", AF_INET6, 1, 6),
        ("udp", AF_INET, 2, 17),
        ("udp6", AF_INET6, 2, 17),
    ] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{name}")) {
            parse_inet_table(&text, family, sock_type, protocol, &mut table);
        }
    }
    if let Ok(text) = std::fs::read(format!("/proc/{pid}/net/unix")) {
        parse_unix_table(&text, &mut table);
    }
    let diag = if table.values().any(|e| e.family == AF_UNIX) {
        super::unix_diag::unix_sockets_of(pid)
    } else {
        HashMap::new()
    };
    name_unix_peers(&fds, &diag, &mut table);
    fds.into_iter()
        .filter_map(|(fd, inode)| {
            let e = table.get(&inode)?;
            Some(SocketInfo {
                ts_ns,
                pid,
                tid: 0,
                fd,
                origin: SocketOrigin::BeforeTrace,
                family: e.family,
                sock_type: e.sock_type,
                protocol: e.protocol,
                local: e.local.clone(),
                peer: e.peer.clone(),
                inode,
                sk: 0,
            })
        })
        .collect()
}

/// Names the peers of the Unix sockets among `fds` ((fd, inode), the
/// process's) from the diag dump: the peer's bound path if it has one (a
/// client connected to `/run/x.sock` has the server's accepted socket as
/// peer, which carries that path), else `fd N` when the peer is another
/// of these fds (a socketpair; the lowest, if dup'd), else `unnamed`. A peer the dump does not
/// hold (unconnected, in another namespace, no dump) stays unknown.
pub fn name_unix_peers(
    fds: &[(i32, u64)],
    diag: &HashMap<u64, UnixDiag>,
    table: &mut HashMap<u64, TableEntry>,
) {
    // A socket dup'd to several fds is named by its lowest.
    let mut fd_of: HashMap<u64, i32> = HashMap::new();
    for &(fd, inode) in fds {
        fd_of
            .entry(inode)
            .and_modify(|low| *low = (*low).min(fd))
            .or_insert(fd);
    }
    for &(_, inode) in fds {
        let Some(peer) = diag.get(&inode).map(|d| d.peer).filter(|&p| p != 0) else {
            continue;
        };
        let Some(peer_sock) = diag.get(&peer) else {
            continue;
        };
        let name = match (Endpoint::unix(&peer_sock.name), fd_of.get(&peer)) {
            (Endpoint::Unix(p), Some(&fd)) if p.is_empty() => Endpoint::Fd(fd),
            (path, _) => path,
        };
        if let Some(e) = table.get_mut(&inode).filter(|e| e.family == AF_UNIX) {
            e.peer = name;
        }
    }
}

/// The inode in a `socket:[INODE]` link.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// An address as `/proc/net/tcp{,6}` prints it: the kernel's bytes as
/// native-endian 32-bit words in hex, `:`, the port in hex.
fn parse_inet_addr(text: &str, family: u16) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match (family, bytes.len()) {
        (AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Adds the sockets of a `/proc/net/{tcp,tcp6,udp,udp6}` table, by inode.
pub fn parse_inet_table(
    text: &str,
    family: u16,
    sock_type: u16,
    protocol: u16,
    out: &mut HashMap<u64, TableEntry>,
) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        let (Some(local), Some(peer), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
            continue;
        };
        let (Some(local), Some(peer), Ok(inode)) = (
            parse_inet_addr(local, family),
            parse_inet_addr(peer, family),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        if inode == 0 {
            continue; // TIME_WAIT and the like: no socket file
        }
        out.insert(
            inode,
            TableEntry {
                family,
                sock_type,
                protocol,
                local: Endpoint::Inet(local),
                peer: Endpoint::Inet(peer),
            },
        );
    }
}

/// Adds the sockets of `/proc/net/unix` (`Num RefCount Protocol Flags Type
/// St Inode [Path]`; an abstract name's leading NUL printed as `@`). The
/// peer is not in the table.
pub fn parse_unix_table(text: &[u8], out: &mut HashMap<u64, TableEntry>) {
    for line in text.split(|&b| b == b'\n').skip(1) {
        let mut fields = line
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty())
            .peekable();
        let f: Vec<&[u8]> = fields.by_ref().take(7).collect();
        if f.len() < 7 {
            continue;
        }
        let num = |b: &[u8], radix| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, radix).ok())
        };
        let (Some(sock_type), Some(inode)) = (num(f[4], 16), num(f[6], 10)) else {
            continue;
        };
        // The path is the rest of the line (it may hold spaces).
        let start = f[6].as_ptr() as usize - line.as_ptr() as usize + f[6].len();
        let rest = &line[start..];
        let path = rest.strip_prefix(b" ").unwrap_or(rest);
        let path = match path.split_first() {
            Some((b'@', name)) => [&[0u8][..], name].concat(),
            _ => path.to_vec(),
        };
        out.insert(
            inode,
            TableEntry {
                family: AF_UNIX,
                sock_type: sock_type as u16,
                protocol: 0,
                local: Endpoint::Unix(path),
                peer: Endpoint::Unknown,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_decode_in_network_order() {
        // 127.0.0.1:8080 <- 127.0.0.1:40000, as a little-endian machine prints it.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        let mut out = HashMap::new();
        parse_inet_table(text, AF_INET, 1, 6, &mut out);
        let e = &out[&4242];
        if cfg!(target_endian = "little") {
            assert_eq!(e.local.to_string(), "127.0.0.1:8080");
            assert_eq!(e.peer.to_string(), "127.0.0.1:40000");
        }
    }

    #[test]
    fn proc_net_tcp6_loopback() {
        let text = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0 20 4 30 10 -1\n";
        let mut out = HashMap::new();
        parse_inet_table(text, AF_INET6, 1, 6, &mut out);
        if cfg!(target_endian = "little") {
            assert_eq!(out[&77].local.to_string(), "[::1]:8080");
        }
    }

    #[test]
    fn proc_net_unix_paths_and_abstract_names() {
        let text = b"Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/a b.sock\n0000000000000000: 00000002 00000000 00000000 0002 01 101 @abs\n0000000000000000: 00000003 00000000 00000000 0001 03 102\n";
        let mut out = HashMap::new();
        parse_unix_table(text, &mut out);
        assert_eq!(out[&100].local, Endpoint::Unix(b"/run/a b.sock".to_vec()));
        assert_eq!(out[&100].sock_type, 1);
        assert_eq!(out[&101].local, Endpoint::Unix(b"\0abs".to_vec()));
        assert_eq!(out[&101].sock_type, 2);
        assert_eq!(out[&102].local, Endpoint::Unix(Vec::new()));
    }

    #[test]
    fn unix_peers_are_named_by_path_then_by_fd() {
        let text = b"Num RefCount Protocol Flags Type St Inode Path\n0: 2 0 0 0001 03 10\n0: 2 0 0 0001 03 11\n0: 2 0 0 0001 03 12\n0: 2 0 0 0001 03 14\n0: 2 0 0 0001 01 15 /run/l.sock\n";
        let mut table = HashMap::new();
        parse_unix_table(text, &mut table);
        let diag = |name: &[u8], peer| UnixDiag {
            sock_type: 1,
            name: name.to_vec(),
            peer,
        };
        // 10 <-> 11: a socketpair; 12 -> 13: the server's end of a
        // connection to /run/x.sock (another process's); 14 -> 16: an
        // unnamed peer elsewhere; 15: a listener; 17's peer is not in the
        // dump.
        let dump: HashMap<u64, UnixDiag> = [
            (10, diag(b"", 11)),
            (11, diag(b"", 10)),
            (12, diag(b"", 13)),
            (13, diag(b"/run/x.sock\0", 12)),
            (14, diag(b"", 16)),
            (16, diag(b"", 14)),
            (15, diag(b"/run/l.sock", 0)),
        ]
        .into();
        let fds = [(5, 10), (6, 11), (7, 12), (8, 14), (9, 15), (20, 11)];
        name_unix_peers(&fds, &dump, &mut table);
        assert_eq!(table[&10].peer, Endpoint::Fd(6));
        assert_eq!(table[&11].peer, Endpoint::Fd(5));
        assert_eq!(table[&12].peer, Endpoint::Unix(b"/run/x.sock".to_vec()));
        assert_eq!(table[&14].peer, Endpoint::Unix(Vec::new()));
        assert_eq!(table[&15].peer, Endpoint::Unknown);
        // No dump: as before.
        let mut plain = HashMap::new();
        parse_unix_table(text, &mut plain);
        name_unix_peers(&fds, &HashMap::new(), &mut plain);
        assert!(plain.values().all(|e| e.peer == Endpoint::Unknown));
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
