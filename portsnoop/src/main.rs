//! portsnoop: per fd, what an event loop meant to do (its `evloop` USDT
//! probes) lined up with what the kernel did (its syscalls).
//!
//! The CLI only parses and dispatches; the work is in the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use portsnoop::correlate::Filter;
use portsnoop::trace::{self, Format, TraceConfig};
use portsnoop::{bpftrace_script, list};

#[derive(Parser, Debug)]
#[command(
    name = "portsnoop",
    version,
    about = "Line up an event loop's evloop USDT probes with the kernel's syscalls on the same fd",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  portsnoop -p 1234                 trace a running process\n  portsnoop --json -- ./echo-mio --listen 127.0.0.1:0\n  portsnoop list                    processes with an evloop provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List USDT probes (like `dtrace -l -n 'evloop*:::'`) of a process, a
    /// binary, or every running process with an evloop provider.
    List {
        /// The process to list.
        #[arg(short, long, conflicts_with = "path")]
        pid: Option<u32>,
        /// The binary to list.
        path: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// Attach to this running process.
    #[arg(short, long, conflicts_with = "command")]
    pid: Option<u32>,
    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Write JSON Lines instead of the table.
    #[arg(long)]
    json: bool,
    /// Print per-fd and per-operation totals and latency histograms at exit.
    #[arg(long)]
    summary: bool,
    /// No rows, only the summary at exit (with --json, only its summary
    /// line): the cheapest way to watch a busy service.
    #[arg(short, long)]
    quiet: bool,
    /// Write output to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Only this fd.
    #[arg(long)]
    fd: Option<i32>,
    /// Only this thread.
    #[arg(long)]
    tid: Option<u32>,
    /// Ring buffer size in KiB (rounded up to a power of two).
    #[arg(long, value_name = "KIB", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(4..=1048576))]
    buffer_kb: u32,
    /// Print an equivalent bpftrace script for the target and exit.
    #[arg(long)]
    bpftrace: bool,
    /// Start this command and trace it from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::List { pid, path }) => list_probes(pid, path),
        None => run_trace(cli.trace),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portsnoop: {}", trace::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run_trace(args: TraceArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.pid.is_none() && args.command.is_empty() {
        // clap's usage exit code, so scripts can tell misuse from failure.
        eprintln!("portsnoop: give -p PID or -- CMD ARGS...\n\nUsage: portsnoop [OPTIONS] (-p PID | -- CMD...)\n       portsnoop list [-p PID | PATH]");
        std::process::exit(2);
    }
    if let Some(d) = args.duration {
        if !(d > 0.0 && d.is_finite()) {
            eprintln!("portsnoop: -d needs a positive number of seconds, got {d}");
            std::process::exit(2);
        }
    }
    if args.bpftrace {
        let (pid, exe) = match args.pid {
            Some(pid) => (
                Some(pid),
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map_err(|e| format!("no such process {pid}: {e}"))?,
            ),
            None => (None, PathBuf::from(&args.command[0])),
        };
        print!("{}", bpftrace_script::script(pid, &exe));
        return Ok(());
    }
    let config = TraceConfig {
        pid: args.pid,
        command: args.command,
        duration: args.duration.map(std::time::Duration::from_secs_f64),
        format: if args.json {
            Format::Json
        } else {
            Format::Table
        },
        summary: args.summary || (args.quiet && !args.json),
        quiet: args.quiet,
        output: args.output,
        filter: Filter {
            fd: args.fd,
            tid: args.tid,
        },
        buffer_bytes: args.buffer_kb as usize * 1024,
    };
    trace::run(config)?;
    Ok(())
}

fn list_probes(pid: Option<u32>, path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let print = |pid: Option<u32>, file: &std::path::Path| -> Result<usize, list::ListError> {
        let probes = list::probes_in(file)?;
        for p in &probes {
            let provider = match pid {
                Some(pid) => format!("{}{pid}", p.provider),
                None => p.provider.clone(),
            };
            println!(
                "{:>8} {:<12} {:<40} {:<26} {}",
                pid.map_or("-".into(), |p| p.to_string()),
                provider,
                file.display(),
                p.name,
                p.args
            );
        }
        Ok(probes.len())
    };
    println!(
        "{:>8} {:<12} {:<40} {:<26} ARGS",
        "PID", "PROVIDER", "MODULE", "NAME"
    );
    match (pid, path) {
        (Some(pid), _) => {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("no such process: {pid}").into());
            }
            let mut n = 0;
            for obj in list::mapped_objects(pid) {
                n += print(Some(pid), &obj).unwrap_or(0);
            }
            if n == 0 {
                eprintln!("portsnoop: process {pid} has no USDT probes");
            }
        }
        (None, Some(path)) => {
            if print(None, &path)? == 0 {
                eprintln!("portsnoop: {} has no USDT probes", path.display());
            }
        }
        (None, None) => {
            let found = list::processes_with_provider(portsnoop::engine::PROVIDER);
            for (pid, obj) in &found {
                print(Some(*pid), obj)?;
            }
            if found.is_empty() {
                eprintln!(
                    "portsnoop: no running process has an {} provider",
                    portsnoop::engine::PROVIDER
                );
            }
        }
    }
    Ok(())
}
