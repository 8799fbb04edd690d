//! Every tokio task framed, through tokio's task hooks (`--cfg
//! tokio_unstable`): the tasks a framework spawns itself (axum's and
//! hyper-util's connection tasks, tonic's, ...) become callbacks to tracers,
//! not only the ones spawned with [`spawn_named`](super::spawn_named).

// Without probes the hooks install nothing; the name formatting stays
// compiled (and unit-tested) rather than cfg'd piece by piece.
#![cfg_attr(not(feature = "probes"), allow(dead_code))]

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::panic::Location;

use tokio::runtime::{Builder, TaskMeta};

/// Installs tokio's task hooks on `builder` so every poll of every task on
/// the runtime fires `eventer-callback-entry` before and
/// `eventer-callback-return` after.
///
/// The probes carry:
///
/// | argument | value |
/// | --- | --- |
/// | `closure`, `event` | the tokio task id ([`tokio::task::Id`], the number `tokio::task::id()` prints): the same on every poll of the task |
/// | `name` | `task-ID@FILE:LINE`, where the task was spawned (`axum-0.8.9/src/serve/mod.rs:276`: the path from its crate's directory on) |
/// | `fd` | -1 (tokio does not tell which fd a task serves) |
/// | `mask`, `newmask` | `READ` |
/// | `rv` (return) | 0 when the task finished in that poll, `READ` when it is still pending |
///
/// While a task is polled, the sockets of this module report its id as
/// their `closure`, so each read or write is tied to its task. A
/// [`spawn_named`](super::spawn_named) task is framed twice: its tokio
/// task's frame, and inside it the [`Instrumented`](super::Instrumented)
/// frame with the name it was given (whose ids start at 2^32, apart from
/// tokio's).
///
/// Cost: a disabled probe is a load and a branch; the name is formatted
/// (into a stack buffer, no allocation) only while a tracer has the probe
/// enabled. The runtime's `block_on` future is not a task and is not
/// framed, nor are `LocalSet` tasks (tokio's hooks skip them).
///
/// This sets the runtime's `on_before_task_poll`, `on_after_task_poll` and
/// `on_task_terminate`, replacing hooks set before (tokio keeps one of
/// each). To keep your own, call [`before_task_poll`], [`after_task_poll`]
/// and [`task_terminated`] from them instead. Without the crate's `probes`
/// feature this installs nothing.
///
/// ```
/// # #[cfg(feature = "probes")] {
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// builder.enable_all();
/// eventloop_probes::tokio::frame_all_tasks(&mut builder);
/// let rt = builder.build().unwrap();
/// // Framed: every poll of this task fires callback-entry/return.
/// rt.block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() });
/// # }
/// ```
pub fn frame_all_tasks(builder: &mut Builder) -> &mut Builder {
    #[cfg(feature = "probes")]
    builder
        .on_before_task_poll(before_task_poll)
        .on_after_task_poll(after_task_poll)
        .on_task_terminate(task_terminated);
    builder
}

/// The `on_before_task_poll` hook of [`frame_all_tasks`]: fires
/// `eventer-callback-entry` and makes the task the sockets' `closure`.
#[inline]
pub fn before_task_poll(meta: &TaskMeta<'_>) {
    #[cfg(feature = "probes")]
    {
        let id = task_closure(meta.id());
        super::task::set_current_closure(id);
        let mut name = None;
        let name = &mut name;
        usdt_provider::callback_entry(move || callback(id, meta.spawned_at(), name));
    }
    #[cfg(not(feature = "probes"))]
    let _ = meta;
}

/// The `on_after_task_poll` hook of [`frame_all_tasks`]: fires
/// `eventer-callback-return` (0 if the task finished in this poll) and
/// clears the sockets' `closure`.
#[inline]
pub fn after_task_poll(meta: &TaskMeta<'_>) {
    #[cfg(feature = "probes")]
    {
        let id = task_closure(meta.id());
        let mut name = None;
        let name = &mut name;
        usdt_provider::callback_return(move || {
            // tokio runs the terminate hook inside the poll that finished
            // the task, on this thread, before this hook.
            let done = TERMINATED.with(std::cell::Cell::get) == id;
            let rv = if done { 0 } else { usdt_provider::mask::READ };
            (callback(id, meta.spawned_at(), name), rv)
        });
        super::task::set_current_closure(0);
    }
    #[cfg(not(feature = "probes"))]
    let _ = meta;
}

/// The `on_task_terminate` hook of [`frame_all_tasks`]: notes that the
/// task finished, for the `rv` of [`after_task_poll`]. Costs one
/// thread-local store per task.
#[inline]
pub fn task_terminated(meta: &TaskMeta<'_>) {
    #[cfg(feature = "probes")]
    TERMINATED.with(|t| t.set(task_closure(meta.id())));
    #[cfg(not(feature = "probes"))]
    let _ = meta;
}

thread_local! {
    // The last task whose terminate hook ran on this thread. A task that
    // ends outside a poll (aborted while idle, runtime shutdown) leaves its
    // id here too, harmlessly: it is never polled again, and tokio's ids
    // are not reused while they count up.
    #[cfg(feature = "probes")]
    static TERMINATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A tokio task id as the `closure` the probes carry: its number.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let task = tokio::spawn(async {});
/// let n = eventloop_probes::tokio::task_closure(task.id());
/// assert_eq!(n.to_string(), task.id().to_string());
/// # });
/// ```
pub fn task_closure(id: tokio::task::Id) -> u64 {
    // tokio shows the number only through Display; its derived Hash hands
    // the hasher that same u64, which is one store instead of formatting
    // on every poll. A unit test checks the two agree.
    let mut h = U64Capture(0);
    id.hash(&mut h);
    h.0
}

/// A `Hasher` that keeps the last `u64` it was given.
struct U64Capture(u64);

impl Hasher for U64Capture {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a task id (it hashes one u64); fold anyway so a
        // change in tokio shows up as wrong numbers in the unit test, not
        // as a silent constant.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The probes' arguments for task `id`, its name formatted into `slot`
/// (which the caller keeps alive while the probe reads it).
#[cfg(feature = "probes")]
fn callback<'a>(
    id: u64,
    at: &'static Location<'static>,
    slot: &'a mut Option<NameBuf>,
) -> usdt_provider::Callback<'a> {
    let name = slot.insert(NameBuf::task(id, at));
    usdt_provider::Callback {
        closure: id,
        event: id,
        name: name.as_str(),
        fd: -1,
        mask: usdt_provider::mask::READ,
        newmask: usdt_provider::mask::READ,
    }
}

/// A task's name, formatted on the stack: longer names are cut (at a
/// character boundary), as tracers cut them anyway (bpftrace reads 64
/// bytes of a string by default).
struct NameBuf {
    buf: [u8; NameBuf::CAP],
    len: usize,
}

impl NameBuf {
    const CAP: usize = 160;

    /// `task-ID@FILE:LINE` for a task spawned at `at`.
    fn task(id: u64, at: &Location<'_>) -> NameBuf {
        let mut n = NameBuf {
            buf: [0; NameBuf::CAP],
            len: 0,
        };
        let _ = write!(n, "task-{id}@{}:{}", short_path(at.file()), at.line());
        n
    }

    fn as_str(&self) -> &str {
        // Only whole `str`s or their char-boundary prefixes were copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("task")
    }
}

impl fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = NameBuf::CAP - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// A spawn location's file from its crate's directory on: a dependency's
/// `/home/u/.cargo/registry/src/index.crates.io-HASH/axum-0.8.9/src/serve/mod.rs`
/// becomes `axum-0.8.9/src/serve/mod.rs` (crate and version, where the
/// operator wants them); a workspace path such as `tests/src/x.rs` stays.
fn short_path(file: &str) -> &str {
    match file.rfind("/src/") {
        Some(src) => match file[..src].rfind('/') {
            Some(slash) => &file[slash + 1..],
            None => file,
        },
        None => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_closure_is_the_number_tokio_prints() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                let task = tokio::spawn(async {});
                assert_eq!(task_closure(task.id()).to_string(), task.id().to_string());
                task.await.unwrap();
            }
        });
    }

    #[test]
    fn names_are_short_and_cut_at_a_character() {
        assert_eq!(
            short_path("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/axum-0.8.9/src/serve/mod.rs"),
            "axum-0.8.9/src/serve/mod.rs"
        );
        assert_eq!(short_path("tests/src/bin/x.rs"), "tests/src/bin/x.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
        let mut n = NameBuf {
            buf: [0; NameBuf::CAP],
            len: 0,
        };
        let long = "é".repeat(NameBuf::CAP);
        n.write_str("x").unwrap();
        n.write_str(&long).unwrap();
        assert_eq!(n.as_str().len(), NameBuf::CAP - 1, "the last é did not fit");
        assert!(n.as_str().starts_with("xé"));
    }
}
