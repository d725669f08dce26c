//! Which user ids exist, in memory, so that a request for a user that does not
//! exist (a forged token's, or a legacy request's made-up `user_id`) is refused
//! without making every real request pay a database round trip.
//!
//! Users are never deleted, so a user seen once is known for good; only a miss
//! asks the database. The set is bounded: past `MAX_KNOWN` ids it starts over.

use std::collections::HashSet;
use std::sync::RwLock;

use sqlx::MySqlPool;

use events::event::UserId;

const MAX_KNOWN: usize = 1_000_000;

#[derive(Default)]
pub struct KnownUsers {
    known: RwLock<HashSet<UserId>>,
}

impl KnownUsers {
    pub fn remember(&self, user_id: UserId) {
        if let Ok(mut known) = self.known.write() {
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(user_id);
        }
    }

    pub async fn exists(&self, pool: &MySqlPool, user_id: UserId) -> Result<bool, sqlx::Error> {
        if user_id <= 0 {
            return Ok(false);
        }
        if self
            .known
            .read()
            .is_ok_and(|known| known.contains(&user_id))
        {
            return Ok(true);
        }
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
        if found.is_some() {
            self.remember(user_id);
        }
        Ok(found.is_some())
    }
}
