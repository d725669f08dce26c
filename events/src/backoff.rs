//! Exponential backoff with jitter, for every reconnect and retry loop (the broker's
//! consumers, the database at start-up, the worker's database steps).

use std::time::Duration;

/// Exponential backoff with jitter, for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay to wait now; the one after it doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.25 + 0.875;
        base.mul_f64(jitter)
    }
}
