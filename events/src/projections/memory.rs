//! The `conversation_memory` read model: what a bot remembers of a conversation.
//!
//! Memory events can arrive late or twice (a slow or repeated job), so each text
//! replaces the stored one only if it covers more of the conversation, and never
//! if it covers nothing after the last erasure. Replaying the log therefore gives
//! the same view whatever order the jobs finished in.

use chrono::NaiveDateTime;
use sqlx::mysql::{MySqlConnection, MySqlPool};

use super::Tables;
use crate::event::{self, BotId, DomainEvent, UserId};
use crate::store::RecordedEvent;

#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct ConversationMemory {
    pub summary: Option<String>,
    pub summary_covers: Option<i64>,
    pub profile: Option<String>,
    pub profile_covers: Option<i64>,
    pub erased_through: i64,
    pub updated_at: Option<NaiveDateTime>,
}

impl ConversationMemory {
    /// The chat stream version below which nothing more needs remembering: what the
    /// summary covers, or the last erasure, whichever is later.
    pub fn remembered_through(&self) -> i64 {
        self.summary_covers.unwrap_or(0).max(self.erased_through)
    }
}

pub struct MemoryProjection;

/// Which text an event sets.
enum Text<'a> {
    Summary(&'a str),
    Profile(&'a str),
}

impl MemoryProjection {
    pub async fn apply(
        conn: &mut MySqlConnection,
        tables: &Tables,
        event: &RecordedEvent,
        decoded: &DomainEvent,
    ) -> Result<(), sqlx::Error> {
        let (user_id, bot_id, text, covers) = match decoded {
            DomainEvent::ConversationSummarized(e) => (
                e.user_id,
                e.bot_id,
                Text::Summary(&e.summary),
                e.covers_version,
            ),
            DomainEvent::UserProfileUpdated(e) => (
                e.user_id,
                e.bot_id,
                Text::Profile(&e.profile),
                e.covers_version,
            ),
            // A clear that forgets erases as `MemoryErased` does.
            DomainEvent::MemoryErased(event::MemoryErased { user_id, bot_id })
            | DomainEvent::ConversationCleared(event::ConversationCleared {
                user_id,
                bot_id,
                forget_memory: true,
            }) => {
                sqlx::query(&format!(
                    "INSERT INTO {} (user_id, chatbot_id, erased_through, updated_at) \
                     VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE summary = NULL, \
                     summary_covers = NULL, profile = NULL, profile_covers = NULL, \
                     erased_through = GREATEST(erased_through, ?), updated_at = ?",
                    tables.memory
                ))
                .bind(user_id)
                .bind(bot_id)
                .bind(event.stream_version)
                .bind(event.recorded_at)
                .bind(event.stream_version)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let (column, value) = match text {
            Text::Summary(s) => ("summary", s),
            Text::Profile(p) => ("profile", p),
        };
        // Assignments apply left to right: the condition reads `*_covers`, so it
        // is updated last. The new values are bound again rather than read with
        // `VALUES()`, which MySQL 8 deprecates in `ON DUPLICATE KEY UPDATE`.
        let newer = format!("? > COALESCE({column}_covers, 0) AND ? > erased_through");
        sqlx::query(&format!(
            "INSERT INTO {table} (user_id, chatbot_id, {column}, {column}_covers, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             updated_at = IF({newer}, ?, updated_at), \
             {column} = IF({newer}, ?, {column}), \
             {column}_covers = IF({newer}, ?, {column}_covers)",
            table = tables.memory
        ))
        .bind(user_id)
        .bind(bot_id)
        .bind(value)
        .bind(covers)
        .bind(event.recorded_at)
        .bind(covers)
        .bind(covers)
        .bind(event.recorded_at)
        .bind(covers)
        .bind(covers)
        .bind(value)
        .bind(covers)
        .bind(covers)
        .bind(covers)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// What the bot remembers of this conversation (empty when nothing).
    pub async fn find(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
    ) -> Result<ConversationMemory, sqlx::Error> {
        Ok(sqlx::query_as(
            "SELECT summary, summary_covers, profile, profile_covers, erased_through, updated_at \
             FROM conversation_memory WHERE user_id = ? AND chatbot_id = ?",
        )
        .bind(user_id)
        .bind(bot_id)
        .fetch_optional(pool)
        .await?
        .unwrap_or_default())
    }
}
