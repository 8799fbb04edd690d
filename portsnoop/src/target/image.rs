//! The traced process's executable: how to open it, how to show it, where
//! it is mapped and when its loader is done with it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};

use super::Error;

/// An executable image of the traced process.
#[derive(Clone, Debug)]
pub struct Image {
    /// A path that opens the very file the process has mapped, from
    /// portsnoop's mount namespace: `/proc/PID/exe`. Read its notes and
    /// attach uprobes through this one (the kernel resolves a uprobe's path
    /// to an inode once, at attach).
    pub path: PathBuf,
    /// The path as the process sees it, escaped for a terminal: only for
    /// showing.
    pub shown: String,
}

impl Image {
    /// The current executable of `pid`.
    pub fn of(pid: u32) -> Result<Image, Error> {
        let path = PathBuf::from(format!("/proc/{pid}/exe"));
        let seen = std::fs::read_link(&path)
            .map_err(|e| Error::process(format!("reading {}", path.display()), e))?;
        Ok(Image {
            path,
            shown: crate::output::escape::os_str(seen.as_os_str()),
        })
    }

    /// A placeholder until `pid`'s image can be read.
    pub(super) fn unresolved(pid: u32) -> Image {
        Image {
            path: PathBuf::from(format!("/proc/{pid}/exe")),
            shown: String::new(),
        }
    }

    /// Waits until `pid`'s dynamic loader (or a static binary's startup
    /// code) has made this image's RELRO segment read-only, polling
    /// `/proc/PID/maps` every millisecond until `deadline`. True when done,
    /// or when there is nothing to wait for.
    ///
    /// Why wait: see [`super::ptrace::run_to_entry`]. A process that
    /// exec'd is not ours to stop, but watching for the `mprotect` gives
    /// the same guarantee: the loader protects RELRO before any of the
    /// program's code runs.
    pub(super) fn wait_loader_done(&self, pid: u32, deadline: Instant) -> bool {
        let Some(elf) = Elf::read(&self.path) else {
            return true;
        };
        let Some((vaddr, size)) = elf.relro else {
            return true;
        };
        let page = page_size();
        let down = |a: u64| a & !(page - 1);
        // The loader protects whole pages: a RELRO within one page is
        // never protected.
        if down(vaddr) == down(vaddr + size) {
            return true;
        }
        loop {
            if let Some(base) = load_base(pid, &self.path) {
                let bias = if elf.is_pie {
                    base.wrapping_sub(down(elf.first_load_vaddr))
                } else {
                    0
                };
                if mapping_writable(pid, down(bias.wrapping_add(vaddr))) == Some(false) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What portsnoop needs from an ELF header.
pub(super) struct Elf {
    /// `ET_DYN`: mapped at a random base.
    pub is_pie: bool,
    /// The entry point's address in the file's address space.
    pub entry: u64,
    /// The lowest `PT_LOAD` address.
    pub first_load_vaddr: u64,
    /// `PT_GNU_RELRO`'s address and size.
    pub relro: Option<(u64, u64)>,
}

impl Elf {
    /// Reads a 64-bit ELF file's header; `None` for anything else.
    pub fn read(path: &Path) -> Option<Elf> {
        let data = std::fs::read(path).ok()?;
        let header = elf::FileHeader64::<object::Endianness>::parse(&*data).ok()?;
        let endian = header.endian().ok()?;
        let phdrs = header.program_headers(endian, &*data).ok()?;
        let loads = phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD);
        Some(Elf {
            is_pie: header.e_type(endian) == elf::ET_DYN,
            entry: header.e_entry(endian),
            first_load_vaddr: loads.map(|p| p.p_vaddr(endian)).min().unwrap_or(0),
            relro: phdrs
                .iter()
                .find(|p| p.p_type(endian) == elf::PT_GNU_RELRO)
                .map(|p| (p.p_vaddr(endian), p.p_memsz(endian))),
        })
    }
}

/// Where the start of `exe` (a path to the file mapped by `pid`) is mapped
/// in `pid`: the lowest mapping of its first page.
///
/// Matched by device and inode, not by path: the path in
/// `/proc/PID/maps` is the one the process sees, which portsnoop may not
/// (another mount namespace) and which may contain anything, spaces
/// included. Overlay filesystems can show another device there, so the
/// inode alone is the fallback.
pub(super) fn load_base(pid: u32, exe: &Path) -> Option<u64> {
    let meta = std::fs::metadata(exe).ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let want_dev = format!(
        "{:02x}:{:02x}",
        libc::major(meta.dev()),
        libc::minor(meta.dev())
    );
    let first_pages = maps.lines().filter_map(|line| {
        let mut f = line.split_whitespace();
        let (range, _perms, offset, dev, inode) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
        (u64::from_str_radix(offset, 16).ok()? == 0 && inode.parse::<u64>().ok()? == meta.ino())
            .then_some((start, dev == want_dev))
    });
    let (same_dev, other_dev): (Vec<_>, Vec<_>) = first_pages.partition(|(_, d)| *d);
    same_dev
        .iter()
        .chain(&other_dev)
        .map(|(start, _)| *start)
        .min()
}

/// Whether the mapping that contains `addr` in `pid` is writable.
fn mapping_writable(pid: u32, addr: u64) -> Option<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next()?, f.next()?);
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        (lo..hi)
            .contains(&addr)
            .then(|| perms.as_bytes().get(1) == Some(&b'w'))
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}
