//! Sockets as the kernel knows them: which connection an fd is
//! ([`SocketInfo`], read from the fd's `struct sock` at accept/connect, or
//! from `/proc` for sockets open before the trace), and what TCP did to it
//! ([`TcpEvent`]). Part of the event contract (see [`crate::event`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// How portsnoop learnt a socket's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketOrigin {
    /// `accept`/`accept4` returned it (its fd is the rv).
    Accept,
    /// `connect` on it returned 0 or `EINPROGRESS`.
    Connect,
    /// It was open when its process's trace began: the target's at the
    /// start, a `-f` child's at its fork, inherited (read from
    /// `/proc/PID/fd` and `/proc/PID/net`).
    BeforeTrace,
}

impl SocketOrigin {
    /// `"accept"`, `"connect"`, `"before_trace"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketOrigin::Accept => "accept",
            SocketOrigin::Connect => "connect",
            SocketOrigin::BeforeTrace => "before_trace",
        }
    }

    /// The origin with this name.
    pub fn from_name(name: &str) -> Option<SocketOrigin> {
        [
            SocketOrigin::Accept,
            SocketOrigin::Connect,
            SocketOrigin::BeforeTrace,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// IPv4 or IPv6 address and port (an IPv4-mapped IPv6 address stays
    /// IPv6, as the kernel keeps it).
    Inet(SocketAddr),
    /// A Unix socket: its `sun_path` bytes as bound (empty: unnamed; a
    /// leading NUL: the abstract namespace). The traced app chose them:
    /// shown escaped only.
    Unix(Vec<u8>),
    /// A Unix socket's unnamed peer that is another fd of the same process
    /// (a socketpair's other end), when the socket was named: `fd N`.
    Fd(i32),
    /// Not known (another family, or not read).
    Unknown,
}

impl Endpoint {
    /// An IP endpoint from the kernel's bytes (network order, IPv4 in the
    /// first 4) and a host-order port.
    pub fn inet(family: u16, addr: [u8; 16], port: u16) -> Endpoint {
        let ip = match family {
            AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            AF_INET6 => IpAddr::V6(Ipv6Addr::from(addr)),
            _ => return Endpoint::Unknown,
        };
        Endpoint::Inet(SocketAddr::new(ip, port))
    }

    /// A Unix endpoint from the kernel's `sun_path` bytes (as long as the
    /// bound address was): a path ends at its first NUL (binding with the
    /// terminator counted is common), an abstract name (leading NUL) is
    /// all its bytes.
    pub fn unix(path: &[u8]) -> Endpoint {
        match path.first() {
            Some(0) => Endpoint::Unix(path.to_vec()),
            _ => {
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                Endpoint::Unix(path[..end].to_vec())
            }
        }
    }

    /// The host part, for grouping (`127.0.0.1`, `::1`, a Unix path),
    /// escaped.
    pub fn host(&self) -> String {
        match self {
            Endpoint::Inet(a) => a.ip().to_string(),
            other => other.to_string(),
        }
    }

    /// As [`Display`](fmt::Display) shows it, but not escaped: for JSON,
    /// whose strings are escaped on their own.
    pub fn unescaped(&self) -> String {
        match self {
            Endpoint::Unix(p) if !p.is_empty() => {
                let (at, p) = match p.split_first() {
                    Some((0, rest)) => ("@", rest),
                    _ => ("", &p[..]),
                };
                format!("{at}{}", String::from_utf8_lossy(p))
            }
            other => other.to_string(),
        }
    }

    /// Parses what [`Endpoint::unescaped`] wrote, for a socket of `family`
    /// (a JSON trace read back).
    pub fn parse(family: u16, text: &str) -> Endpoint {
        if text == "?" {
            return Endpoint::Unknown;
        }
        match family {
            AF_INET | AF_INET6 => text.parse().map_or(Endpoint::Unknown, Endpoint::Inet),
            AF_UNIX if text == "unnamed" => Endpoint::Unix(Vec::new()),
            AF_UNIX => match (own_fd(text), text.strip_prefix('@')) {
                (Some(fd), _) => Endpoint::Fd(fd),
                (None, Some(name)) => {
                    let mut p = vec![0];
                    p.extend_from_slice(name.as_bytes());
                    Endpoint::Unix(p)
                }
                (None, None) => Endpoint::Unix(text.as_bytes().to_vec()),
            },
            _ => Endpoint::Unknown,
        }
    }
}

/// `fd N` as [`Endpoint::Fd`] prints it.
fn own_fd(text: &str) -> Option<i32> {
    text.strip_prefix("fd ")?.parse().ok().filter(|&fd| fd >= 0)
}

/// `IP:PORT`, `[IPv6]:PORT`, a Unix path (escaped; `@name` for an
/// abstract one, `unnamed` for none), `fd N`, or `?`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddr's Display is `1.2.3.4:80` and `[::1]:80`.
            Endpoint::Inet(a) => write!(f, "{a}"),
            Endpoint::Unix(p) if p.is_empty() => f.write_str("unnamed"),
            Endpoint::Unix(p) => {
                let (at, p) = match p.split_first() {
                    Some((0, rest)) => ("@", rest),
                    _ => ("", &p[..]),
                };
                // An abstract name is its bytes whole, NULs included: shown
                // escaped like any other control.
                let text = String::from_utf8_lossy(p);
                write!(f, "{at}{}", crate::output::escape::Escaped(&text))
            }
            Endpoint::Fd(fd) => write!(f, "fd {fd}"),
            Endpoint::Unknown => f.write_str("?"),
        }
    }
}

/// Which socket an fd holds: what `strace -yy` shows for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// When it became known (the accept's or connect's entry; for one
    /// open before the trace, when portsnoop read `/proc`).
    pub ts_ns: u64,
    /// Process (tgid).
    pub pid: u32,
    /// The thread that accepted or connected (0 for one from `/proc`).
    pub tid: u32,
    /// The fd holding it.
    pub fd: i32,
    /// How it became known.
    pub origin: SocketOrigin,
    /// `AF_INET`, `AF_INET6`, `AF_UNIX`, ...
    pub family: u16,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), ...
    pub sock_type: u16,
    /// `IPPROTO_TCP` (6), `IPPROTO_UDP` (17); 0 for Unix.
    pub protocol: u16,
    /// This end.
    pub local: Endpoint,
    /// The other end.
    pub peer: Endpoint,
    /// The socket's inode (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: u64,
    /// The kernel's `struct sock` address (0 if unknown): what
    /// [`TcpEvent::sk`] is matched by.
    pub sk: u64,
}

impl SocketInfo {
    /// `"inet"`, `"inet6"`, `"unix"` or the number.
    pub fn family_name(&self) -> String {
        match self.family {
            AF_UNIX => "unix".into(),
            AF_INET => "inet".into(),
            AF_INET6 => "inet6".into(),
            n => n.to_string(),
        }
    }

    /// `"tcp"`, `"udp"`, `"unix-stream"`, ...: the kind of socket in a word.
    pub fn kind_name(&self) -> &'static str {
        match (self.family, self.sock_type, self.protocol) {
            (AF_INET | AF_INET6, _, 6) => "tcp",
            (AF_INET | AF_INET6, _, 17) => "udp",
            (AF_UNIX, 1, _) => "unix-stream",
            (AF_UNIX, 2, _) => "unix-dgram",
            (AF_UNIX, 5, _) => "unix-seqpacket",
            _ => "socket",
        }
    }

    /// Whether it is a TCP socket (the one kind with [`TcpEvent`]s).
    pub fn is_tcp(&self) -> bool {
        matches!(self.family, AF_INET | AF_INET6) && self.protocol == 6
    }
}

/// The kernel's TCP states, as it names them (`include/net/tcp_states.h`).
pub fn tcp_state_name(state: i32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// The state with this kernel name.
pub fn tcp_state_of(name: &str) -> Option<i32> {
    (1..=13).find(|&s| tcp_state_name(s) == name)
}

/// `TCP_CLOSE`: the socket's last state.
pub const TCP_CLOSE: i32 = 7;

/// What a [`TcpEvent`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpEventKind {
    /// `sock:inet_sock_set_state`: `from` -> `to`.
    State,
    /// `tcp:tcp_retransmit_skb`.
    Retransmit,
    /// `tcp:tcp_send_reset`: this end sent a RST.
    ResetSent,
    /// `tcp:tcp_receive_reset`: the peer's RST arrived.
    ResetReceived,
}

impl TcpEventKind {
    /// Every kind, in the BPF side's `TCP_EV_*` order.
    pub const ALL: [TcpEventKind; 4] = [
        TcpEventKind::State,
        TcpEventKind::Retransmit,
        TcpEventKind::ResetSent,
        TcpEventKind::ResetReceived,
    ];

    /// `"state"`, `"retransmit"`, `"reset_sent"`, `"reset_received"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpEventKind::State => "state",
            TcpEventKind::Retransmit => "retransmit",
            TcpEventKind::ResetSent => "reset_sent",
            TcpEventKind::ResetReceived => "reset_received",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<TcpEventKind> {
        TcpEventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Something TCP did to a socket a traced fd holds, or held last: the
/// kernel runs these in softirq, on any CPU, often after the fd is closed
/// (`LAST_ACK -> CLOSE` comes after `close(2)`), so `fd` names the last
/// holder, whose life may be over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// When the kernel did it.
    pub ts_ns: u64,
    /// The process holding (or last holding) the socket.
    pub pid: u32,
    /// The thread the kernel did it on, if one of `pid`'s; else 0.
    pub tid: u32,
    /// The fd holding (or last holding) it.
    pub fd: i32,
    /// What happened.
    pub kind: TcpEventKind,
    /// The state before (for the other kinds: the state then).
    pub from: i32,
    /// The state after (for the other kinds: the state then).
    pub to: i32,
    /// The kernel's `struct sock` address.
    pub sk: u64,
    /// `tcp_sock.bytes_received` then: data bytes received, plus one for
    /// a FIN received.
    pub bytes_received: u64,
    /// `tcp_sock.bytes_acked` then: data bytes the peer acked, plus one for
    /// an acked SYN (connecting side) and one for an acked FIN.
    pub bytes_acked: u64,
    /// The peer's FIN had arrived (`SOCK_DONE`).
    pub fin_received: bool,
    /// This end's FIN was sent and acked.
    pub fin_acked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_strace_and_ss_do() {
        let v4 = Endpoint::inet(
            AF_INET,
            [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8080,
        );
        assert_eq!(v4.to_string(), "127.0.0.1:8080");
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(Endpoint::inet(AF_INET6, one, 443).to_string(), "[::1]:443");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(
            Endpoint::inet(AF_INET6, mapped, 1).to_string(),
            "[::ffff:10.1.2.3]:1"
        );
        assert_eq!(Endpoint::inet(99, one, 1), Endpoint::Unknown);
    }

    #[test]
    fn unix_paths_are_escaped() {
        assert_eq!(
            Endpoint::Unix(b"/run/x.sock".to_vec()).to_string(),
            "/run/x.sock"
        );
        assert_eq!(Endpoint::Unix(Vec::new()).to_string(), "unnamed");
        let evil = Endpoint::Unix(b"/tmp/\x1b[31mred\n".to_vec()).to_string();
        assert!(!evil.contains('\x1b') && !evil.contains('\n'), "{evil}");
        assert_eq!(
            Endpoint::Unix(b"\0abstract".to_vec()).to_string(),
            "@abstract"
        );
    }

    #[test]
    fn a_socketpairs_other_fd_reads_back() {
        let peer = Endpoint::Fd(7);
        assert_eq!(peer.unescaped(), "fd 7");
        assert_eq!(Endpoint::parse(AF_UNIX, "fd 7"), peer);
        assert_eq!(
            Endpoint::parse(AF_UNIX, "fd x"),
            Endpoint::Unix(b"fd x".to_vec())
        );
    }

    #[test]
    fn state_names_are_the_kernels() {
        assert_eq!(tcp_state_name(1), "ESTABLISHED");
        assert_eq!(tcp_state_name(8), "CLOSE_WAIT");
        assert_eq!(tcp_state_of("LAST_ACK"), Some(9));
        assert_eq!(tcp_state_of("nope"), None);
    }
}
