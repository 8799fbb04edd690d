//! What `/proc` says about an id given with `-p`.

use super::Error;

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The process to trace for `id`, and `id` itself when it is one of that
/// process's threads rather than the process.
///
/// `/proc/TID` exists for every thread (it is only left out of the listing
/// of `/proc`); its `Tgid` is the process. The BPF side filters on the
/// process, so tracing a thread id as a pid would match nothing.
pub(super) fn resolve(id: u32) -> Result<(u32, Option<u32>), Error> {
    if id == 0 {
        return Err(Error::NoSuchProcess(id));
    }
    let status = std::fs::read_to_string(format!("/proc/{id}/status"))
        .map_err(|_| Error::NoSuchProcess(id))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            Error::process(
                format!("reading /proc/{id}/status"),
                std::io::Error::other("no Tgid line"),
            )
        })?;
    if stat_field(tgid, 6).is_some_and(|flags| flags & PF_KTHREAD != 0) {
        return Err(Error::KernelThread(id));
    }
    Ok((tgid, (tgid != id).then_some(id)))
}

/// The process's state letter (`R`, `S`, `Z`...), or `None` if it is gone.
pub(super) fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_comm(&stat)?.split_whitespace().next()?.chars().next()
}

/// Field `n` (0: the state) after the command name of `/proc/PID/stat`, as
/// a number.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_comm(&stat)?.split_whitespace().nth(n)?.parse().ok()
}

/// What follows the command name, which is in parentheses and may itself
/// contain spaces and parentheses (the process sets it).
fn after_comm(stat: &str) -> Option<&str> {
    stat.rsplit_once(')').map(|(_, rest)| rest)
}
