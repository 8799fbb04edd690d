//! The ring buffer's records decoded into [`Event`]s. The record types are
//! not written here: the skeleton generates them from `bpf/event.h` (see
//! there). Pure, so it is tested without a kernel.

use std::collections::HashSet;
use std::mem::offset_of;
use std::sync::Arc;

use crate::event::{
    CloseEnter, EpollCtl, EpollWait, Event, OffCpu, Probe, ProbeName, ProcessEvent,
    ProcessEventKind, ReadyEvent, SlowSyscall, Syscall, SyscallName,
};

use super::skel::types::{
    ev_close_enter, ev_epoll_ctl, ev_epoll_wait, ev_exit, ev_fork, ev_header, ev_limit, ev_log,
    ev_lost, ev_off_cpu, ev_probe, ev_slow_syscall, ev_sock, ev_syscall, ev_tcp, ev_type, probe_id,
    sc_kind, tcp_ev_kind,
};
use crate::sock::{Endpoint, SocketOrigin, TcpEventKind, AF_UNIX};

// The record types are generated from `bpf/event.h` (by way of the BPF
// object's BTF); what is left to check at build time is that the C order of
// the syscall and probe ids is the order of the Rust tables they index.
macro_rules! same_order {
    ($table:expr, $($id:expr => $name:path),+ $(,)?) => {
        $(const _: () = assert!(matches!($table[$id.0 as usize], $name));)+
    };
}
same_order!(SyscallName::ALL,
    sc_kind::SC_READ => SyscallName::Read,
    sc_kind::SC_READV => SyscallName::Readv,
    sc_kind::SC_RECVFROM => SyscallName::Recvfrom,
    sc_kind::SC_RECVMSG => SyscallName::Recvmsg,
    sc_kind::SC_WRITE => SyscallName::Write,
    sc_kind::SC_WRITEV => SyscallName::Writev,
    sc_kind::SC_SENDTO => SyscallName::Sendto,
    sc_kind::SC_SENDMSG => SyscallName::Sendmsg,
    sc_kind::SC_ACCEPT => SyscallName::Accept,
    sc_kind::SC_ACCEPT4 => SyscallName::Accept4,
    sc_kind::SC_CONNECT => SyscallName::Connect,
    sc_kind::SC_SHUTDOWN => SyscallName::Shutdown,
    sc_kind::SC_CLOSE => SyscallName::Close,
);
const _: () = assert!(SyscallName::ALL.len() == sc_kind::SC_EPOLL_CTL.0 as usize);
same_order!(ProbeName::ALL,
    probe_id::PR_ACCEPT_ENTRY => ProbeName::AcceptEntry,
    probe_id::PR_ACCEPT_RETURN => ProbeName::AcceptReturn,
    probe_id::PR_READ_ENTRY => ProbeName::ReadEntry,
    probe_id::PR_READ_RETURN => ProbeName::ReadReturn,
    probe_id::PR_WRITE_ENTRY => ProbeName::WriteEntry,
    probe_id::PR_WRITE_RETURN => ProbeName::WriteReturn,
    probe_id::PR_CLOSE_ENTRY => ProbeName::CloseEntry,
    probe_id::PR_CLOSE_RETURN => ProbeName::CloseReturn,
    probe_id::PR_CALLBACK_ENTRY => ProbeName::CallbackEntry,
    probe_id::PR_CALLBACK_RETURN => ProbeName::CallbackReturn,
    probe_id::PR_LOG => ProbeName::Log,
);
const _: () = assert!(ProbeName::ALL.len() == probe_id::PR_LOG.0 as usize + 1);
const _: () = assert!(EpollWait::MAX_EVENTS == ev_limit::WAIT_MAX_EVENTS.0 as usize);
same_order!(TcpEventKind::ALL,
    tcp_ev_kind::TCP_EV_STATE => TcpEventKind::State,
    tcp_ev_kind::TCP_EV_RETRANSMIT => TcpEventKind::Retransmit,
    tcp_ev_kind::TCP_EV_RESET_SENT => TcpEventKind::ResetSent,
    tcp_ev_kind::TCP_EV_RESET_RECEIVED => TcpEventKind::ResetReceived,
);
const SOCK_PATH_LEN: usize = ev_limit::SOCK_PATH_LEN.0 as usize;

/// Where a callback probe's name starts: the other probes' records end there.
const PROBE_NAME_AT: usize = std::mem::offset_of!(ev_probe, name);

/// Why a record could not be decoded. Counted by the engine, never fatal:
/// a kernel/userland version skew must not kill a trace.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its type's layout.
    Short { kind: u32, len: usize },
    /// A type, syscall or probe id this build does not know.
    Unknown { kind: u32, id: u32 },
}

fn read<T: Copy + Default>(data: &[u8]) -> Option<T> {
    read_prefix(data, std::mem::size_of::<T>())
}

/// Reads a record of which only the first `len` bytes must be there (the
/// rest stays zero): a probe's record ends before its name unless it is a
/// callback's.
fn read_prefix<T: Copy + Default>(data: &[u8], len: usize) -> Option<T> {
    if data.len() < len {
        return None;
    }
    let mut value = T::default();
    let n = data.len().min(std::mem::size_of::<T>());
    // SAFETY: T is a generated plain-old-data repr(C) struct for which every
    // bit pattern is valid, at least n bytes long; copying bytes copes with
    // the ring buffer's 8-byte alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), (&raw mut value).cast::<u8>(), n);
    }
    Some(value)
}

/// The bytes of a `char` array field of the record in `data`, found by its
/// offset: the generated fields are `i8`s.
fn field<'a>(data: &'a [u8], at: usize, field: &[i8]) -> &'a [u8] {
    &data[at..at + field.len()]
}

fn c_str(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// Decodes records, sharing one copy of each callback name among all the
/// events that carry it: names come twice per callback and are few.
#[derive(Default)]
pub struct Decoder {
    names: HashSet<Arc<str>>,
}

impl Decoder {
    /// Past this many distinct names (names with ids in them?), new ones
    /// are no longer kept.
    const MAX_NAMES: usize = 4096;

    /// Decodes one ring-buffer record.
    pub fn decode(&mut self, data: &[u8]) -> Result<Event, DecodeError> {
        decode_with(data, &mut |bytes| self.name(bytes))
    }

    fn name(&mut self, bytes: &[u8]) -> Arc<str> {
        let text = c_str(bytes);
        if let Some(name) = self.names.get(&*text) {
            return Arc::clone(name);
        }
        let name: Arc<str> = text.into();
        if self.names.len() < Self::MAX_NAMES {
            self.names.insert(Arc::clone(&name));
        }
        name
    }
}

/// Decodes one ring-buffer record (see [`Decoder`] to decode many).
pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    decode_with(data, &mut |bytes| c_str(bytes).into())
}

fn decode_with(
    data: &[u8],
    callback_name: &mut dyn FnMut(&[u8]) -> Arc<str>,
) -> Result<Event, DecodeError> {
    let h: ev_header = read(data).ok_or(DecodeError::Short {
        kind: 0,
        len: data.len(),
    })?;
    let short = || DecodeError::Short {
        kind: h.r#type,
        len: data.len(),
    };
    match ev_type(h.r#type) {
        ev_type::EV_SYSCALL => {
            let r: ev_syscall = read(data).ok_or_else(short)?;
            let name = *SyscallName::ALL
                .get(r.kind as usize)
                .ok_or(DecodeError::Unknown {
                    kind: h.r#type,
                    id: r.kind,
                })?;
            Ok(Event::Syscall(Syscall {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                name,
                fd: r.fd,
                rv: r.rv,
                dur_ns: r.dur_ns,
                arg: r.arg,
            }))
        }
        ev_type::EV_EPOLL_CTL => {
            let r: ev_epoll_ctl = read(data).ok_or_else(short)?;
            Ok(Event::EpollCtl(EpollCtl {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                epfd: r.epfd,
                op: r.op,
                fd: r.fd,
                events: r.events,
                data: r.data,
                rv: r.rv,
                dur_ns: r.dur_ns,
            }))
        }
        ev_type::EV_EPOLL_WAIT => {
            let r: ev_epoll_wait = read(data).ok_or_else(short)?;
            let name = match sc_kind(r.kind) {
                sc_kind::SC_EPOLL_WAIT => "epoll_wait",
                sc_kind::SC_EPOLL_PWAIT => "epoll_pwait",
                sc_kind::SC_EPOLL_PWAIT2 => "epoll_pwait2",
                sc_kind(id) => return Err(DecodeError::Unknown { kind: h.r#type, id }),
            };
            let n = (r.nready as usize).min(r.ready.len());
            Ok(Event::EpollWait(EpollWait {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                name,
                epfd: r.epfd,
                rv: r.rv,
                dur_ns: r.dur_ns,
                events: r.ready[..n]
                    .iter()
                    .map(|e| ReadyEvent {
                        events: e.events,
                        data: e.data,
                    })
                    .collect(),
            }))
        }
        ev_type::EV_PROBE => {
            let r: ev_probe = read_prefix(data, PROBE_NAME_AT).ok_or_else(short)?;
            let name = *ProbeName::ALL
                .get(r.probe as usize)
                .ok_or(DecodeError::Unknown {
                    kind: h.r#type,
                    id: r.probe,
                })?;
            let strings = match name {
                ProbeName::CallbackEntry | ProbeName::CallbackReturn => {
                    let name = data
                        .get(PROBE_NAME_AT..PROBE_NAME_AT + r.name.len())
                        .ok_or_else(short)?;
                    vec![callback_name(name)]
                }
                _ => Vec::new(),
            };
            Ok(Event::Probe(Probe {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                name,
                args: r.args,
                strings,
            }))
        }
        ev_type::EV_LOG => {
            let r: ev_log = read(data).ok_or_else(short)?;
            let mut args = [0u64; 6];
            args[..4].copy_from_slice(&r.args);
            Ok(Event::Probe(Probe {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                name: ProbeName::Log,
                args,
                strings: vec![
                    c_str(field(data, offset_of!(ev_log, facility), &r.facility)).into(),
                    c_str(field(data, offset_of!(ev_log, file), &r.file)).into(),
                    c_str(field(data, offset_of!(ev_log, msg), &r.msg)).into(),
                ],
            }))
        }
        ev_type::EV_LOST => {
            let r: ev_lost = read(data).ok_or_else(short)?;
            Ok(Event::Lost {
                ts_ns: h.ts_ns,
                count: r.count,
            })
        }
        ev_type::EV_CLOSE_ENTER => {
            let r: ev_close_enter = read(data).ok_or_else(short)?;
            Ok(Event::CloseEnter(CloseEnter {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                fd: r.fd,
            }))
        }
        ev_type::EV_EXEC => Ok(Event::Process(ProcessEvent {
            ts_ns: h.ts_ns,
            pid: h.pid,
            tid: h.tid,
            kind: ProcessEventKind::Exec,
        })),
        ev_type::EV_FORK => {
            let r: ev_fork = read(data).ok_or_else(short)?;
            Ok(Event::Process(ProcessEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                kind: ProcessEventKind::Fork { child: r.child },
            }))
        }
        ev_type::EV_EXIT => {
            let r: ev_exit = read(data).ok_or_else(short)?;
            Ok(Event::Process(ProcessEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                kind: ProcessEventKind::Exit { code: r.code },
            }))
        }
        ev_type::EV_SLOW_SYSCALL => {
            let r: ev_slow_syscall = read(data).ok_or_else(short)?;
            Ok(Event::SlowSyscall(SlowSyscall {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                nr: r.nr,
                arg0: r.arg0,
                rv: r.rv,
                dur_ns: r.dur_ns,
            }))
        }
        ev_type::EV_OFF_CPU => {
            let r: ev_off_cpu = read(data).ok_or_else(short)?;
            Ok(Event::OffCpu(OffCpu {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                total_ns: r.total_ns,
            }))
        }
        ev_type::EV_SOCK => {
            let r: ev_sock = read(data).ok_or_else(short)?;
            let origin = match sc_kind(r.kind) {
                sc_kind::SC_ACCEPT | sc_kind::SC_ACCEPT4 => SocketOrigin::Accept,
                sc_kind::SC_CONNECT => SocketOrigin::Connect,
                _ => {
                    return Err(DecodeError::Unknown {
                        kind: h.r#type,
                        id: r.kind,
                    })
                }
            };
            let path = |at: usize, f: &[i8], len: u16| {
                let bytes = field(data, at, f);
                Endpoint::unix(&bytes[..(len as usize).min(SOCK_PATH_LEN).min(bytes.len())])
            };
            let (local, peer) = if r.family == AF_UNIX {
                (
                    path(offset_of!(ev_sock, lpath), &r.lpath, r.lpath_len),
                    path(offset_of!(ev_sock, rpath), &r.rpath, r.rpath_len),
                )
            } else {
                (
                    Endpoint::inet(r.family, r.laddr, r.lport),
                    Endpoint::inet(r.family, r.raddr, r.rport),
                )
            };
            Ok(Event::Socket(crate::sock::SocketInfo {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                fd: r.fd,
                origin,
                family: r.family,
                sock_type: r.sock_type,
                protocol: r.protocol,
                local,
                peer,
                inode: r.ino,
                sk: r.sk,
            }))
        }
        ev_type::EV_TCP => {
            let r: ev_tcp = read(data).ok_or_else(short)?;
            let kind = *TcpEventKind::ALL
                .get(r.event as usize)
                .ok_or(DecodeError::Unknown {
                    kind: h.r#type,
                    id: r.event,
                })?;
            Ok(Event::Tcp(crate::sock::TcpEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                fd: r.fd,
                kind,
                from: r.from,
                to: r.to,
                sk: r.sk,
                bytes_received: r.bytes_received,
                bytes_acked: r.bytes_acked,
                fin_received: r.fin_received != 0,
                fin_acked: r.fin_acked != 0,
            }))
        }
        ev_type(id) => Err(DecodeError::Unknown { kind: 0, id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::skel::types::ev_ready;

    fn header(kind: ev_type, tid: u32, ts_ns: u64, pid: u32) -> ev_header {
        ev_header {
            r#type: kind.0,
            tid,
            ts_ns,
            pid,
            pad: 0,
        }
    }

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading a plain repr(C) value's bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_syscall() {
        let r = ev_syscall {
            h: header(ev_type::EV_SYSCALL, 42, 1000, 40),
            kind: 2,
            fd: 7,
            rv: -11,
            dur_ns: 500,
            arg: 4096,
        };
        let Event::Syscall(s) = decode(&bytes(&r)).unwrap() else {
            panic!("not a syscall")
        };
        assert_eq!(
            (s.name, s.fd, s.rv, s.errno(), s.pid, s.tid, s.arg),
            (SyscallName::Recvfrom, 7, -11, Some(11), 40, 42, 4096)
        );
    }

    #[test]
    fn decodes_fork_and_exit_with_their_pids() {
        let fork = ev_fork {
            h: header(ev_type::EV_FORK, 11, 5, 10),
            child: 20,
            pad: 0,
        };
        assert_eq!(
            decode(&bytes(&fork)),
            Ok(Event::Process(ProcessEvent {
                ts_ns: 5,
                pid: 10,
                tid: 11,
                kind: ProcessEventKind::Fork { child: 20 }
            }))
        );
        let exit = ev_exit {
            h: header(ev_type::EV_EXIT, 20, 6, 20),
            code: 9,
            pad: 0,
        };
        assert_eq!(
            decode(&bytes(&exit)),
            Ok(Event::Process(ProcessEvent {
                ts_ns: 6,
                pid: 20,
                tid: 20,
                kind: ProcessEventKind::Exit { code: 9 }
            }))
        );
        assert!(decode(&bytes(&exit)[..24]).is_err());
    }

    #[test]
    fn decodes_stall_records() {
        let h = |kind| header(kind, 9, 100, 8);
        let slow = ev_slow_syscall {
            h: h(ev_type::EV_SLOW_SYSCALL),
            nr: 74,
            pad: 0,
            arg0: 5,
            rv: 0,
            dur_ns: 50_000_000,
        };
        let Event::SlowSyscall(s) = decode(&bytes(&slow)).unwrap() else {
            panic!("not a slow syscall")
        };
        assert_eq!(
            (s.nr, s.arg0, s.rv, s.dur_ns, s.pid, s.tid),
            (74, 5, 0, 50_000_000, 8, 9)
        );
        assert!(decode(&bytes(&slow)[..48]).is_err());
        let off = ev_off_cpu {
            h: h(ev_type::EV_OFF_CPU),
            total_ns: 7,
        };
        assert_eq!(
            decode(&bytes(&off)),
            Ok(Event::OffCpu(OffCpu {
                ts_ns: 100,
                pid: 8,
                tid: 9,
                total_ns: 7
            }))
        );
        assert!(decode(&bytes(&off)[..24]).is_err());
    }

    #[test]
    fn decodes_a_close_entry() {
        let r = ev_close_enter {
            h: header(ev_type::EV_CLOSE_ENTER, 9, 77, 1),
            fd: 12,
            pad: 0,
        };
        assert_eq!(
            decode(&bytes(&r)),
            Ok(Event::CloseEnter(CloseEnter {
                ts_ns: 77,
                pid: 1,
                tid: 9,
                fd: 12
            }))
        );
        assert!(decode(&bytes(&r)[..28]).is_err());
    }

    #[test]
    fn decodes_a_wait_with_only_the_filled_events() {
        let mut r = ev_epoll_wait {
            h: header(ev_type::EV_EPOLL_WAIT, 1, 5, 1),
            kind: sc_kind::SC_EPOLL_PWAIT.0,
            epfd: 3,
            rv: 45,
            dur_ns: 9,
            nready: 2,
            pad: 0,
            ready: [ev_ready {
                events: 0xdead,
                pad: 0,
                data: 0xbeef,
            }; EpollWait::MAX_EVENTS],
        };
        r.ready[0] = ev_ready {
            events: 1,
            pad: 0,
            data: 10,
        };
        r.ready[1] = ev_ready {
            events: 4,
            pad: 0,
            data: 11,
        };
        let Event::EpollWait(w) = decode(&bytes(&r)).unwrap() else {
            panic!("not a wait")
        };
        assert_eq!(w.name, "epoll_pwait");
        assert_eq!(w.rv, 45);
        assert_eq!(
            w.events,
            vec![
                ReadyEvent {
                    events: 1,
                    data: 10
                },
                ReadyEvent {
                    events: 4,
                    data: 11
                }
            ]
        );
    }

    #[test]
    fn decodes_probe_strings_up_to_the_nul() {
        let mut name = [0u8; ev_limit::NAME_LEN.0 as usize];
        name[..5].copy_from_slice(b"echo\0");
        name[5] = b'x';
        let r = ev_probe {
            h: header(ev_type::EV_PROBE, 1, 5, 1),
            probe: probe_id::PR_CALLBACK_ENTRY.0,
            pad: 0,
            args: [1, 2, 3, 9, 1, 1],
            name: [0; 64],
        };
        let mut record = bytes(&r)[..PROBE_NAME_AT].to_vec();
        // A callback record without its name is cut short, not misread.
        assert!(matches!(decode(&record), Err(DecodeError::Short { .. })));
        record.extend_from_slice(&name);
        let Event::Probe(p) = decode(&record).unwrap() else {
            panic!("not a probe")
        };
        assert_eq!(p.name, ProbeName::CallbackEntry);
        assert_eq!(p.strings, vec![Arc::from("echo")]);
        assert_eq!(p.fd(), Some(9));
        // Other probes' records end before the name.
        let read = ev_probe {
            probe: probe_id::PR_READ_ENTRY.0,
            ..r
        };
        let Event::Probe(p) = decode(&bytes(&read)[..PROBE_NAME_AT]).unwrap() else {
            panic!("not a probe")
        };
        assert_eq!((p.name, p.strings.len()), (ProbeName::ReadEntry, 0));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let h = header(ev_type::EV_SYSCALL, 1, 1, 1);
        assert!(matches!(decode(&bytes(&h)), Err(DecodeError::Short { .. })));
        let h = header(ev_type(99), 1, 1, 1);
        assert!(matches!(
            decode(&bytes(&h)),
            Err(DecodeError::Unknown { .. })
        ));
        let r = ev_syscall {
            h: header(ev_type::EV_SYSCALL, 1, 1, 1),
            kind: 99,
            fd: 0,
            rv: 0,
            dur_ns: 0,
            arg: 0,
        };
        assert!(matches!(
            decode(&bytes(&r)),
            Err(DecodeError::Unknown { .. })
        ));
    }
}
