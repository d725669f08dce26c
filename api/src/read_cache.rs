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
//!
//! Memory: only the shapes that polling uses are cached (a whole conversation, the
//! chat list; never a client-chosen page, never an empty answer), everything counts
//! against `READ_CACHE_MAX_BYTES`, the least recently used users are evicted past
//! it, and expired entries are swept out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use lru::LruCache;
use tokio_util::sync::CancellationToken;

use events::event::{BotId, UserId};

use crate::views::RowFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadKey {
    /// A whole conversation, as `chat/history` without `after` or `limit` serves it.
    History {
        bot_id: BotId,
        format: RowFormat,
    },
    List {
        format: RowFormat,
    },
}

/// What an entry costs beyond its body (the key, the map's and the LRU's links),
/// so that many tiny entries cannot slip past the budget.
const ENTRY_OVERHEAD: usize = 96;
const SLOT_OVERHEAD: usize = 160;

/// Proof of which generation a read started under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

struct Slot {
    generation: u64,
    bodies: HashMap<ReadKey, (Instant, Bytes)>,
}

impl Slot {
    fn bytes(&self) -> usize {
        SLOT_OVERHEAD
            + self
                .bodies
                .values()
                .map(|(_, body)| body.len() + ENTRY_OVERHEAD)
                .sum::<usize>()
    }
}

struct Slots {
    users: LruCache<UserId, Slot>,
    bytes: usize,
    next_generation: u64,
}

pub struct ReadCache {
    ttl: Duration,
    max_bytes: usize,
    slots: Mutex<Slots>,
}

impl ReadCache {
    /// A `ttl` of zero disables the cache.
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_bytes,
            slots: Mutex::new(Slots {
                users: LruCache::unbounded(),
                bytes: 0,
                next_generation: 0,
            }),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_bytes > 0
    }

    pub fn get(&self, user: UserId, key: &ReadKey) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let found = self.lookup(user, key);
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!(events::metrics::READ_CACHE, "result" => result).increment(1);
        found
    }

    fn lookup(&self, user: UserId, key: &ReadKey) -> Option<Bytes> {
        let mut slots = self.slots.lock().ok()?;
        let slot = slots.users.get_mut(&user)?;
        let (stored_at, body) = slot.bodies.get(key)?;
        if stored_at.elapsed() < self.ttl {
            return Some(body.clone());
        }
        let expired = slot
            .bodies
            .remove(key)
            .map_or(0, |(_, b)| b.len() + ENTRY_OVERHEAD);
        slots.bytes = slots.bytes.saturating_sub(expired);
        None
    }

    /// Call before reading the rows that [`ReadCache::put`] will store.
    pub fn ticket(&self, user: UserId) -> Ticket {
        let Ok(mut slots) = self.slots.lock() else {
            return Ticket(u64::MAX);
        };
        if let Some(slot) = slots.users.get(&user) {
            return Ticket(slot.generation);
        }
        // A new slot gets a generation no earlier ticket can hold, so a slot evicted
        // and made again never accepts a read that started before.
        let generation = slots.next_generation;
        slots.next_generation += 1;
        slots.users.put(
            user,
            Slot {
                generation,
                bodies: HashMap::new(),
            },
        );
        slots.bytes += SLOT_OVERHEAD;
        self.evict(&mut slots);
        Ticket(generation)
    }

    /// Stores `body` unless the user's data changed since `ticket` was taken.
    pub fn put(&self, user: UserId, key: ReadKey, ticket: Ticket, body: Bytes) {
        if !self.enabled() || body.len() + ENTRY_OVERHEAD > self.max_bytes / 4 {
            return;
        }
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let Some(slot) = slots.users.get_mut(&user) else {
            return;
        };
        if slot.generation != ticket.0 {
            return;
        }
        let added = body.len() + ENTRY_OVERHEAD;
        let replaced = slot
            .bodies
            .insert(key, (Instant::now(), body))
            .map_or(0, |(_, old)| old.len() + ENTRY_OVERHEAD);
        slots.bytes = (slots.bytes + added).saturating_sub(replaced);
        self.evict(&mut slots);
    }

    /// Evicts the least recently used users until the budget holds.
    fn evict(&self, slots: &mut Slots) {
        while slots.bytes > self.max_bytes {
            match slots.users.pop_lru() {
                Some((_, slot)) => slots.bytes = slots.bytes.saturating_sub(slot.bytes()),
                None => {
                    slots.bytes = 0;
                    break;
                }
            }
        }
    }

    /// Forgets everything (notices may have been missed while the bus was away).
    pub fn clear(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.users.clear();
            slots.bytes = 0;
        }
    }

    /// Forgets everything cached for `user`.
    pub fn invalidate(&self, user: UserId) {
        if let Ok(mut slots) = self.slots.lock() {
            let next = slots.next_generation;
            let mut freed = 0;
            if let Some(slot) = slots.users.peek_mut(&user) {
                freed = slot.bytes() - SLOT_OVERHEAD;
                slot.generation = next;
                slot.bodies.clear();
            }
            if freed > 0 || slots.users.contains(&user) {
                slots.next_generation += 1;
            }
            slots.bytes = slots.bytes.saturating_sub(freed);
        }
    }

    /// Drops expired bodies, and the users left with none.
    pub fn purge_expired(&self) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let ttl = self.ttl;
        let mut empty = Vec::new();
        let mut freed = 0;
        for (user, slot) in slots.users.iter_mut() {
            slot.bodies.retain(|_, (stored_at, body)| {
                let keep = stored_at.elapsed() < ttl;
                if !keep {
                    freed += body.len() + ENTRY_OVERHEAD;
                }
                keep
            });
            if slot.bodies.is_empty() {
                empty.push(*user);
            }
        }
        for user in empty {
            if slots.users.pop(&user).is_some() {
                freed += SLOT_OVERHEAD;
            }
        }
        slots.bytes = slots.bytes.saturating_sub(freed);
    }

    /// Sweeps expired entries every TTL until `shutdown` (a disabled cache has
    /// nothing to sweep, and waits for it all the same: the task's end means the
    /// process is stopping).
    pub async fn purge_expired_until(&self, shutdown: CancellationToken) {
        if !self.enabled() {
            shutdown.cancelled().await;
            return;
        }
        let every = self.ttl.max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    self.purge_expired();
                    metrics::gauge!(events::metrics::READ_CACHE_BYTES).set(self.bytes() as f64);
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Bytes accounted to what is cached now.
    pub fn bytes(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.bytes)
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
        let cache = ReadCache::new(Duration::from_secs(60), 1 << 20);
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
    fn entries_expire_are_swept_and_a_zero_ttl_disables_the_cache() {
        let cache = ReadCache::new(Duration::from_millis(20), 1 << 20);
        let ticket = cache.ticket(1);
        cache.put(1, key(), ticket, Bytes::from_static(b"x"));
        assert!(cache.get(1, &key()).is_some());
        std::thread::sleep(Duration::from_millis(30));
        cache.purge_expired();
        assert_eq!(cache.bytes(), 0, "expired entries and empty users are gone");
        assert_eq!(cache.get(1, &key()), None);

        let off = ReadCache::new(Duration::ZERO, 1 << 20);
        let ticket = off.ticket(1);
        off.put(1, key(), ticket, Bytes::from_static(b"x"));
        assert_eq!(off.get(1, &key()), None);
    }

    #[test]
    fn eviction_never_resurrects_a_stale_ticket() {
        let cache = ReadCache::new(Duration::from_secs(60), 400);
        let stale = cache.ticket(1);
        let _ = cache.ticket(2);
        let _ = cache.ticket(3); // past the budget: user 1 is evicted
        let _ = cache.ticket(1); // user 1 again, under a new generation
        cache.put(1, key(), stale, Bytes::from_static(b"old"));
        assert_eq!(cache.get(1, &key()), None);
    }

    #[test]
    fn memory_stays_within_the_budget_whatever_the_keys() {
        let budget = 64 * 1024;
        let cache = ReadCache::new(Duration::from_secs(60), budget);
        for i in 0..10_000i64 {
            let user = i % 50;
            let ticket = cache.ticket(user);
            let body = Bytes::from(vec![b'x'; 200 + (i as usize % 300)]);
            let key = ReadKey::History {
                bot_id: i,
                format: RowFormat::Positional,
            };
            cache.put(user, key, ticket, body);
            assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
        }
        // Stepping user ids costs no more than the budget either.
        for user in 0..10_000 {
            let _ = cache.ticket(user);
        }
        assert!(cache.bytes() <= budget);
        // Recently used entries survive.
        let ticket = cache.ticket(7);
        cache.put(7, key(), ticket, Bytes::from_static(b"kept"));
        assert_eq!(cache.get(7, &key()), Some(Bytes::from_static(b"kept")));
    }
}
