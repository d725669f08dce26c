//! How many streams each user holds open, to cap them (`SSE_MAX_STREAMS_PER_USER`):
//! a stream holds memory and a receiver for as long as it lives, so one user must
//! not be able to open them without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use events::event::UserId;

#[derive(Default)]
pub struct OpenStreams {
    counts: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One open stream; dropping it frees the slot.
pub struct StreamSlot {
    counts: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
}

impl OpenStreams {
    /// A slot for `user`, unless they hold `max` already.
    pub fn acquire(&self, user: UserId, max: usize) -> Option<StreamSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(user).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        metrics::gauge!(events::metrics::SSE_STREAMS).increment(1.0);
        Some(StreamSlot {
            counts: self.counts.clone(),
            user,
        })
    }

    /// Streams open now, all users together.
    pub fn open(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.values().sum())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!(events::metrics::SSE_STREAMS).decrement(1.0);
        if let Ok(mut counts) = self.counts.lock() {
            if let Some(count) = counts.get_mut(&self.user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&self.user);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_user_and_freed_on_drop() {
        let streams = OpenStreams::default();
        let a = streams.acquire(1, 2);
        let b = streams.acquire(1, 2);
        assert!(a.is_some() && b.is_some());
        assert!(streams.acquire(1, 2).is_none());
        assert!(
            streams.acquire(2, 2).is_some(),
            "other users are not affected"
        );
        drop(a);
        assert!(streams.acquire(1, 2).is_some());
        drop(b);
        assert_eq!(streams.open(), 0);
    }
}
