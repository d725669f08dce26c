//! The `usage_daily` read model: what each user's model calls cost, per UTC day,
//! bot, kind (replies or memory) and model, summed from the usage the events
//! record (see [`crate::event::Usage`]).
//!
//! `calls` counts replies (`BotReplyGenerated`) for the kind `reply`, and
//! refreshes (`ConversationSummarized`, one per refresh) for `memory`; tokens
//! come from every model-backed event, failed and stopped calls included,
//! since those are paid too. An event written before usage was recorded counts
//! its call with no tokens.

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::mysql::MySqlPool;

use crate::event::{BotId, DomainEvent, Usage, UserId};
use crate::store::EventStamp;

pub const REPLY: &str = "reply";
pub const MEMORY: &str = "memory";
/// The model of an event that did not record one.
pub const UNRECORDED: &str = "unrecorded";

/// One row's key: `(user_id, day, chatbot_id, kind, model)`.
pub type UsageKey = (UserId, NaiveDate, BotId, &'static str, String);

/// What an event adds to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageAmounts {
    pub calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl UsageAmounts {
    pub fn add(&mut self, other: &UsageAmounts) {
        self.calls += other.calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// A row as the table stores it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UsageRow {
    pub user_id: UserId,
    pub day: NaiveDate,
    pub chatbot_id: BotId,
    pub kind: String,
    pub model: String,
    #[sqlx(flatten)]
    pub amounts: UsageAmounts,
}

/// Sums over a period, as `GET /chat/usage` reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReport {
    pub replies: UsageAmounts,
    pub memory: UsageAmounts,
    /// Replies per bot, by bot id.
    pub by_bot: Vec<(BotId, UsageAmounts)>,
}

pub struct UsageProjection;

impl UsageProjection {
    /// The row an event adds to, and what it adds; `None` for an event that
    /// is no model call.
    pub fn contribution(
        at: &EventStamp,
        decoded: &DomainEvent,
    ) -> Option<(UsageKey, UsageAmounts)> {
        let (user, bot, kind, calls, usage, model) = match decoded {
            DomainEvent::BotReplyGenerated(e) => (
                e.user_id,
                e.bot_id,
                REPLY,
                1,
                e.usage.as_ref(),
                Some(&e.model),
            ),
            DomainEvent::BotReplyFailed(e) => {
                (e.user_id, e.bot_id, REPLY, 0, e.usage.as_ref(), None)
            }
            DomainEvent::ModelCallStopped(e) => {
                (e.user_id, e.bot_id, REPLY, 0, Some(&e.usage), None)
            }
            DomainEvent::ConversationSummarized(e) => {
                (e.user_id, e.bot_id, MEMORY, 1, e.usage.as_ref(), None)
            }
            DomainEvent::UserProfileUpdated(e) => {
                (e.user_id, e.bot_id, MEMORY, 0, e.usage.as_ref(), None)
            }
            _ => return None,
        };
        // A failure without usage made no call worth a row.
        if calls == 0 && usage.is_none() {
            return None;
        }
        let (prompt, completion) = usage.map_or((0, 0), Usage::billed);
        let model = usage
            .map(|u| u.model.clone())
            .or_else(|| model.cloned())
            .unwrap_or_else(|| UNRECORDED.to_string());
        let key = (user, day_of(&at.recorded_at), bot, kind, model);
        let amounts = UsageAmounts {
            calls,
            prompt_tokens: i64::try_from(prompt).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(completion).unwrap_or(i64::MAX),
        };
        Some((key, amounts))
    }

    /// The user's usage from `from` to `to` (UTC days, both included), of one
    /// bot or of all.
    pub async fn report(
        pool: &MySqlPool,
        user: UserId,
        bot: Option<BotId>,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<UsageReport, sqlx::Error> {
        let rows: Vec<(BotId, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT chatbot_id, kind, CAST(SUM(calls) AS SIGNED), \
             CAST(SUM(prompt_tokens) AS SIGNED), CAST(SUM(completion_tokens) AS SIGNED) \
             FROM usage_daily WHERE user_id = ? AND day BETWEEN ? AND ? \
             AND (? IS NULL OR chatbot_id = ?) GROUP BY chatbot_id, kind ORDER BY chatbot_id",
        )
        .bind(user)
        .bind(from)
        .bind(to)
        .bind(bot)
        .bind(bot)
        .fetch_all(pool)
        .await?;
        let mut report = UsageReport::default();
        for (bot, kind, calls, prompt_tokens, completion_tokens) in rows {
            let amounts = UsageAmounts {
                calls,
                prompt_tokens,
                completion_tokens,
            };
            if kind == MEMORY {
                report.memory.add(&amounts);
            } else {
                report.replies.add(&amounts);
                report.by_bot.push((bot, amounts));
            }
        }
        Ok(report)
    }

    /// Tokens the user's calls used on `day`, replies and memory together.
    pub async fn tokens_on(
        pool: &MySqlPool,
        user: UserId,
        day: NaiveDate,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS SIGNED) \
             FROM usage_daily WHERE user_id = ? AND day = ?",
        )
        .bind(user)
        .bind(day)
        .fetch_one(pool)
        .await
    }
}

/// The UTC day of an instant the log recorded.
pub fn day_of(at: &NaiveDateTime) -> NaiveDate {
    at.date()
}
