//! Compiles the BPF programs with clang and generates their Rust
//! skeletons; generates `portsnoop count`'s syscall names from the kernel's
//! UAPI header.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/portsnoop.bpf.c";
const COUNT_SRC: &str = "src/bpf/count.bpf.c";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("portsnoop.skel.rs");
    // Under -target bpf clang does not search Debian's multiarch include
    // dir, where <asm/types.h> (needed by <linux/bpf.h>) lives.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("portsnoop: no multiarch include dir known for {other}"),
    };
    // -mcpu=v3 for atomic exchange (claiming unreported drops), which
    // kernels have had since 5.12.
    let clang_args = [
        format!("-I/usr/include/{multiarch}"),
        "-Wall".to_string(),
        "-O2".to_string(),
        "-mcpu=v3".to_string(),
    ];
    for (src, skel) in [(SRC, out), (COUNT_SRC, out_dir.join("count.skel.rs"))] {
        SkeletonBuilder::new()
            .source(src)
            .clang_args(clang_args.clone())
            .build_and_generate(&skel)
            .unwrap_or_else(|e| {
                panic!("portsnoop: building {src} failed (needs clang, libelf-dev, linux-libc-dev: run scripts/setup.sh): {e:#}")
            });
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=src/bpf/event.h");
    println!("cargo:rerun-if-changed=src/bpf/count.h");
    syscall_names(&arch, multiarch, &out_dir.join("syscall_names.rs"));
}

/// Writes `SYSCALL_NAMES: &[(u32, &str)]`, sorted by number, from the
/// kernel's UAPI header for the target (linux-libc-dev): generated, not
/// copied, so it is the numbering of the headers the BPF side is built
/// against. x86-64's `asm/unistd_64.h` has one `#define __NR_name N` per
/// call. arm64's is either that (newer headers) or asm-generic's
/// `unistd.h`, whose 64-bit names are given through `__NR3264_*`; where
/// a number gets two names (the 32-bit branch's `fcntl64` after
/// `fcntl`), the first one, the 64-bit one, is kept. On x86-64 also
/// `SYSCALL_NAMES_IA32`, the 32-bit calls' numbering (`asm/unistd_32.h`);
/// elsewhere it is empty.
fn syscall_names(arch: &str, multiarch: &str, out: &Path) {
    let native: Vec<String> = match arch {
        "x86_64" => vec![format!("/usr/include/{multiarch}/asm/unistd_64.h")],
        _ => vec![
            format!("/usr/include/{multiarch}/asm/unistd_64.h"),
            "/usr/include/asm-generic/unistd.h".to_string(),
        ],
    };
    let mut rs = String::new();
    write_table(
        &mut rs,
        "SYSCALL_NAMES",
        "Syscall numbers and names",
        &parse_header(&native),
    );
    let ia32 = match arch {
        "x86_64" => parse_header(&[format!("/usr/include/{multiarch}/asm/unistd_32.h")]),
        _ => Default::default(),
    };
    write_table(
        &mut rs,
        "SYSCALL_NAMES_IA32",
        "32-bit (i386) calls on x86-64: their numbers and names",
        &ia32,
    );
    std::fs::write(out, rs).expect("writing syscall_names.rs");
}

/// The `__NR_*` numbers of the first of `candidates` that exists.
fn parse_header(candidates: &[String]) -> std::collections::BTreeMap<u32, String> {
    let (path, text) = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|t| (p, t)))
        .unwrap_or_else(|| {
            panic!("portsnoop: no syscall header among {candidates:?} (needs linux-libc-dev: run scripts/setup.sh)")
        });
    println!("cargo:rerun-if-changed={path}");
    let mut defines = std::collections::HashMap::new();
    let mut order = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if name.starts_with("__NR") {
            defines.insert(name.to_string(), value.to_string());
            order.push(name.to_string());
        }
    }
    let mut names = std::collections::BTreeMap::new();
    for define in &order {
        let Some(name) = define.strip_prefix("__NR_") else {
            continue;
        };
        if name == "syscalls" || name.starts_with("arch_specific_syscall") {
            continue;
        }
        // A number, or another define's name (`__NR3264_fcntl`), once.
        let mut value = defines[define].as_str();
        if let Some(v) = defines.get(value) {
            value = v;
        }
        if let Ok(nr) = value.parse::<u32>() {
            names.entry(nr).or_insert_with(|| name.to_string());
        }
    }
    assert!(
        names.len() > 200,
        "portsnoop: {path} yielded only {} syscall names",
        names.len()
    );
    names
}

fn write_table(
    rs: &mut String,
    name: &str,
    doc: &str,
    names: &std::collections::BTreeMap<u32, String>,
) {
    writeln!(rs, "/// {doc}, sorted by number (generated by build.rs).").unwrap();
    writeln!(rs, "pub const {name}: &[(u32, &str)] = &[").unwrap();
    for (nr, name) in names {
        writeln!(rs, "    ({nr}, {name:?}),").unwrap();
    }
    rs.push_str("];\n");
}
