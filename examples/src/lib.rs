//! What every example server does the same way: parse `--listen ADDR`, say
//! `listening on IP:PORT` once it accepts, and stop cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::exit;

/// Parses `--listen ADDR` (the only flag the servers take); on bad input
/// prints usage and exits 2.
pub fn parse_listen(program: &str) -> SocketAddr {
    let usage = || -> ! {
        eprintln!("usage: {program} --listen ADDR   (e.g. --listen 127.0.0.1:0)");
        exit(2)
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr] if flag == "--listen" => addr.parse().unwrap_or_else(|e| {
            eprintln!("{program}: bad --listen address {addr:?}: {e}");
            usage()
        }),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("usage: {program} --listen ADDR");
            exit(0)
        }
        _ => usage(),
    }
}

/// Prints the line tests and scripts wait for, and flushes it.
pub fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    // Nothing useful to do if stdout is gone; the server still serves.
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Calls `stop` once, from a helper thread, at the first SIGINT or SIGTERM.
pub fn on_shutdown_signal(stop: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop();
            }
        })?;
    Ok(())
}

/// Exits 1 with `context: error` on stderr.
pub fn die(context: &str, err: impl std::fmt::Display) -> ! {
    eprintln!("{context}: {err}");
    exit(1)
}
