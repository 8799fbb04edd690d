//! Sharing a probe site with another tool's uprobe: the probe's semaphore,
//! held up by portsnoop itself when the kernel cannot do it.
//!
//! The kernel keeps one uprobe per file and offset, with at most one
//! reference counter (`ref_ctr_offset`, the USDT semaphore). When a second
//! consumer asks for the same site with a different one, `uprobe_register`
//! fails with `EINVAL` and only dmesg says why ("ref_ctr_offset mismatch";
//! `alloc_uprobe` in `kernel/events/uprobes.c`). A tracefs uprobe, `perf
//! probe`, bcc's `trace` or a bpftrace `uprobe:` on the site's address have
//! none. portsnoop can still share the site by attaching without a reference
//! counter, but then nothing enables the probe: the usdt crate reaches the
//! site only while the probe's semaphore is non-zero. So the engine
//! increments the semaphore in the target's memory through `/proc/PID/mem`
//! and decrements it when it is done ([`HeldSemaphore`]), as the kernel
//! would have on attach and detach.
//!
//! What the kernel does that this cannot:
//! - undo the increment if portsnoop is killed with SIGKILL. The probe then
//!   stays enabled until the app restarts: the app computes the probe's
//!   arguments and runs a `nop`, or traps into the other tool's uprobe while
//!   that is attached.
//! - update the counter atomically with its own updates. The read and the
//!   write are two system calls; a tracer attaching (or detaching) another
//!   site of the same probe with the semaphore as reference counter in that
//!   instant can have its update overwritten.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::sites::Site;
use super::Error;

/// A semaphore portsnoop incremented in a target's memory; decremented again
/// on drop, so the app goes back to disabled probes when portsnoop ends.
#[derive(Debug)]
pub struct HeldSemaphore {
    /// The target's memory, opened once: writes through it reach the address
    /// space it was opened on, never a later process that reuses the pid
    /// (nor the image after an `exec`).
    mem: File,
    address: u64,
}

impl HeldSemaphore {
    /// Increments the semaphore of `site` in process `pid`, whose executable
    /// is `exe`.
    pub fn hold(pid: u32, exe: &Path, site: &Site) -> Result<HeldSemaphore, Error> {
        let address = runtime_address(pid, exe, site)?;
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| Error::Io(format!("opening /proc/{pid}/mem"), e))?;
        add(&mem, address, 1).map_err(|e| {
            Error::Io(
                format!("incrementing the semaphore at {address:#x} in process {pid}"),
                e,
            )
        })?;
        Ok(HeldSemaphore { mem, address })
    }
}

impl Drop for HeldSemaphore {
    fn drop(&mut self) {
        // Fails only if the target is gone (nothing left to restore) or the
        // counter is already 0 (someone else reset it: going below would
        // leave the probe enabled at 65535).
        let _ = add(&self.mem, self.address, -1);
    }
}

/// Adds `delta` to the native-endian u16 at `address`, refusing to wrap.
fn add(mem: &File, address: u64, delta: i16) -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    mem.read_exact_at(&mut bytes, address)?;
    let value = u16::from_ne_bytes(bytes)
        .checked_add_signed(delta)
        .ok_or_else(|| io::Error::other("the semaphore would wrap around"))?;
    mem.write_all_at(&value.to_ne_bytes(), address)?;
    Ok(value)
}

/// Where the semaphore of `site` is in process `pid`.
///
/// The kernel finds a reference counter by file offset, in any writable
/// private mapping of the file that covers it. In a PIE the RELRO segment
/// can map the same file page as the data segment that holds the semaphore
/// (see `run_to_entry` in `target.rs`), and until the dynamic loader
/// protects it, it is writable too. So the address comes from the ELF
/// instead: the semaphore's link-time address plus the load bias, which the
/// site's own instruction gives (only one executable mapping covers it). The
/// mapping found there must then be a writable private mapping of this file
/// holding the semaphore's file offset, or nothing is written.
fn runtime_address(pid: u32, exe: &Path, site: &Site) -> Result<u64, Error> {
    let what = || {
        format!(
            "finding the semaphore at file offset {:#x} in process {pid}",
            site.semaphore_offset
        )
    };
    let fail = |why: String| Error::Io(what(), io::Error::other(why));
    if site.semaphore_offset == 0 || site.semaphore_address == 0 {
        return Err(fail("the probe has no semaphore".into()));
    }
    let file = std::fs::metadata(exe).map_err(|e| Error::Io(what(), e))?;
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path)
        .map_err(|e| Error::Io(format!("{}: reading {maps_path}", what()), e))?;
    let dev = (libc::major(file.dev()), libc::minor(file.dev()));
    let exe_path = exe.canonicalize().ok();
    let ours: Vec<Mapping> = maps
        .lines()
        .filter_map(Mapping::parse)
        .filter(|m| {
            m.inode == file.ino()
                && (m.dev == dev || exe_path.as_deref().is_some_and(|p| Path::new(m.path) == p))
        })
        .collect();
    let here = ours
        .iter()
        .filter(|m| m.exec)
        .find_map(|m| m.file_offset_to_address(site.offset))
        .ok_or_else(|| fail("no executable mapping of the binary holds the probe site".into()))?;
    let address = site
        .semaphore_address
        .wrapping_add(here.wrapping_sub(site.address));
    let data = ours
        .iter()
        .find(|m| m.start <= address && address.checked_add(2).is_some_and(|end| end <= m.end))
        .ok_or_else(|| fail(format!("{address:#x} is not in a mapping of the binary")))?;
    if data.file_offset_to_address(site.semaphore_offset) != Some(address) {
        return Err(fail(format!(
            "the mapping at {address:#x} does not hold that file offset"
        )));
    }
    if !(data.write && data.private) {
        return Err(fail(format!("the mapping at {address:#x} is not writable")));
    }
    Ok(address)
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    start: u64,
    end: u64,
    write: bool,
    exec: bool,
    private: bool,
    offset: u64,
    dev: (u32, u32),
    inode: u64,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    /// Parses `start-end perms offset major:minor inode [path]`.
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut rest = line;
        let mut field = || {
            let s = rest.trim_start();
            let end = s.find(char::is_whitespace).unwrap_or(s.len());
            rest = &s[end..];
            Some(&s[..end]).filter(|f| !f.is_empty())
        };
        let (range, perms, offset, dev, inode) = (field()?, field()?, field()?, field()?, field()?);
        let (start, end) = range.split_once('-')?;
        let (major, minor) = dev.split_once(':')?;
        let perms = perms.as_bytes();
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            write: perms.get(1) == Some(&b'w'),
            exec: perms.get(2) == Some(&b'x'),
            private: perms.get(3) == Some(&b'p'),
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev: (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            ),
            inode: inode.parse().ok()?,
            path: rest.trim(),
        })
    }

    /// Where this mapping shows byte `offset` of its file, if it covers it.
    fn file_offset_to_address(&self, offset: u64) -> Option<u64> {
        let into = offset.checked_sub(self.offset)?;
        (into < self.end.saturating_sub(self.start)).then(|| self.start + into)
    }
}

/// The tracefs uprobe events (`group/event`) on byte `offset` of `exe` whose
/// reference counter is not `ref_ctr_offset`: evidence to name in a
/// warning. Tools that create uprobes through the perf PMU (bpftrace, libbpf,
/// recent bcc) are not listed in tracefs, so this is often empty.
pub fn tracefs_uprobes_at(exe: &Path, offset: u64, ref_ctr_offset: u64) -> Vec<String> {
    let Ok(file) = std::fs::metadata(exe) else {
        return Vec::new();
    };
    let events = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| std::fs::read_to_string(format!("{dir}/uprobe_events")).ok())
        .unwrap_or_default();
    events
        .lines()
        .filter_map(|line| {
            // p:GROUP/EVENT PATH:0xOFFSET[(0xREF_CTR)] [FETCHARGS]
            let mut words = line.split_whitespace();
            let name = words.next()?.split_once(':')?.1;
            let (path, at) = words.next()?.rsplit_once(':')?;
            let (off, ref_ctr) = match at.split_once('(') {
                Some((off, ref_ctr)) => (off, ref_ctr.strip_suffix(')')?),
                None => (at, "0x0"),
            };
            let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
            let same_file = std::fs::metadata(path)
                .is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino());
            (same_file && hex(off)? == offset && hex(ref_ctr)? != ref_ctr_offset)
                .then(|| name.escape_debug().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = Mapping::parse(
            "55d0c0a3e000-55d0c0a40000 rw-p 0003d000 fd:01 1234567    /work/a b/echo-mio",
        )
        .unwrap();
        assert_eq!(
            m,
            Mapping {
                start: 0x55d0_c0a3_e000,
                end: 0x55d0_c0a4_0000,
                write: true,
                exec: false,
                private: true,
                offset: 0x3d000,
                dev: (0xfd, 1),
                inode: 1_234_567,
                path: "/work/a b/echo-mio",
            }
        );
        assert_eq!(m.file_offset_to_address(0x3d010), Some(0x55d0_c0a3_e010));
        assert_eq!(m.file_offset_to_address(0x3f000), None);
        assert_eq!(m.file_offset_to_address(0x3c000), None);
        let anon = Mapping::parse("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
        assert_eq!(Mapping::parse("garbage"), None);
    }

    #[test]
    fn holds_and_releases_a_semaphore_in_a_live_process() {
        // Our own memory stands in for the target: a static u16 in a
        // writable mapping, reached through /proc/self/mem.
        static SEMAPHORE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/mem")
            .expect("opening /proc/self/mem");
        let address = SEMAPHORE.as_ptr() as u64;
        let held = HeldSemaphore { mem, address };
        assert_eq!(add(&held.mem, address, 1).unwrap(), 1);
        assert_eq!(SEMAPHORE.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(held);
        assert_eq!(SEMAPHORE.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mem = File::open("/proc/self/mem").unwrap();
        assert!(add(&mem, address, -1).is_err(), "never below zero");
    }
}
