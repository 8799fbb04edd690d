//! Linux x86-64 probe sites the kernel can turn into a call, used when built
//! with `--cfg evloop_nop5`: a naked function per probe whose first
//! instruction is the 5-byte nop `0f 1f 44 00 00`, with the probe's stapsdt
//! note written here instead of by the usdt crate's macro.
//!
//! Why: a uprobe on a 1-byte `nop` (the usdt crate's site) traps with `int3`
//! on every fire. Since Linux 6.18, a uprobe on exactly this nop5 is
//! rewritten after its first hit into a `call` to a trampoline page that
//! enters the kernel by a syscall, which is cheaper than the trap for a
//! tracer such as bpftrace (measured by `bench/site-form.sh`). Why not by
//! default: that syscall runs every raw syscall tracepoint program on the
//! machine, and portsnoop has two (it traces syscalls), so under portsnoop a
//! fire costs more than the trap. Other kernels trap on the nop5 as on any
//! instruction: Linux 6.16 and 6.17 emulate it like the 1-byte nop, older
//! ones single-step it out of line (slower per fire than the 1-byte nop).
//!
//! Why it is safe here and not in the usdt crate's site: the trampoline's
//! `call` and its three pushes write 32 bytes below the stack pointer the
//! site runs with. In the usdt crate's site that is the containing
//! function's red zone, which its `nostack` asm lets the compiler use for
//! live data. Here the site is the first instruction of a function reached
//! only by `call` and that has no frame: below its stack pointer nothing is
//! live (the caller gave the area up by calling, as every SysV x86-64 call
//! does; the function itself uses no stack), so the writes land on dead
//! memory. The kernel gives tracers the registers as they were at the site
//! (it restores `rcx`, `r11`, `rax`, `rip` and `rsp` from what the
//! trampoline saved), so argument *i* is read from the *i*-th C argument
//! register, where the C ABI put it.
//!
//! The note, the semaphore (`__usdt_sema_evloop_<probe>` in `.probes`, the
//! same symbol the usdt crate would define, so the wrappers' load is
//! unchanged) and `.stapsdt.base` are written as the usdt crate writes
//! them, so every stapsdt reader (bpftrace, bcc, perf, libbpf, portsnoop)
//! reads them alike.

/// The stapsdt argument spec of one argument of type `$ty` held in the
/// register named `$r32` (32-bit name) or `$r64` (64-bit name), as the usdt
/// crate writes it.
macro_rules! arg_spec {
    (i32, $r32:literal, $r64:literal) => {
        concat!("-4@%", $r32)
    };
    (u64, $r32:literal, $r64:literal) => {
        concat!("8@%", $r64)
    };
    (i64, $r32:literal, $r64:literal) => {
        concat!("-8@%", $r64)
    };
}

/// The stapsdt argument specs of a probe with argument types `$ty...`, in
/// the C argument registers in order (at most six: no stack arguments).
macro_rules! arg_specs {
    ($($ty:ident),*) => {
        arg_specs!(@pair [] [$($ty)*]
            [("edi" "rdi") ("esi" "rsi") ("edx" "rdx") ("ecx" "rcx") ("r8d" "r8") ("r9d" "r9")])
    };
    (@pair [$($done:expr),*] [] [$($regs:tt)*]) => {
        concat!($($done),*)
    };
    (@pair [] [$ty:ident $($rest:ident)*] [($r32:literal $r64:literal) $($regs:tt)*]) => {
        arg_specs!(@pair [arg_spec!($ty, $r32, $r64)] [$($rest)*] [$($regs)*])
    };
    (@pair [$($done:expr),+] [$ty:ident $($rest:ident)*] [($r32:literal $r64:literal) $($regs:tt)*]) => {
        arg_specs!(@pair [$($done),+, " ", arg_spec!($ty, $r32, $r64)] [$($rest)*] [$($regs)*])
    };
}

/// One probe's site: `$field`, a naked `extern "C"` function of the
/// probe's arguments that is the nop5, then `ret`; its note names probe
/// `$name` of provider `evloop` with semaphore
/// `__usdt_sema_evloop_<$probe>`.
macro_rules! nop5_site {
    ($field:ident, $probe:ident, $name:literal, ($($arg:ident: $ty:ident),*)) => {
        /// The one site of this probe: a 5-byte nop the kernel can
        /// optimize, the function's first instruction (see `nop5_site`).
        #[unsafe(naked)]
        pub(super) extern "C" fn $field($($arg: $ty),*) {
            core::arch::naked_asm!(
                "990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                "ret",
                // Raises the function section's alignment to 16 without
                // padding before the nop5 (the function is that section's
                // only symbol, at its start): a 16-byte aligned nop5 never
                // crosses a page, which the kernel would not optimize.
                ".p2align 4",
                concat!(".ifndef __usdt_sema_evloop_", stringify!($probe)),
                ".pushsection .probes, \"aw\", \"progbits\"",
                concat!(".weak __usdt_sema_evloop_", stringify!($probe)),
                concat!(".hidden __usdt_sema_evloop_", stringify!($probe)),
                concat!("__usdt_sema_evloop_", stringify!($probe), ":"),
                ".zero 2",
                concat!(".type __usdt_sema_evloop_", stringify!($probe), ", @object"),
                concat!(".size __usdt_sema_evloop_", stringify!($probe), ", 2"),
                ".popsection",
                ".endif",
                ".pushsection .note.stapsdt, \"\", \"note\"",
                ".balign 4",
                ".4byte 992f-991f, 994f-993f, 3",
                "991: .asciz \"stapsdt\"",
                "992: .balign 4",
                "993: .8byte 990b",
                ".8byte _.stapsdt.base",
                concat!(".8byte __usdt_sema_evloop_", stringify!($probe)),
                ".asciz \"evloop\"",
                concat!(".asciz \"", $name, "\""),
                concat!(".asciz \"", arg_specs!($($ty),*), "\""),
                "994: .balign 4",
                ".popsection",
                ".ifndef _.stapsdt.base",
                ".pushsection .stapsdt.base, \"aGR\", \"progbits\", .stapsdt.base, comdat",
                ".weak _.stapsdt.base",
                ".hidden _.stapsdt.base",
                "_.stapsdt.base: .space 1",
                ".size _.stapsdt.base, 1",
                ".popsection",
                ".endif",
            )
        }
    };
}
