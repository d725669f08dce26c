//! The `bots` read model: every bot, with deleted ones kept but marked.

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

use crate::event::{BotId, BotKind, BotUpdated, UserId};

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
