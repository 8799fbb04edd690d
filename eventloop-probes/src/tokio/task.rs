//! Tasks as callbacks: every poll of an [`Instrumented`] future is bracketed
//! by `eventer-callback-entry/return`, the way libmtev brackets each run of
//! an event's callback.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use usdt_provider::{mask, Callback};

use crate::fire;

/// The first [`Instrumented`] id. Ids start above tokio's task ids, which
/// count up from 1 and are what [`frame_all_tasks`](super::frame_all_tasks)
/// reports as `closure`: with both on, a `spawn_named` task's frame sits
/// inside its tokio task's frame, and the two ids must never be confused.
/// Never 0, which means "not inside a task".
const FIRST_INSTRUMENTED_ID: u64 = 1 << 32;

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(FIRST_INSTRUMENTED_ID);

thread_local! {
    // The task whose poll runs on this thread right now. Socket operations
    // read it so their `closure` names the same task as the callback probes,
    // as libmtev's I/O probes carry the closure of the callback doing them.
    static CURRENT_TASK: Cell<u64> = const { Cell::new(0) };
}

/// The id of the [`Instrumented`] task being polled on this thread, or 0
/// outside of one; the `closure` argument of the socket probes.
#[inline]
pub(crate) fn current_closure() -> u64 {
    CURRENT_TASK.with(Cell::get)
}

/// Makes `id` the task running on this thread (0: none), for the task hooks,
/// which bracket a poll with two calls rather than a scope.
#[cfg(all(tokio_unstable, feature = "probes"))]
#[inline]
pub(crate) fn set_current_closure(id: u64) {
    CURRENT_TASK.with(|c| c.set(id));
}

/// Marks a task as the one running on this thread until dropped, restoring
/// the previous one (nested instrumented futures, or a panicking poll that
/// the runtime catches).
#[cfg(feature = "probes")]
struct CurrentTask {
    outer: u64,
}

#[cfg(feature = "probes")]
impl CurrentTask {
    fn enter(id: u64) -> CurrentTask {
        CurrentTask {
            outer: CURRENT_TASK.with(|c| c.replace(id)),
        }
    }
}

#[cfg(feature = "probes")]
impl Drop for CurrentTask {
    fn drop(&mut self) {
        CURRENT_TASK.with(|c| c.set(self.outer));
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll fires `eventer-callback-entry` before and
    /// `eventer-callback-return` after.
    ///
    /// The probes carry:
    ///
    /// | argument | value |
    /// | --- | --- |
    /// | `closure`, `event` | the task's id ([`Instrumented::id`]): unique in the process, the same on every poll, 2^32 and up (apart from tokio's task ids) |
    /// | `name` | the name given to [`Instrumented::new`] |
    /// | `fd` | the fd given to [`Instrumented::with_fd`], else -1 |
    /// | `mask`, `newmask` | `READ`: the task was woken and wants to be woken again |
    /// | `rv` (return) | 0 when the future finished (`Ready`), `READ` when it is `Pending` |
    ///
    /// The `rv` follows libmtev, where a callback returns the mask it wants
    /// next and 0 means "done". While the future is polled, socket
    /// operations of this module on the same thread report the task's id as
    /// their `closure`, so a tracer can tie each read or write to its task.
    ///
    /// ```
    /// use eventloop_probes::tokio::Instrumented;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let task = Instrumented::new("answer", async { 6 * 7 });
    /// assert_eq!(task.name(), "answer");
    /// assert_eq!(task.await, 42);
    /// # });
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        #[pin]
        future: F,
        name: Cow<'static, str>,
        id: u64,
        fd: RawFd,
    }
}

impl<F: Future> Instrumented<F> {
    /// Wraps `future` as a task called `name` with a fresh id.
    pub fn new(name: impl Into<Cow<'static, str>>, future: F) -> Instrumented<F> {
        Instrumented {
            future,
            name: name.into(),
            id: NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed),
            fd: -1,
        }
    }

    /// Reports `fd` (e.g. the connection the task serves) in
    /// `eventer-callback-entry`, so tracers can filter tasks by fd.
    pub fn with_fd(mut self, fd: RawFd) -> Instrumented<F> {
        self.fd = fd;
        self
    }

    /// The name the probes carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id the probes carry as `closure` and `event`.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let (id, fd, name): (u64, RawFd, &str) = (*this.id, *this.fd, this.name);
        let args = || Callback {
            closure: id,
            event: id,
            name,
            fd,
            mask: mask::READ,
            newmask: mask::READ,
        };
        let future = this.future;
        let mut out = Poll::Pending;
        fire::callback(args, || {
            #[cfg(feature = "probes")]
            let _current = CurrentTask::enter(id);
            out = future.poll(cx);
            if out.is_ready() {
                0
            } else {
                mask::READ
            }
        });
        out
    }
}

/// Spawns `future` on the current tokio runtime as an [`Instrumented`] task
/// called `name`.
///
/// Panics outside a tokio runtime, like [`tokio::spawn`].
///
/// ```
/// use eventloop_probes::tokio::spawn_named;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let handle = spawn_named("greeter", async { "hello" });
/// assert_eq!(handle.await.unwrap(), "hello");
/// # });
/// ```
pub fn spawn_named<F>(
    name: impl Into<Cow<'static, str>>,
    future: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Instrumented::new(name, future))
}
