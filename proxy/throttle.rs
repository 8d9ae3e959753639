//! At most one line a second for an event that any client can cause at will (a stopped
//! upload): the ones in between are counted, and the next line written says how many
//! were not.

use std::sync::atomic::{AtomicU64, Ordering};

/// The least time between two lines, in ms.
const EVERY_MS: u64 = 1000;

/// One event's rate limit.
#[derive(Default)]
pub struct Throttle {
    /// When the last line was written (ms since the epoch; 0: never).
    last_ms: AtomicU64,
    /// Events since then that were not written.
    skipped: AtomicU64,
}

impl Throttle {
    /// Whether a line may be written at `now_ms`: Some(how many were not written since
    /// the last one), or None (this one is counted instead).
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= EVERY_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_rest_counted() {
        let t = Throttle::default();
        assert_eq!(t.admit(10_000), Some(0));
        assert_eq!(t.admit(10_500), None);
        assert_eq!(t.admit(10_999), None);
        assert_eq!(t.admit(11_000), Some(2));
        assert_eq!(t.admit(11_001), None);
        assert_eq!(t.admit(20_000), Some(1));
    }
}
