//! The append-only event store on MySQL/MariaDB: [`EventStore`] appends through the
//! [`crate::appender`] and reads here. Its types are re-exported from where they
//! live (`record` for what is stored, `appender` for how an append can go).
//!
//! An append happens in a transaction (shared with other appends of the same
//! process, see [`crate::appender`]) that
//! 1. takes the `event_log_head` row lock;
//! 2. checks the stream's version against the expected one and the idempotency keys
//!    against those recorded, and assigns the next global positions;
//! 3. inserts the events after the stream's version (a writer that raced past the
//!    lock would fail with error 1062 on `uq_stream_version`, reported as a
//!    conflict), and one outbox row per event, for the relay;
//! 4. hands the events to the [`InlineProjector`], which updates the read models and
//!    their checkpoint;
//! 5. moves the head and commits.
//!
//! Before all that, a store [sealing with](EventStore::sealing_with) a keyring
//! seals each event's personal fields (see [`crate::sealing`]), so nothing
//! personal reaches the log, the outbox or the read models in the clear.
//!
//! Because positions are assigned under one row lock that is held until commit, a
//! position becomes visible only after every lower one has: a reader of the global
//! order that remembers "last position seen" can never skip an event, and a rolled
//! back append gives its positions back instead of leaving a hole.

use std::sync::Arc;

use serde_json::Value;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use crate::appender::Appender;
pub use crate::appender::{AppendError, ExpectedVersion, InlineProjector};
pub use crate::record::{now_micros, EventMetadata, EventStamp, NewEvent, RecordedEvent};
use crate::sealing::Keyring;

/// Retries of an `ExpectedVersion::Any` append that hit a version conflict.
const ANY_VERSION_ATTEMPTS: usize = 5;

/// How long one group commit may take before its connection is dropped.
pub const DEFAULT_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct EventStore {
    pool: MySqlPool,
    appender: Appender,
    keyring: Option<Keyring>,
}

impl EventStore {
    /// Starts the store's appender task, so this must run inside a tokio runtime.
    pub fn new(pool: MySqlPool, projector: Arc<dyn InlineProjector>) -> Self {
        Self::with_commit_timeout(pool, projector, DEFAULT_COMMIT_TIMEOUT)
    }

    /// As [`EventStore::new`], bounding each commit by `commit_timeout`.
    pub fn with_commit_timeout(
        pool: MySqlPool,
        projector: Arc<dyn InlineProjector>,
        commit_timeout: std::time::Duration,
    ) -> Self {
        Self {
            appender: Appender::spawn(pool.clone(), projector, commit_timeout),
            pool,
            keyring: None,
        }
    }

    /// This store seals the personal fields of what it appends with `keyring`.
    /// (Without one it writes them as given: tools and tests that play an
    /// earlier release.)
    pub fn sealing_with(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The keyring this store seals with, for its readers to open with.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Appends `events` to `stream_id` atomically, or not at all.
    pub async fn append_to_stream(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let sealed;
        let events = match &self.keyring {
            Some(keyring) => {
                let mut copies = events.to_vec();
                keyring.seal_events(&mut copies).await?;
                sealed = copies;
                &sealed[..]
            }
            None => events,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.appender.append(stream_id, expected, events).await {
                Err(AppendError::Conflict { .. })
                    if expected == ExpectedVersion::Any && attempt < ANY_VERSION_ATTEMPTS =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    /// The version of a stream's last event (0 for a stream with none).
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(stream_version), 0) AS SIGNED) FROM events WHERE stream_id = ?",
        )
        .bind(stream_id)
        .fetch_one(&self.pool)
        .await
    }

    /// Every event of one stream, oldest first.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE stream_id = ? ORDER BY stream_version"
        ))
        .bind(stream_id)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(&self.pool)
        .await
    }

    /// The last `limit` events of one stream, oldest first.
    pub async fn read_stream_tail(
        &self,
        stream_id: &str,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut events = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE stream_id = ? ORDER BY stream_version DESC LIMIT ?"
        ))
        .bind(stream_id)
        .bind(limit)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(&self.pool)
        .await?;
        events.reverse();
        Ok(events)
    }

    /// Up to `limit` events after `after` in the global order.
    pub async fn read_all(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        read_all(&self.pool, after, limit).await
    }

    /// The event recorded under `key`, if any.
    pub async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<RecordedEvent>, sqlx::Error> {
        sqlx::query(&format!("{SELECT_EVENTS} WHERE idempotency_key = ?"))
            .bind(key)
            .try_map(|row: MySqlRow| recorded_from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }
}

/// Up to `limit` events after `after` in the global order.
pub async fn read_all(
    pool: &MySqlPool,
    after: i64,
    limit: u32,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE global_position > ? ORDER BY global_position LIMIT ?"
    ))
    .bind(after)
    .bind(limit)
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_all(pool)
    .await
}

/// Up to `limit` events of one stream after global position `after`.
pub async fn read_stream_after(
    pool: &MySqlPool,
    stream_id: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE stream_id = ? AND global_position > ? ORDER BY global_position LIMIT ?"
    ))
    .bind(stream_id)
    .bind(after)
    .bind(limit)
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_all(pool)
    .await
}

pub const SELECT_EVENTS: &str = "SELECT global_position, event_id, stream_id, \
    stream_version, event_type, schema_version, payload, metadata, recorded_at FROM events";

pub fn recorded_from_row(row: &MySqlRow) -> Result<RecordedEvent, sqlx::Error> {
    let event_id: String = row.try_get("event_id")?;
    let Json(payload): Json<Value> = row.try_get("payload")?;
    let Json(metadata): Json<EventMetadata> = row.try_get("metadata")?;
    Ok(RecordedEvent {
        global_position: row.try_get("global_position")?,
        event_id: Uuid::parse_str(&event_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: u16::try_from(row.try_get::<i16, _>("schema_version")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        payload,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}
