//! portsnoop: lines up an event loop's `evloop` USDT probes with the
//! kernel's syscalls on the same fd.
//!
//! Data flows one way: [`engine`] (BPF, kernel plumbing) yields
//! [`event::Event`]s; [`correlate`] (pure) turns them into
//! [`correlate::Record`]s; [`output`] writes them.

pub mod correlate;
pub mod event;
pub mod output;
