//! `worker replay export`: events out of the log for audit, oldest first, as JSON
//! Lines or CSV, streamed in batches so memory stays flat on any log size.
//!
//! Filters combine: one stream, one user's streams (their bots', their chats',
//! their sessions' and their account's), a time window on the recorded time, a starting position.
//! Accounts (user names, password hashes) are state in the `users` table, not
//! events, so nothing of them is in the log; as a second guard, a payload field
//! whose name mentions a password is blanked before it is written.

use std::io::Write;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::mysql::{MySql, MySqlPool, MySqlRow};
use sqlx::QueryBuilder;

use events::event::{EventMetadata, UserId};
use events::sealing::Keyring;
use events::store::{recorded_from_row, RecordedEvent, SELECT_EVENTS};
use events::upcast::upcast;

use super::ReplayError;

const BATCH: u32 = 1000;

#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub stream: Option<String>,
    pub user: Option<UserId>,
    /// Recorded at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Recorded before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only events after this global position.
    pub after: i64,
    /// Payloads in today's shape (through the upcasters) rather than as stored.
    pub upcast: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per event; payload and metadata as JSON text.
    Csv,
}

/// One event as exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedEvent {
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub stream: String,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub payload: Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

/// A CSV row: the same fields, flat.
#[derive(Serialize)]
struct CsvRow<'a> {
    position: i64,
    event_id: String,
    stream: &'a str,
    version: i64,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u16,
    recorded_at: String,
    correlation_id: Option<&'a str>,
    causation_id: Option<String>,
    user_id: Option<i64>,
    payload: String,
    metadata: String,
}

/// Writes every event that passes `filter` to `out`. Returns how many.
pub async fn export(
    (pool, keyring): (&MySqlPool, &Keyring),
    filter: &ExportFilter,
    format: ExportFormat,
    out: &mut impl Write,
) -> Result<u64, ReplayError> {
    let streams = match filter.user {
        Some(user) => Some(streams_of_user(pool, user).await?),
        None => None,
    };
    let mut sink = match format {
        ExportFormat::Csv => Sink::Csv(Box::new(csv::Writer::from_writer(out))),
        ExportFormat::Jsonl => Sink::Jsonl(out),
    };
    let mut written = 0;
    let mut position = filter.after;
    loop {
        let events = read_batch(pool, filter, streams.as_ref(), position).await?;
        let Some(last) = events.last() else { break };
        position = last.global_position;
        for mut event in events {
            // Personal texts as their readers see them: the text, or
            // "[erased]"; one that does not authenticate is refused by name.
            keyring.open_event(&mut event).await?;
            sink.write(&exported(event, filter.upcast)?)?;
            written += 1;
        }
    }
    sink.finish()?;
    Ok(written)
}

enum Sink<'w, W: Write> {
    Jsonl(&'w mut W),
    Csv(Box<csv::Writer<&'w mut W>>),
}

impl<W: Write> Sink<'_, W> {
    fn write(&mut self, event: &ExportedEvent) -> Result<(), ReplayError> {
        match self {
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut **out, event)?;
                out.write_all(b"\n")?;
            }
            Sink::Csv(csv) => csv.serialize(csv_row(event)?)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ReplayError> {
        match self {
            Sink::Jsonl(out) => out.flush()?,
            Sink::Csv(mut csv) => csv.flush()?,
        }
        Ok(())
    }
}

/// The next batch after `position`. The time bounds are compared as the database
/// stores them: UTC, to the microsecond.
async fn read_batch(
    pool: &MySqlPool,
    filter: &ExportFilter,
    user_streams: Option<&UserStreams>,
    position: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let mut query = QueryBuilder::<MySql>::new(SELECT_EVENTS);
    query.push(" WHERE global_position > ").push_bind(position);
    if let Some(stream) = &filter.stream {
        query.push(" AND stream_id = ").push_bind(stream.clone());
    }
    if let Some(from) = filter.from {
        query
            .push(" AND recorded_at >= ")
            .push_bind(from.naive_utc());
    }
    if let Some(to) = filter.to {
        query.push(" AND recorded_at < ").push_bind(to.naive_utc());
    }
    if let Some(streams) = user_streams {
        query
            .push(" AND (stream_id LIKE ")
            .push_bind(streams.chats_like.clone());
        if !streams.others.is_empty() {
            query.push(" OR stream_id IN ");
            query.push_tuples(&streams.others, |mut b, s| {
                b.push_bind(s.clone());
            });
        }
        query.push(")");
    }
    query
        .push(" ORDER BY global_position LIMIT ")
        .push_bind(BATCH);
    query
        .build()
        .persistent(false)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(pool)
        .await
}

/// Every stream that belongs to one user.
struct UserStreams {
    /// `chat-<user>-%`: their conversations.
    chats_like: String,
    /// Their bots' and sessions' streams, found by the user named in each stream's
    /// first event.
    others: Vec<String>,
}

async fn streams_of_user(pool: &MySqlPool, user: UserId) -> Result<UserStreams, sqlx::Error> {
    let others = sqlx::query_scalar(
        "SELECT stream_id FROM events \
         WHERE (stream_id LIKE 'bot-%' OR stream_id LIKE 'session-%' OR stream_id LIKE 'user-%') \
         AND stream_version = 1 \
         AND CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.user_id')) AS SIGNED) = ?",
    )
    .bind(user)
    .fetch_all(pool)
    .await?;
    Ok(UserStreams {
        chats_like: format!("chat-{user}-%"),
        others,
    })
}

fn exported(event: RecordedEvent, upcast_payload: bool) -> Result<ExportedEvent, ReplayError> {
    let mut payload = match upcast_payload {
        true => upcast(&event.event_type, event.schema_version, &event.payload)?.into_owned(),
        false => event.payload,
    };
    blank_passwords(&mut payload);
    Ok(ExportedEvent {
        position: event.global_position,
        event_id: event.event_id,
        stream: event.stream_id,
        version: event.stream_version,
        schema_version: match upcast_payload {
            true => events::upcast::current_version(&event.event_type),
            false => event.schema_version,
        },
        event_type: event.event_type,
        payload,
        metadata: event.metadata,
        recorded_at: utc(event.recorded_at),
    })
}

fn csv_row(event: &ExportedEvent) -> Result<CsvRow<'_>, serde_json::Error> {
    Ok(CsvRow {
        position: event.position,
        event_id: event.event_id.to_string(),
        stream: &event.stream,
        version: event.version,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        recorded_at: event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        correlation_id: event.metadata.correlation_id.as_deref(),
        causation_id: event.metadata.causation_id.map(|id| id.to_string()),
        user_id: event.metadata.user_id,
        payload: serde_json::to_string(&event.payload)?,
        metadata: serde_json::to_string(&event.metadata)?,
    })
}

fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(at, Utc)
}

fn blank_passwords(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if name.to_ascii_lowercase().contains("password") {
                    *field = Value::from("[withheld]");
                } else {
                    blank_passwords(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(blank_passwords),
        _ => {}
    }
}
