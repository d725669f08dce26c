//! What the log stores: an event about to be appended ([`NewEvent`]), an event as
//! recorded ([`RecordedEvent`]), and the metadata that traces it across processes.
//! Plain data, shared by the writer ([`crate::appender`]) and the readers
//! ([`crate::store`], the outbox, the projections).

use chrono::{NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

impl RecordedEvent {
    pub fn stamp(&self) -> EventStamp {
        EventStamp {
            global_position: self.global_position,
            stream_version: self.stream_version,
            recorded_at: self.recorded_at,
        }
    }
}

/// Where and when an event was recorded: all a read model needs of it besides the
/// decoded event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventStamp {
    pub global_position: i64,
    pub stream_version: i64,
    pub recorded_at: NaiveDateTime,
}

/// UTC now, truncated to the microseconds that `DATETIME(6)` keeps, so that what an
/// append returns equals what a later read returns.
pub fn now_micros() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::microseconds(1)).unwrap_or(now)
}
