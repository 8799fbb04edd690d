//! The ring buffer's records as Rust sees them (mirrors `bpf/event.h`) and
//! their decoding into [`Event`]s. Pure, so it is tested without a kernel.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::{
    CloseEnter, EpollCtl, EpollWait, Event, OffCpu, Probe, ProbeName, ProcessEvent,
    ProcessEventKind, ReadyEvent, SlowSyscall, Syscall, SyscallName,
};

const EV_SYSCALL: u32 = 1;
const EV_EPOLL_CTL: u32 = 2;
const EV_EPOLL_WAIT: u32 = 3;
const EV_PROBE: u32 = 4;
const EV_LOG: u32 = 5;
const EV_EXEC: u32 = 6;
const EV_LOST: u32 = 7;
const EV_CLOSE_ENTER: u32 = 8;
const EV_FORK: u32 = 9;
const EV_EXIT: u32 = 10;
const EV_SLOW_SYSCALL: u32 = 11;
const EV_OFF_CPU: u32 = 12;

const SC_EPOLL_WAIT: u32 = 14;
const SC_EPOLL_PWAIT: u32 = 15;
const SC_EPOLL_PWAIT2: u32 = 16;

const WAIT_MAX_EVENTS: usize = 30;
const NAME_LEN: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    kind: u32,
    tid: u32,
    ts_ns: u64,
    pid: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawSyscall {
    h: Header,
    kind: u32,
    fd: i32,
    rv: i64,
    dur_ns: u64,
    arg: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawEpollCtl {
    h: Header,
    epfd: i32,
    op: i32,
    fd: i32,
    events: u32,
    data: u64,
    rv: i64,
    dur_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawReady {
    events: u32,
    pad: u32,
    data: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawEpollWait {
    h: Header,
    kind: u32,
    epfd: i32,
    rv: i64,
    dur_ns: u64,
    nready: u32,
    pad: u32,
    ready: [RawReady; WAIT_MAX_EVENTS],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawProbe {
    h: Header,
    probe: u32,
    pad: u32,
    args: [u64; 6],
}
// A callback probe's record goes on with its name: `name[NAME_LEN]`.

#[repr(C)]
#[derive(Clone, Copy)]
struct RawLost {
    h: Header,
    count: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawCloseEnter {
    h: Header,
    fd: i32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawFork {
    h: Header,
    child: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawExit {
    h: Header,
    code: i32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawSlowSyscall {
    h: Header,
    nr: u32,
    pad: u32,
    arg0: u64,
    rv: i64,
    dur_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawOffCpu {
    h: Header,
    total_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawLog {
    h: Header,
    args: [u64; 4],
    facility: [u8; 32],
    file: [u8; 64],
    msg: [u8; 128],
}

// The C compiler lays these out; a mismatch would decode garbage, so make
// it a build failure instead.
const _: () = assert!(std::mem::size_of::<Header>() == 24);
const _: () = assert!(std::mem::size_of::<RawSyscall>() == 56);
const _: () = assert!(std::mem::size_of::<RawEpollCtl>() == 64);
const _: () = assert!(std::mem::size_of::<RawEpollWait>() == 56 + 16 * WAIT_MAX_EVENTS);
const _: () = assert!(std::mem::size_of::<RawProbe>() == 32 + 48);
const _: () = assert!(std::mem::size_of::<RawCloseEnter>() == 32);
const _: () = assert!(std::mem::size_of::<RawFork>() == 32);
const _: () = assert!(std::mem::size_of::<RawExit>() == 32);
const _: () = assert!(std::mem::size_of::<RawSlowSyscall>() == 56);
const _: () = assert!(std::mem::size_of::<RawOffCpu>() == 32);
const _: () = assert!(std::mem::size_of::<RawLog>() == 24 + 32 + 32 + 64 + 128);

/// Why a record could not be decoded. Counted by the engine, never fatal:
/// a kernel/userland version skew must not kill a trace.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its type's layout.
    Short { kind: u32, len: usize },
    /// A type, syscall or probe id this build does not know.
    Unknown { kind: u32, id: u32 },
}

fn read<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked and T is a plain-old-data repr(C)
    // struct for which every bit pattern is valid; read_unaligned copes
    // with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
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
    let h: Header = read(data).ok_or(DecodeError::Short {
        kind: 0,
        len: data.len(),
    })?;
    let short = || DecodeError::Short {
        kind: h.kind,
        len: data.len(),
    };
    match h.kind {
        EV_SYSCALL => {
            let r: RawSyscall = read(data).ok_or_else(short)?;
            let name = *SyscallName::ALL
                .get(r.kind as usize)
                .ok_or(DecodeError::Unknown {
                    kind: h.kind,
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
        EV_EPOLL_CTL => {
            let r: RawEpollCtl = read(data).ok_or_else(short)?;
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
        EV_EPOLL_WAIT => {
            let r: RawEpollWait = read(data).ok_or_else(short)?;
            let name = match r.kind {
                SC_EPOLL_WAIT => "epoll_wait",
                SC_EPOLL_PWAIT => "epoll_pwait",
                SC_EPOLL_PWAIT2 => "epoll_pwait2",
                id => return Err(DecodeError::Unknown { kind: h.kind, id }),
            };
            let n = (r.nready as usize).min(WAIT_MAX_EVENTS);
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
        EV_PROBE => {
            let r: RawProbe = read(data).ok_or_else(short)?;
            let name = *ProbeName::ALL
                .get(r.probe as usize)
                .ok_or(DecodeError::Unknown {
                    kind: h.kind,
                    id: r.probe,
                })?;
            let strings = match name {
                ProbeName::CallbackEntry | ProbeName::CallbackReturn => {
                    let at = std::mem::size_of::<RawProbe>();
                    let name = data.get(at..at + NAME_LEN).ok_or_else(short)?;
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
        EV_LOG => {
            let r: RawLog = read(data).ok_or_else(short)?;
            let mut args = [0u64; 6];
            args[..4].copy_from_slice(&r.args);
            Ok(Event::Probe(Probe {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                name: ProbeName::Log,
                args,
                strings: vec![
                    c_str(&r.facility).into(),
                    c_str(&r.file).into(),
                    c_str(&r.msg).into(),
                ],
            }))
        }
        EV_LOST => {
            let r: RawLost = read(data).ok_or_else(short)?;
            Ok(Event::Lost {
                ts_ns: h.ts_ns,
                count: r.count,
            })
        }
        EV_CLOSE_ENTER => {
            let r: RawCloseEnter = read(data).ok_or_else(short)?;
            Ok(Event::CloseEnter(CloseEnter {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                fd: r.fd,
            }))
        }
        EV_EXEC => Ok(Event::Process(ProcessEvent {
            ts_ns: h.ts_ns,
            pid: h.pid,
            tid: h.tid,
            kind: ProcessEventKind::Exec,
        })),
        EV_FORK => {
            let r: RawFork = read(data).ok_or_else(short)?;
            Ok(Event::Process(ProcessEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                kind: ProcessEventKind::Fork { child: r.child },
            }))
        }
        EV_EXIT => {
            let r: RawExit = read(data).ok_or_else(short)?;
            Ok(Event::Process(ProcessEvent {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                kind: ProcessEventKind::Exit { code: r.code },
            }))
        }
        EV_SLOW_SYSCALL => {
            let r: RawSlowSyscall = read(data).ok_or_else(short)?;
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
        EV_OFF_CPU => {
            let r: RawOffCpu = read(data).ok_or_else(short)?;
            Ok(Event::OffCpu(OffCpu {
                ts_ns: h.ts_ns,
                pid: h.pid,
                tid: h.tid,
                total_ns: r.total_ns,
            }))
        }
        id => Err(DecodeError::Unknown { kind: 0, id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading a plain repr(C) value's bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_syscall() {
        let r = RawSyscall {
            h: Header {
                kind: EV_SYSCALL,
                tid: 42,
                ts_ns: 1000,
                pid: 40,
                pad: 0,
            },
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
        let fork = RawFork {
            h: Header {
                kind: EV_FORK,
                tid: 11,
                ts_ns: 5,
                pid: 10,
                pad: 0,
            },
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
        let exit = RawExit {
            h: Header {
                kind: EV_EXIT,
                tid: 20,
                ts_ns: 6,
                pid: 20,
                pad: 0,
            },
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
        let h = |kind| Header {
            kind,
            tid: 9,
            ts_ns: 100,
            pid: 8,
            pad: 0,
        };
        let slow = RawSlowSyscall {
            h: h(EV_SLOW_SYSCALL),
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
        let off = RawOffCpu {
            h: h(EV_OFF_CPU),
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
        let r = RawCloseEnter {
            h: Header {
                kind: EV_CLOSE_ENTER,
                tid: 9,
                ts_ns: 77,
                pid: 1,
                pad: 0,
            },
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
        let mut r = RawEpollWait {
            h: Header {
                kind: EV_EPOLL_WAIT,
                tid: 1,
                ts_ns: 5,
                pid: 1,
                pad: 0,
            },
            kind: SC_EPOLL_PWAIT,
            epfd: 3,
            rv: 45,
            dur_ns: 9,
            nready: 2,
            pad: 0,
            ready: [RawReady {
                events: 0xdead,
                pad: 0,
                data: 0xbeef,
            }; WAIT_MAX_EVENTS],
        };
        r.ready[0] = RawReady {
            events: 1,
            pad: 0,
            data: 10,
        };
        r.ready[1] = RawReady {
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
        let mut name = [0u8; NAME_LEN];
        name[..5].copy_from_slice(b"echo\0");
        name[5] = b'x';
        let r = RawProbe {
            h: Header {
                kind: EV_PROBE,
                tid: 1,
                ts_ns: 5,
                pid: 1,
                pad: 0,
            },
            probe: 8,
            pad: 0,
            args: [1, 2, 3, 9, 1, 1],
        };
        let mut record = bytes(&r);
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
        let read = RawProbe { probe: 2, ..r };
        let Event::Probe(p) = decode(&bytes(&read)).unwrap() else {
            panic!("not a probe")
        };
        assert_eq!((p.name, p.strings.len()), (ProbeName::ReadEntry, 0));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let h = Header {
            kind: EV_SYSCALL,
            tid: 1,
            ts_ns: 1,
            pid: 1,
            pad: 0,
        };
        assert!(matches!(decode(&bytes(&h)), Err(DecodeError::Short { .. })));
        let h = Header {
            kind: 99,
            tid: 1,
            ts_ns: 1,
            pid: 1,
            pad: 0,
        };
        assert!(matches!(
            decode(&bytes(&h)),
            Err(DecodeError::Unknown { .. })
        ));
        let r = RawSyscall {
            h: Header {
                kind: EV_SYSCALL,
                tid: 1,
                ts_ns: 1,
                pid: 1,
                pad: 0,
            },
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
