//! Reading USDT probes from ELF `stapsdt` notes, for `portsnoop list` (the
//! `dtrace -l -n 'evloop*:::'` of Linux) and to know what to attach.
//!
//! A file is never read whole: only its ELF headers and its
//! `.note.stapsdt` section, up to [`MAX_NOTES_BYTES`]. What is not a
//! regular ELF file is refused before anything else is read (`/dev/zero`
//! once grew `list` to gigabytes).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ReadCache};

use crate::output::escape;

/// The largest `.note.stapsdt` section read: 16 MiB, some 150,000 probe
/// sites.
pub const MAX_NOTES_BYTES: u64 = 16 << 20;

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

/// Why probes could not be listed.
#[derive(Debug)]
pub enum ListError {
    /// No process with this pid.
    NoSuchProcess(u32),
    /// `/proc/PID/maps` could not be read.
    Maps(u32, io::Error),
    /// The file could not be opened or read.
    Read(PathBuf, io::Error),
    /// A device, a directory, a FIFO...
    NotRegular(PathBuf),
    /// No ELF magic.
    NotElf(PathBuf),
    /// ELF magic, but headers that do not parse.
    BadElf(PathBuf, object::Error),
    /// A `.note.stapsdt` section larger than [`MAX_NOTES_BYTES`].
    NotesTooLarge(PathBuf, u64),
    /// Writing the list failed (a closed pipe included).
    Write(io::Error),
}

// Paths raw: whoever prints an error escapes it (the CLI does, whole).
impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |p: &Path| p.display().to_string();
        match self {
            ListError::NoSuchProcess(pid) => write!(f, "no such process: {pid}"),
            ListError::Maps(pid, _) => write!(f, "reading /proc/{pid}/maps"),
            ListError::Read(path, _) => write!(f, "{}", p(path)),
            ListError::NotRegular(path) => write!(f, "{}: not a regular file", p(path)),
            ListError::NotElf(path) => write!(f, "{}: not an ELF file", p(path)),
            ListError::BadElf(path, _) => write!(f, "{}: malformed ELF file", p(path)),
            ListError::NotesTooLarge(path, size) => write!(
                f,
                "{}: its .note.stapsdt section is {size} bytes, more than the {} MiB portsnoop reads",
                p(path),
                MAX_NOTES_BYTES >> 20
            ),
            ListError::Write(_) => write!(f, "writing the list"),
        }
    }
}

impl std::error::Error for ListError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListError::Maps(_, e) | ListError::Read(_, e) | ListError::Write(e) => Some(e),
            ListError::BadElf(_, e) => Some(e),
            _ => None,
        }
    }
}

/// What `portsnoop list` lists.
#[derive(Clone, Debug)]
pub enum ListTarget {
    /// The probes of a running process's binary and libraries.
    Pid(u32),
    /// The probes of a file.
    Path(PathBuf),
    /// Every running process with an `evloop` provider.
    All,
}

/// `portsnoop list`: a header, then one row per probe site, on `out`; a
/// note on stderr when there is none. Paths and note strings are escaped.
/// Nothing is written before the target is known to be readable.
pub fn run(what: ListTarget, out: &mut dyn Write) -> Result<(), ListError> {
    let mut found: Vec<(Option<u32>, PathBuf, Vec<UsdtProbe>)> = Vec::new();
    match &what {
        ListTarget::Pid(pid) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(ListError::NoSuchProcess(*pid));
            }
            for obj in mapped_objects(*pid)? {
                // A library that vanished or cannot be parsed has no
                // probes to show; the others still do.
                if let Ok(probes) = probes_in(&obj) {
                    found.push((Some(*pid), obj, probes));
                }
            }
        }
        ListTarget::Path(path) => found.push((None, path.clone(), probes_in(path)?)),
        ListTarget::All => {
            for (pid, obj) in processes_with_provider(crate::engine::PROVIDER) {
                // It may have exited since it was found.
                if let Ok(probes) = probes_in(&obj) {
                    found.push((Some(pid), obj, probes));
                }
            }
        }
    }
    let w = ListError::Write;
    writeln!(
        out,
        "{:>8} {:<12} {:<40} {:<26} ARGS",
        "PID", "PROVIDER", "MODULE", "NAME"
    )
    .map_err(w)?;
    for (pid, obj, probes) in &found {
        write_rows(out, *pid, obj, probes).map_err(w)?;
    }
    out.flush().map_err(w)?;
    if found.iter().all(|(_, _, probes)| probes.is_empty()) {
        let none = match what {
            ListTarget::Pid(pid) => format!("process {pid} has no USDT probes"),
            ListTarget::Path(path) => format!("{} has no USDT probes", escape::path(&path)),
            ListTarget::All => format!(
                "no running process has an {} provider",
                crate::engine::PROVIDER
            ),
        };
        crate::output::note(format_args!("{none}"));
    }
    Ok(())
}

fn write_rows(
    out: &mut dyn Write,
    pid: Option<u32>,
    file: &Path,
    probes: &[UsdtProbe],
) -> io::Result<()> {
    let module = escape::path(file);
    for p in probes {
        let provider = escape::escape(&p.provider);
        let provider = match pid {
            Some(pid) => format!("{provider}{pid}"),
            None => provider.into_owned(),
        };
        writeln!(
            out,
            "{:>8} {:<12} {:<40} {:<26} {}",
            pid.map_or("-".into(), |p| p.to_string()),
            provider,
            module,
            escape::Escaped(&p.name),
            escape::Escaped(&p.args)
        )?;
    }
    Ok(())
}

/// The argument names of the `evloop` probes, as `usdt-provider` declares
/// them (and `evloop.d`): the field names of `list --perf`'s fetches.
pub fn evloop_arg_names(probe: crate::event::ProbeName) -> &'static [&'static str] {
    use crate::event::ProbeName::*;
    match probe {
        AcceptEntry => &["fd", "addr", "addrlen", "mask", "closure"],
        AcceptReturn => &["fd", "addr", "addrlen", "mask", "closure", "rv"],
        ReadEntry | WriteEntry => &["fd", "buf", "len", "mask", "closure"],
        ReadReturn | WriteReturn => &["fd", "buf", "len", "mask", "closure", "rv"],
        CloseEntry => &["fd", "mask", "closure"],
        CloseReturn => &["fd", "mask", "closure", "rv"],
        CallbackEntry => &["closure", "event", "name", "fd", "mask", "newmask"],
        CallbackReturn => &["closure", "event", "name", "rv"],
        Log => &["facility", "file", "line", "msg"],
    }
}

/// The tracefs names (x86-64) of the registers that carry arguments 1 to 6,
/// where the usdt crate puts a probe's arguments (`engine::sites_in` checks
/// every note for it).
const TRACEFS_ARG_REGISTERS: [&str; 6] = ["%di", "%si", "%dx", "%cx", "%r8", "%r9"];

/// The tracefs uprobe definition of one site (a line for
/// `/sys/kernel/tracing/uprobe_events`): event `GROUP/NAME` (the probe's
/// name with `_` for `-`, then `_N` for a further site of the same probe),
/// the site's file offset, the semaphore's file offset as the kernel's
/// reference counter, and one fetch per argument named as the provider
/// names it, typed from the note's spec. `None` if `path` cannot be written
/// in that syntax (whitespace, `#`, a control character, not UTF-8).
pub fn uprobe_definition(
    group: &str,
    path: &Path,
    site: &crate::engine::Site,
    nth: usize,
) -> Option<String> {
    let path = path.to_str()?;
    if path.is_empty()
        || path
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || escape::unsafe_char(c))
    {
        return None;
    }
    let mut line = format!("p:{group}/{}", site.probe.as_str().replace('-', "_"));
    if nth > 0 {
        line.push_str(&format!("_{nth}"));
    }
    line.push_str(&format!(" {path}:{:#x}", site.offset));
    if site.semaphore_offset != 0 {
        line.push_str(&format!("({:#x})", site.semaphore_offset));
    }
    let names = evloop_arg_names(site.probe);
    for (i, arg) in site.args.iter().enumerate() {
        let name = names
            .get(i)
            .map_or_else(|| format!("arg{i}"), |n| n.to_string());
        let kind = if arg.signed { 's' } else { 'u' };
        let reg = TRACEFS_ARG_REGISTERS.get(i)?;
        line.push_str(&format!(" {name}={reg}:{kind}{}", u32::from(arg.size) * 8));
    }
    Some(line)
}

/// `portsnoop list --perf`: for every live `evloop` site of the target, its
/// tracefs uprobe definition (see [`uprobe_definition`]), after a comment
/// that says how to use them; the whole output can be appended to
/// `uprobe_events` as it is (tracefs skips `#` comments). perf 6.1 refuses
/// the probe names (`perf probe` wants C identifiers) and `perf probe -x
/// BIN 0xADDR` writes a virtual address where tracefs wants a file offset;
/// these definitions are what works. Every path is escaped; one tracefs
/// cannot take raw is commented out with the reason.
pub fn run_perf(what: ListTarget, out: &mut dyn Write) -> Result<(), ListError> {
    let provider = crate::engine::PROVIDER;
    let mut found: Vec<(Option<u32>, PathBuf)> = Vec::new();
    match &what {
        ListTarget::Pid(pid) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(ListError::NoSuchProcess(*pid));
            }
            found.extend(mapped_objects(*pid)?.into_iter().map(|o| (Some(*pid), o)));
        }
        ListTarget::Path(path) => {
            // The same checks as the plain list, with its errors.
            probes_in(path)?;
            // tracefs resolves a relative path against its writer's
            // directory: give it the absolute one.
            found.push((None, std::fs::canonicalize(path).unwrap_or(path.clone())));
        }
        ListTarget::All => found.extend(
            processes_with_provider(provider)
                .into_iter()
                .map(|(pid, o)| (Some(pid), o)),
        ),
    }
    let mut lines = Vec::new();
    let mut count = 0;
    for (pid, obj) in &found {
        // A library that vanished or cannot be parsed has no sites to show.
        let Ok(mut sites) = crate::engine::sites_in(obj, provider) else {
            continue;
        };
        sites.sites.sort_by_key(|s| (s.probe, s.offset));
        if sites.sites.is_empty() {
            continue;
        }
        let module = escape::path(obj);
        match pid {
            Some(pid) => lines.push(format!("# process {pid}: {module}")),
            None => lines.push(format!("# {module}")),
        }
        if sites.dead > 0 {
            lines.push(format!(
                "# ({} dead notes skipped: their code was dropped by the linker)",
                sites.dead
            ));
        }
        let mut seen: Vec<crate::event::ProbeName> = Vec::new();
        for site in &sites.sites {
            let nth = seen.iter().filter(|p| **p == site.probe).count();
            seen.push(site.probe);
            match uprobe_definition(provider, obj, site, nth) {
                Some(line) => {
                    count += 1;
                    lines.push(line);
                }
                None => lines.push(format!(
                    "# {}: this path cannot be written to uprobe_events (whitespace, '#' or a control character); link it under a plain name",
                    site.probe.as_str()
                )),
            }
        }
    }
    let w = ListError::Write;
    if count > 0 {
        let pid = match &what {
            ListTarget::Pid(pid) => pid.to_string(),
            _ => "PID".to_string(),
        };
        writeln!(
            out,
            "# as root: portsnoop list --perf ... >> /sys/kernel/tracing/uprobe_events; perf record -e '{provider}:*' -p {pid}; then remove them: portsnoop list --perf ... | sed -n 's/^p:\\([^ ]*\\).*/-:\\1/p' >> /sys/kernel/tracing/uprobe_events"
        )
        .map_err(w)?;
    }
    for line in &lines {
        writeln!(out, "{line}").map_err(w)?;
    }
    out.flush().map_err(w)?;
    if count == 0 {
        let none = match what {
            ListTarget::Pid(pid) => format!("process {pid} has no {provider} probe sites"),
            ListTarget::Path(path) => {
                format!("{} has no {provider} probe sites", escape::path(&path))
            }
            ListTarget::All => format!("no running process has an {provider} provider"),
        };
        crate::output::note(format_args!("{none}"));
    }
    Ok(())
}

/// Opens the ELF file at `path` to be read on demand: the parser reads the
/// headers, the section table and the sections it is asked for, never the
/// whole file. Refuses what is not a regular file, or has no ELF magic,
/// before reading anything else.
pub fn open_elf(path: &Path) -> Result<ReadCache<File>, ListError> {
    let read = |e| ListError::Read(path.to_path_buf(), e);
    // O_NONBLOCK: opening a FIFO must not wait for a writer. It changes
    // nothing for the regular files that get past the check below.
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read)?;
    if !file.metadata().map_err(read)?.is_file() {
        return Err(ListError::NotRegular(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == *b"\x7fELF" => {}
        Ok(()) => return Err(ListError::NotElf(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(ListError::NotElf(path.to_path_buf()))
        }
        Err(e) => return Err(read(e)),
    }
    Ok(ReadCache::new(file))
}

/// Every USDT probe site in the ELF file at `path` (empty if it has none),
/// reading only the headers and the notes (see [`open_elf`]).
pub fn probes_in(path: &Path) -> Result<Vec<UsdtProbe>, ListError> {
    let cache = open_elf(path)?;
    let elf = object::File::parse(&cache).map_err(|e| ListError::BadElf(path.to_path_buf(), e))?;
    let Some(section) = elf.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    if section.size() > MAX_NOTES_BYTES {
        return Err(ListError::NotesTooLarge(path.to_path_buf(), section.size()));
    }
    let notes = section
        .data()
        .map_err(|e| ListError::BadElf(path.to_path_buf(), e))?;
    Ok(parse_notes(notes, elf.is_little_endian()))
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
pub fn mapped_objects(pid: u32) -> Result<Vec<PathBuf>, ListError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ListError::NoSuchProcess(pid)
        } else {
            ListError::Maps(pid, e)
        }
    })?;
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
    Ok(seen.into_iter().collect())
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
        for obj in mapped_objects(pid).unwrap_or_default() {
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

    /// A minimal ELF64 file: the section table holds `.shstrtab` and a
    /// `.note.stapsdt` of `note_size` bytes at offset 0 (not in the file).
    fn elf_with_notes(note_size: u64) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.note.stapsdt\0";
        let shoff = (64 + shstr.len() as u64).next_multiple_of(8);
        let mut f = b"\x7fELF\x02\x01\x01\0".to_vec();
        f.resize(16, 0);
        for (v, n) in [
            (2u64, 2),
            (62, 2),
            (1, 4),
            (0, 8),
            (0, 8),
            (shoff, 8),
            (0, 4),
        ] {
            f.extend_from_slice(&v.to_le_bytes()[..n]);
        }
        for v in [64u16, 0, 0, 64, 3, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(shstr);
        f.resize(shoff as usize, 0);
        let section = |name: u32, kind: u32, offset: u64, size: u64| {
            let mut h = Vec::new();
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            for v in [0u64, 0, offset, size] {
                h.extend_from_slice(&v.to_le_bytes());
            }
            h.extend_from_slice(&[0; 8]);
            h.extend_from_slice(&1u64.to_le_bytes());
            h.extend_from_slice(&[0; 8]);
            h
        };
        f.extend_from_slice(&[0; 64]);
        f.extend(section(1, 3, 64, shstr.len() as u64));
        f.extend(section(11, 7, 0, note_size));
        f
    }

    fn temp_file(name: &str, data: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("portsnoop-list-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn refuses_what_is_not_a_regular_elf_file_before_reading_it() {
        assert!(matches!(
            probes_in(Path::new("/dev/zero")),
            Err(ListError::NotRegular(_))
        ));
        assert!(matches!(
            probes_in(Path::new("/")),
            Err(ListError::NotRegular(_))
        ));
        let text = temp_file("text", b"#!/bin/sh\necho hi\n");
        let short = temp_file("short", b"\x7fEL");
        let empty = temp_file("empty", b"");
        for p in [&text, &short, &empty] {
            let e = probes_in(p).unwrap_err();
            assert!(matches!(e, ListError::NotElf(_)), "{e}");
            assert!(e.to_string().ends_with(": not an ELF file"), "{e}");
        }
        let missing = probes_in(Path::new("/no/such/file")).unwrap_err();
        assert!(matches!(&missing, ListError::Read(_, e) if e.kind() == io::ErrorKind::NotFound));
        for p in [text, short, empty] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn reads_only_the_notes_and_caps_them() {
        // A note section claiming 16 GiB: refused by its size, not read.
        let huge = temp_file("huge", &elf_with_notes(1 << 34));
        let e = probes_in(&huge).unwrap_err();
        assert!(
            matches!(e, ListError::NotesTooLarge(_, n) if n == 1 << 34),
            "{e}"
        );
        assert!(e.to_string().contains("more than the 16 MiB"), "{e}");
        // An empty one parses: the crafted file is a valid ELF.
        let empty = temp_file("empty-notes", &elf_with_notes(0));
        assert_eq!(probes_in(&empty).unwrap(), vec![]);
        for p in [huge, empty] {
            let _ = std::fs::remove_file(p);
        }
    }
}
