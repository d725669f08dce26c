//! The `sessions` read model: each login, the refresh token it may spend next, and
//! whether it was revoked. Refreshing reads it; access tokens are checked against
//! an in-memory view of recent revocations instead (see the api's `sessions`).

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

use crate::event::UserId;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Session {
    pub session_id: String,
    pub user_id: UserId,
    pub refresh_jti: String,
    pub revoked_at: Option<NaiveDateTime>,
}

pub struct SessionsProjection;

impl SessionsProjection {
    pub async fn find(pool: &MySqlPool, session_id: &str) -> Result<Option<Session>, sqlx::Error> {
        sqlx::query_as(
            "SELECT session_id, user_id, refresh_jti, revoked_at FROM sessions WHERE session_id = ?",
        )
        .bind(session_id)
        .fetch_optional(pool)
        .await
    }

    /// Every session of `user_id` that still works.
    pub async fn active_for_user(
        pool: &MySqlPool,
        user_id: UserId,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await
    }

    /// Deletes up to `batch` sessions unused (neither started nor refreshed) for
    /// longer than `retention`, by the database's clock: every token they issued
    /// has expired, so they can neither be refreshed nor need revoking. Returns
    /// how many went. `verify` leaves such rows out on both sides.
    pub async fn prune_inactive(
        pool: &MySqlPool,
        retention: std::time::Duration,
        batch: u32,
    ) -> Result<u64, sqlx::Error> {
        let pruned = sqlx::query(
            "DELETE FROM sessions WHERE last_active_at < NOW(6) - INTERVAL ? SECOND \
             ORDER BY last_active_at LIMIT ?",
        )
        .bind(retention.as_secs())
        .bind(batch)
        .execute(pool)
        .await?;
        Ok(pruned.rows_affected())
    }

    /// Sessions revoked within the last `within`, by the database's clock: the ones
    /// whose access tokens may still be unexpired.
    pub async fn revoked_since(
        pool: &MySqlPool,
        within: std::time::Duration,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE revoked_at > NOW(6) - INTERVAL ? SECOND",
        )
        .bind(within.as_secs())
        .fetch_all(pool)
        .await
    }
}
