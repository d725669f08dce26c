//! Rebuilding the read models from the event log, while the system keeps running.
//!
//! 1. Fresh shadow tables (`*_rebuild`, same schema as the live ones) are filled by
//!    replaying the whole log in batches; the live tables keep serving reads and
//!    taking inline updates all along.
//! 2. To swap, one connection takes the `event_log_head` row lock, which every
//!    append takes first: from then on no event can commit. Another connection
//!    replays the last events into the shadow tables, then renames live ↔ shadow in
//!    one atomic `RENAME TABLE`. (The lock and the DDL must be on different
//!    connections: DDL commits its own connection's transaction.) Releasing the lock
//!    lets the waiting appends continue, against the rebuilt tables.
//! 3. The old tables are dropped.
//!
//! Clients never see an empty or half-built table.

use sqlx::mysql::MySqlPool;
use sqlx::Acquire;

use super::{ReadModels, Tables};
use crate::store::read_all;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("another rebuild is running against this database; wait for it to finish")]
    AlreadyRunning,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed into the new tables.
    pub events: u64,
    /// The global position the swapped-in tables were built up to.
    pub position: i64,
}

/// Replays the whole log into new read-model tables and swaps them in.
/// `progress(position, head)` is called after every batch.
pub async fn rebuild_read_models(
    pool: &MySqlPool,
    batch: u32,
    mut progress: impl FnMut(i64, i64),
) -> Result<RebuildReport, RebuildError> {
    // One rebuild at a time: a second one would drop the first one's shadow tables.
    let mut guard = pool.acquire().await?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('rebuild:', DATABASE()), 0)")
            .fetch_one(&mut *guard)
            .await?;
    if locked != Some(1) {
        return Err(RebuildError::AlreadyRunning);
    }

    for (live, shadow) in Tables::pairs() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
            .execute(pool)
            .await?;
        sqlx::query(&format!("CREATE TABLE {shadow} LIKE {live}"))
            .execute(pool)
            .await?;
    }

    let mut report = RebuildReport {
        events: 0,
        position: 0,
    };
    let head = current_head(pool).await?;
    while replay_batch(pool, batch.max(1), &mut report).await? {
        progress(report.position, head.max(report.position));
    }

    // Hold back every append while the last events are replayed and the tables swap.
    let mut locker = pool.acquire().await?;
    let mut lock = locker.begin().await?;
    let head: i64 =
        sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *lock)
            .await?;
    while report.position < head && replay_batch(pool, batch.max(1), &mut report).await? {}
    let renames = Tables::pairs()
        .iter()
        .map(|(live, shadow)| format!("{live} TO {live}_old, {shadow} TO {live}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!("RENAME TABLE {renames}"))
        .execute(pool)
        .await?;
    lock.commit().await?;
    progress(report.position, head);

    for (live, _) in Tables::pairs() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {live}_old"))
            .execute(pool)
            .await?;
    }
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('rebuild:', DATABASE()))")
        .execute(&mut *guard)
        .await;
    Ok(report)
}

/// Replays the next batch into the shadow tables; `false` when there was none.
async fn replay_batch(
    pool: &MySqlPool,
    batch: u32,
    report: &mut RebuildReport,
) -> Result<bool, sqlx::Error> {
    let events = read_all(pool, report.position, batch).await?;
    let Some(last) = events.last() else {
        return Ok(false);
    };
    let mut tx = pool.begin().await?;
    for event in &events {
        ReadModels::apply_one(&mut tx, &Tables::SHADOW, event).await?;
    }
    tx.commit().await?;
    report.position = last.global_position;
    report.events += events.len() as u64;
    Ok(true)
}

async fn current_head(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
        .fetch_one(pool)
        .await
}
