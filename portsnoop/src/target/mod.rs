//! The process portsnoop traces, through its whole life with portsnoop.
//!
//! Everything that touches the target as a process (fork, exec, ptrace,
//! signals, `/proc`) is here; the engine only gets a pid and an [`Image`]
//! to attach to, and the session only calls the lifecycle below.
//!
//! 1. **Start** (`-- CMD`, [`Target::spawn`]): the child is forked with
//!    `PR_SET_PDEATHSIG(SIGKILL)`, default signal dispositions and an empty
//!    signal mask (portsnoop's runtime ignores `SIGPIPE`, which a child
//!    would otherwise inherit), asks to be ptraced and execs. An exec that
//!    fails comes back as its errno over a close-on-exec pipe. The child is
//!    then run to its ELF entry point and held there (see
//!    `ptrace::run_to_entry` for why not right after exec), with
//!    `PTRACE_O_EXITKILL`.
//!    **Or attach** (`-p PID`, [`Target::attach`]): a thread id is mapped
//!    to its process; a kernel thread is refused.
//! 2. **Release** ([`Target::release`]): once the engine has attached, a
//!    held child is detached and runs.
//! 3. **Follow exec** ([`Target::reload`]): when the kernel side reports an
//!    exec, wait until the new image's loader is done, then hand the new
//!    [`Image`] to the engine.
//! 4. **Exit** ([`Target::exit_status`]): polled by the session.
//!
//! With `-f`, the processes the target forks are followed too, but they are
//! not `Target`s: the kernel side reports their forks and exits, and only
//! their images are read here ([`Image::of`], [`exec_image`]).
//! 5. **End** ([`Target::end`], or dropping it, so an error return or a
//!    panic ends it too): a child we started never outlives portsnoop. It
//!    gets `SIGTERM`, a grace period, then `SIGKILL`, and is reaped. If
//!    portsnoop itself is killed, `PR_SET_PDEATHSIG` (and, while held,
//!    `PTRACE_O_EXITKILL`) end it.
//!
//! The image is always opened through `/proc/PID/exe`, which reaches the
//! mapped file whatever mount namespace the process is in (a container's
//! binary is not at the same path on the host, if there at all); the path
//! the process sees is only shown, escaped, since the traced app controls
//! it.

mod error;
mod image;
mod process;
mod ptrace;
mod spawn;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub use error::Error;
pub use image::Image;

/// The process `id` belongs to (`id` may be one of its threads), for a
/// tool that only filters by process (`portsnoop count -p`): it must exist
/// and not be a kernel thread.
pub fn process_of(id: u32) -> Result<u32, Error> {
    process::resolve(id).map(|(tgid, _)| tgid)
}

/// How long a child we started gets to exit after `SIGTERM` before it is
/// killed.
pub const GRACE: Duration = Duration::from_secs(2);

/// Where the started command's stdout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStdout {
    /// portsnoop's own stdout (its output goes to a file).
    Inherit,
    /// portsnoop's stderr: portsnoop's output owns stdout.
    Stderr,
}

/// A process under trace.
#[derive(Debug)]
pub struct Target {
    pid: u32,
    image: Image,
    /// The thread id given with `-p`, when it was not the process's own.
    thread: Option<u32>,
    /// Set when we started it.
    child: Option<Child>,
    /// Readable once a process we did not start has exited.
    pidfd: Option<OwnedFd>,
}

#[derive(Debug)]
struct Child {
    /// Stopped at its entry point under ptrace.
    held: bool,
    /// Reaped: its pid is no longer ours to signal.
    reaped: bool,
}

impl Target {
    /// An already running process, given by its pid or one of its threads'
    /// ids.
    pub fn attach(pid: u32) -> Result<Target, Error> {
        let (tgid, thread) = process::resolve(pid)?;
        let image = Image::of(tgid)?;
        Ok(Target {
            pid: tgid,
            image,
            thread,
            child: None,
            pidfd: pidfd_open(tgid),
        })
    }

    /// Starts `argv`, held at its entry point until [`Target::release`].
    pub fn spawn(argv: &[OsString], stdout: ChildStdout) -> Result<Target, Error> {
        let pid = spawn::spawn_traced(argv, stdout)?;
        // From here on, dropping `target` kills and reaps the child.
        let mut target = Target {
            pid,
            image: Image::unresolved(pid),
            thread: None,
            child: Some(Child {
                held: true,
                reaped: false,
            }),
            pidfd: None,
        };
        ptrace::run_to_entry(pid)?;
        target.image = Image::of(pid)?;
        Ok(target)
    }

    /// The traced process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its current executable.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The thread id `-p` was given, if it was a thread of [`Target::pid`]
    /// rather than the process itself.
    pub fn given_thread(&self) -> Option<u32> {
        self.thread
    }

    /// Whether it is a child held before its first instruction.
    pub fn is_held(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.held)
    }

    /// Whether we started it.
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// Lets a held child run. Does nothing otherwise.
    pub fn release(&mut self) {
        if let Some(child) = self.child.as_mut().filter(|c| c.held) {
            child.held = false;
            // SAFETY: detaching from our own stopped tracee; signal 0 drops
            // the breakpoint's SIGTRAP.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid as i32, 0, 0) };
        }
    }

    /// After the process exec'd: waits (up to `timeout`) until the new
    /// image's dynamic loader has finished, so its probes can be attached,
    /// and makes it the current image. Returns whether the loader was seen
    /// to finish (if not, the caller attaches anyway and may miss
    /// semaphores; see `ptrace::run_to_entry`).
    pub fn reload(&mut self, timeout: Duration) -> Result<bool, Error> {
        let image = Image::of(self.pid)?;
        let done = image.wait_loader_done(self.pid, Instant::now() + timeout);
        self.image = image;
        Ok(done)
    }

    /// The target's wait status if it is gone: `Some(-1)` when it is not our
    /// child and its status cannot be known.
    pub fn exit_status(&mut self) -> Option<i32> {
        if let Some(child) = self.child.as_mut() {
            if child.reaped {
                return Some(-1);
            }
            let status = wait(self.pid, libc::WNOHANG)?;
            child.reaped = true;
            return Some(status);
        }
        if let Some(fd) = &self.pidfd {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, no wait. A pidfd is readable once the
            // process has exited (zombie included).
            let r = unsafe { libc::poll(&mut p, 1, 0) };
            if r >= 0 {
                return (r > 0).then_some(-1);
            }
        }
        match process::state(self.pid) {
            // A zombie has exited; its parent has not reaped it yet.
            None | Some('Z') => Some(-1),
            Some(_) => None,
        }
    }

    /// Whether the process still runs (not gone, not a zombie). Unlike
    /// [`Target::exit_status`], it reaps nothing.
    pub fn is_alive(&self) -> bool {
        !matches!(process::state(self.pid), None | Some('Z'))
    }

    /// Ends a child we started and still running: `SIGTERM`, up to
    /// [`GRACE`] to exit, then `SIGKILL`; reaps it and returns its wait
    /// status. Does nothing for a process we did not start.
    pub fn end(&mut self) -> Option<i32> {
        let child = self.child.as_mut().filter(|c| !c.reaped)?;
        child.reaped = true;
        let pid = self.pid as i32;
        if !child.held {
            // SAFETY: signalling our own unreaped child. SIGCONT so that a
            // stopped one can act on the SIGTERM.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline {
                if let Some(status) = wait(self.pid, libc::WNOHANG) {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // SAFETY: killing our own unreaped child (a held one is stopped
        // under ptrace: only SIGKILL ends it at once).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(self.pid, 0)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.end();
    }
}

/// `waitpid` on our child, retried on `EINTR`; its status once it has
/// exited (not for stops).
fn wait(pid: u32, flags: i32) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into a local.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, flags | libc::__WALL) };
        if r == pid as i32 && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) {
            return Some(status);
        }
        if r == pid as i32 {
            // A stop (ptrace or job control): it is still alive.
            if flags & libc::WNOHANG != 0 {
                return None;
            }
            continue;
        }
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: already reaped, nothing more to wait for.
        return if r < 0 { Some(-1) } else { None };
    }
}

/// A pidfd for `pid`, if the kernel has them (5.3+): one poll(2) says
/// whether it is gone, where reading /proc/PID/stat costs an open, a read
/// and a close every 10 ms.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh fd that we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// With `-f`: a followed process (one the target forked, or theirs) after
/// it exec'd: its new image once its loader is done, as
/// [`Target::reload`] waits for the target's, and whether the loader was
/// seen to finish. A followed process is not ours to hold, only to watch.
pub fn exec_image(pid: u32, timeout: Duration) -> Result<(Image, bool), Error> {
    let image = Image::of(pid)?;
    let done = image.wait_loader_done(pid, Instant::now() + timeout);
    Ok((image, done))
}
