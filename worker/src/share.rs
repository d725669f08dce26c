//! Fair shares of this worker's model calls between users.
//!
//! A conversation is answered by one drain at a time, and each drain makes one
//! model call at a time, so a user's calls in flight here are the drains running
//! for them. [`UserShares`] gives each user `USER_MAX_MODEL_CALLS` of them for
//! sure. Beyond that a user may borrow idle capacity, as long as a share's worth
//! of the worker's slots (`WORKER_PREFETCH`) stays free for others; a borrowed
//! drain yields after its current message once others need the room. So a lone
//! user with many conversations gets the whole worker, and a crowd gets it
//! shared.
//!
//! A message over its user's share is parked on its conversation's lease row
//! (see [`crate::lease::ConversationLeases::park`]) and its delivery
//! acknowledged, so it holds none of the worker's slots while others' messages go
//! first. When one of the user's drains ends here, the sweep of expired leases is
//! woken to take a parked conversation up.
//!
//! The map holds users with a drain running in this process, nothing more: the
//! last [`ShareSlot`] of a user removes its entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use events::event::UserId;

#[derive(Clone)]
pub struct UserShares {
    inner: Arc<Inner>,
}

struct Inner {
    /// A user's sure share of drains; `0` turns shares off.
    cap: u32,
    /// The drains this worker runs at most (its delivery slots).
    capacity: u32,
    running: Mutex<Running>,
    freed: Notify,
}

#[derive(Default)]
struct Running {
    total: u32,
    users: HashMap<UserId, UserDrains>,
}

impl Inner {
    /// The counts; a panic elsewhere while they were held leaves them usable
    /// (every update is a single step), rather than parking everything.
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct UserDrains {
    drains: u32,
    /// A message of this user was parked here since its last slot ended.
    parked: bool,
}

impl Running {
    /// Whether a user past their share may take one more slot: a share's worth
    /// stays free for others after it.
    fn room_to_borrow(&self, inner: &Inner) -> bool {
        self.total.saturating_add(inner.cap) < inner.capacity
    }
}

/// One of a user's drains in this process; dropping it frees the slot.
pub struct ShareSlot {
    inner: Arc<Inner>,
    user_id: UserId,
}

impl UserShares {
    /// `cap` drains per user for sure, of a worker's `capacity` (`0`: no limit).
    pub fn new(cap: u32, capacity: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                cap,
                capacity: if capacity == 0 { u32::MAX } else { capacity },
                running: Mutex::default(),
                freed: Notify::new(),
            }),
        }
    }

    /// A slot for one more drain of `user_id`: within their share, or borrowed
    /// while the worker has room to spare; `None` otherwise.
    pub fn try_take(&self, user_id: UserId) -> Option<ShareSlot> {
        let mut guard = self.inner.lock();
        let running = &mut *guard;
        let room = running.room_to_borrow(&self.inner);
        let entry = running.users.entry(user_id).or_default();
        let borrowed = self.inner.cap > 0 && entry.drains >= self.inner.cap;
        if borrowed && !room {
            return None;
        }
        entry.drains += 1;
        running.total += 1;
        Some(ShareSlot {
            inner: self.inner.clone(),
            user_id,
        })
    }

    /// Notes that a message of `user_id` was parked, so that the end of one of
    /// their drains here wakes the sweep.
    pub fn parked(&self, user_id: UserId) {
        if let Some(entry) = self.inner.lock().users.get_mut(&user_id) {
            entry.parked = true;
        }
    }

    /// Users who can take no slot here now (their share is full, and there is
    /// no room to borrow): the sweep leaves their conversations to later, or to
    /// another worker.
    pub fn users_at_share(&self) -> Vec<UserId> {
        let running = self.inner.lock();
        if self.inner.cap == 0 || running.room_to_borrow(&self.inner) {
            return Vec::new();
        }
        running
            .users
            .iter()
            .filter(|(_, r)| r.drains >= self.inner.cap)
            .map(|(user_id, _)| *user_id)
            .collect()
    }

    /// Resolves once a user with parked messages had a drain end here.
    pub async fn slot_freed(&self) {
        self.inner.freed.notified().await
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.inner.lock().users.len()
    }
}

impl ShareSlot {
    /// A user past their share gives way once others need the room: one of
    /// their drains stops after the message it is on, and leaves the rest for
    /// the sweep. (Counted now, not when the slot was taken: a user whose
    /// other drains ended is within their share again.)
    pub fn should_yield(&self) -> bool {
        let running = self.inner.lock();
        let drains = running.users.get(&self.user_id).map_or(0, |u| u.drains);
        self.inner.cap > 0
            && drains > self.inner.cap
            && running.total.saturating_add(self.inner.cap) > self.inner.capacity
    }
}

impl Drop for ShareSlot {
    fn drop(&mut self) {
        let mut running = self.inner.lock();
        running.total = running.total.saturating_sub(1);
        let Some(entry) = running.users.get_mut(&self.user_id) else {
            return;
        };
        entry.drains = entry.drains.saturating_sub(1);
        let wake = std::mem::take(&mut entry.parked);
        if entry.drains == 0 {
            running.users.remove(&self.user_id);
        }
        drop(running);
        if wake {
            self.inner.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: UserId = 1;
    const BOB: UserId = 2;

    #[test]
    fn a_user_gets_their_share_and_no_more_while_others_still_get_theirs() {
        // No room to borrow: two shares fill the worker.
        let shares = UserShares::new(2, 4);
        let first = shares.try_take(ALICE);
        let second = shares.try_take(ALICE);
        assert!(first.is_some() && second.is_some());
        assert!(shares.try_take(ALICE).is_none());
        assert_eq!(shares.users_at_share(), vec![ALICE]);
        assert!(shares.try_take(BOB).is_some());
        drop(first);
        assert!(
            shares.try_take(ALICE).is_some(),
            "a freed slot is free again"
        );
    }

    #[test]
    fn the_map_forgets_a_user_whose_last_slot_ended() {
        let shares = UserShares::new(3, 3);
        let slots: Vec<_> = (0..3).filter_map(|_| shares.try_take(ALICE)).collect();
        assert!(shares.try_take(ALICE).is_none());
        drop(slots);
        assert_eq!(shares.users(), 0);
    }

    #[test]
    fn zero_turns_the_cap_off() {
        let shares = UserShares::new(0, 8);
        let slots: Vec<_> = (0..100).filter_map(|_| shares.try_take(ALICE)).collect();
        assert_eq!(slots.len(), 100);
        assert!(shares.users_at_share().is_empty());
    }

    #[tokio::test]
    async fn the_end_of_a_parked_users_drain_wakes_the_sweep() {
        let shares = UserShares::new(1, 1);
        let slot = shares.try_take(ALICE);
        shares.parked(ALICE);
        let woken = tokio::spawn({
            let shares = shares.clone();
            async move { shares.slot_freed().await }
        });
        tokio::task::yield_now().await;
        drop(slot);
        tokio::time::timeout(std::time::Duration::from_secs(5), woken)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[test]
    fn a_lone_user_borrows_idle_slots_but_leaves_a_share_free() {
        let shares = UserShares::new(2, 10);
        let slots: Vec<_> = (0..10).map_while(|_| shares.try_take(1)).collect();
        assert_eq!(slots.len(), 8, "two slots stay free for others");
        assert!(
            slots.iter().all(|s| !s.should_yield()),
            "nobody needs them yet"
        );
        assert_eq!(shares.users_at_share(), vec![1]);
        let other = shares.try_take(2);
        assert!(other.is_some(), "another user gets a slot");
        assert!(
            slots[7].should_yield(),
            "now a drain past the share gives way"
        );
        // Just enough give way to leave a share free again.
        let mut slots = slots;
        while slots.last().is_some_and(|s| s.should_yield()) {
            slots.pop();
        }
        assert_eq!(slots.len(), 7, "one gave way");
        let more_others: Vec<_> = (0..2).filter_map(|_| shares.try_take(3)).collect();
        assert_eq!(more_others.len(), 2, "others take the free share");
        while slots.last().is_some_and(|s| s.should_yield()) {
            slots.pop();
        }
        assert_eq!(slots.len(), 5, "and two more gave way");
    }
}
