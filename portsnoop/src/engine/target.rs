//! The process to trace: an existing pid, or a command started held just
//! before `exec` so nothing it does escapes the trace.

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
    /// Set when we started it: the write end of the pipe the child waits on
    /// before `exec`.
    release: Option<i32>,
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
            release: None,
            spawned: false,
        })
    }

    /// Forks `argv`, holding the child before `exec` until [`Target::release`].
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

        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::Io("pipe".into(), io::Error::last_os_error()));
        }
        let (read_end, write_end) = (fds[0], fds[1]);
        // SAFETY: between fork and exec the child only calls async-signal-safe
        // functions (read, close, execv, _exit) on memory prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::Io("fork".into(), io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                libc::close(write_end);
                let mut byte = 0u8;
                let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                // EOF without the byte: portsnoop failed to attach and is gone.
                if n != 1 {
                    libc::_exit(127);
                }
                libc::execv(c_exe.as_ptr(), argp.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the child's end.
        unsafe { libc::close(read_end) };
        Ok(Target {
            pid: pid as u32,
            exe,
            release: Some(write_end),
            spawned: true,
        })
    }

    /// Lets a held child `exec`. Does nothing for an existing process.
    pub fn release(&mut self) {
        if let Some(fd) = self.release.take() {
            // SAFETY: writing one byte to and closing our own pipe end.
            unsafe {
                libc::write(fd, b"g".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }

    /// Whether we started it (and so must reap it).
    pub fn is_child(&self) -> bool {
        self.spawned
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Closing without the byte makes a held child exit instead of
        // running untraced.
        if let Some(fd) = self.release.take() {
            // SAFETY: closing our own pipe end.
            unsafe { libc::close(fd) };
        }
    }
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

/// Makes sure tracefs is mounted, since syscall tracepoints need it.
pub fn ensure_tracefs() -> Result<(), Error> {
    const EVENTS: &str = "/sys/kernel/tracing/events/syscalls";
    if Path::new(EVENTS).exists() || Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        return Ok(());
    }
    let target = CString::new("/sys/kernel/tracing").expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: plain mount(2) with valid C strings.
    unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if Path::new(EVENTS).exists() {
        Ok(())
    } else {
        Err(Error::NoTracefs)
    }
}
