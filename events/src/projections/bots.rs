//! The `bots` read model: every bot, with deleted ones kept but marked.

use chrono::NaiveDateTime;
use sqlx::mysql::{MySqlConnection, MySqlPool};

use super::Tables;
use crate::event::{BotId, BotKind, BotUpdated, DomainEvent, UserId};
use crate::store::RecordedEvent;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Bot {
    pub chatbot_id: BotId,
    pub user_id: UserId,
    pub chatbot_name: String,
    pub chatbot_type: i8,
    pub chatbot_persona: String,
    pub created_at: NaiveDateTime,
    pub deleted_at: Option<NaiveDateTime>,
    /// The model settings its owner chose (`bots/update`); `None`: the defaults.
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_reply_tokens: Option<u32>,
    /// The bot stream's version this row reflects.
    pub version: i64,
}

impl Bot {
    /// `update`'s changes made to this bot.
    pub fn update(&mut self, update: &BotUpdated) {
        if let Some(name) = &update.name {
            self.chatbot_name.clone_from(name);
        }
        if let Some(kind) = update.kind {
            self.chatbot_type = i8::try_from(u8::from(kind)).unwrap_or(0);
        }
        if let Some(persona) = &update.persona {
            self.chatbot_persona.clone_from(persona);
        }
        if update.model.is_some() {
            self.model.clone_from(&update.model);
        }
        if update.temperature.is_some() {
            self.temperature = update.temperature;
        }
        if update.max_reply_tokens.is_some() {
            self.max_reply_tokens = update.max_reply_tokens;
        }
    }

    pub fn kind(&self) -> BotKind {
        if self.chatbot_type == 1 {
            BotKind::Cosplay
        } else {
            BotKind::Assistant
        }
    }
}

const SELECT_BOTS: &str = "SELECT chatbot_id, user_id, chatbot_name, chatbot_type, \
    chatbot_persona, created_at, deleted_at, model, temperature, max_reply_tokens, version \
    FROM bots";

pub struct BotsProjection;

impl BotsProjection {
    pub async fn apply(
        conn: &mut MySqlConnection,
        tables: &Tables,
        event: &RecordedEvent,
        decoded: &DomainEvent,
    ) -> Result<(), sqlx::Error> {
        match decoded {
            DomainEvent::BotCreated(e) => {
                sqlx::query(&format!(
                    "INSERT INTO {} (chatbot_id, user_id, chatbot_name, chatbot_type, \
                     chatbot_persona, created_at, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    tables.bots
                ))
                .bind(e.bot_id)
                .bind(e.user_id)
                .bind(&e.name)
                .bind(u8::from(e.kind))
                .bind(&e.persona)
                .bind(event.recorded_at)
                .bind(event.stream_version)
                .execute(conn)
                .await?;
            }
            DomainEvent::BotUpdated(e) => {
                sqlx::query(&format!(
                    "UPDATE {} SET chatbot_name = COALESCE(?, chatbot_name), \
                     chatbot_type = COALESCE(?, chatbot_type), \
                     chatbot_persona = COALESCE(?, chatbot_persona), model = COALESCE(?, model), \
                     temperature = COALESCE(?, temperature), \
                     max_reply_tokens = COALESCE(?, max_reply_tokens), version = ? \
                     WHERE chatbot_id = ?",
                    tables.bots
                ))
                .bind(&e.name)
                .bind(e.kind.map(u8::from))
                .bind(&e.persona)
                .bind(&e.model)
                .bind(e.temperature)
                .bind(e.max_reply_tokens)
                .bind(event.stream_version)
                .bind(e.bot_id)
                .execute(conn)
                .await?;
            }
            DomainEvent::BotDeleted(e) => {
                sqlx::query(&format!(
                    "UPDATE {} SET deleted_at = ?, version = ? WHERE chatbot_id = ?",
                    tables.bots
                ))
                .bind(event.recorded_at)
                .bind(event.stream_version)
                .bind(e.bot_id)
                .execute(conn)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The caller's bot, unless it is deleted or belongs to someone else.
    pub async fn find_owned(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
    ) -> Result<Option<Bot>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT_BOTS} WHERE chatbot_id = ? AND user_id = ? AND deleted_at IS NULL"
        ))
        .bind(bot_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await
    }

    /// A bot whatever its state (the worker must still answer for a deleted one).
    pub async fn find(pool: &MySqlPool, bot_id: BotId) -> Result<Option<Bot>, sqlx::Error> {
        sqlx::query_as(&format!("{SELECT_BOTS} WHERE chatbot_id = ?"))
            .bind(bot_id)
            .fetch_optional(pool)
            .await
    }

    /// The user's live bots in creation order.
    /// The user's live bots after the bot `after` (`0`: from the first), in
    /// creation order, at most `limit`.
    pub async fn list(
        pool: &MySqlPool,
        user_id: UserId,
        after: BotId,
        limit: u32,
    ) -> Result<Vec<Bot>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT_BOTS} WHERE user_id = ? AND deleted_at IS NULL AND chatbot_id > ? \
             ORDER BY chatbot_id LIMIT ?"
        ))
        .bind(user_id)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
    }

    /// How many live bots the user has, counted up to `enough`.
    pub async fn count_live(
        pool: &MySqlPool,
        user_id: UserId,
        enough: u32,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM bots \
             WHERE user_id = ? AND deleted_at IS NULL LIMIT ?) AS live",
        )
        .bind(user_id)
        .bind(enough)
        .fetch_one(pool)
        .await
    }
}
