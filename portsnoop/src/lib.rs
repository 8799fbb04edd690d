//! portsnoop: lines up an event loop's `evloop` USDT probes with the
//! kernel's syscalls on the same fd.
//!
//! Data flows one way: [`engine`] (BPF, kernel plumbing) yields
//! [`event::Event`]s; [`correlate`] (pure) turns them into
//! [`correlate::Record`]s; [`output`] writes them; [`trace`] runs a session
//! through all three, with [`target`] owning the traced process's life.
//! [`count`] is `portsnoop count`: syscall counts aggregated in the kernel.
//! [`replay`] feeds a `--json` recording's records to the same outputs.

pub mod bpftrace_script;
pub mod correlate;
pub mod count;
pub mod engine;
pub mod event;
pub mod list;
pub mod output;
pub mod replay;
pub mod sock;
pub mod stop;
pub mod syscalls;
pub mod target;
pub mod trace;
