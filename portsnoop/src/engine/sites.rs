//! Where to put a uprobe for each `evloop` probe site, and how to read its
//! arguments.
//!
//! Linkers drop unused functions but keep their `stapsdt` notes, whose
//! addresses then point near 0, outside any executable segment. libbpf's
//! `attach_usdt` refuses a whole probe over one such note (bpftrace warns
//! and skips), so portsnoop resolves sites itself: valid ones get a uprobe
//! at their file offset with the probe's semaphore as the kernel's
//! reference counter; dead ones are counted and skipped.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

use crate::event::ProbeName;
use crate::list;

/// How one argument is passed: its size in bytes and signedness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// Whether to sign-extend.
    pub signed: bool,
}

impl ArgSpec {
    /// Widens a raw 64-bit register value as the spec says.
    pub fn extend(self, raw: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        if bits >= 64 {
            return raw;
        }
        let shift = 64 - bits;
        if self.signed {
            (((raw << shift) as i64) >> shift) as u64
        } else {
            (raw << shift) >> shift
        }
    }
}

/// One attachable probe site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Which probe.
    pub probe: ProbeName,
    /// File offset of the probe's instruction.
    pub offset: u64,
    /// The instruction's link-time address (where it is in the running
    /// process, less the load bias of a PIE).
    pub address: u64,
    /// File offset of its semaphore (0: none).
    pub semaphore_offset: u64,
    /// The semaphore's link-time address (0: none). Needed beside the file
    /// offset because in a PIE two mappings can hold that file offset (see
    /// `semaphore.rs`).
    pub semaphore_address: u64,
    /// Its arguments.
    pub args: Vec<ArgSpec>,
}

/// The sites of a binary.
#[derive(Clone, Debug, Default)]
pub struct Sites {
    /// Valid `evloop` sites.
    pub sites: Vec<Site>,
    /// Notes whose site is not in executable code (discarded by the linker).
    pub dead: usize,
    /// `evloop` sites whose arguments are not all in the argument registers
    /// in order, which this consumer cannot read.
    pub unreadable: usize,
}

/// The `provider` sites of the ELF file at `path`.
pub fn sites_in(path: &Path, provider: &str) -> Result<Sites, String> {
    // Only the headers and the sections needed are read: a binary can be
    // hundreds of megabytes.
    let data = list::open_elf(path).map_err(|e| match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    })?;
    let file = object::File::parse(&data)
        .map_err(|e| format!("{}: not an ELF file: {e}", path.display()))?;
    let Some(notes) = file.section_by_name(".note.stapsdt") else {
        return Ok(Sites::default());
    };
    let notes = notes
        .data()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Prelinking would move code by the difference between where the note
    // thinks `.stapsdt.base` is and where it is.
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let segments: Vec<(u64, u64, u64, bool)> = file
        .segments()
        .map(|s| {
            let (off, _) = s.file_range();
            let exec = matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            (s.address(), s.size(), off, exec)
        })
        .collect();
    let to_offset = |addr: u64, want_exec: bool| {
        segments
            .iter()
            .find(|(va, size, _, exec)| addr >= *va && addr < va + size && (!want_exec || *exec))
            .map(|(va, _, off, _)| addr - va + off)
    };
    let mut out = Sites::default();
    for note in list::parse_notes(notes, file.is_little_endian()) {
        if note.provider != provider {
            continue;
        }
        let Some(probe) = ProbeName::from_name(&note.name) else {
            continue;
        };
        let pc = match base {
            Some(actual) => note.pc.wrapping_add(actual).wrapping_sub(note.base),
            None => note.pc,
        };
        let Some(offset) = to_offset(pc, true) else {
            out.dead += 1;
            continue;
        };
        let Some(args) = parse_args(&note.args) else {
            out.unreadable += 1;
            continue;
        };
        let semaphore_offset = if note.semaphore == 0 {
            0
        } else {
            to_offset(note.semaphore, false).unwrap_or(0)
        };
        out.sites.push(Site {
            probe,
            offset,
            address: pc,
            semaphore_offset,
            semaphore_address: if semaphore_offset == 0 {
                0
            } else {
                note.semaphore
            },
            args,
        });
    }
    Ok(out)
}

/// The registers that carry C arguments 1 to 6 on x86-64, by every name of
/// their 8/16/32/64-bit parts.
const ARG_REGISTERS: [&[&str]; 6] = [
    &["dil", "di", "edi", "rdi"],
    &["sil", "si", "esi", "rsi"],
    &["dl", "dx", "edx", "rdx"],
    &["cl", "cx", "ecx", "rcx"],
    &["r8b", "r8w", "r8d", "r8"],
    &["r9b", "r9w", "r9d", "r9"],
];

/// Parses `-4@%edi 8@%rsi ...`; `None` unless argument i is in the i-th
/// argument register (what the usdt crate emits and the BPF side reads).
pub fn parse_args(spec: &str) -> Option<Vec<ArgSpec>> {
    let mut out = Vec::new();
    for (i, arg) in spec.split_whitespace().enumerate() {
        let (size, operand) = arg.split_once('@')?;
        let size: i32 = size.parse().ok()?;
        let reg = operand.strip_prefix('%')?;
        if !ARG_REGISTERS.get(i)?.contains(&reg) {
            return None;
        }
        let bytes = size.unsigned_abs();
        if ![1, 2, 4, 8].contains(&bytes) {
            return None;
        }
        out.push(ArgSpec {
            size: bytes as u8,
            signed: size < 0,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usdt_crates_register_specs() {
        let a = parse_args("-4@%edi 8@%rsi 8@%rdx -4@%ecx 8@%r8 -8@%r9").unwrap();
        assert_eq!(a.len(), 6);
        assert_eq!(
            a[0],
            ArgSpec {
                size: 4,
                signed: true
            }
        );
        assert_eq!(
            a[5],
            ArgSpec {
                size: 8,
                signed: true
            }
        );
        assert_eq!(parse_args("").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_the_bpf_side_cannot_read() {
        assert_eq!(parse_args("-4@-20(%rbp)"), None);
        assert_eq!(parse_args("8@%rsi"), None, "argument 0 must be in rdi");
        assert_eq!(parse_args("3@%edi"), None);
    }

    #[test]
    fn sign_extension_follows_the_spec() {
        let neg11 = (-11i32) as u32 as u64 | 0xdead_0000_0000_0000;
        assert_eq!(
            ArgSpec {
                size: 4,
                signed: true
            }
            .extend(neg11) as i64,
            -11
        );
        assert_eq!(
            ArgSpec {
                size: 4,
                signed: false
            }
            .extend(neg11),
            0xffff_fff5
        );
        assert_eq!(
            ArgSpec {
                size: 8,
                signed: false
            }
            .extend(u64::MAX),
            u64::MAX
        );
    }
}
