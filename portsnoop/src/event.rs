//! The typed events portsnoop works on: what the engine yields and the
//! correlator consumes.
//!
//! The engine turns each raw ring-buffer record into one [`Event`]; nothing
//! downstream knows about BPF. Times are `CLOCK_MONOTONIC` nanoseconds (what
//! `bpf_ktime_get_ns` returns). A syscall is one event, stamped with its
//! entry time and carrying its duration, because the kernel side joins
//! `sys_enter` and `sys_exit` before submitting.

use std::sync::Arc;

pub use crate::sock::{SocketInfo, TcpEvent};

/// One thing that happened in the traced process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A finished syscall on an fd (read, write, accept, close, ...).
    Syscall(Syscall),
    /// A thread entered `close(2)`: from here on the fd's number may be
    /// handed out again, though the close's own [`Event::Syscall`] comes
    /// only when it returns.
    CloseEnter(CloseEnter),
    /// A finished `epoll_ctl`.
    EpollCtl(EpollCtl),
    /// A finished `epoll_wait`, `epoll_pwait` or `epoll_pwait2`.
    EpollWait(EpollWait),
    /// An `evloop` USDT probe fired.
    Probe(Probe),
    /// The kernel side could not submit `count` events since the previous
    /// `Lost`: ops open at this point may be missing syscalls or probes.
    Lost {
        /// When the loss was noticed (not when the events were dropped).
        ts_ns: u64,
        /// How many events were dropped.
        count: u64,
    },
    /// The traced process exited, was killed or exec'd.
    Process(ProcessEvent),
    /// The socket an fd holds, known from an `accept`, a `connect` or (for
    /// one open before the trace) `/proc`: comes just before its syscall.
    Socket(SocketInfo),
    /// A TCP state change, retransmit or reset on a socket a traced fd
    /// holds or last held.
    Tcp(TcpEvent),
    /// Stall tracking: a syscall of any kind, not otherwise traced, that a
    /// thread made inside a callback and that lasted at least the kernel
    /// side's minimum.
    SlowSyscall(SlowSyscall),
    /// Stall tracking: a thread's off-CPU time inside callbacks so far.
    OffCpu(OffCpu),
}

impl Event {
    /// When the event started (a syscall's entry, a probe's fire).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Syscall(e) => e.ts_ns,
            Event::CloseEnter(e) => e.ts_ns,
            Event::EpollCtl(e) => e.ts_ns,
            Event::EpollWait(e) => e.ts_ns,
            Event::Probe(e) => e.ts_ns,
            Event::Lost { ts_ns, .. } => *ts_ns,
            Event::Process(e) => e.ts_ns,
            Event::Socket(e) => e.ts_ns,
            Event::Tcp(e) => e.ts_ns,
            Event::SlowSyscall(e) => e.ts_ns,
            Event::OffCpu(e) => e.ts_ns,
        }
    }

    /// The process it happened in, if it belongs to one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Event::Syscall(e) => Some(e.pid),
            Event::CloseEnter(e) => Some(e.pid),
            Event::EpollCtl(e) => Some(e.pid),
            Event::EpollWait(e) => Some(e.pid),
            Event::Probe(e) => Some(e.pid),
            Event::Lost { .. } => None,
            Event::Process(e) => Some(e.pid),
            Event::Socket(e) => Some(e.pid),
            Event::Tcp(e) => Some(e.pid),
            Event::SlowSyscall(e) => Some(e.pid),
            Event::OffCpu(e) => Some(e.pid),
        }
    }

    /// The thread it happened on, if it belongs to one.
    pub fn tid(&self) -> Option<u32> {
        match self {
            Event::Syscall(e) => Some(e.tid),
            Event::CloseEnter(e) => Some(e.tid),
            Event::EpollCtl(e) => Some(e.tid),
            Event::EpollWait(e) => Some(e.tid),
            Event::Probe(e) => Some(e.tid),
            Event::Lost { .. } => None,
            Event::Process(e) => Some(e.tid),
            Event::Socket(e) => Some(e.tid),
            Event::Tcp(e) => Some(e.tid),
            Event::SlowSyscall(e) => Some(e.tid),
            Event::OffCpu(e) => Some(e.tid),
        }
    }
}

/// The fd syscalls portsnoop traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyscallName {
    /// `read(2)`
    Read,
    /// `readv(2)`
    Readv,
    /// `recvfrom(2)`
    Recvfrom,
    /// `recvmsg(2)`
    Recvmsg,
    /// `write(2)`
    Write,
    /// `writev(2)`
    Writev,
    /// `sendto(2)`
    Sendto,
    /// `sendmsg(2)`
    Sendmsg,
    /// `accept(2)`
    Accept,
    /// `accept4(2)`
    Accept4,
    /// `connect(2)`
    Connect,
    /// `shutdown(2)`
    Shutdown,
    /// `close(2)`
    Close,
}

impl SyscallName {
    /// Every traced fd syscall, in a stable order.
    pub const ALL: [SyscallName; 13] = [
        SyscallName::Read,
        SyscallName::Readv,
        SyscallName::Recvfrom,
        SyscallName::Recvmsg,
        SyscallName::Write,
        SyscallName::Writev,
        SyscallName::Sendto,
        SyscallName::Sendmsg,
        SyscallName::Accept,
        SyscallName::Accept4,
        SyscallName::Connect,
        SyscallName::Shutdown,
        SyscallName::Close,
    ];

    /// The name as in the syscall's man page.
    pub fn as_str(self) -> &'static str {
        match self {
            SyscallName::Read => "read",
            SyscallName::Readv => "readv",
            SyscallName::Recvfrom => "recvfrom",
            SyscallName::Recvmsg => "recvmsg",
            SyscallName::Write => "write",
            SyscallName::Writev => "writev",
            SyscallName::Sendto => "sendto",
            SyscallName::Sendmsg => "sendmsg",
            SyscallName::Accept => "accept",
            SyscallName::Accept4 => "accept4",
            SyscallName::Connect => "connect",
            SyscallName::Shutdown => "shutdown",
            SyscallName::Close => "close",
        }
    }

    /// The syscall with this name.
    pub fn from_name(name: &str) -> Option<SyscallName> {
        SyscallName::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Which eventer operation this syscall can carry out.
    pub fn op(self) -> OpKind {
        match self {
            SyscallName::Read
            | SyscallName::Readv
            | SyscallName::Recvfrom
            | SyscallName::Recvmsg => OpKind::Read,
            SyscallName::Write
            | SyscallName::Writev
            | SyscallName::Sendto
            | SyscallName::Sendmsg => OpKind::Write,
            SyscallName::Accept | SyscallName::Accept4 => OpKind::Accept,
            SyscallName::Connect => OpKind::Connect,
            SyscallName::Shutdown => OpKind::Shutdown,
            SyscallName::Close => OpKind::Close,
        }
    }
}

/// The kinds of operation an eventer does on an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `eventer-accept-*`
    Accept,
    /// `eventer-read-*`
    Read,
    /// `eventer-write-*`
    Write,
    /// `eventer-close-*`
    Close,
    /// `eventer-callback-*`
    Callback,
    /// Only a syscall (`connect`), no eventer probe.
    Connect,
    /// Only a syscall (`shutdown`), no eventer probe.
    Shutdown,
}

impl OpKind {
    /// Every kind, in a stable order.
    pub const ALL: [OpKind; 7] = [
        OpKind::Accept,
        OpKind::Read,
        OpKind::Write,
        OpKind::Close,
        OpKind::Callback,
        OpKind::Connect,
        OpKind::Shutdown,
    ];

    /// The kind with this output name.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The name used in output (`"read"`, `"callback"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Accept => "accept",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Close => "close",
            OpKind::Callback => "callback",
            OpKind::Connect => "connect",
            OpKind::Shutdown => "shutdown",
        }
    }
}

/// A finished fd syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// Entry time.
    pub ts_ns: u64,
    /// Process id (tgid): with `-f` several processes are traced, and an
    /// fd number means something only within its process.
    pub pid: u32,
    /// Thread id (the kernel's pid of the thread).
    pub tid: u32,
    /// Which syscall.
    pub name: SyscallName,
    /// Its fd argument (for `accept*`, the listening fd).
    pub fd: i32,
    /// What it returned: bytes, the new fd, 0, or `-errno`.
    pub rv: i64,
    /// Time from entry to exit.
    pub dur_ns: u64,
    /// Its size argument, where it has one (`count` of read/write, `len` of
    /// recvfrom/sendto, `iovcnt` of readv/writev, `how` of shutdown); else 0.
    pub arg: u64,
}

impl Syscall {
    /// The errno, if the syscall failed.
    pub fn errno(&self) -> Option<i32> {
        errno_of(self.rv)
    }
}

/// A syscall of any kind that a thread made inside a callback and that
/// lasted at least the kernel side's minimum (stall tracking): `nanosleep`,
/// `fsync`, `futex`, `openat`... The traced fd syscalls come as
/// [`Syscall`]s instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowSyscall {
    /// Entry time.
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The syscall number (this architecture's).
    pub nr: u32,
    /// Its first argument, raw.
    pub arg0: u64,
    /// What it returned: a value or `-errno`.
    pub rv: i64,
    /// Time from entry to exit.
    pub dur_ns: u64,
}

impl SlowSyscall {
    /// Its name (`"fsync"`), or `None` for a number this build's table
    /// does not have.
    pub fn name(&self) -> Option<&'static str> {
        crate::syscalls::native_name(self.nr)
    }

    /// Its name, or `syscall_N` for a number this build's table does not
    /// have (as `portsnoop count` shows it): for rows and traces, where a
    /// name is always wanted.
    pub fn display_name(&self) -> std::borrow::Cow<'static, str> {
        crate::syscalls::name(crate::syscalls::Abi::Native, self.nr)
    }

    /// Its fd: the first argument, for the syscalls whose first argument is
    /// one (`fsync`, `pread64`, `ioctl`, `setsockopt`...); `None` for the
    /// rest (`nanosleep`, `futex`, and `openat`, whose first argument is a
    /// directory, usually `AT_FDCWD`).
    pub fn fd(&self) -> Option<i32> {
        let name = self.name()?;
        crate::syscalls::FD_FIRST
            .contains(&name)
            .then_some(self.arg0 as i32)
    }

    /// The errno, if it failed.
    pub fn errno(&self) -> Option<i32> {
        errno_of(self.rv)
    }
}

/// A thread's off-CPU time inside callbacks so far (blocked, or runnable
/// and waiting for a CPU; the scheduler's own accounting), a running total
/// that the kernel side reports at a callback's entry or return when it changed
/// (stall tracking): a callback's off-CPU time is the difference between
/// the totals at its return and at its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffCpu {
    /// When it was reported (the callback probe's time).
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Off-CPU ns inside callbacks since the thread was first seen.
    pub total_ns: u64,
}

/// The entry of a `close(fd)`.
///
/// The kernel frees the number at the start of `close(2)`; closing a
/// socket can then take a hundred microseconds more. On a multi-threaded
/// runtime another thread's `accept` can return the same number, and its
/// record reach us, before the close's [`Syscall`] does. This event is
/// submitted before the number is freed, so it always comes first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseEnter {
    /// Entry time (the close's `Syscall` has the same `ts_ns`).
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The fd being closed.
    pub fd: i32,
}

/// A finished `epoll_ctl(epfd, op, fd, event)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpollCtl {
    /// Entry time.
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The epoll instance.
    pub epfd: i32,
    /// `EPOLL_CTL_ADD` (1), `EPOLL_CTL_DEL` (2) or `EPOLL_CTL_MOD` (3).
    pub op: i32,
    /// The fd being (de)registered.
    pub fd: i32,
    /// The interest mask (`EPOLLIN` 0x1, `EPOLLOUT` 0x4, `EPOLLET` 1<<31, ...).
    pub events: u32,
    /// The user data the kernel hands back with each event (mio's token).
    pub data: u64,
    /// 0 or `-errno`.
    pub rv: i64,
    /// Time from entry to exit.
    pub dur_ns: u64,
}

/// One event returned by an epoll wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyEvent {
    /// The ready mask (`EPOLLIN`, `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`, ...).
    pub events: u32,
    /// The user data registered with `epoll_ctl`.
    pub data: u64,
}

/// A finished epoll wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpollWait {
    /// Entry time.
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `"epoll_wait"`, `"epoll_pwait"` or `"epoll_pwait2"`.
    pub name: &'static str,
    /// The epoll instance.
    pub epfd: i32,
    /// The number of ready events, or `-errno`.
    pub rv: i64,
    /// Time from entry to exit (mostly time asleep).
    pub dur_ns: u64,
    /// The first ready events (at most [`EpollWait::MAX_EVENTS`]); `rv` may
    /// be larger.
    pub events: Vec<ReadyEvent>,
}

impl EpollWait {
    /// How many returned events the kernel side decodes, as the seed did.
    pub const MAX_EVENTS: usize = 30;

    /// The errno, if the wait failed.
    pub fn errno(&self) -> Option<i32> {
        errno_of(self.rv)
    }
}

/// The `evloop` probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeName {
    /// `eventer-accept-entry(fd, addr, addrlen, mask, closure)`
    AcceptEntry,
    /// `eventer-accept-return(fd, addr, addrlen, mask, closure, rv)`
    AcceptReturn,
    /// `eventer-read-entry(fd, buf, len, mask, closure)`
    ReadEntry,
    /// `eventer-read-return(fd, buf, len, mask, closure, rv)`
    ReadReturn,
    /// `eventer-write-entry(fd, buf, len, mask, closure)`
    WriteEntry,
    /// `eventer-write-return(fd, buf, len, mask, closure, rv)`
    WriteReturn,
    /// `eventer-close-entry(fd, mask, closure)`
    CloseEntry,
    /// `eventer-close-return(fd, mask, closure, rv)`
    CloseReturn,
    /// `eventer-callback-entry(closure, event, name, fd, mask, newmask)`
    CallbackEntry,
    /// `eventer-callback-return(closure, event, name, rv)`
    CallbackReturn,
    /// `log(facility, file, line, msg)`
    Log,
}

impl ProbeName {
    /// Every probe, in a stable order.
    pub const ALL: [ProbeName; 11] = [
        ProbeName::AcceptEntry,
        ProbeName::AcceptReturn,
        ProbeName::ReadEntry,
        ProbeName::ReadReturn,
        ProbeName::WriteEntry,
        ProbeName::WriteReturn,
        ProbeName::CloseEntry,
        ProbeName::CloseReturn,
        ProbeName::CallbackEntry,
        ProbeName::CallbackReturn,
        ProbeName::Log,
    ];

    /// The probe's name as tracers see it (`"eventer-read-entry"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::AcceptEntry => "eventer-accept-entry",
            ProbeName::AcceptReturn => "eventer-accept-return",
            ProbeName::ReadEntry => "eventer-read-entry",
            ProbeName::ReadReturn => "eventer-read-return",
            ProbeName::WriteEntry => "eventer-write-entry",
            ProbeName::WriteReturn => "eventer-write-return",
            ProbeName::CloseEntry => "eventer-close-entry",
            ProbeName::CloseReturn => "eventer-close-return",
            ProbeName::CallbackEntry => "eventer-callback-entry",
            ProbeName::CallbackReturn => "eventer-callback-return",
            ProbeName::Log => "log",
        }
    }

    /// The probe with this tracer-visible name.
    pub fn from_name(name: &str) -> Option<ProbeName> {
        ProbeName::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// How many arguments the probe has.
    pub fn arg_count(self) -> usize {
        match self {
            ProbeName::AcceptEntry | ProbeName::ReadEntry | ProbeName::WriteEntry => 5,
            ProbeName::AcceptReturn | ProbeName::ReadReturn | ProbeName::WriteReturn => 6,
            ProbeName::CloseEntry => 3,
            ProbeName::CloseReturn => 4,
            ProbeName::CallbackEntry => 6,
            ProbeName::CallbackReturn => 4,
            ProbeName::Log => 4,
        }
    }

    /// The operation this probe opens or closes, and whether it is the entry.
    /// `None` for `log`.
    pub fn op(self) -> Option<(OpKind, bool)> {
        Some(match self {
            ProbeName::AcceptEntry => (OpKind::Accept, true),
            ProbeName::AcceptReturn => (OpKind::Accept, false),
            ProbeName::ReadEntry => (OpKind::Read, true),
            ProbeName::ReadReturn => (OpKind::Read, false),
            ProbeName::WriteEntry => (OpKind::Write, true),
            ProbeName::WriteReturn => (OpKind::Write, false),
            ProbeName::CloseEntry => (OpKind::Close, true),
            ProbeName::CloseReturn => (OpKind::Close, false),
            ProbeName::CallbackEntry => (OpKind::Callback, true),
            ProbeName::CallbackReturn => (OpKind::Callback, false),
            ProbeName::Log => return None,
        })
    }
}

/// An `evloop` probe firing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// When it fired.
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Which probe.
    pub name: ProbeName,
    /// The raw arguments, in the probe's order, sign-extended to 64 bits
    /// (read an `int` argument as `args[i] as i32`). String arguments hold
    /// the user address; their text is in [`Probe::strings`].
    pub args: [u64; 6],
    /// The text of the probe's string arguments in argument order
    /// (callback: `[name]`; log: `[facility, file, msg]`), truncated by the
    /// kernel side to a fixed length. Shared, not copied: a callback's name
    /// comes with two probes per callback and goes into every op inside it.
    pub strings: Vec<Arc<str>>,
}

impl Probe {
    /// The fd the probe is about, if it names one: argument 0 of the
    /// accept/read/write/close probes, argument 3 of `eventer-callback-entry`.
    pub fn fd(&self) -> Option<i32> {
        match self.name {
            ProbeName::CallbackEntry => Some(self.args[3] as i32),
            ProbeName::CallbackReturn | ProbeName::Log => None,
            _ => Some(self.args[0] as i32),
        }
    }

    /// The probe's `rv`, if it is a return probe.
    pub fn rv(&self) -> Option<i64> {
        match self.name {
            ProbeName::AcceptReturn | ProbeName::ReadReturn | ProbeName::WriteReturn => {
                Some(self.args[5] as i64)
            }
            ProbeName::CloseReturn => Some(self.args[3] as i64),
            ProbeName::CallbackReturn => Some(self.args[3] as i32 as i64),
            _ => None,
        }
    }

    /// The `closure` argument (the registration's id), where the probe has one.
    pub fn closure(&self) -> Option<u64> {
        match self.name {
            ProbeName::CallbackEntry | ProbeName::CallbackReturn => Some(self.args[0]),
            ProbeName::CloseEntry | ProbeName::CloseReturn => Some(self.args[2]),
            ProbeName::Log => None,
            _ => Some(self.args[4]),
        }
    }
}

/// What happened to the traced process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// When.
    pub ts_ns: u64,
    /// The process it happened to (with `-f`, the parent of a fork).
    pub pid: u32,
    /// The thread that exited, exec'd or forked.
    pub tid: u32,
    /// What happened.
    pub kind: ProcessEventKind,
}

/// See [`ProcessEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    /// The whole process exited with this wait status (`exit_code` as the
    /// kernel reports it: `code << 8 | signal`).
    Exit {
        /// The kernel's exit code.
        code: i32,
    },
    /// The process called `execve`: its old image's probes are gone.
    Exec,
    /// With `-f`: the process forked `child`, which is traced too from
    /// when its probes are attached (what it does before is not recorded).
    Fork {
        /// The new process's pid.
        child: u32,
    },
    /// After an exec, portsnoop traces the new image (from portsnoop, not
    /// the kernel: it follows [`ProcessEventKind::Exec`] once the new
    /// image's probes are attached).
    Traced {
        /// The new executable as the process sees it, escaped.
        exe: String,
        /// Its `evloop` probes attached (0: kernel side only).
        probes: usize,
    },
}

/// The errno encoded in a syscall or probe return value, if any.
pub fn errno_of(rv: i64) -> Option<i32> {
    // Linux never returns an errno above 4095 (MAX_ERRNO).
    if (-4095..0).contains(&rv) {
        Some((-rv) as i32)
    } else {
        None
    }
}

/// The symbolic name of an errno (`"EAGAIN"`), for the common ones.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        5 => "EIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        22 => "EINVAL",
        24 => "EMFILE",
        32 => "EPIPE",
        88 => "ENOTSOCK",
        95 => "EOPNOTSUPP",
        98 => "EADDRINUSE",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        107 => "ENOTCONN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        115 => "EINPROGRESS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_only_for_kernel_error_range() {
        assert_eq!(errno_of(-11), Some(11));
        assert_eq!(errno_of(0), None);
        assert_eq!(errno_of(42), None);
        assert_eq!(errno_of(-5000), None);
    }

    #[test]
    fn probe_ids_are_positions_in_all() {
        // The BPF side's PR_* ids and the uprobe cookies are these numbers.
        for (i, p) in ProbeName::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i);
        }
        for (i, s) in SyscallName::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
    }

    #[test]
    fn probe_names_round_trip() {
        for p in ProbeName::ALL {
            assert_eq!(ProbeName::from_name(p.as_str()), Some(p));
        }
        assert_eq!(ProbeName::from_name("eventer-nope"), None);
    }
}
