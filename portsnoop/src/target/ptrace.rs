//! Holding a just-exec'd child under ptrace until its loader is done.

use std::path::PathBuf;

use super::image::{load_base, Elf};
use super::Error;

/// Runs a ptrace-stopped, just-exec'd child to its ELF entry point and
/// leaves it stopped there.
///
/// Why not attach right after `exec`: the kernel finds a probe's semaphore
/// by file offset, and in a PIE binary the RELRO segment before `.probes`
/// maps the same file page. Until the loader makes RELRO read-only, that
/// segment is writable too, and the kernel increments its copy: the
/// semaphore stays 0 (probes silent) and two bytes of the RELRO padding
/// change. At the entry point the loader is done, RELRO is read-only, and
/// only the real semaphore matches.
///
/// The image is read through `/proc/PID/exe`: for a `#!` script that is
/// its interpreter, which is what runs.
#[cfg(target_arch = "x86_64")]
pub(super) fn run_to_entry(pid: u32) -> Result<(), Error> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let fail = |what: &str| Error::last_os(format!("running pid {pid} to its entry point: {what}"));
    let elf = Elf::read(&exe).ok_or_else(|| {
        Error::process(
            format!("reading the ELF header of {}", exe.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        )
    })?;
    let mut entry = elf.entry;
    if elf.is_pie {
        let base = load_base(pid, &exe).ok_or_else(|| {
            Error::process(
                format!("running pid {pid} to its entry point"),
                std::io::Error::other("no mapping of its executable in /proc/PID/maps"),
            )
        })?;
        entry = entry.wrapping_add(base.wrapping_sub(elf.first_load_vaddr & !0xfff));
    }
    let pid = pid as i32;
    // SAFETY: ptrace on our own stopped tracee; addresses are in its memory.
    unsafe {
        *libc::__errno_location() = 0;
        let orig = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, entry as *mut libc::c_void, 0);
        if orig == -1 && *libc::__errno_location() != 0 {
            return Err(fail("reading the entry point"));
        }
        let trap = (orig & !0xff) | 0xcc;
        if libc::ptrace(
            libc::PTRACE_POKETEXT,
            pid,
            entry as *mut libc::c_void,
            trap as *mut libc::c_void,
        ) != 0
        {
            return Err(fail("setting a breakpoint"));
        }
        // A signal that arrives on the way (a ^C to the whole process
        // group) stops the tracee too: hand it on and keep going.
        let mut inject = 0;
        loop {
            if libc::ptrace(libc::PTRACE_CONT, pid, 0, inject) != 0 {
                return Err(fail("continuing"));
            }
            let mut status = 0;
            let r = libc::waitpid(pid, &mut status, libc::__WALL);
            if r == -1 && *libc::__errno_location() == libc::EINTR {
                inject = 0;
                continue;
            }
            if r != pid || !libc::WIFSTOPPED(status) {
                return Err(Error::process(
                    format!("running pid {pid} to its entry point"),
                    std::io::Error::other(format!(
                        "it ended before reaching it ({})",
                        describe(status)
                    )),
                ));
            }
            if libc::WSTOPSIG(status) == libc::SIGTRAP {
                break;
            }
            inject = libc::WSTOPSIG(status);
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        if libc::ptrace(
            libc::PTRACE_GETREGS,
            pid,
            0,
            &mut regs as *mut _ as *mut libc::c_void,
        ) != 0
        {
            return Err(fail("reading registers"));
        }
        regs.rip = entry;
        if libc::ptrace(
            libc::PTRACE_POKETEXT,
            pid,
            entry as *mut libc::c_void,
            orig as *mut libc::c_void,
        ) != 0
            || libc::ptrace(
                libc::PTRACE_SETREGS,
                pid,
                0,
                &regs as *const _ as *mut libc::c_void,
            ) != 0
        {
            return Err(fail("restoring the entry point"));
        }
    }
    Ok(())
}

/// Elsewhere the child stays stopped right after `exec` (see the x86-64
/// version for what that can miss).
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn run_to_entry(_pid: u32) -> Result<(), Error> {
    Ok(())
}

/// A wait status in words.
fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}
