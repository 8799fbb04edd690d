//! portsnoop: per fd, what an event loop meant to do (its `evloop` USDT
//! probes) lined up with what the kernel did (its syscalls).
//!
//! The CLI parses (clap checks every argument and exits 2 on misuse),
//! dispatches to the library, and prints the error chain of a failure as
//! `portsnoop: what: why: cause`, escaped, with exit 1. A closed output
//! (`portsnoop | head`) is a normal end: no message, exit 0. `portsnoop
//! count` exits 3 when its table filled up and calls went uncounted (its
//! output is whole, its counts lower bounds).

use std::error::Error;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use portsnoop::bpftrace_script;
use portsnoop::correlate::{Filter, StallConfig};
use portsnoop::count::{self, CountConfig};
use portsnoop::engine;
use portsnoop::list::{self, ListTarget};
use portsnoop::output::{error_chain, note};
use portsnoop::replay::{self, ReplayConfig};
use portsnoop::trace::{self, Format, TraceConfig};

/// The longest `-d`: ten years.
const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// `--stall`'s default, ms. tokio asks for no more than 10-100 us between
/// awaits; what an operator wants flagged is what a user can feel and what
/// a scheduler hiccup never is: 10 ms is 100 times tokio's upper bound, a
/// latency a client sees, and longer than the few ms a busy machine's
/// scheduler may keep a runnable thread waiting (the time slice), so a
/// flagged callback has really stalled its loop. Lower it to hunt smaller
/// stalls (`--stall 1`, `--stall 0.2`).
const STALL_DEFAULT_MS: &str = "10";

/// The shortest syscall kept inside a callback for the stall report, ns.
/// A syscall that does not block takes a microsecond or two; at 10 us it
/// waited or did real work, its record costs the app under a tenth of the
/// syscall itself, and it takes a thousand shorter ones to make a 10 ms
/// stall, which the on-CPU time then shows.
const STALL_SYSCALL_MIN_NS: u64 = 10_000;

/// The longest `--stall`: an hour.
const MAX_STALL_MS: f64 = 3_600_000.0;

#[derive(Parser, Debug)]
#[command(
    name = "portsnoop",
    version,
    about = "Line up an event loop's evloop USDT probes with the kernel's syscalls on the same fd",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  portsnoop -p 1234                 trace a running process\n  portsnoop --json -- ./echo-mio --listen 127.0.0.1:0\n  portsnoop -p 1234 --json=rec.jsonl --perfetto trace.pftrace\n                                    the table, a recording and a Perfetto trace\n  portsnoop replay rec.jsonl        the recording's table, offline\n  portsnoop list                    processes with an evloop provider\n  portsnoop list --perf -p 1234     its probes as tracefs uprobes, for perf\n  portsnoop count -d 5              syscalls by process and syscall, in the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Count syscalls by process, thread name and syscall (and fd), in the
    /// kernel, every process's or one's; at the end, a table most calls
    /// first (or JSON Lines). Exit status 3: the table filled up and some
    /// calls went uncounted (said on stderr and in the JSON's last line).
    Count {
        /// Only this process (a thread id counts its process); the count
        /// ends when it exits.
        #[arg(short, long, value_parser = pid_parser())]
        pid: Option<u32>,
        /// Stop after this many seconds (a fraction is fine; at most ten years).
        #[arg(short, long, value_name = "SECONDS", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Write JSON Lines {"pid","comm","syscall","count"} instead of the
        /// table, then one {"uncounted",...} line.
        #[arg(long)]
        json: bool,
        /// Rows by fd too, for the calls whose first argument is an fd.
        #[arg(long)]
        by_fd: bool,
        /// Rows the kernel's table holds; calls whose row does not fit are
        /// counted as uncounted and reported.
        #[arg(long, value_name = "N", default_value_t = count::DEFAULT_MAX_ENTRIES,
              value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
        max_entries: u32,
    },
    /// List USDT probes (like `dtrace -l -n 'evloop*:::'`) of a process, a
    /// binary, or every running process with an evloop provider.
    List {
        /// The process to list.
        #[arg(short, long, conflicts_with = "path", value_parser = pid_parser())]
        pid: Option<u32>,
        /// The binary to list.
        path: Option<PathBuf>,
        /// Print tracefs uprobe definitions of the evloop probe sites for
        /// perf (`perf record -e 'evloop:*'`), not the list.
        #[arg(long)]
        perf: bool,
    },
    /// Render a `--json` recording again, offline: the table (default),
    /// --summary, --json or --perfetto, as the live run wrote them.
    Replay {
        /// The JSON Lines recording (`-`: stdin).
        file: PathBuf,
        /// Write JSON Lines instead of the table.
        #[arg(long)]
        json: bool,
        /// Print the text summary after the table.
        #[arg(long)]
        summary: bool,
        /// No rows, only the summary (with --json, only its summary line).
        #[arg(short, long)]
        quiet: bool,
        /// Also write a Perfetto trace to FILE.
        #[arg(long, value_name = "FILE")]
        perfetto: Option<PathBuf>,
        /// A PID column in the table, as a live run with -f shows.
        #[arg(long)]
        pids: bool,
        /// Write output to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// Attach to this running process.
    #[arg(short, long, conflicts_with = "command", value_parser = pid_parser())]
    pid: Option<u32>,
    /// Stop after this many seconds (a fraction is fine; at most ten years).
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Write JSON Lines instead of the table; with =FILE, write them to
    /// FILE, every record, beside the table (a recording for `replay`).
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true)]
    json: Option<Option<PathBuf>>,
    /// Also write a Perfetto trace (ui.perfetto.dev) to FILE, at the end.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
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
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(0..))]
    fd: Option<i32>,
    /// Only this thread.
    #[arg(long, value_parser = pid_parser())]
    tid: Option<u32>,
    /// Follow forks, like `strace -f`: also trace the processes the target
    /// forks (and theirs), each row with its own pid (a PID column).
    #[arg(short = 'f', long)]
    follow_forks: bool,
    /// Report a callback or task poll that runs at least MS milliseconds as
    /// a stall (a STALL row, a `stall` JSON line, the summary's top
    /// stalls): with the syscalls of any kind it made and its time off the
    /// CPU. 0 turns stall tracking off, kernel side and all.
    #[arg(long, value_name = "MS", default_value = STALL_DEFAULT_MS, value_parser = parse_stall)]
    stall: StallThreshold,
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

/// A pid or tid: 1 to the largest `pid_t`.
fn pid_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(i32::MAX))
}

/// `--stall`: milliseconds (a fraction is fine), 0 for off, at most an
/// hour; the threshold in ns, or None for off.
fn parse_stall(s: &str) -> Result<StallThreshold, String> {
    let ms: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !(0.0..=MAX_STALL_MS).contains(&ms) {
        return Err(format!(
            "{s} is out of range: give 0 (off) to {MAX_STALL_MS} milliseconds (an hour)"
        ));
    }
    let ns = (ms * 1e6).round() as u64;
    Ok(StallThreshold((ns > 0).then_some(ns)))
}

/// `--stall`'s value: the threshold in ns, None when off.
#[derive(Clone, Copy, Debug)]
struct StallThreshold(Option<u64>);

/// `-d`: seconds, more than 0 and at most [`MAX_DURATION_SECS`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_DURATION_SECS) {
        return Err(format!(
            "{s} is out of range: give more than 0 and at most {MAX_DURATION_SECS} seconds (ten years)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut success = ExitCode::SUCCESS;
    let result: Result<(), Box<dyn Error>> = match cli.command {
        Some(Command::Count {
            pid,
            duration,
            json,
            by_fd,
            max_entries,
        }) => count::run(&CountConfig {
            pid,
            duration,
            json,
            by_fd,
            max_entries,
        })
        .map(|report| {
            if report.uncounted > 0 {
                success = ExitCode::from(count::INCOMPLETE_EXIT);
            }
        })
        .map_err(Into::into),
        Some(Command::List { pid, path, perf }) => {
            let what = match (pid, path) {
                (Some(pid), _) => ListTarget::Pid(pid),
                (None, Some(path)) => ListTarget::Path(path),
                (None, None) => ListTarget::All,
            };
            let out = &mut io::stdout().lock();
            if perf {
                list::run_perf(what, out)
            } else {
                list::run(what, out)
            }
            .map_err(Into::into)
        }
        Some(Command::Replay {
            file,
            json,
            summary,
            quiet,
            perfetto,
            pids,
            output,
        }) => replay::run(&ReplayConfig {
            input: file,
            format: if json { Format::Json } else { Format::Table },
            summary: !json && (summary || quiet),
            quiet,
            pids,
            output,
            perfetto,
        })
        .map(drop)
        .map_err(Into::into),
        None if cli.trace.bpftrace => print_bpftrace(&cli.trace),
        None => trace::run(trace_config(cli.trace))
            .map(drop)
            .map_err(Into::into),
    };
    match result {
        Ok(()) => success,
        // The reader is gone (`| head`): it has what it wanted.
        Err(e) if broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            note(format_args!("{}", error_chain(&*e)));
            ExitCode::FAILURE
        }
    }
}

/// The session `args` ask for; a usage error (exit 2) if they name no
/// target.
fn trace_config(args: TraceArgs) -> TraceConfig {
    if args.pid.is_none() && args.command.is_empty() {
        usage_error();
    }
    // `--json` alone: JSON Lines are the output; `--json=FILE`: a
    // recording beside it.
    let json_main = matches!(args.json, Some(None));
    let json_file = args.json.clone().flatten();
    let files: Vec<&PathBuf> = [&args.output, &json_file, &args.perfetto]
        .into_iter()
        .flatten()
        .collect();
    if files
        .iter()
        .enumerate()
        .any(|(i, f)| files[..i].contains(f))
    {
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                "-o, --json=FILE and --perfetto need different files",
            )
            .exit()
    }
    TraceConfig {
        pid: args.pid,
        command: args.command,
        duration: args.duration,
        format: if json_main {
            Format::Json
        } else {
            Format::Table
        },
        // The text summary: with --json the summary is the JSON stream's
        // last line, and nothing else is written.
        summary: !json_main && (args.summary || args.quiet),
        quiet: args.quiet,
        output: args.output,
        json_file,
        perfetto: args.perfetto,
        filter: Filter {
            fd: args.fd,
            tid: args.tid,
        },
        buffer_bytes: args.buffer_kb as usize * 1024,
        follow_forks: args.follow_forks,
        stall: args.stall.0.map(|threshold_ns| StallConfig {
            threshold_ns,
            syscall_min_ns: STALL_SYSCALL_MIN_NS,
        }),
    }
}

fn usage_error() -> ! {
    Cli::command()
        .error(
            ErrorKind::MissingRequiredArgument,
            "give -p PID or -- CMD ARGS...",
        )
        .exit()
}

/// `--bpftrace`: the equivalent bpftrace script on stdout.
fn print_bpftrace(args: &TraceArgs) -> Result<(), Box<dyn Error>> {
    let (pid, exe) = match (args.pid, args.command.first()) {
        (Some(pid), _) => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    trace::Error::Target(portsnoop::target::Error::NoSuchProcess(pid))
                } else {
                    trace::Error::Engine(engine::Error::Io(format!("reading /proc/{pid}/exe"), e))
                }
            })?;
            (Some(pid), exe)
        }
        (None, Some(cmd)) => (None, PathBuf::from(cmd)),
        (None, None) => usage_error(),
    };
    let script = bpftrace_script::script(pid, &exe)?;
    let mut out = io::stdout().lock();
    out.write_all(script.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| trace::Error::Write(e).into())
}

/// Whether `e` comes from writing to a pipe whose reader is gone.
fn broken_pipe(e: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = c.source();
    }
    false
}
