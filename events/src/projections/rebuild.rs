//! Rebuilding the read models from the event log, while the system keeps running.
//!
//! 1. Shadow tables are filled by replaying the whole log in bulk
//!    ([`super::shadow`]); the live tables keep serving reads and taking inline
//!    updates all along.
//! 2. To swap, one connection takes the `event_log_head` row lock, which every
//!    append takes first: from then on no event can commit. The last events are
//!    replayed into the shadow tables, then live ↔ shadow are renamed in one atomic
//!    `RENAME TABLE`. (The lock and the DDL must be on different connections: DDL
//!    commits its own connection's transaction.) Releasing the lock lets the
//!    waiting appends continue, against the rebuilt tables.
//! 3. The old tables are dropped.
//!
//! Clients never see an empty or half-built table, and a rebuild stopped before the
//! swap leaves the live tables as they were.

use sqlx::mysql::MySqlPool;
use sqlx::Acquire;
use tokio_util::sync::CancellationToken;

use super::shadow::{Progress, ReplayError, Shadow};
use super::Tables;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed into the new tables.
    pub events: u64,
    /// The global position the swapped-in tables were built up to.
    pub position: i64,
}

/// Replays the whole log into new read-model tables and swaps them in.
/// `progress` is called after every batch.
pub async fn rebuild_read_models(
    pool: &MySqlPool,
    batch: u32,
    cancel: &CancellationToken,
    mut progress: impl FnMut(Progress),
) -> Result<RebuildReport, ReplayError> {
    let mut shadow = Shadow::create(pool, batch).await?;
    if let Err(e) = shadow.replay(None, cancel, &mut progress).await {
        shadow.discard().await?;
        return Err(e);
    }

    // Hold back every append while the last events are replayed and the tables swap.
    let mut locker = pool.acquire().await?;
    let mut lock = locker.begin().await?;
    let head: i64 =
        sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *lock)
            .await?;
    // Not cancellable from here: appends are waiting, and the swap is quick.
    shadow
        .replay(Some(head), &CancellationToken::new(), &mut progress)
        .await?;
    let renames = Tables::pairs()
        .iter()
        .map(|(live, shadow)| format!("{live} TO {live}_old, {shadow} TO {live}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!("RENAME TABLE {renames}"))
        .execute(pool)
        .await?;
    lock.commit().await?;

    for (live, _) in Tables::pairs() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {live}_old"))
            .execute(pool)
            .await?;
    }
    shadow.release().await;
    Ok(RebuildReport {
        events: shadow.progress.events,
        position: shadow.progress.position,
    })
}
