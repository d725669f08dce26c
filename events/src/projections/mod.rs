//! Read models built from the event log, and the queries that serve the GET routes.
//!
//! [`ReadModels`] is the [`InlineProjector`] the store calls inside every append, so a
//! read model and its checkpoint always move together with the events (exactly once,
//! and a request that appended can read its own write at once). Each module owns one
//! table: how events change it, and how it is read.

pub mod bots;
pub mod chat_list;
pub mod history;

use futures::future::BoxFuture;
use sqlx::mysql::MySqlConnection;

use crate::event::DomainEvent;
use crate::store::{InlineProjector, RecordedEvent};

pub use bots::{Bot, BotsProjection};
pub use chat_list::{ChatListProjection, ChatListRow};
pub use history::{ChatHistoryProjection, HistoryRow, MessageStatus};

/// The checkpoint row shared by the read models: the last global position applied.
pub const CHECKPOINT_NAME: &str = "read_models";

#[derive(Debug, Default, Clone, Copy)]
pub struct ReadModels;

impl ReadModels {
    /// Applies one event to every read model it concerns.
    pub async fn apply_one(
        conn: &mut MySqlConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        let decoded = DomainEvent::decode(event).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        BotsProjection::apply(conn, event, &decoded).await?;
        ChatHistoryProjection::apply(conn, event, &decoded).await?;
        ChatListProjection::apply(conn, event, &decoded).await?;
        Ok(())
    }

    pub async fn checkpoint(conn: &mut MySqlConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT position FROM projection_checkpoint WHERE name = ?")
            .bind(CHECKPOINT_NAME)
            .fetch_one(conn)
            .await
    }
}

impl InlineProjector for ReadModels {
    fn apply<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            for event in events {
                Self::apply_one(conn, event).await?;
            }
            if let Some(last) = events.last() {
                sqlx::query("UPDATE projection_checkpoint SET position = ? WHERE name = ?")
                    .bind(last.global_position)
                    .bind(CHECKPOINT_NAME)
                    .execute(conn)
                    .await?;
            }
            Ok(())
        })
    }
}

/// `2024-05-21T15:53:25`: the original's timestamp format (UTC, whole seconds).
pub fn format_timestamp(at: &chrono::NaiveDateTime) -> String {
    at.format("%Y-%m-%dT%H:%M:%S").to_string()
}
