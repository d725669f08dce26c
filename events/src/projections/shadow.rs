//! Shadow tables: fresh copies of the read-model tables (`*_rebuild`), filled by
//! replaying the log, that a rebuild swaps in and a verify compares against the
//! live ones. The live tables are never written here.
//!
//! Only one rebuild or verify runs against a database at a time (the
//! [`ReplayLock`], a named lock that the server frees if the process dies), since
//! both use the same shadow tables.
//! Whatever happens, the next run starts by dropping and recreating them, so an
//! interrupted run leaves nothing the next one could trip over.

use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{bulk, Tables};
use crate::event::{DecodeError, DomainEvent};
use crate::store::EventStamp;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "another `worker replay rebuild`, `verify` or `encrypt-history` is running against \
         this database; \
         wait for it to finish (or stop it) and run this again"
    )]
    AlreadyRunning,
    #[error(
        "stopped before the end; the live views are untouched, and the next run starts afresh"
    )]
    Cancelled,
    #[error(
        "the event at position {position} ({event_type} v{schema_version}) cannot be read: \
         {source}"
    )]
    Unreadable {
        position: i64,
        event_type: String,
        schema_version: u16,
        source: DecodeError,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Connections writing the shadow tables side by side, each for its share of
/// the users.
const LANES: usize = 2;
/// Tries of one lane's share when the server picks it as a deadlock's victim,
/// or it waited too long for a lock (two lanes may lock neighbouring gaps of an
/// index).
const LANE_TRIES: usize = 5;

/// Writes one lane's share of a batch in its own transaction (read committed:
/// no gap locks taken by its reads), again if it is a deadlock's victim.
async fn write_share(pool: &MySqlPool, share: &DecodedBatch) -> Result<(), sqlx::Error> {
    if share.is_empty() {
        return Ok(());
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let mut conn = pool.acquire().await?;
        // Without GLOBAL or SESSION: for the next transaction alone.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let written = match bulk::apply_batch(&mut tx, &Tables::SHADOW, share).await {
            Ok(()) => tx.commit().await,
            Err(e) => Err(e),
        };
        match written {
            Err(e) if tries < LANE_TRIES && crate::db::is_lock_contention(&e) => {}
            other => return other,
        }
    }
}

/// Where a replay stands, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last global position replayed.
    pub position: i64,
    /// The head of the log when the replay started (or was last caught up).
    pub head: i64,
    /// Events replayed so far.
    pub events: u64,
}

/// The replay lock: one replay tool at a time runs against a database
/// (`rebuild`, `verify`, `encrypt-history`).
pub struct ReplayLock {
    /// Holds the named lock. Kept out of the pool, so that however this value is
    /// dropped, the connection closes and the server frees the lock with it.
    conn: MySqlConnection,
}

impl ReplayLock {
    /// Takes the lock, or says who has it.
    pub async fn take(pool: &MySqlPool) -> Result<Self, ReplayError> {
        let mut conn = pool.acquire().await?.detach();
        let locked: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT GET_LOCK({}, 0)",
            crate::db::lock_name_sql("rebuild")
        ))
        .fetch_one(&mut conn)
        .await?;
        if locked != Some(1) {
            return Err(ReplayError::AlreadyRunning);
        }
        Ok(Self { conn })
    }

    /// Frees the lock.
    pub async fn release(&mut self) {
        let _ = sqlx::query(&format!(
            "SELECT RELEASE_LOCK({})",
            crate::db::lock_name_sql("rebuild")
        ))
        .execute(&mut self.conn)
        .await;
    }
}

/// Shadow tables being filled, owned by the one replay allowed at a time.
pub struct Shadow {
    pool: MySqlPool,
    lock: ReplayLock,
    batch: u32,
    pub progress: Progress,
}

impl Shadow {
    /// Takes the replay lock and creates empty shadow tables.
    pub async fn create(pool: &MySqlPool, batch: u32) -> Result<Self, ReplayError> {
        let lock = ReplayLock::take(pool).await?;
        drop_tables(pool).await?;
        for (live, shadow) in Tables::pairs() {
            sqlx::query(&format!("CREATE TABLE {shadow} LIKE {live}"))
                .execute(pool)
                .await?;
        }
        Ok(Self {
            pool: pool.clone(),
            lock,
            batch: batch.max(1),
            progress: Progress {
                position: 0,
                head: current_head(pool).await?,
                events: 0,
            },
        })
    }

    /// Replays every event after the current position through `until` (the head
    /// as it is now, if `None`). One task reads and decodes the next batch while
    /// this one writes the last, with at most two batches in memory.
    pub async fn replay(
        &mut self,
        until: Option<i64>,
        cancel: &CancellationToken,
        mut report: impl FnMut(Progress),
    ) -> Result<(), ReplayError> {
        let until = match until {
            Some(position) => position,
            None => current_head(&self.pool).await?,
        };
        self.progress.head = self.progress.head.max(until);
        let (batches, mut incoming) = mpsc::channel(1);
        let reader = tokio::spawn(read_batches(
            self.pool.clone(),
            self.progress.position,
            until,
            self.batch,
            batches,
        ));
        // Each lane writes its users' events on its own connection, side by
        // side: every read-model row belongs to one user, so lanes never write
        // the same row, and each commits its share of a batch on its own.
        let outcome = loop {
            let batch = tokio::select! {
                batch = incoming.recv() => batch,
                _ = cancel.cancelled() => break Err(ReplayError::Cancelled),
            };
            let Some(batch) = batch else { break Ok(()) };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            let last = batch.last().map(|(stamp, _)| stamp.global_position);
            let events = batch.len();
            let mut shares: Vec<DecodedBatch> = (0..LANES).map(|_| Vec::new()).collect();
            for (stamp, event) in batch {
                let lane = event
                    .user_id()
                    .map_or(0, |user| user.rem_euclid(LANES as i64) as usize);
                shares[lane].push((stamp, event));
            }
            let written = futures::future::try_join_all(
                shares.iter().map(|share| write_share(&self.pool, share)),
            )
            .await;
            if let Err(e) = written {
                break Err(e.into());
            }
            if let Some(last) = last {
                self.progress.position = last;
                self.progress.events += events as u64;
            }
            report(self.progress);
        };
        reader.abort();
        outcome
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Drops the shadow tables and frees the lock.
    pub async fn discard(mut self) -> Result<(), ReplayError> {
        drop_tables(&self.pool).await?;
        self.release().await;
        Ok(())
    }

    /// Frees the lock (the tables stay, e.g. after they were swapped in).
    pub async fn release(&mut self) {
        self.lock.release().await;
    }
}

type DecodedBatch = Vec<(EventStamp, DomainEvent)>;

/// Just what a replay needs of each event; the payload comes as text and is parsed
/// straight into its type.
const SELECT_FOR_REPLAY: &str = "SELECT global_position, stream_version, event_type, \
    schema_version, CAST(payload AS CHAR) AS payload, recorded_at FROM events \
    WHERE global_position > ? ORDER BY global_position LIMIT ?";

async fn read_batches(
    pool: MySqlPool,
    mut position: i64,
    until: i64,
    batch: u32,
    out: mpsc::Sender<Result<DecodedBatch, ReplayError>>,
) {
    while position < until {
        let limit = u32::try_from((until - position).min(i64::from(batch))).unwrap_or(batch);
        let decoded = read_batch(&pool, position, limit).await;
        // After an error there is nothing more to read: the writer stops on it.
        let next = match &decoded {
            Ok(events) => match events.last() {
                Some((stamp, _)) => stamp.global_position,
                None => return,
            },
            Err(_) => until,
        };
        if out.send(decoded).await.is_err() {
            return;
        }
        position = next;
    }
}

async fn read_batch(pool: &MySqlPool, after: i64, limit: u32) -> Result<DecodedBatch, ReplayError> {
    let rows = sqlx::query(SELECT_FOR_REPLAY)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let stamp = EventStamp {
                global_position: row.try_get("global_position")?,
                stream_version: row.try_get("stream_version")?,
                recorded_at: row.try_get("recorded_at")?,
            };
            let event_type: &str = row.try_get("event_type")?;
            let schema_version = u16::try_from(row.try_get::<i16, _>("schema_version")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let payload: &str = row.try_get("payload")?;
            let decoded = DomainEvent::decode_json(event_type, schema_version, payload).map_err(
                |source| ReplayError::Unreadable {
                    position: stamp.global_position,
                    event_type: event_type.to_string(),
                    schema_version,
                    source,
                },
            )?;
            Ok((stamp, decoded))
        })
        .collect()
}

async fn drop_tables(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    for (_, shadow) in Tables::pairs() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

pub async fn current_head(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
        .fetch_one(pool)
        .await
}
