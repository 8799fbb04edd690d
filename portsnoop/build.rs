//! Compiles the BPF program with clang and generates its Rust skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

#[path = "build/syscall_names.rs"]
mod syscall_names;

const SRC: &str = "src/bpf/portsnoop.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("portsnoop.skel.rs");
    // Under -target bpf clang does not search Debian's multiarch include
    // dir, where <asm/types.h> (needed by <linux/bpf.h>) lives.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("portsnoop: no multiarch include dir known for {other}"),
    };
    syscall_names::generate(
        multiarch,
        &PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")),
    );
    println!("cargo:rerun-if-changed=build/syscall_names.rs");
    SkeletonBuilder::new()
        .source(SRC)
        // -mcpu=v3 for atomic exchange (claiming unreported drops), which
        // kernels have had since 5.12.
        .clang_args([
            format!("-I/usr/include/{multiarch}"),
            "-Wall".to_string(),
            "-O2".to_string(),
            "-mcpu=v3".to_string(),
        ])
        .build_and_generate(&out)
        .unwrap_or_else(|e| {
            panic!("portsnoop: building {SRC} failed (needs clang, libelf-dev, linux-libc-dev: run scripts/setup.sh): {e:#}")
        });
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/event.h");
}
