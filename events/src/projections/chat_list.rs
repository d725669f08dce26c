//! The `chat_list` read model: the latest message of each conversation whose bot is
//! not deleted.

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

use super::page::{Page, RowText};
use crate::event::{BotId, UserId};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ChatListRow {
    pub chatbot_id: BotId,
    pub chatbot_name: String,
    pub last_content: String,
    pub last_at: NaiveDateTime,
    pub last_seq: i64,
}

impl RowText for ChatListRow {
    fn text_len(&self) -> usize {
        self.chatbot_name.len() + self.last_content.len()
    }
}

pub struct ChatListProjection;

impl ChatListProjection {
    /// The user's conversations, newest first: at most `limit` rows and about
    /// `max_bytes` of their latest messages. With `after`, only those that come
    /// after that bot's row (an unknown bot: none).
    pub async fn list(
        pool: &MySqlPool,
        user_id: UserId,
        after: Option<BotId>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Page<ChatListRow>, sqlx::Error> {
        let rows = match after {
            None => sqlx::query_as(
                "SELECT chatbot_id, chatbot_name, last_content, last_at, last_seq FROM chat_list \
                 WHERE user_id = ? ORDER BY last_position DESC LIMIT ?",
            )
            .bind(user_id)
            .bind(limit)
            .fetch(pool),
            Some(after) => sqlx::query_as(
                "SELECT chatbot_id, chatbot_name, last_content, last_at, last_seq FROM chat_list \
                 WHERE user_id = ? AND last_position < \
                 (SELECT last_position FROM chat_list WHERE user_id = ? AND chatbot_id = ?) \
                 ORDER BY last_position DESC LIMIT ?",
            )
            .bind(user_id)
            .bind(user_id)
            .bind(after)
            .bind(limit)
            .fetch(pool),
        };
        Page::collect(rows, limit, max_bytes).await
    }
}
