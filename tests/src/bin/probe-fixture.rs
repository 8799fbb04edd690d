//! Fires every `evloop` probe with known values, one round per SIGUSR1, so
//! a test can attach a tracer first and then trigger. Prints `ready` once
//! it waits for signals, `fired N` after round N, and `log-line L`: the
//! source line its `log` probe reports.
//!
//! Each round ends with bad input: callback names with an interior NUL, of
//! 64 KiB, and from invalid UTF-8, each followed by a normal probe whose
//! values must arrive intact.
//!
//! With `--hold N`, each round instead fires `eventer-read-entry` N times
//! from a function that keeps [`HELD`] opaque values live across every fire,
//! and prints `held N changed C`: C is how many fires changed one of them
//! (0 unless a site writes memory it does not own, such as its caller's red
//! zone). Each fire's `len` is `fd * 3 + 1`, for the tracer to check.
//!
//! With `--hostile`, each round then fires a callback named [`HOSTILE`] and
//! a `log` whose facility, file and message hold terminal controls too: a
//! tracer must not pass them to a terminal raw.

use std::io::Write;

use usdt_provider::{mask, Accept, Callback, Close, Io};

/// The values every round fires; the tests assert these.
const FD: i32 = 7;
const LISTEN_FD: i32 = 3;
const CLOSURE: u64 = 0xc0ffee;
const EVENT: u64 = 42;

/// What `--hostile` names its callback: sets the terminal's title, clears
/// the screen, starts a forged row, moves the cursor up with an 8-bit CSI.
pub const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\u{9b}1A";

fn fire_round(log_line: &mut u32, hostile: bool) {
    let accept = Accept {
        fd: LISTEN_FD,
        addr: 0x1000,
        addrlen: 16,
        mask: mask::READ,
        closure: CLOSURE,
    };
    usdt_provider::accept_entry(|| accept);
    usdt_provider::accept_return(|| (accept, i64::from(FD)));
    let read = Io {
        fd: FD,
        buf: 0x2000,
        len: 4096,
        mask: mask::READ,
        closure: CLOSURE,
    };
    usdt_provider::read_entry(|| read);
    usdt_provider::read_return(|| (read, -11));
    usdt_provider::read_entry(|| read);
    usdt_provider::read_return(|| (read, 100));
    let write = Io {
        fd: FD,
        buf: 0x3000,
        len: 512,
        mask: mask::WRITE,
        closure: CLOSURE,
    };
    usdt_provider::write_entry(|| write);
    usdt_provider::write_return(|| (write, 512));
    let cb = Callback {
        closure: CLOSURE,
        event: EVENT,
        name: "fixture-cb",
        fd: FD,
        mask: mask::READ,
        newmask: 3,
    };
    usdt_provider::callback_entry(|| cb);
    usdt_provider::callback_return(|| (cb, 2));
    let close = Close {
        fd: FD,
        mask: mask::EXCEPTION,
        closure: CLOSURE,
    };
    usdt_provider::close_entry(|| close);
    usdt_provider::close_return(|| (close, 0));
    *log_line = line!() + 1;
    usdt_provider::log("fixture", file!(), line!(), || format!("hello {}", 123));

    // Bad input, each followed by a probe that must be intact.
    let huge = "x".repeat(64 * 1024);
    let lossy = String::from_utf8_lossy(&[b'b', 0xff, 0xfe, b'd']).into_owned();
    for (i, name) in ["bad\0name", huge.as_str(), lossy.as_str()]
        .into_iter()
        .enumerate()
    {
        let bad = Callback { name, ..cb };
        usdt_provider::callback_entry(|| bad);
        let after = Io {
            fd: 100 + i as i32,
            buf: 0x4000,
            len: 99,
            mask: mask::READ,
            closure: CLOSURE,
        };
        usdt_provider::read_entry(|| after);
    }

    if hostile {
        let evil = Callback {
            name: HOSTILE,
            ..cb
        };
        usdt_provider::callback_entry(|| evil);
        usdt_provider::callback_return(|| (evil, 1));
        usdt_provider::log("\x1b[31mfac\r", "evil\n.rs", 7, || {
            "msg\x1b]0;pwned\x07\nFAKE ROW".to_string()
        });
    }
}

/// How many values [`hold_values`] keeps live across each fire: more than
/// the callee-saved registers, so some live on the stack.
pub const HELD: usize = 16;

/// Fires `eventer-read-entry` `n` times, each time with [`HELD`] values
/// live across the fire that the compiler cannot recompute (each passed
/// through `black_box`); returns how many fires changed one of them. No
/// call here but the fire's, so the stack slots are where a site that
/// wrote below its stack pointer would write.
#[inline(never)]
fn hold_values(n: u32) -> u32 {
    use std::hint::black_box;
    let mut changed = 0;
    for i in 0..n {
        let seed = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let held: [u64; HELD] = std::array::from_fn(|k| black_box(seed ^ ((k as u64) << 40)));
        let fd = i as i32;
        usdt_provider::read_entry(|| Io {
            fd,
            buf: seed,
            len: u64::from(i) * 3 + 1,
            mask: mask::READ,
            closure: CLOSURE,
        });
        if held
            .iter()
            .enumerate()
            .any(|(k, &v)| v != seed ^ ((k as u64) << 40))
        {
            changed += 1;
        }
    }
    changed
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hostile = args.iter().any(|a| a == "--hostile");
    let hold = args
        .iter()
        .position(|a| a == "--hold")
        .and_then(|at| args.get(at + 1)?.parse::<u32>().ok());
    // Block SIGUSR1 so it queues for sigwait instead of killing us.
    // SAFETY: plain signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut out = std::io::stdout();
    let mut log_line = 0;
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for round in 1.. {
        let mut sig = 0;
        // SAFETY: waiting on the set built above.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            std::process::exit(1);
        }
        if let Some(n) = hold {
            let changed = hold_values(n);
            let _ = writeln!(out, "held {n} changed {changed}");
        } else {
            fire_round(&mut log_line, hostile);
        }
        let _ = writeln!(out, "log-line {log_line}");
        let _ = writeln!(out, "fired {round}");
        let _ = out.flush();
    }
}
