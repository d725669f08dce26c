//! The append-only event store on MySQL/MariaDB.
//!
//! One append is one transaction that
//! 1. takes the `event_log_head` row lock and assigns the next global positions;
//! 2. checks the stream's version against the expected one, and inserts the events
//!    after it (a writer that raced past the lock would fail with error 1062 on
//!    `uq_stream_version`, reported as a conflict too);
//! 3. inserts one outbox row per event, for the relay;
//! 4. hands the events to the [`InlineProjector`], which updates the read models and
//!    their checkpoint;
//! 5. commits.
//!
//! Because positions are assigned under one row lock that is held until commit, a
//! position becomes visible only after every lower one has: a reader of the global
//! order that remembers "last position seen" can never skip an event, and a rolled
//! back append gives its positions back instead of leaving a hole.

use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlRow};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

/// Who and what caused an event, for tracing a message across processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Carried from the HTTP request (its `x-request-id`) through the broker's headers
    /// into the worker, and into the reply's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event that caused this one (a reply's triggering message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
}

/// An event ready to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: Value,
    pub metadata: EventMetadata,
    pub idempotency_key: Option<String>,
}

/// An event as stored, with its place in its stream and in the global order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedEvent {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: Value,
    pub metadata: EventMetadata,
    pub recorded_at: NaiveDateTime,
}

/// What the appender believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append after whatever is there; conflicts are retried inside the store.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id} moved past the expected version {expected:?}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
    },
    /// An event with this idempotency key was recorded before; nothing was written.
    #[error("an event with idempotency key {0} is already recorded")]
    Duplicate(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Updates read models from freshly appended events, inside the append's transaction.
pub trait InlineProjector: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// Retries of an `ExpectedVersion::Any` append that hit a version conflict.
const ANY_VERSION_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct EventStore {
    pool: MySqlPool,
    projector: Arc<dyn InlineProjector>,
}

impl EventStore {
    pub fn new(pool: MySqlPool, projector: Arc<dyn InlineProjector>) -> Self {
        Self { pool, projector }
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(stream_id, expected, events).await {
                Err(AppendError::Conflict { .. })
                    if expected == ExpectedVersion::Any && attempt < ANY_VERSION_ATTEMPTS =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;

        // Take the position lock first: the version read below then sees every
        // append committed before ours, so an `Any` append cannot lose a race, and an
        // expected-version check is exact. (The unique key still guards the stream
        // against any writer that bypasses this path: it surfaces as a conflict.)
        let count = events.len() as i64;
        // LAST_INSERT_ID(expr) hands the new head back in the same round trip: every
        // round trip made while holding the lock is one all other appenders wait for.
        let head = sqlx::query(
            "UPDATE event_log_head SET position = LAST_INSERT_ID(position + ?) WHERE id = 1",
        )
        .bind(count)
        .execute(&mut *tx)
        .await?
        .last_insert_id();
        let head = i64::try_from(head).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let current: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(stream_version), 0) AS SIGNED) FROM events WHERE stream_id = ?",
        )
        .bind(stream_id)
        .fetch_one(&mut *tx)
        .await?;
        let conflict = || AppendError::Conflict {
            stream_id: stream_id.to_string(),
            expected,
        };
        match expected {
            ExpectedVersion::NoStream if current != 0 => return Err(conflict()),
            ExpectedVersion::Exact(v) if current != v => return Err(conflict()),
            _ => {}
        }

        let recorded_at = now_micros();
        let recorded: Vec<RecordedEvent> = events
            .iter()
            .enumerate()
            .map(|(i, e)| RecordedEvent {
                global_position: head - count + 1 + i as i64,
                event_id: e.event_id,
                stream_id: stream_id.to_string(),
                stream_version: current + 1 + i as i64,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at,
            })
            .collect();

        let mut insert = QueryBuilder::new(
            "INSERT INTO events (global_position, event_id, stream_id, stream_version, \
             event_type, schema_version, payload, metadata, idempotency_key, recorded_at) ",
        );
        insert.push_values(recorded.iter().zip(events), |mut row, (r, e)| {
            row.push_bind(r.global_position)
                .push_bind(r.event_id.to_string())
                .push_bind(&r.stream_id)
                .push_bind(r.stream_version)
                .push_bind(&r.event_type)
                .push_bind(r.schema_version)
                .push_bind(Json(&r.payload))
                .push_bind(Json(&r.metadata))
                .push_bind(&e.idempotency_key)
                .push_bind(r.recorded_at);
        });
        if let Err(err) = insert.build().execute(&mut *tx).await {
            return Err(classify_insert_error(err, stream_id, expected, events));
        }

        let mut outbox = QueryBuilder::new("INSERT INTO outbox (global_position, created_at) ");
        outbox.push_values(&recorded, |mut row, r| {
            row.push_bind(r.global_position).push_bind(recorded_at);
        });
        outbox.build().execute(&mut *tx).await?;

        self.projector.apply(&mut tx, &recorded).await?;
        tx.commit().await?;
        Ok(recorded)
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

pub(crate) const SELECT_EVENTS: &str = "SELECT global_position, event_id, stream_id, \
    stream_version, event_type, schema_version, payload, metadata, recorded_at FROM events";

pub(crate) fn recorded_from_row(row: &MySqlRow) -> Result<RecordedEvent, sqlx::Error> {
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

/// UTC now, truncated to the microseconds that `DATETIME(6)` keeps, so that what an
/// append returns equals what a later read returns.
pub fn now_micros() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::microseconds(1)).unwrap_or(now)
}

/// MySQL's duplicate-key error, and which unique key it hit.
const ER_DUP_ENTRY: &str = "1062";

fn classify_insert_error(
    err: sqlx::Error,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> AppendError {
    let duplicate_key = err
        .as_database_error()
        .filter(|db| db.code().as_deref() == Some("23000"))
        .and_then(|db| {
            let mysql = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
            (mysql.number().to_string() == ER_DUP_ENTRY).then(|| mysql.message().to_string())
        });
    match duplicate_key {
        Some(message) if message.contains("uq_stream_version") => AppendError::Conflict {
            stream_id: stream_id.to_string(),
            expected,
        },
        Some(message) if message.contains("uq_idempotency_key") => {
            let key = events
                .iter()
                .find_map(|e| e.idempotency_key.clone())
                .unwrap_or_default();
            AppendError::Duplicate(key)
        }
        _ => AppendError::Database(err),
    }
}
