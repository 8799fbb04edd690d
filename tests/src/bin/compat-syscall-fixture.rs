//! Waits for a line on stdin, then makes N 32-bit `getpid` calls through
//! `int 0x80` (x86-64 only): the i386 numbering, where 20 is `getpid`
//! and x86-64's 20 is `writev`. `portsnoop count` must name them
//! `i386:getpid`. Elsewhere it says so and exits 2.

use std::io::BufRead;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: compat-syscall-fixture N");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    for _ in 0..n {
        getpid_i386();
    }
}

#[cfg(target_arch = "x86_64")]
fn getpid_i386() {
    let pid: i64;
    // SAFETY: the i386 getpid (20) through the 32-bit entry: no arguments,
    // no memory touched; the kernel may clobber r8-r11 on this path.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("rax") 20i64 => pid,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    assert_eq!(pid, i64::from(std::process::id()), "int 0x80 getpid");
}

#[cfg(not(target_arch = "x86_64"))]
fn getpid_i386() {
    eprintln!("compat-syscall-fixture: x86-64 only");
    std::process::exit(2);
}
