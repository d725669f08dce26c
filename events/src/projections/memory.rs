//! The `conversation_memory` read model: what a bot remembers of a conversation.
//!
//! Memory events can arrive late or twice (a slow or repeated job), so each text
//! replaces the stored one only if it covers more of the conversation, and never
//! if it covers nothing after the last erasure. Replaying the log therefore gives
//! the same view whatever order the jobs finished in.

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

use crate::event::{BotId, UserId};

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

impl MemoryProjection {
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
