//! Forking and exec'ing the command after `--`, traced from its exec on.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{ChildStdout, Error};

/// Starts `argv` stopped by ptrace right after its `exec`; returns its pid.
///
/// In the child, before `exec` (only async-signal-safe calls, on memory
/// prepared before the fork):
/// - `PR_SET_PDEATHSIG(SIGKILL)`: if portsnoop dies, even by `SIGKILL`, so
///   does the child; checking `getppid()` afterwards closes the race with a
///   portsnoop that died before the call.
/// - every signal back to its default and none blocked: a command started
///   by portsnoop behaves as one started by a shell (Rust's runtime
///   ignores `SIGPIPE`, and an ignored signal stays ignored across exec:
///   `yes | head -1` would get `EPIPE` errors instead of dying).
/// - stdout onto stderr when portsnoop's output owns stdout.
///
/// If `exec` fails, the child writes its errno to a close-on-exec pipe,
/// which otherwise closes at the exec: the parent reads either an errno or
/// end of file.
pub(super) fn spawn_traced(argv: &[OsString], stdout: ChildStdout) -> Result<u32, Error> {
    let program = argv
        .first()
        .ok_or_else(|| Error::Usage("no command given after --".into()))?;
    let shown = crate::output::escape::os_str(program);
    let path = resolve(program).ok_or_else(|| Error::NotFound(shown.clone()))?;
    let to_c = |s: Vec<u8>| {
        CString::new(s).map_err(|_| {
            Error::Usage(format!(
                "the command line after -- contains a NUL byte: {shown}"
            ))
        })
    };
    let c_path = to_c(path.into_os_string().into_vec())?;
    let c_args = argv
        .iter()
        .map(|a| to_c(a.as_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argp: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());

    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::last_os("creating a pipe to start the command"));
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // The kernel's struct sigaction all zero: SIG_DFL, no flags, nothing
    // masked (larger than any architecture's layout).
    let default_action = [0u64; 8];
    // SAFETY: sigemptyset initializes the set.
    let empty_set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // The kernel's last signal (_NSIG), not glibc's SIGRTMAX.
    let last_signal = 64;

    // SAFETY: between fork and exec the child only makes async-signal-safe
    // calls on memory prepared above, and ends in exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = Error::last_os("fork");
        // SAFETY: closing the fds made above.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: the child's side, see above.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            // The raw syscall: glibc refuses the two real-time signals it
            // keeps for itself, which a parent may still have ignored.
            for sig in 1..=last_signal {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        default_action.as_ptr(),
                        std::ptr::null_mut::<libc::c_void>(),
                        8usize,
                    );
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &empty_set, std::ptr::null_mut());
            if stdout == ChildStdout::Stderr && libc::dup2(2, 1) < 0 {
                report_and_exit(write_end);
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                report_and_exit(write_end);
            }
            libc::execv(c_path.as_ptr(), argp.as_ptr());
            report_and_exit(write_end);
        }
    }
    // SAFETY: the child has its own copy; ours must close for EOF to come.
    unsafe { libc::close(write_end) };
    let errno = read_errno(read_end);
    // SAFETY: done with it.
    unsafe { libc::close(read_end) };
    let pid_u = pid as u32;
    if let Some(errno) = errno {
        let _ = super::wait(pid_u, 0);
        return Err(Error::Exec {
            command: shown,
            cause: io::Error::from_raw_os_error(errno),
        });
    }
    // The exec's stop (SIGTRAP, from PTRACE_TRACEME).
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child, writing into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(Error::last_os(format!("waiting for {shown} to start")));
        }
    }
    if !libc::WIFSTOPPED(status) {
        return Err(Error::process(
            format!("starting {shown}"),
            io::Error::other(format!("it ended at once (wait status {status})")),
        ));
    }
    // While held, the child also dies with the tracer thread.
    // SAFETY: on our own stopped tracee.
    unsafe {
        libc::ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            0,
            libc::PTRACE_O_EXITKILL as libc::c_long,
        )
    };
    Ok(pid_u)
}

/// In the child: sends errno to the parent and exits as a shell would for a
/// command that could not run.
///
/// # Safety
/// Only in the forked child.
unsafe fn report_and_exit(fd: i32) -> ! {
    let errno = *libc::__errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

/// The child's errno if its exec failed, `None` once the pipe closed at a
/// successful exec.
fn read_errno(fd: i32) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the rest of a local buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}

/// Finds `program` the way `execvp` would: a name with a slash as it is;
/// else the first executable file of that name in `PATH`, or the first
/// file of that name at all, so that exec names the reason it cannot run.
fn resolve(program: &OsString) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        // Anything that exists goes to exec, which says why it cannot run.
        return p.symlink_metadata().is_ok().then(|| p.to_path_buf());
    }
    if program.is_empty() {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let candidates: Vec<PathBuf> = std::env::split_paths(&path)
        .map(|dir| dir.join(p))
        .filter(|c| c.is_file())
        .collect();
    candidates
        .iter()
        .find(|c| is_executable(c))
        .or(candidates.first())
        .cloned()
}

fn is_executable(path: &Path) -> bool {
    CString::new(path.as_os_str().as_bytes())
        // SAFETY: access reads a NUL-terminated path.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
}
