//! Fair shares of this worker's model calls between users.
//!
//! A conversation is answered by one drain at a time, and each drain makes one
//! model call at a time, so a user's calls in flight here are the drains running
//! for them. [`UserShares`] caps those at `USER_MAX_MODEL_CALLS` per user. A
//! message over its user's share is parked on its conversation's lease row (see
//! [`crate::lease::ConversationLeases::park`]) and its delivery acknowledged, so
//! it holds none of the worker's delivery slots while others' messages go first.
//! When one of the user's drains ends here, the sweep of expired leases is woken
//! to take a parked conversation up.
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
    /// Drains per user; `0` turns the cap off.
    cap: u32,
    running: Mutex<HashMap<UserId, Running>>,
    freed: Notify,
}

#[derive(Default)]
struct Running {
    drains: u32,
    /// A message of this user was parked here since its last slot ended.
    parked: bool,
}

/// One of a user's drains in this process; dropping it frees the slot.
pub struct ShareSlot {
    inner: Arc<Inner>,
    user_id: UserId,
}

impl UserShares {
    pub fn new(cap: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                cap,
                running: Mutex::default(),
                freed: Notify::new(),
            }),
        }
    }

    /// A slot for one more drain of `user_id`, unless the user has their share.
    pub fn try_take(&self, user_id: UserId) -> Option<ShareSlot> {
        let mut running = self.inner.running.lock().ok()?;
        let entry = running.entry(user_id).or_default();
        if self.inner.cap > 0 && entry.drains >= self.inner.cap {
            return None;
        }
        entry.drains += 1;
        Some(ShareSlot {
            inner: self.inner.clone(),
            user_id,
        })
    }

    /// Notes that a message of `user_id` was parked, so that the end of one of
    /// their drains here wakes the sweep.
    pub fn parked(&self, user_id: UserId) {
        if let Ok(mut running) = self.inner.running.lock() {
            if let Some(entry) = running.get_mut(&user_id) {
                entry.parked = true;
            }
        }
    }

    /// Users with their full share here: the sweep leaves their conversations
    /// to later (or to another worker).
    pub fn users_at_share(&self) -> Vec<UserId> {
        let Ok(running) = self.inner.running.lock() else {
            return Vec::new();
        };
        running
            .iter()
            .filter(|(_, r)| self.inner.cap > 0 && r.drains >= self.inner.cap)
            .map(|(user_id, _)| *user_id)
            .collect()
    }

    /// Resolves once a user with parked messages had a drain end here.
    pub async fn slot_freed(&self) {
        self.inner.freed.notified().await
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.inner.running.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for ShareSlot {
    fn drop(&mut self) {
        let Ok(mut running) = self.inner.running.lock() else {
            return;
        };
        let Some(entry) = running.get_mut(&self.user_id) else {
            return;
        };
        entry.drains = entry.drains.saturating_sub(1);
        let wake = std::mem::take(&mut entry.parked);
        if entry.drains == 0 {
            running.remove(&self.user_id);
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
        let shares = UserShares::new(2);
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
        let shares = UserShares::new(3);
        let slots: Vec<_> = (0..3).filter_map(|_| shares.try_take(ALICE)).collect();
        assert!(shares.try_take(ALICE).is_none());
        drop(slots);
        assert_eq!(shares.users(), 0);
    }

    #[test]
    fn zero_turns_the_cap_off() {
        let shares = UserShares::new(0);
        let slots: Vec<_> = (0..100).filter_map(|_| shares.try_take(ALICE)).collect();
        assert_eq!(slots.len(), 100);
        assert!(shares.users_at_share().is_empty());
    }

    #[tokio::test]
    async fn the_end_of_a_parked_users_drain_wakes_the_sweep() {
        let shares = UserShares::new(1);
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
}
