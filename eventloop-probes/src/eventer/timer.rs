//! Timer deadlines, earliest first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Pending deadlines by registration id. A cancelled timer stays in the heap
/// until it comes due and is then skipped: cheaper than searching the heap.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Timers {
    pub(crate) fn schedule(&mut self, at: Instant, id: u64) {
        self.heap.push(Reverse((at, id)));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the id of a timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u64> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_millis(20), 2);
        t.schedule(now + Duration::from_millis(10), 1);
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(10)));
        let later = now + Duration::from_millis(30);
        assert_eq!(t.pop_due(later), Some(1));
        assert_eq!(t.pop_due(later), Some(2));
        assert_eq!(t.pop_due(later), None);
    }
}
