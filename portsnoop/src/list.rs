//! Reading USDT probes from ELF `stapsdt` notes, for `portsnoop list` (the
//! `dtrace -l -n 'evloop*:::'` of Linux) and to know what to attach.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// One USDT probe site as its note describes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsdtProbe {
    /// Provider name (`evloop`).
    pub provider: String,
    /// Probe name (`eventer-read-entry`).
    pub name: String,
    /// The argument spec (`-4@%edi 8@%rsi ...`).
    pub args: String,
    /// Address of the probe site.
    pub pc: u64,
    /// Where the note thinks `.stapsdt.base` is (to detect prelinking).
    pub base: u64,
    /// Address of its semaphore (0: none).
    pub semaphore: u64,
}

/// Why a file's probes could not be read.
#[derive(Debug)]
pub struct ListError {
    path: PathBuf,
    reason: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ListError {}

/// Every USDT probe site in the ELF file at `path` (empty if it has none).
pub fn probes_in(path: &Path) -> Result<Vec<UsdtProbe>, ListError> {
    let err = |reason: String| ListError {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file = object::File::parse(&*data).map_err(|e| err(format!("not an ELF file: {e}")))?;
    let Some(section) = file.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let notes = section
        .data()
        .map_err(|e| err(format!("reading .note.stapsdt: {e}")))?;
    Ok(parse_notes(notes, file.is_little_endian()))
}

/// Parses the body of a `.note.stapsdt` section (version 3 notes); malformed
/// notes are skipped, never trusted past their bounds.
pub fn parse_notes(mut data: &[u8], little_endian: bool) -> Vec<UsdtProbe> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if little_endian {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if little_endian {
            u64::from_le_bytes(bytes)
        } else {
            u64::from_be_bytes(bytes)
        })
    };
    let align4 = |n: usize| (n + 3) & !3;
    let mut out = Vec::new();
    while data.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(kind)) =
            (u32_at(data, 0), u32_at(data, 4), u32_at(data, 8))
        else {
            break;
        };
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let desc_at = 12 + align4(namesz);
        let next = desc_at.saturating_add(align4(descsz));
        if next > data.len() || desc_at + descsz > data.len() {
            break;
        }
        let name = &data[12..12 + namesz];
        let desc = &data[desc_at..desc_at + descsz];
        if kind == 3 && name.starts_with(b"stapsdt") {
            if let Some(probe) = parse_desc(desc, &u64_at) {
                out.push(probe);
            }
        }
        data = &data[next..];
    }
    out
}

fn parse_desc(desc: &[u8], u64_at: &dyn Fn(&[u8], usize) -> Option<u64>) -> Option<UsdtProbe> {
    let pc = u64_at(desc, 0)?;
    let base = u64_at(desc, 8)?;
    let semaphore = u64_at(desc, 16)?;
    let mut strings = desc
        .get(24..)?
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    Some(UsdtProbe {
        provider: strings.next()?,
        name: strings.next()?,
        args: strings.next().unwrap_or_default(),
        pc,
        base,
        semaphore,
    })
}

/// The files a running process has mapped executable: its binary and its
/// shared libraries, where USDT notes can live.
pub fn mapped_objects(pid: u32) -> Vec<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        if let Some(path) = fields.nth(3) {
            if perms.contains('x') && path.starts_with('/') {
                seen.insert(PathBuf::from(format!("/proc/{pid}/root{path}")));
            }
        }
    }
    seen.into_iter().collect()
}

/// Running processes that have a provider named `provider`, with the file
/// that carries it. Processes that vanish or cannot be read are skipped.
pub fn processes_with_provider(provider: &str) -> Vec<(u32, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        for obj in mapped_objects(pid) {
            if probes_in(&obj).is_ok_and(|ps| ps.iter().any(|p| p.provider == provider)) {
                out.push((pid, obj));
                break;
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(provider: &str, name: &str, args: &str) -> Vec<u8> {
        let mut desc = Vec::new();
        desc.extend_from_slice(&0x1000u64.to_le_bytes());
        desc.extend_from_slice(&0x2000u64.to_le_bytes());
        desc.extend_from_slice(&0x3000u64.to_le_bytes());
        for s in [provider, name, args] {
            desc.extend_from_slice(s.as_bytes());
            desc.push(0);
        }
        let mut n = Vec::new();
        n.extend_from_slice(&8u32.to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&3u32.to_le_bytes());
        n.extend_from_slice(b"stapsdt\0");
        n.extend_from_slice(&desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    #[test]
    fn parses_consecutive_notes() {
        let mut data = note("evloop", "eventer-read-entry", "-4@%edi 8@%rsi");
        data.extend(note("evloop", "log", "8@%rdi"));
        let probes = parse_notes(&data, true);
        assert_eq!(probes.len(), 2);
        assert_eq!(probes[0].name, "eventer-read-entry");
        assert_eq!(probes[0].args, "-4@%edi 8@%rsi");
        assert_eq!(probes[0].semaphore, 0x3000);
        assert_eq!(probes[1].name, "log");
    }

    #[test]
    fn truncated_or_garbage_notes_are_skipped_not_trusted() {
        let data = note("evloop", "eventer-read-entry", "-4@%edi");
        for cut in 0..data.len() {
            let _ = parse_notes(&data[..cut], true);
        }
        let mut bad = data.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_notes(&bad, true).is_empty());
    }
}
