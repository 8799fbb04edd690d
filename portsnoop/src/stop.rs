//! When a session stops: on SIGINT, SIGTERM or SIGHUP, or when `-d` is up.
//! Also what happens if the output then cannot take the rest.
//!
//! The session loop asks [`Stop::requested`] between polls and then ends
//! normally: it drains what is left, writes the summary and ends the target.
//! That only works while the main thread can get back to its loop. With
//! its stdout a pipe nobody reads (`portsnoop -p PID | less` with `less`
//! waiting at a prompt), it sits in write(2). The signal handler sets the
//! flag, but the kernel then restarts the write (`SA_RESTART`), and the
//! session never ends.
//!
//! A watchdog thread handles that case. After the stop, it gives the
//! output [`GRACE`] to take bytes, and resets that time whenever the output
//! takes some. At most [`MAX_FINISH`] goes by in all. If the output has not
//! finished by then, the watchdog ends
//! the child that portsnoop started (if any), says `output stalled` on
//! stderr and exits 1. A second signal during that wait gives up at once.
//!
//! Why a thread rather than write(2) failing with `EINTR` (a handler
//! without `SA_RESTART`, and a poll for `POLLOUT` with a deadline before
//! each write):
//! - A signal goes to any thread that does not block it, so the `EINTR`
//!   design needs portsnoop to stay single-threaded.
//! - Every other blocking call would then see `EINTR` too: waitpid,
//!   ptrace, libbpf's own calls.
//! - Each write would have to be cut to what `POLLOUT` promises (a
//!   pipe's page). A terminal stopped with ^S, a socket, or a file on a
//!   hung NFS mount each need their own rules.
//!
//! The watchdog needs none of that. It does not care where the main thread
//! is stuck. It only watches a byte counter and a clock.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// How long the output may take no byte after the stop before portsnoop
/// gives up on it.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long the end may take in all once stopped, even while the output
/// keeps taking bytes (a reader that drips).
pub const MAX_FINISH: Duration = Duration::from_secs(10);

/// The exit code when the output was given up on.
pub const STALLED_EXIT: i32 = 1;

/// The signals that end a session (SIGHUP: the terminal went away, or
/// `kill -HUP`; like SIGINT, the session ends with its summary).
pub const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Where the session is, as far as the watchdog cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Starting or attaching: a signal only sets the flag. There is no
    /// output to stall yet, and attaching can take a while.
    Starting,
    /// Tracing, or ending: the output is watched once stopped.
    Running,
    /// Everything is written: nothing left to watch.
    Done,
}

struct Shared {
    requested: Arc<AtomicBool>,
    /// Bytes the output has taken (see [`Progress`]).
    written: AtomicU64,
    /// The phase, and, under the same lock, the watchdog's giving up: the
    /// main thread cannot finish while the watchdog ends the child.
    phase: Mutex<Phase>,
    deadline: Mutex<Option<Instant>>,
    child: Mutex<Option<Child>>,
}

/// A child portsnoop started, as the watchdog ends it.
struct Child {
    pid: u32,
    /// Signals through a pidfd cannot hit a recycled pid.
    pidfd: Option<OwnedFd>,
}

/// The stop flag, the deadline, and the watchdog. Dropping it ends the
/// watchdog (as [`Stop::output_done`] does).
pub struct Stop {
    shared: Arc<Shared>,
    /// Wakes the watchdog: a new phase or deadline.
    wake: UnixStream,
    watchdog: Option<JoinHandle<()>>,
}

impl Stop {
    /// Installs the handlers for [`SIGNALS`] and starts the watchdog.
    pub fn install() -> io::Result<Stop> {
        let requested = Arc::new(AtomicBool::new(false));
        let (wake, wakeup) = UnixStream::pair()?;
        let (sig_tx, sig_rx) = UnixStream::pair()?;
        for sig in SIGNALS {
            signal_hook::flag::register(sig, Arc::clone(&requested))?;
            // One byte per signal, so the watchdog can count them.
            signal_hook::low_level::pipe::register(sig, sig_tx.try_clone()?)?;
        }
        let shared = Arc::new(Shared {
            requested,
            written: AtomicU64::new(0),
            phase: Mutex::new(Phase::Starting),
            deadline: Mutex::new(None),
            child: Mutex::new(None),
        });
        let watchdog = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("portsnoop-stop".into())
                .spawn(move || watchdog(&shared, sig_rx, wakeup))?
        };
        Ok(Stop {
            shared,
            wake,
            watchdog: Some(watchdog),
        })
    }

    /// Whether the session should end now: a signal came or the deadline
    /// passed.
    #[inline]
    pub fn requested(&self) -> bool {
        if self.shared.requested.load(Ordering::Relaxed) {
            return true;
        }
        let deadline = *self.shared.deadline.lock().expect("not poisoned");
        deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The child portsnoop started: if the output is given up on, it is
    /// ended and reaped first.
    pub fn watch_child(&self, pid: u32) {
        *self.shared.child.lock().expect("not poisoned") = Some(Child {
            pid,
            pidfd: pidfd_open(pid),
        });
    }

    /// Tracing has started: from now on, a stop is followed by the watch on
    /// the output; with `duration`, the session stops by itself after it.
    pub fn running(&self, duration: Option<Duration>) {
        *self.shared.deadline.lock().expect("not poisoned") = duration.map(|d| Instant::now() + d);
        self.set_phase(Phase::Running);
    }

    /// The output is finished (written, or failed): nothing left for the
    /// watchdog to give up on.
    pub fn output_done(&self) {
        self.set_phase(Phase::Done);
    }

    /// Counts the bytes `out` takes, for the watchdog.
    pub fn progress<W: Write>(&self, out: W) -> Progress<W> {
        Progress {
            out,
            shared: Arc::clone(&self.shared),
        }
    }

    fn set_phase(&self, phase: Phase) {
        // Blocks for good if the watchdog is giving up: it exits the
        // process.
        *self.shared.phase.lock().expect("not poisoned") = phase;
        let _ = (&self.wake).write(&[0]);
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.output_done();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

/// A writer that counts what it passes on, so the watchdog can tell a slow
/// output from a stalled one.
pub struct Progress<W> {
    out: W,
    shared: Arc<Shared>,
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.shared.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn watchdog(shared: &Shared, mut signals: UnixStream, mut wakeup: UnixStream) {
    let phase = || *shared.phase.lock().expect("not poisoned");
    // Bytes waiting on either socket, without blocking.
    let drain = |s: &mut UnixStream| -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(k @ 1..) = s.read(&mut buf) {
            n += k;
        }
        n
    };
    for s in [&signals, &wakeup] {
        if s.set_nonblocking(true).is_err() {
            return;
        }
    }
    // Until stopped: sleep until a signal, a wakeup or the deadline.
    let mut signals_seen = 0;
    loop {
        signals_seen += drain(&mut signals);
        drain(&mut wakeup);
        // After the drain, not before: the phase is set before its wakeup
        // is written, so a wakeup drained here is one whose phase this
        // sees, and one written later ends the wait below.
        if phase() == Phase::Done {
            return;
        }
        let deadline = *shared.deadline.lock().expect("not poisoned");
        let now = Instant::now();
        if signals_seen > 0 || deadline.is_some_and(|d| now >= d) {
            shared.requested.store(true, Ordering::Relaxed);
            if phase() == Phase::Running {
                break;
            }
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(now));
        wait_readable(&[&signals, &wakeup], timeout);
    }
    // Stopped: the main thread is ending the session. Watch the output.
    let stopped = Instant::now();
    let mut last = shared.written.load(Ordering::Relaxed);
    let mut last_progress = stopped;
    loop {
        wait_readable(&[&signals, &wakeup], Some(Duration::from_millis(100)));
        if phase() == Phase::Done {
            return;
        }
        let again = drain(&mut signals) > 0;
        drain(&mut wakeup);
        let now = Instant::now();
        let written = shared.written.load(Ordering::Relaxed);
        if written != last {
            (last, last_progress) = (written, now);
        }
        let why = if again {
            "a second signal".to_string()
        } else if now - last_progress >= GRACE {
            format!("nothing written for {} s", GRACE.as_secs())
        } else if now - stopped >= MAX_FINISH {
            format!("still writing after {} s", MAX_FINISH.as_secs())
        } else {
            continue;
        };
        give_up(shared, &why);
    }
}

/// Ends the child (if any), says why on stderr, exits. Never returns, except
/// when the main thread finished first.
fn give_up(shared: &Shared, why: &str) {
    let phase = shared.phase.lock().expect("not poisoned");
    if *phase == Phase::Done {
        return;
    }
    // Held from here to the exit: the main thread cannot finish meanwhile.
    let _hold = phase;
    if let Some(child) = shared.child.lock().expect("not poisoned").take() {
        end_child(&child);
    }
    // stderr may be the stalled pipe too (`2>&1 | less`), and the main
    // thread may hold its lock: the message gets a moment, not more.
    let msg = format!(
        "portsnoop: output stalled: {why} after the stop; giving up (the output is cut short)\n"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = thread::Builder::new().spawn(move || {
        let _ = io::stderr().write_all(msg.as_bytes());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_millis(200));
    // SAFETY: _exit ends the process without running destructors or
    // flushing buffers, which could block on the very output that is
    // stalled. The kernel closes the BPF links and maps with the fds.
    unsafe { libc::_exit(STALLED_EXIT) }
}

/// SIGTERM, half a second, SIGKILL; then reaped.
fn end_child(child: &Child) {
    let signal = |sig: i32| match &child.pidfd {
        // SAFETY: a pidfd we own, a signal number, no siginfo.
        Some(fd) => unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        },
        // SAFETY: kill(2) on the child we started and have not reaped
        // (the main thread, which reaps it, is held off).
        None => unsafe {
            libc::kill(child.pid as i32, sig);
        },
    };
    let exited = |timeout: Duration| -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, writing into a local.
            let r = unsafe { libc::waitpid(child.pid as i32, &mut status, libc::WNOHANG) };
            // r < 0: already reaped by the main thread (ECHILD).
            if r != 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    };
    signal(libc::SIGTERM);
    if !exited(Duration::from_millis(500)) {
        signal(libc::SIGKILL);
        exited(Duration::from_secs(5));
    }
}

/// Waits until one of `socks` is readable, or `timeout` (`None`: forever).
fn wait_readable(socks: &[&UnixStream], timeout: Option<Duration>) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pollfds we own, their count. EINTR just ends this wait early.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// A pidfd for `pid`, if the kernel has them (5.3+).
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh fd that we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session that ends at once (an output that cannot be opened, a
    /// target that is gone) drops its `Stop` while the watchdog is just
    /// starting. The watchdog must see the end however the two interleave:
    /// it once drained the wakeup after checking the phase, then waited for
    /// another that never came, and portsnoop hung on its way out.
    #[test]
    fn a_stop_dropped_at_once_ends_its_watchdog() {
        let (done, finished) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for i in 0..2000u32 {
                let stop = Stop::install().expect("a stop");
                // Dropped 0 to 100 us in: somewhere in the watchdog's
                // first steps, a different place each time.
                let t = Instant::now();
                while t.elapsed() < Duration::from_nanos(u64::from(i % 100) * 1000) {}
                drop(stop);
            }
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(60)).is_ok(),
            "a watchdog did not end after its Stop was dropped"
        );
    }
}
