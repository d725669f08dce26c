//! Read models built from the event log, and the queries that serve the GET routes.
//!
//! [`ReadModels`] is the [`InlineProjector`] the store calls inside every append, so a
//! read model and its checkpoint always move together with the events (exactly once,
//! and a request that appended can read its own write at once). Each of `bots`,
//! `history`, `chat_list`, `sessions`, `memory` and `usage` owns one table: how events change
//! it, and how it is read; `rows` is how history is shaped for clients, and `page` bounds what one
//! read holds.
//!
//! Replaying the log: `fold` is the same rules over rows in memory, `bulk` applies a
//! batch through it with multi-row statements, `shadow` fills the `*_rebuild` tables,
//! and `rebuild` swaps them in while `verify` compares them with the live ones.

pub mod bots;
pub mod bulk;
pub mod chat_list;
pub mod erasure;
pub mod fold;
pub mod history;
pub mod memory;
pub mod page;
pub mod rebuild;
pub mod rows;
pub mod sessions;
pub mod shadow;
pub mod usage;
pub mod verify;

use futures::future::BoxFuture;
use sqlx::mysql::MySqlConnection;

use crate::event::DomainEvent;
use crate::store::{InlineProjector, RecordedEvent};

pub use bots::{Bot, BotsProjection};
pub use chat_list::{ChatListProjection, ChatListRow};
pub use history::{ChatHistoryProjection, Exchange, HistoryPage, HistoryRow, MessageStatus};
pub use memory::{ConversationMemory, MemoryProjection};
pub use sessions::{Session, SessionsProjection};

/// The checkpoint row shared by the read models: the last global position applied.
pub const CHECKPOINT_NAME: &str = "read_models";

/// Which tables an event is applied to: the live ones, or the shadow copies a
/// rebuild fills before swapping them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    pub bots: &'static str,
    pub chat_history: &'static str,
    pub chat_list: &'static str,
    pub sessions: &'static str,
    pub memory: &'static str,
    pub usage: &'static str,
}

impl Tables {
    pub const LIVE: Tables = Tables {
        bots: "bots",
        chat_history: "chat_history",
        chat_list: "chat_list",
        sessions: "sessions",
        memory: "conversation_memory",
        usage: "usage_daily",
    };
    pub const SHADOW: Tables = Tables {
        bots: "bots_rebuild",
        chat_history: "chat_history_rebuild",
        chat_list: "chat_list_rebuild",
        sessions: "sessions_rebuild",
        memory: "conversation_memory_rebuild",
        usage: "usage_daily_rebuild",
    };

    /// `(live, shadow)` name pairs.
    pub fn pairs() -> [(&'static str, &'static str); 6] {
        [
            (Self::LIVE.bots, Self::SHADOW.bots),
            (Self::LIVE.chat_history, Self::SHADOW.chat_history),
            (Self::LIVE.chat_list, Self::SHADOW.chat_list),
            (Self::LIVE.sessions, Self::SHADOW.sessions),
            (Self::LIVE.memory, Self::SHADOW.memory),
            (Self::LIVE.usage, Self::SHADOW.usage),
        ]
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ReadModels;

impl ReadModels {
    /// Applies one event to every read model it concerns, in `tables`.
    pub async fn apply_one(
        conn: &mut MySqlConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        let decoded = DomainEvent::decode(event).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if let DomainEvent::UserErased(e) = &decoded {
            return erasure::forget_users(conn, tables, &[e.user_id]).await;
        }
        BotsProjection::apply(conn, tables, event, &decoded).await?;
        ChatHistoryProjection::apply(conn, tables, event, &decoded).await?;
        ChatListProjection::apply(conn, tables, event, &decoded).await?;
        SessionsProjection::apply(conn, tables, event, &decoded).await?;
        MemoryProjection::apply(conn, tables, event, &decoded).await?;
        usage::UsageProjection::apply(conn, tables, &event.stamp(), &decoded).await?;
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
                Self::apply_one(conn, &Tables::LIVE, event).await?;
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
