//! The `chat_list` read model: the latest message of each conversation whose bot is
//! not deleted.

use chrono::NaiveDateTime;
use sqlx::mysql::{MySqlConnection, MySqlPool};

use super::page::{Page, RowText};
use super::Tables;
use crate::event::{self, BotId, DomainEvent, UserId};
use crate::store::RecordedEvent;

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
    pub async fn apply(
        conn: &mut MySqlConnection,
        tables: &Tables,
        event: &RecordedEvent,
        decoded: &DomainEvent,
    ) -> Result<(), sqlx::Error> {
        let (user_id, bot_id, content) = match decoded {
            DomainEvent::UserMessagePosted(e) => (e.user_id, e.bot_id, &e.content),
            DomainEvent::BotReplyGenerated(e) => (e.user_id, e.bot_id, &e.content),
            DomainEvent::BotReplyFailed(e) => (e.user_id, e.bot_id, &e.reason),
            // A stop before the model wrote anything leaves the user's message
            // as the conversation's latest words.
            DomainEvent::BotReplyStopped(e) if e.content.is_empty() => return Ok(()),
            DomainEvent::BotReplyStopped(e) => (e.user_id, e.bot_id, &e.content),
            // The list shows the bot's name as it is now.
            DomainEvent::BotUpdated(e) => {
                if let Some(name) = &e.name {
                    sqlx::query(&format!(
                        "UPDATE {} SET chatbot_name = ? WHERE user_id = ? AND chatbot_id = ?",
                        tables.chat_list
                    ))
                    .bind(name)
                    .bind(e.user_id)
                    .bind(e.bot_id)
                    .execute(conn)
                    .await?;
                }
                return Ok(());
            }
            // Until its next message, a cleared conversation is not listed.
            DomainEvent::BotDeleted(event::BotDeleted { user_id, bot_id })
            | DomainEvent::ConversationCleared(event::ConversationCleared {
                user_id,
                bot_id,
                ..
            }) => {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE user_id = ? AND chatbot_id = ?",
                    tables.chat_list
                ))
                .bind(user_id)
                .bind(bot_id)
                .execute(conn)
                .await?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        // The bot's name comes from the bots read model; a deleted bot matches no row,
        // so a late reply cannot bring its conversation back into the list.
        sqlx::query(&format!(
            "REPLACE INTO {} (user_id, chatbot_id, chatbot_name, last_content, last_at, \
             last_seq, last_position) SELECT ?, chatbot_id, chatbot_name, ?, ?, ?, ? FROM {} \
             WHERE chatbot_id = ? AND deleted_at IS NULL",
            tables.chat_list, tables.bots
        ))
        .bind(user_id)
        .bind(content)
        .bind(event.recorded_at)
        .bind(event.stream_version)
        .bind(event.global_position)
        .bind(bot_id)
        .execute(conn)
        .await?;
        Ok(())
    }

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
