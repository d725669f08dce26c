//! Rendered `chat/history` and `chat/list` bodies, per user, for clients that poll.
//!
//! The app polls history; most polls find nothing new, and answering them from
//! memory saves the database round trip, the row decoding and the JSON rendering.
//!
//! Freshness: a user's entries are dropped the moment this process appends to one
//! of their conversations or hears about such an event from the bus (see `feed`),
//! and never outlive `READ_CACHE_TTL_MS` (bounding staleness if a notice is lost
//! while the broker is away). A read that raced with an invalidation is not cached:
//! each user has a generation, bumped on every invalidation, and a body is stored
//! only under the generation that was current before its rows were read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use events::event::{BotId, UserId};

use crate::views::RowFormat;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadKey {
    History {
        bot_id: BotId,
        after: i64,
        limit: u32,
        format: RowFormat,
    },
    List {
        format: RowFormat,
    },
}

/// Proof of which generation a read started under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Default)]
struct Slot {
    generation: u64,
    bodies: HashMap<ReadKey, (Instant, Bytes)>,
}

#[derive(Default)]
struct Slots {
    users: HashMap<UserId, Slot>,
    next_generation: u64,
}

pub struct ReadCache {
    ttl: Duration,
    max_users: usize,
    slots: Mutex<Slots>,
}

impl ReadCache {
    /// A `ttl` of zero disables the cache.
    pub fn new(ttl: Duration, max_users: usize) -> Self {
        Self {
            ttl,
            max_users,
            slots: Mutex::new(Slots::default()),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    pub fn get(&self, user: UserId, key: &ReadKey) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let slots = self.slots.lock().ok()?;
        let (stored_at, body) = slots.users.get(&user)?.bodies.get(key)?;
        (stored_at.elapsed() < self.ttl).then(|| body.clone())
    }

    /// Call before reading the rows that [`ReadCache::put`] will store.
    pub fn ticket(&self, user: UserId) -> Ticket {
        let Ok(mut slots) = self.slots.lock() else {
            return Ticket(u64::MAX);
        };
        if !slots.users.contains_key(&user) && slots.users.len() >= self.max_users {
            // Rare, and simpler than tracking recency: start over.
            slots.users.clear();
        }
        let next = slots.next_generation;
        let slot = slots.users.entry(user).or_insert_with(|| Slot {
            generation: next,
            bodies: HashMap::new(),
        });
        let generation = slot.generation;
        if generation == next {
            slots.next_generation += 1;
        }
        Ticket(generation)
    }

    /// Stores `body` unless the user's data changed since `ticket` was taken.
    pub fn put(&self, user: UserId, key: ReadKey, ticket: Ticket, body: Bytes) {
        if !self.enabled() {
            return;
        }
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.users.get_mut(&user) {
                if slot.generation == ticket.0 {
                    slot.bodies.insert(key, (Instant::now(), body));
                }
            }
        }
    }

    /// Forgets everything (notices may have been missed while the bus was away).
    pub fn clear(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.users.clear();
        }
    }

    /// Forgets everything cached for `user`.
    pub fn invalidate(&self, user: UserId) {
        if let Ok(mut slots) = self.slots.lock() {
            let next = slots.next_generation;
            if let Some(slot) = slots.users.get_mut(&user) {
                slot.generation = next;
                slot.bodies.clear();
                slots.next_generation += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ReadKey {
        ReadKey::List {
            format: RowFormat::Positional,
        }
    }

    #[test]
    fn a_read_that_raced_with_a_write_is_not_cached() {
        let cache = ReadCache::new(Duration::from_secs(60), 10);
        let ticket = cache.ticket(1);
        cache.invalidate(1); // a write landed while the rows were being read
        cache.put(1, key(), ticket, Bytes::from_static(b"old"));
        assert_eq!(cache.get(1, &key()), None);

        let ticket = cache.ticket(1);
        cache.put(1, key(), ticket, Bytes::from_static(b"new"));
        assert_eq!(cache.get(1, &key()), Some(Bytes::from_static(b"new")));
        cache.invalidate(2); // other users do not matter
        assert!(cache.get(1, &key()).is_some());
        cache.invalidate(1);
        assert_eq!(cache.get(1, &key()), None);
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_disables_the_cache() {
        let cache = ReadCache::new(Duration::from_millis(20), 10);
        let ticket = cache.ticket(1);
        cache.put(1, key(), ticket, Bytes::from_static(b"x"));
        assert!(cache.get(1, &key()).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(1, &key()), None);

        let off = ReadCache::new(Duration::ZERO, 10);
        let ticket = off.ticket(1);
        off.put(1, key(), ticket, Bytes::from_static(b"x"));
        assert_eq!(off.get(1, &key()), None);
    }

    #[test]
    fn eviction_never_resurrects_a_stale_ticket() {
        let cache = ReadCache::new(Duration::from_secs(60), 1);
        let stale = cache.ticket(1);
        let _ = cache.ticket(2); // evicts user 1
        let _ = cache.ticket(1); // user 1 again, under a new generation
        cache.put(1, key(), stale, Bytes::from_static(b"old"));
        assert_eq!(cache.get(1, &key()), None);
    }
}
