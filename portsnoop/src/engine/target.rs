//! The process to trace: an existing pid, or a command started held at its
//! first instruction so nothing it does escapes the trace.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Error;

/// A process under trace.
#[derive(Debug)]
pub struct Target {
    /// Its pid (the tgid the kernel side filters on).
    pub pid: u32,
    /// The executable whose USDT notes are attached.
    pub exe: PathBuf,
    /// A child we started, stopped by ptrace after its `exec`.
    held: bool,
    spawned: bool,
}

impl Target {
    /// An already running process.
    pub fn existing(pid: u32) -> Result<Target, Error> {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NoSuchProcess(pid));
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| Error::Io(format!("reading /proc/{pid}/exe"), e))?;
        // A binary replaced on disk after start shows as "path (deleted)";
        // /proc/PID/exe still opens the mapped one.
        let exe = if exe.exists() {
            exe
        } else {
            PathBuf::from(format!("/proc/{pid}/exe"))
        };
        Ok(Target {
            pid,
            exe,
            held: false,
            spawned: false,
        })
    }

    /// Starts `argv` held at its first instruction until [`Target::release`].
    ///
    /// The child asks to be ptraced and execs; the kernel stops it right
    /// after `exec`. We then run it to the binary's entry point, so the
    /// dynamic loader has finished (see [`run_to_entry`] for why that
    /// matters) but none of the program's own code has run.
    pub fn spawn_held(argv: &[OsString]) -> Result<Target, Error> {
        let program = argv
            .first()
            .ok_or(Error::Usage("no command given after --".into()))?;
        let exe = resolve(program)
            .ok_or_else(|| Error::NoSuchCommand(program.to_string_lossy().into_owned()))?;
        let to_c = |s: &OsString| {
            CString::new(s.as_bytes())
                .map_err(|_| Error::Usage(format!("argument {s:?} contains a NUL byte")))
        };
        let c_args = argv.iter().map(to_c).collect::<Result<Vec<_>, _>>()?;
        let c_exe = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| Error::Usage("command path contains a NUL byte".into()))?;
        let mut argp: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        argp.push(std::ptr::null());

        // SAFETY: between fork and exec the child only calls async-signal-safe
        // functions (ptrace, execv, _exit) on memory prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::Io("fork".into(), io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::execv(c_exe.as_ptr(), argp.as_ptr());
                libc::_exit(127);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, writing into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r != pid || !libc::WIFSTOPPED(status) {
            return Err(Error::Io(
                format!("starting {}", exe.display()),
                io::Error::other(format!(
                    "it did not reach its first instruction (wait status {status})"
                )),
            ));
        }
        let target = Target {
            pid: pid as u32,
            exe,
            held: true,
            spawned: true,
        };
        run_to_entry(target.pid, &target.exe)?;
        Ok(target)
    }

    /// Lets a held child run. Does nothing for an existing process.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            // SAFETY: detaching from our own stopped tracee; signal 0 drops
            // the exec's SIGTRAP.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid as i32, 0, 0) };
        }
    }

    /// Whether it is a child still held before its first instruction.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether we started it (and so must reap it).
    pub fn is_child(&self) -> bool {
        self.spawned
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Never let a child run untraced: if attaching failed, end it.
        if self.held {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
                libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Runs a ptrace-stopped, just-exec'd child to its ELF entry point.
///
/// Why not attach right after `exec`: the kernel finds a probe's semaphore
/// by file offset, and in a PIE binary the RELRO segment before `.probes`
/// maps the same file page. Until the loader makes RELRO read-only, that
/// segment is writable too, and the kernel increments its copy: the
/// semaphore stays 0 (probes silent) and two bytes of the RELRO padding
/// change. At the entry point the loader is done, RELRO is read-only, and
/// only the real semaphore matches.
#[cfg(target_arch = "x86_64")]
fn run_to_entry(pid: u32, exe: &Path) -> Result<(), Error> {
    let fail = |what: &str| {
        Error::Io(
            format!("running {} to its entry point: {what}", exe.display()),
            io::Error::last_os_error(),
        )
    };
    let header =
        std::fs::read(exe).map_err(|e| Error::Io(format!("reading {}", exe.display()), e))?;
    let (Some(e_type), Some(e_entry)) = (header.get(16..18), header.get(24..32)) else {
        return Err(fail("not an ELF file"));
    };
    let is_pie = u16::from_le_bytes([e_type[0], e_type[1]]) == 3; // ET_DYN
    let mut entry = u64::from_le_bytes(e_entry.try_into().expect("8 bytes"));
    if is_pie {
        entry += load_base(pid, exe).ok_or_else(|| fail("no mapping of the binary"))?;
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
        if libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) != 0 {
            return Err(fail("continuing"));
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid
            || !libc::WIFSTOPPED(status)
            || libc::WSTOPSIG(status) != libc::SIGTRAP
        {
            return Err(fail(&format!(
                "it did not reach its entry point (wait status {status})"
            )));
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
fn run_to_entry(_pid: u32, _exe: &Path) -> Result<(), Error> {
    Ok(())
}

/// Where the kernel mapped the start of `exe` in `pid`.
fn load_base(pid: u32, exe: &Path) -> Option<u64> {
    let exe = exe.canonicalize().ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (range, offset, path) = (f.first()?, f.get(2)?, f.get(5)?);
        (Path::new(path) == exe && u64::from_str_radix(offset, 16).ok()? == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

/// Finds `program` the way `execvp` would.
fn resolve(program: &OsString) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.as_os_str().as_bytes().contains(&b'/') {
        return p
            .is_file()
            .then(|| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(p))
        .find(|c| c.is_file())
}

/// Root, or the capabilities that loading BPF and uprobes needs.
pub fn check_privileges() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    Err(Error::Privileges(missing.join(" and ")))
}

/// Makes sure the kernel describes itself in BTF: the BPF side keeps each
/// thread's syscall in task storage, found through the BTF of `task_struct`.
/// (Raw tracepoints and uprobes need no tracefs.)
pub fn ensure_btf() -> Result<(), Error> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(Error::NoBtf)
    }
}
