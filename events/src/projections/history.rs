//! The `chat_history` read model: one row per message in a conversation.
//!
//! A user's message starts `pending`; its reply row is `done` and turns the message
//! `done`; a failure adds a bot row that says what went wrong, and both are
//! `failed`; a stop adds a bot row with the text written before it, and both are
//! `stopped`.
//!
//! Two controls take rows out again (the log keeps their events): a regeneration
//! removes the last message's outcome and makes the message `pending` for its next
//! attempt, whose reply gets a new `seq` (so that clients following the
//! conversation with `after=<seq>` see it arrive); a clear removes every row
//! before it. Neither can strand a pending message: a regeneration is refused
//! while a reply is being written, and a clear stops what is pending first.

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

use super::page::{Page, RowText};
use crate::event::{self, BotId, DomainEvent, UserId};
use crate::store::EventStamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Pending,
    Done,
    Failed,
    Stopped,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Done => "done",
            MessageStatus::Failed => "failed",
            MessageStatus::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HistoryRow {
    pub seq: i64,
    pub message_id: String,
    pub reply_to: Option<String>,
    pub by_user: i8,
    pub content: String,
    pub status: String,
    pub created_at: NaiveDateTime,
    /// A user message: the attempt it waits for or was last answered by; a
    /// reply: the attempt it is.
    pub attempt: i32,
}

/// A page of a conversation (see [`super::page`]).
pub type HistoryPage = Page<HistoryRow>;

impl RowText for HistoryRow {
    fn text_len(&self) -> usize {
        self.content.len()
    }
}

/// A user message and, once there is one, its outcome.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Exchange {
    pub seq: i64,
    pub content: String,
    pub created_at: NaiveDateTime,
    pub reply: Option<String>,
    pub reply_status: Option<String>,
}

/// What a user message got, as far as a prompt is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The bot's reply.
    Given(&'a str),
    /// The user stopped the reply after this much of it.
    CutOff(&'a str),
    /// Nothing to show the model: no outcome yet, or a failure (which is not
    /// part of the conversation).
    None,
}

impl Exchange {
    pub fn answer(&self) -> Answer<'_> {
        let reply = self.reply.as_deref().unwrap_or_default();
        match self.reply_status.as_deref() {
            Some(status) if status == MessageStatus::Done.as_str() => Answer::Given(reply),
            Some(status) if status == MessageStatus::Stopped.as_str() => Answer::CutOff(reply),
            _ => Answer::None,
        }
    }

    /// Whether the message has an outcome.
    pub fn is_settled(&self) -> bool {
        self.reply_status.is_some()
    }
}

const SELECT_HISTORY: &str = "SELECT seq, message_id, reply_to, by_user, content, status, \
    created_at, attempt FROM chat_history";

pub struct ChatHistoryProjection;

impl ChatHistoryProjection {
    /// The row an event adds to its conversation's history: what [`Self::apply`]
    /// and a replay's fold write, and what a notice of the event hands to waiting
    /// readers without a database read. (The answered message's own status change
    /// is not in it.)
    pub fn row_of(event: &EventStamp, decoded: &DomainEvent) -> Option<HistoryRow> {
        let (message_id, reply_to, by_user, content, status, attempt) = match decoded {
            DomainEvent::UserMessagePosted(e) => (
                e.message_id,
                None,
                1,
                &e.content,
                MessageStatus::Pending,
                event::FIRST_ATTEMPT,
            ),
            DomainEvent::BotReplyGenerated(e) => (
                e.message_id,
                Some(e.reply_to),
                0,
                &e.content,
                MessageStatus::Done,
                e.attempt,
            ),
            DomainEvent::BotReplyFailed(e) => (
                e.message_id,
                Some(e.reply_to),
                0,
                &e.reason,
                MessageStatus::Failed,
                e.attempt,
            ),
            DomainEvent::BotReplyStopped(e) => (
                e.message_id,
                Some(e.reply_to),
                0,
                &e.content,
                MessageStatus::Stopped,
                e.attempt,
            ),
            _ => return None,
        };
        Some(HistoryRow {
            seq: event.stream_version,
            message_id: message_id.to_string(),
            reply_to: reply_to.map(|r| r.to_string()),
            by_user,
            content: content.clone(),
            status: status.as_str().to_string(),
            created_at: event.recorded_at,
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        })
    }

    /// A conversation's rows after `after`, oldest first: at most `limit` rows
    /// and about `max_bytes` of content (see [`HistoryPage`]).
    pub async fn read(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        after: i64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<HistoryPage, sqlx::Error> {
        let query = format!(
            "{SELECT_HISTORY} WHERE user_id = ? AND chatbot_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query_as(&query)
            .bind(user_id)
            .bind(bot_id)
            .bind(after)
            .bind(limit)
            .fetch(pool);
        Page::collect(rows, limit, max_bytes).await
    }

    /// A conversation's newest rows before `before` (`None`: of all), oldest
    /// first within them: at most `limit` rows and about `max_bytes` of content.
    pub async fn read_newest(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        before: Option<i64>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<HistoryPage, sqlx::Error> {
        let query = format!(
            "{SELECT_HISTORY} WHERE user_id = ? AND chatbot_id = ? AND seq < ? \
             ORDER BY seq DESC LIMIT ?"
        );
        let rows = sqlx::query_as(&query)
            .bind(user_id)
            .bind(bot_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch(pool);
        let mut page = Page::collect(rows, limit, max_bytes).await?;
        page.rows.reverse();
        Ok(page)
    }

    /// The conversation's last row from `by_user` (1: the user, 0: the bot).
    pub async fn last_by(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        by_user: i8,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT_HISTORY} WHERE user_id = ? AND chatbot_id = ? AND by_user = ? \
             ORDER BY seq DESC LIMIT 1"
        ))
        .bind(user_id)
        .bind(bot_id)
        .bind(by_user)
        .fetch_optional(pool)
        .await
    }

    /// The conversation's messages with no outcome yet, oldest first, at most
    /// `limit` of them.
    pub async fn pending(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        limit: u32,
    ) -> Result<Vec<HistoryRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT_HISTORY} WHERE user_id = ? AND chatbot_id = ? AND status = ? \
             ORDER BY seq LIMIT ?"
        ))
        .bind(user_id)
        .bind(bot_id)
        .bind(MessageStatus::Pending.as_str())
        .bind(limit)
        .fetch_all(pool)
        .await
    }

    /// A user message's row, by its id.
    pub async fn find_message(
        pool: &MySqlPool,
        message_id: &str,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        sqlx::query_as(&format!("{SELECT_HISTORY} WHERE message_id = ?"))
            .bind(message_id)
            .fetch_optional(pool)
            .await
    }

    /// The oldest message of a conversation that has no outcome yet, however far
    /// back it is (an index on `status` makes this one short range read).
    pub async fn oldest_pending(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT_HISTORY} WHERE user_id = ? AND chatbot_id = ? AND status = ? \
             ORDER BY seq LIMIT 1"
        ))
        .bind(user_id)
        .bind(bot_id)
        .bind(MessageStatus::Pending.as_str())
        .fetch_optional(pool)
        .await
    }

    /// How many of the user's messages wait for an answer in the conversation
    /// with `bot_id`, and across all of the user's bots, each counted up to its
    /// `enough`; `None` when `bot_id` is not one of the user's live bots. One
    /// round trip, of a key lookup and two short index range reads, however
    /// long the user's history: a post checks both before it is recorded.
    pub async fn count_unanswered(
        pool: &MySqlPool,
        (user_id, bot_id): (UserId, BotId),
        (conversation_enough, user_enough): (u32, u32),
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let pending = MessageStatus::Pending.as_str();
        sqlx::query_as(
            "SELECT \
             (SELECT COUNT(*) FROM (SELECT 1 FROM chat_history \
               WHERE user_id = ? AND chatbot_id = ? AND status = ? LIMIT ?) AS conversation), \
             (SELECT COUNT(*) FROM (SELECT 1 FROM chat_history \
               WHERE user_id = ? AND status = ? LIMIT ?) AS all_bots) \
             FROM bots WHERE chatbot_id = ? AND user_id = ? AND deleted_at IS NULL",
        )
        .bind(user_id)
        .bind(bot_id)
        .bind(pending)
        .bind(conversation_enough)
        .bind(user_id)
        .bind(pending)
        .bind(user_enough)
        .bind(bot_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await
    }

    /// The user's last `limit` messages after `after` and up to and including `seq`,
    /// oldest first, each with its reply when it has one: the conversation as a
    /// prompt needs it, with replies paired to their messages even when they were
    /// recorded later.
    pub async fn exchanges_through(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        (after, seq): (i64, i64),
        limit: u32,
    ) -> Result<Vec<Exchange>, sqlx::Error> {
        let mut exchanges: Vec<Exchange> = sqlx::query_as(
            "SELECT m.seq, m.content, m.created_at, r.content AS reply, r.status AS reply_status \
             FROM chat_history m LEFT JOIN chat_history r ON r.reply_to = m.message_id \
             WHERE m.user_id = ? AND m.chatbot_id = ? AND m.by_user = 1 AND m.seq > ? \
             AND m.seq <= ? ORDER BY m.seq DESC LIMIT ?",
        )
        .bind(user_id)
        .bind(bot_id)
        .bind(after)
        .bind(seq)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        exchanges.reverse();
        Ok(exchanges)
    }

    /// The messages and replies after `after`, oldest first, up to `limit` rows:
    /// what a memory refresh reads.
    pub async fn rows_after(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<HistoryRow>, sqlx::Error> {
        Ok(Self::read(pool, user_id, bot_id, after, limit, usize::MAX)
            .await?
            .rows)
    }

    /// How many user messages came after `after`, counted up to `enough`, and
    /// how long ago (on the database's clock) the conversation's last row was
    /// written. Two short range reads of the primary key: the cost does not grow
    /// with the conversation, nor with what memory has not covered yet.
    pub async fn activity_after(
        pool: &MySqlPool,
        user_id: UserId,
        bot_id: BotId,
        after: i64,
        enough: u32,
    ) -> Result<(i64, Option<std::time::Duration>), sqlx::Error> {
        let (count, idle_micros): (i64, Option<i64>) = sqlx::query_as(
            "SELECT \
             (SELECT COUNT(*) FROM (SELECT 1 FROM chat_history \
               WHERE user_id = ? AND chatbot_id = ? AND seq > ? AND by_user = 1 \
               ORDER BY seq LIMIT ?) AS unsummarized), \
             (SELECT CAST(TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) AS SIGNED) \
               FROM chat_history WHERE user_id = ? AND chatbot_id = ? \
               ORDER BY seq DESC LIMIT 1)",
        )
        .bind(user_id)
        .bind(bot_id)
        .bind(after)
        .bind(enough.max(1))
        .bind(user_id)
        .bind(bot_id)
        .fetch_one(pool)
        .await?;
        let idle = idle_micros.map(|m| std::time::Duration::from_micros(m.max(0).unsigned_abs()));
        Ok((count, idle))
    }

    /// The row that answers `message_id` (a reply or a failure), once there is one.
    pub async fn find_reply(
        pool: &MySqlPool,
        message_id: &str,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        sqlx::query_as(&format!("{SELECT_HISTORY} WHERE reply_to = ?"))
            .bind(message_id)
            .fetch_optional(pool)
            .await
    }
}
