//! What the host must offer before anything is loaded: the rights to load
//! BPF and uprobes, and BTF. Also which pid namespace portsnoop sees pids in.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Error;

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

/// `PROC_PID_INIT_INO`: the initial pid namespace's inode number, fixed by
/// the kernel.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// The device and inode of portsnoop's own pid namespace when it is not the
/// initial one: pids portsnoop sees (and its user gives) are then not the
/// kernel's global ones, which is what the BPF side would otherwise filter on
/// and report.
pub fn own_pid_namespace() -> Option<(u64, u64)> {
    let ns = std::fs::metadata("/proc/self/ns/pid").ok()?;
    (ns.ino() != PROC_PID_INIT_INO).then(|| (ns.dev(), ns.ino()))
}
