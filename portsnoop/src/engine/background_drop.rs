//! Letting go of things on a thread of its own. A uprobe link's close
//! waits out an RCU grace period (about 100 ms here): done on the
//! session's thread when a followed process exits, it held up the ring
//! buffer's consumer, which falls behind and loses events meanwhile under
//! a heavy load.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};

/// Drops what it is handed on its own thread, started on first use.
/// Dropping it waits until everything handed over is dropped: a session
/// ends with every link closed.
pub struct BackgroundDrop<T: Send + 'static> {
    tx: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> BackgroundDrop<T> {
    /// Nothing started yet.
    pub fn new() -> BackgroundDrop<T> {
        BackgroundDrop {
            tx: None,
            thread: None,
        }
    }

    /// Drops `value` on the background thread, or here if that thread
    /// cannot be started (slower, never lost).
    pub fn drop_later(&mut self, value: T) {
        if self.tx.is_none() {
            let (tx, rx) = mpsc::channel::<T>();
            let started = thread::Builder::new()
                .name("portsnoop-detach".into())
                .spawn(move || rx.into_iter().for_each(drop));
            match started {
                Ok(handle) => {
                    self.tx = Some(tx);
                    self.thread = Some(handle);
                }
                Err(_) => return drop(value),
            }
        }
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(value)) = tx.send(value) {
                drop(value);
            }
        }
    }
}

impl<T: Send + 'static> Drop for BackgroundDrop<T> {
    fn drop(&mut self) {
        // The thread ends once the channel is closed and drained.
        self.tx.take();
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Notes the thread it was dropped on, slowly, as a link's close is.
    struct Slow(Arc<Mutex<Vec<thread::ThreadId>>>);

    impl Drop for Slow {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(50));
            self.0.lock().unwrap().push(thread::current().id());
        }
    }

    #[test]
    fn drops_elsewhere_without_waiting_and_all_before_it_ends() {
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let mut later = BackgroundDrop::new();
        let t = Instant::now();
        for _ in 0..4 {
            later.drop_later(Slow(Arc::clone(&dropped)));
        }
        assert!(t.elapsed() < Duration::from_millis(50), "it waited");
        drop(later);
        let on = dropped.lock().unwrap();
        assert_eq!(on.len(), 4, "not all dropped when it ended");
        assert!(on.iter().all(|id| *id != thread::current().id()));
    }
}
