//! Connections: which socket each fd holds, what TCP did to it, and the
//! bytes the kernel counted next to what the fd's syscalls moved.
//!
//! A connection is one socket held by one fd life. Its identity comes
//! with [`Event::Socket`](crate::event::Event::Socket) (accept, connect, or
//! `/proc` for one open before the trace). TCP events are attributed to
//! the fd that held the socket **last**: the kernel fires them in softirq,
//! and after `close(2)` (`CLOSE_WAIT -> LAST_ACK -> CLOSE` goes on without
//! the fd), so a connection whose fd closed is kept by its socket address
//! until it reaches `CLOSE` or the trace ends.
//!
//! Bytes are compared only where both sides are whole: the connection
//! reached `CLOSE` (the kernel's counters are final), it began in the trace
//! (not before it) and no events were lost in its life. The kernel's
//! counters are corrected for what is not data (a FIN received, the SYN
//! and FIN acked); what remains is a fact about the connection (data
//! unread at close, data never acked), shown and never a mismatch.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use crate::event::OpKind;
use crate::sock::{
    tcp_state_name, Endpoint, SocketInfo, SocketOrigin, TcpEvent, TcpEventKind, TCP_CLOSE,
};

/// Bytes the kernel counted for a connection and what its fd's syscalls
/// moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnBytes {
    /// Sum of the fd's read-kind syscalls' positive rv.
    pub ops_read: u64,
    /// Sum of the fd's write-kind syscalls' positive rv.
    pub ops_written: u64,
    /// Data bytes the kernel received (`bytes_received` less a FIN), at the
    /// last TCP event seen.
    pub kernel_received: Option<u64>,
    /// Data bytes the peer acked (`bytes_acked` less SYN and FIN), at the
    /// last TCP event seen.
    pub kernel_acked: Option<u64>,
    /// Why the two sides are not compared, if they are not.
    pub not_compared: Option<String>,
    /// Received but never read by the app: `kernel_received - ops_read`
    /// (when compared).
    pub unread: Option<i64>,
    /// Written by the app but not acked by the peer: `ops_written -
    /// kernel_acked` (when compared).
    pub unacked: Option<i64>,
}

/// One connection at the end of its life (or of the trace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSummary {
    /// Process holding it.
    pub pid: u32,
    /// The fd that held it last.
    pub fd: i32,
    /// Its identity, if seen (a connection known only from TCP events has
    /// none).
    pub socket: Option<Arc<SocketInfo>>,
    /// The states it went through, in order, as the kernel names them
    /// (the first is the state it was in at its first state change).
    pub states: Vec<String>,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Resets this end sent.
    pub resets_sent: u64,
    /// Resets the peer sent.
    pub resets_received: u64,
    /// Kernel bytes next to the syscalls'.
    pub bytes: ConnBytes,
}

impl ConnSummary {
    /// `tcp 127.0.0.1:8080 <- 127.0.0.1:40000` (accepted) or `->`
    /// (connected): the connection in one line, escaped.
    pub fn name(&self) -> String {
        match &self.socket {
            Some(s) => name_of(s),
            None => "tcp ? (identity not seen)".into(),
        }
    }
}

/// A socket in one line: `tcp LOCAL <- PEER` for an accepted one, `->`
/// for one connected, `<->` for one open before the trace; escaped.
pub fn name_of(s: &SocketInfo) -> String {
    // A listener (or an unconnected socket) has no peer: the kernel keeps
    // the unspecified address and port 0.
    if matches!(&s.peer, Endpoint::Inet(a) if a.port() == 0 && a.ip().is_unspecified()) {
        return format!(
            "{} {} (no peer: listening or unconnected)",
            s.kind_name(),
            s.local
        );
    }
    let arrow = match s.origin {
        SocketOrigin::Accept => "<-",
        SocketOrigin::Connect => "->",
        SocketOrigin::BeforeTrace => "<->",
    };
    format!("{} {} {arrow} {}", s.kind_name(), s.local, s.peer)
}

#[derive(Debug)]
struct Conn {
    pid: u32,
    fd: i32,
    socket: Option<Arc<SocketInfo>>,
    sk: u64,
    states: Vec<i32>,
    retransmits: u64,
    resets_sent: u64,
    resets_received: u64,
    ops_read: u64,
    ops_written: u64,
    last: Option<TcpEvent>,
    lost: bool,
}

impl Conn {
    fn new(pid: u32, fd: i32, socket: Option<Arc<SocketInfo>>, sk: u64) -> Conn {
        Conn {
            pid,
            fd,
            socket,
            sk,
            states: Vec::new(),
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            ops_read: 0,
            ops_written: 0,
            last: None,
            lost: false,
        }
    }

    fn tcp(&mut self, t: &TcpEvent) {
        match t.kind {
            TcpEventKind::State => {
                if self.states.last() != Some(&t.from) {
                    self.states.push(t.from);
                }
                self.states.push(t.to);
            }
            TcpEventKind::Retransmit => self.retransmits += 1,
            TcpEventKind::ResetSent => self.resets_sent += 1,
            TcpEventKind::ResetReceived => self.resets_received += 1,
        }
        self.last = Some(t.clone());
    }

    fn closed(&self) -> bool {
        self.states.last() == Some(&TCP_CLOSE)
    }

    fn summary(self, end: &str) -> ConnSummary {
        let mut bytes = ConnBytes {
            ops_read: self.ops_read,
            ops_written: self.ops_written,
            ..ConnBytes::default()
        };
        let origin = self.socket.as_ref().map(|s| s.origin);
        if let Some(t) = &self.last {
            let syn = u64::from(origin == Some(SocketOrigin::Connect));
            // The kernel's flag says shut down and all acked; a FIN went
            // out only if the socket passed a state that sends one (a close
            // with unread data sends a reset instead).
            let fin_sent = self.states.iter().any(|s| matches!(s, 4 | 9 | 11));
            let fin = u64::from(t.fin_acked && fin_sent);
            bytes.kernel_received = Some(t.bytes_received.saturating_sub(t.fin_received.into()));
            bytes.kernel_acked = Some(t.bytes_acked.saturating_sub(syn + fin));
        }
        let tcp = self.socket.as_ref().is_none_or(|s| s.is_tcp());
        bytes.not_compared = if !tcp {
            Some("not TCP".into())
        } else if origin.is_none() {
            Some("identity not seen".into())
        } else if origin == Some(SocketOrigin::BeforeTrace) {
            Some("opened before the trace".into())
        } else if self.lost {
            Some("events lost".into())
        } else if !self.closed() {
            Some(format!("not closed when the {end}"))
        } else {
            None
        };
        if bytes.not_compared.is_none() {
            let (rcv, ack) = (
                bytes.kernel_received.unwrap_or(0),
                bytes.kernel_acked.unwrap_or(0),
            );
            bytes.unread = Some(rcv as i64 - self.ops_read as i64);
            bytes.unacked = Some(self.ops_written as i64 - ack as i64);
        }
        ConnSummary {
            pid: self.pid,
            fd: self.fd,
            socket: self.socket,
            states: self
                .states
                .iter()
                .map(|s| tcp_state_name(*s).to_string())
                .collect(),
            retransmits: self.retransmits,
            resets_sent: self.resets_sent,
            resets_received: self.resets_received,
            bytes,
        }
    }
}

/// At most this many finished connections are kept for the summary: a long
/// trace of a busy server would otherwise grow without bound. The rest are
/// counted ([`Connections::finish`]).
const MAX_KEPT: usize = 10_000;

/// The connections of the traced processes, live (held by an fd) and
/// closed (the fd is gone, the socket not yet `CLOSE`). Pure.
#[derive(Debug, Default)]
pub struct Connections {
    live: HashMap<(u32, i32), Conn>,
    closed: HashMap<u64, Conn>,
    /// Finished connections, in the order they finished.
    done: Vec<ConnSummary>,
    /// Accepted connections by (remote host, local port or path).
    accepted: BTreeMap<(String, String), u64>,
    /// Finished connections not kept (past [`MAX_KEPT`]).
    omitted: u64,
    /// Recently finished connections by socket, as indexes into `done`:
    /// a close with unread data sets CLOSE and then sends its reset.
    finished: HashMap<u64, usize>,
    /// `finished`'s entries, oldest first, to keep it bounded.
    finished_order: std::collections::VecDeque<(u64, usize)>,
}

/// How many finished sockets are remembered for events after their CLOSE.
const RECENT: usize = 1024;

impl Connections {
    /// The socket `fd` of `pid` holds now, if known.
    pub fn socket(&self, pid: u32, fd: i32) -> Option<&Arc<SocketInfo>> {
        self.live.get(&(pid, fd)).and_then(|c| c.socket.as_ref())
    }

    /// An fd's identity became known.
    pub fn identity(&mut self, info: &SocketInfo) {
        let key = (info.pid, info.fd);
        // A new socket at a finished one's address.
        self.finished.remove(&info.sk);
        let info = Arc::new(info.clone());
        if info.origin == SocketOrigin::Accept {
            let local = match &info.local {
                Endpoint::Inet(a) => a.port().to_string(),
                other => other.to_string(),
            };
            *self.accepted.entry((info.peer.host(), local)).or_default() += 1;
        }
        match self.live.get_mut(&key) {
            // TCP events of a connect come before its identity.
            Some(c) if c.socket.is_none() && (c.sk == info.sk || info.sk == 0) => {
                c.socket = Some(info);
                return;
            }
            // A socket known from /proc, seen again at a later accept or
            // connect (both reads raced): the same socket.
            Some(c)
                if c.sk == info.sk || c.socket.as_ref().is_some_and(|s| s.inode == info.inode) =>
            {
                c.sk = info.sk;
                c.socket = Some(info);
                return;
            }
            _ => {}
        }
        // The number holds another socket now: the old one's life with it
        // is over.
        self.fd_closed(info.pid, info.fd);
        let sk = info.sk;
        self.live
            .insert(key, Conn::new(info.pid, info.fd, Some(info), sk));
    }

    /// A TCP event; returns nothing: the event itself goes on as a row.
    pub fn tcp(&mut self, t: &TcpEvent) {
        // A reset or retransmit after CLOSE belongs to the finished
        // connection; a state change means the address is a new socket's.
        if let Some(&i) = self.finished.get(&t.sk) {
            if t.kind != TcpEventKind::State {
                if let Some(c) = self.done.get_mut(i) {
                    match t.kind {
                        TcpEventKind::Retransmit => c.retransmits += 1,
                        TcpEventKind::ResetSent => c.resets_sent += 1,
                        TcpEventKind::ResetReceived => c.resets_received += 1,
                        TcpEventKind::State => {}
                    }
                }
                return;
            }
            self.finished.remove(&t.sk);
        }
        let conn = if let Some(c) = self.closed.get_mut(&t.sk) {
            c
        } else {
            let key = (t.pid, t.fd);
            let same = self
                .live
                .get(&key)
                .is_some_and(|c| c.sk == t.sk || c.sk == 0);
            if !same {
                // Not the socket the fd holds now (its identity was lost, or
                // the fd was reused): kept apart, by its socket.
                if let Some(old) = self.live.remove(&key) {
                    self.retire(old);
                }
                self.live.insert(key, Conn::new(t.pid, t.fd, None, t.sk));
            }
            let c = self.live.get_mut(&key).expect("inserted above");
            c.sk = t.sk;
            c
        };
        conn.tcp(t);
        if conn.closed() {
            let (pid, fd, sk) = (conn.pid, conn.fd, conn.sk);
            let conn = match self.closed.remove(&sk) {
                Some(c) => c,
                None => self.live.remove(&(pid, fd)).expect("found above"),
            };
            self.keep(conn.summary("trace ended"));
            // Kept (not past MAX_KEPT): remembered for what comes after.
            if self.done.last().is_some_and(|c| c.pid == pid && c.fd == fd) {
                let i = self.done.len() - 1;
                self.finished.insert(sk, i);
                self.finished_order.push_back((sk, i));
                if self.finished_order.len() > RECENT {
                    if let Some((old, j)) = self.finished_order.pop_front() {
                        if self.finished.get(&old) == Some(&j) {
                            self.finished.remove(&old);
                        }
                    }
                }
            }
        }
    }

    /// A syscall of kind `op` on `fd` returned `rv`.
    pub fn syscall(&mut self, pid: u32, fd: i32, op: OpKind, rv: i64) {
        if rv <= 0 {
            return;
        }
        if let Some(c) = self.live.get_mut(&(pid, fd)) {
            match op {
                OpKind::Read => c.ops_read = c.ops_read.saturating_add(rv as u64),
                OpKind::Write => c.ops_written = c.ops_written.saturating_add(rv as u64),
                _ => {}
            }
        }
    }

    /// The fd's life ended (its close was entered): a TCP socket goes on
    /// until `CLOSE`, kept by its address.
    pub fn fd_closed(&mut self, pid: u32, fd: i32) {
        if let Some(c) = self.live.remove(&(pid, fd)) {
            self.retire(c);
        }
    }

    fn retire(&mut self, c: Conn) {
        let tcp = c.socket.as_ref().is_none_or(|s| s.is_tcp());
        if tcp && c.sk != 0 && !c.closed() {
            if let Some(older) = self.closed.insert(c.sk, c) {
                // The kernel reused the address: the older one's end was
                // not seen.
                self.keep(older.summary("socket was reused"));
            }
        } else {
            self.keep(c.summary("fd was closed"));
        }
    }

    fn keep(&mut self, c: ConnSummary) {
        if self.done.len() < MAX_KEPT {
            self.done.push(c);
        } else {
            self.omitted += 1;
        }
    }

    /// The process ended: its fds are closed.
    pub fn process_ended(&mut self, pid: u32) {
        let fds: Vec<i32> = self
            .live
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, fd)| *fd)
            .collect();
        for fd in fds {
            self.fd_closed(pid, fd);
        }
    }

    /// Events were lost: no open connection's bytes can be compared.
    pub fn lost(&mut self) {
        for c in self.live.values_mut().chain(self.closed.values_mut()) {
            c.lost = true;
        }
    }

    /// The end of the trace: every connection kept, finished or not, in
    /// the order they finished, then the open ones by (pid, fd); the
    /// accepted counts; how many were not kept.
    pub fn finish(&mut self) -> (Vec<ConnSummary>, BTreeMap<(String, String), u64>, u64) {
        let mut open: Vec<Conn> = self
            .live
            .drain()
            .map(|(_, c)| c)
            .chain(self.closed.drain().map(|(_, c)| c))
            .collect();
        open.sort_by_key(|c| (c.pid, c.fd, c.sk));
        for c in open {
            self.keep(c.summary("trace ended"));
        }
        (
            std::mem::take(&mut self.done),
            std::mem::take(&mut self.accepted),
            std::mem::take(&mut self.omitted),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Correlator, Filter, Record};
    use crate::event::{CloseEnter, Event, Probe, ProbeName, Syscall, SyscallName};
    use crate::sock::AF_INET;

    const SK: u64 = 0xffff_8888_0000_1000;

    fn accepted(fd: i32, peer_port: u16) -> SocketInfo {
        let lo = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        SocketInfo {
            ts_ns: 10,
            pid: 1,
            tid: 1,
            fd,
            origin: SocketOrigin::Accept,
            family: AF_INET,
            sock_type: 1,
            protocol: 6,
            local: Endpoint::inet(AF_INET, lo, 8080),
            peer: Endpoint::inet(AF_INET, lo, peer_port),
            inode: 99,
            sk: SK,
        }
    }

    fn tcp(ts: u64, kind: TcpEventKind, from: i32, to: i32, rcv: u64, acked: u64) -> TcpEvent {
        TcpEvent {
            ts_ns: ts,
            pid: 1,
            tid: 0,
            fd: 8,
            kind,
            from,
            to,
            sk: SK,
            bytes_received: rcv,
            bytes_acked: acked,
            fin_received: from >= 8 || to == 8,
            fin_acked: to == TCP_CLOSE && kind == TcpEventKind::State,
        }
    }

    fn sys(ts: u64, name: SyscallName, fd: i32, rv: i64) -> Event {
        Event::Syscall(Syscall {
            ts_ns: ts,
            pid: 1,
            tid: 1,
            name,
            fd,
            rv,
            dur_ns: 1,
            arg: 0,
        })
    }

    fn probe(ts: u64, name: ProbeName, args: [u64; 6]) -> Event {
        Event::Probe(Probe {
            ts_ns: ts,
            pid: 1,
            tid: 1,
            name,
            args,
            strings: vec![],
        })
    }

    /// A client that sends 10 bytes and closes; the server reads 7 of them,
    /// writes 5 and closes: CLOSE_WAIT, LAST_ACK, CLOSE come after the fd's
    /// close, on the fd that held the socket last.
    #[test]
    fn tcp_after_close_belongs_to_the_last_holder_and_bytes_are_compared() {
        let mut c = Correlator::new(Filter::default());
        let mut out = Vec::new();
        let events = vec![
            probe(1, ProbeName::AcceptEntry, [3, 0, 0, 1, 7, 0]),
            Event::Socket(accepted(8, 40000)),
            sys(10, SyscallName::Accept4, 3, 8),
            probe(12, ProbeName::AcceptReturn, [3, 0, 0, 1, 7, 8]),
            sys(20, SyscallName::Recvfrom, 8, 7),
            sys(21, SyscallName::Sendto, 8, 5),
            Event::Tcp(tcp(30, TcpEventKind::State, 1, 8, 11, 5)),
            Event::CloseEnter(CloseEnter {
                ts_ns: 40,
                pid: 1,
                tid: 1,
                fd: 8,
            }),
            sys(40, SyscallName::Close, 8, 0),
            Event::Tcp(tcp(41, TcpEventKind::State, 8, 9, 11, 5)),
            Event::Tcp(tcp(42, TcpEventKind::State, 9, TCP_CLOSE, 11, 6)),
        ];
        for e in events {
            c.push(e, &mut out);
        }
        let accept = out
            .iter()
            .find_map(|r| match r {
                Record::Op(op) if op.kind == OpKind::Accept => Some(op),
                _ => None,
            })
            .expect("the accept op");
        let conn = accept
            .conn
            .as_ref()
            .expect("the accept op names its connection");
        assert_eq!(conn.peer.to_string(), "127.0.0.1:40000");
        assert_eq!(conn.local.to_string(), "127.0.0.1:8080");
        let tcp_rows = out
            .iter()
            .filter(|r| matches!(r, Record::Event(Event::Tcp(t)) if t.fd == 8))
            .count();
        assert_eq!(tcp_rows, 3);
        let s = c.finish(&mut out);
        assert_eq!(s.connections.len(), 1);
        let k = &s.connections[0];
        assert_eq!(
            k.states,
            ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"].map(String::from)
        );
        assert_eq!(k.name(), "tcp 127.0.0.1:8080 <- 127.0.0.1:40000");
        let b = &k.bytes;
        assert_eq!((b.ops_read, b.ops_written), (7, 5));
        // 11 received less the FIN; 6 acked less the FIN.
        assert_eq!((b.kernel_received, b.kernel_acked), (Some(10), Some(5)));
        assert_eq!(
            (b.unread, b.unacked, b.not_compared.as_deref()),
            (Some(3), Some(0), None)
        );
        // (The bare syscalls here are orphans on an eventer fd; the
        // difference in bytes adds no mismatch of its own.)
        assert_eq!(s.mismatches, 3, "a difference in bytes is never a mismatch");
        assert_eq!(
            s.accepted
                .get(&("127.0.0.1".to_string(), "8080".to_string())),
            Some(&1)
        );
        assert_eq!(
            s.fd_names.get(&8).map(String::as_str),
            Some("tcp 127.0.0.1:8080 <- 127.0.0.1:40000")
        );
    }

    #[test]
    fn a_reset_is_counted_and_an_open_or_lossy_connection_is_not_compared() {
        let mut conns = Connections::default();
        conns.identity(&accepted(8, 1));
        conns.syscall(1, 8, OpKind::Read, 4);
        conns.tcp(&tcp(5, TcpEventKind::ResetReceived, 1, 1, 4, 0));
        conns.tcp(&tcp(6, TcpEventKind::State, 1, TCP_CLOSE, 4, 0));
        let mut second = accepted(9, 2);
        second.sk = SK + 1;
        conns.identity(&second);
        conns.syscall(1, 9, OpKind::Write, 3);
        let mut third = accepted(10, 3);
        third.sk = SK + 2;
        conns.identity(&third);
        conns.lost();
        let (all, accepted, _) = conns.finish();
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].resets_received, all[0].bytes.unread), (1, Some(0)));
        assert_eq!(all[0].states, ["ESTABLISHED", "CLOSE"].map(String::from));
        assert_eq!(
            all[1].bytes.not_compared.as_deref(),
            Some("events lost"),
            "a loss in its life: the syscalls' sums may be short"
        );
        assert_eq!(all[2].bytes.not_compared.as_deref(), Some("events lost"));
        assert_eq!(accepted.values().sum::<u64>(), 3);
    }

    #[test]
    fn a_long_trace_keeps_a_bounded_list_and_counts_the_rest() {
        let mut conns = Connections::default();
        for i in 0..MAX_KEPT + 5 {
            let mut info = accepted(8, 1);
            info.sk = i as u64 + 1;
            conns.identity(&info);
            conns.tcp(&TcpEvent {
                sk: info.sk,
                ..tcp(1, TcpEventKind::State, 1, TCP_CLOSE, 0, 0)
            });
        }
        let (all, accepted, omitted) = conns.finish();
        assert_eq!((all.len(), omitted), (MAX_KEPT, 5));
        assert_eq!(accepted.values().sum::<u64>(), (MAX_KEPT + 5) as u64);
    }

    #[test]
    fn a_connect_whose_tcp_events_come_before_its_identity_keeps_them() {
        let mut conns = Connections::default();
        // SYN_SENT and ESTABLISHED fire inside connect, before its record.
        conns.tcp(&tcp(1, TcpEventKind::State, TCP_CLOSE, 2, 0, 0));
        conns.tcp(&tcp(2, TcpEventKind::State, 2, 1, 0, 1));
        let mut info = accepted(8, 80);
        info.origin = SocketOrigin::Connect;
        conns.identity(&info);
        conns.syscall(1, 8, OpKind::Write, 4);
        conns.tcp(&tcp(3, TcpEventKind::State, 1, 4, 0, 5));
        conns.tcp(&tcp(4, TcpEventKind::State, 4, 5, 0, 6));
        let mut last = tcp(5, TcpEventKind::State, 5, TCP_CLOSE, 0, 6);
        last.fin_acked = true;
        conns.tcp(&last);
        // After CLOSE, not a new connection: the finished one's.
        conns.tcp(&tcp(6, TcpEventKind::ResetSent, TCP_CLOSE, TCP_CLOSE, 0, 6));
        let (all, accepted, _) = conns.finish();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].states,
            [
                "CLOSE",
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "CLOSE"
            ]
            .map(String::from)
        );
        assert_eq!(all[0].resets_sent, 1);
        assert!(all[0].socket.is_some());
        // 6 acked: the SYN, 4 bytes, the FIN.
        assert_eq!(all[0].bytes.kernel_acked, Some(4));
        assert_eq!(all[0].bytes.unacked, Some(0));
        assert!(
            accepted.is_empty(),
            "a connect is not an accepted connection"
        );
    }
}
