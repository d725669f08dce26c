//! A conversation as the worker needs it, read from the `chat_history` read model:
//! which message to answer next, and the turns before it.
//!
//! Its texts are opened here (the read model keeps them sealed).
//!
//! Reading the read model rather than folding the event stream means that
//! - the oldest unanswered message is found however long ago it was posted (a
//!   backlog longer than any window is still answered in order);
//! - an event this worker cannot decode (a newer schema during a rolling deploy)
//!   does not stop it from answering the rest of the conversation.

use sqlx::MySqlPool;

use events::event::{BotId, UserId};
use events::projections::history::Answer;
use events::projections::{
    ChatHistoryProjection, ConversationMemory, Exchange, HistoryRow, MemoryProjection,
};

use events::sealing::{Keyring, SealError};

use crate::prompt::{Role, Turn};

/// Most earlier messages read for one prompt: about what a context budget holds.
const RECENT_EXCHANGES: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationId {
    pub user_id: UserId,
    pub bot_id: BotId,
}

impl ConversationId {
    /// The conversation of a `chat-<user>-<bot>` stream.
    pub fn from_stream(stream_id: &str) -> Option<Self> {
        let (user, bot) = stream_id.strip_prefix("chat-")?.split_once('-')?;
        Some(Self {
            user_id: user.parse().ok()?,
            bot_id: bot.parse().ok()?,
        })
    }

    /// The oldest message that still waits for an outcome.
    pub async fn oldest_pending(
        &self,
        pool: &MySqlPool,
    ) -> Result<Option<HistoryRow>, sqlx::Error> {
        ChatHistoryProjection::oldest_pending(pool, self.user_id, self.bot_id).await
    }

    /// The oldest message that still waits for an outcome, and whether another
    /// waited behind it when it was read: a drain that answers the last one
    /// need not read again to find none (what becomes pending later is handed
    /// to the lease, see `lease`).
    pub async fn next_pending(&self, pool: &MySqlPool) -> Result<NextPending, sqlx::Error> {
        let front = ChatHistoryProjection::pending(pool, self.user_id, self.bot_id, 2).await?;
        let more = front.len() > 1;
        Ok(NextPending {
            message: front.into_iter().next(),
            more,
        })
    }

    /// What the bot remembers of this conversation.
    pub async fn memory(&self, pool: &MySqlPool) -> Result<ConversationMemory, sqlx::Error> {
        MemoryProjection::find(pool, self.user_id, self.bot_id).await
    }

    /// The turns after `after` (the last memory erasure) up to and including
    /// `message`, oldest first (the message itself even when it is older than
    /// the erasure); `None` when the read shows that message
    /// settled meanwhile (stopped, or answered by another holder). A message
    /// the read leaves out (one older than an erasure) is answered all the same:
    /// it is still waiting, and skipping it would leave it waiting forever.
    pub async fn turns_through(
        &self,
        (pool, keyring): (&MySqlPool, &Keyring),
        after: i64,
        message: &HistoryRow,
    ) -> Result<Option<Recent>, SealError> {
        let seq = message.seq;
        let mut exchanges = ChatHistoryProjection::exchanges_through(
            pool,
            self.user_id,
            self.bot_id,
            (after, seq),
            RECENT_EXCHANGES,
        )
        .await?;
        keyring.open_rows(&mut exchanges).await?;
        let settled = exchanges
            .last()
            .is_some_and(|last| last.seq == seq && last.is_settled());
        // A message from before an erasure (regenerated since, or waiting since)
        // is still the turn being answered.
        if exchanges.last().is_none_or(|last| last.seq != seq) {
            exchanges.push(Exchange {
                seq,
                content: keyring
                    .open(&message.content, "content", None)
                    .await?
                    .into_text(),
                created_at: message.created_at,
                reply: None,
                reply_status: None,
            });
        }
        Ok((!settled).then(|| Recent {
            first_seq: exchanges.first().map_or(seq, |first| first.seq),
            turns: turns(&exchanges, seq),
        }))
    }
}

/// The front of a conversation's unanswered messages.
#[derive(Debug, Clone)]
pub struct NextPending {
    pub message: Option<HistoryRow>,
    /// Another message waited behind `message`.
    pub more: bool,
}

/// The turns a prompt is built from, and the seq of the first message among
/// them (what a reply's prompt snapshot records).
#[derive(Debug, Clone, PartialEq)]
pub struct Recent {
    pub first_seq: i64,
    pub turns: Vec<Turn>,
}

/// What the model is told after a reply the user stopped.
pub const CUT_OFF_NOTE: &str = "[The user stopped this reply here; it was cut off.]";

/// Each message followed by its answer; the message at `seq` is the last turn.
/// A stopped reply goes in with the text written before the stop, and a note
/// that it was cut off, so the model neither repeats nor continues it unasked.
pub fn turns(exchanges: &[Exchange], seq: i64) -> Vec<Turn> {
    let mut turns = Vec::with_capacity(exchanges.len() * 2);
    for exchange in exchanges {
        turns.push(Turn {
            role: Role::User,
            content: exchange.content.clone(),
            at: Some(exchange.created_at),
        });
        if exchange.seq == seq {
            break;
        }
        let content = match exchange.answer() {
            Answer::Given(reply) => reply.to_string(),
            Answer::CutOff("") => CUT_OFF_NOTE.to_string(),
            Answer::CutOff(partial) => format!("{partial}\n{CUT_OFF_NOTE}"),
            Answer::None => continue,
        };
        turns.push(Turn {
            role: Role::Assistant,
            content,
            at: None,
        });
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(seq: i64, content: &str, reply: Option<(&str, &str)>) -> Exchange {
        Exchange {
            seq,
            content: content.into(),
            created_at: chrono::NaiveDateTime::default(),
            reply: reply.map(|(r, _)| r.to_string()),
            reply_status: reply.map(|(_, s)| s.to_string()),
        }
    }

    #[test]
    fn answers_follow_their_messages_failures_are_left_out_and_stops_are_noted() {
        let exchanges = [
            exchange(1, "first", Some(("one", "done"))),
            exchange(2, "second", Some(("the model failed", "failed"))),
            exchange(4, "third", Some(("Once upon", "stopped"))),
            exchange(6, "fourth", None),
        ];
        let turns: Vec<(Role, String)> = turns(&exchanges, 6)
            .into_iter()
            .map(|t| (t.role, t.content))
            .collect();
        let cut_off = format!("Once upon\n{CUT_OFF_NOTE}");
        let expected = [
            (Role::User, "first"),
            (Role::Assistant, "one"),
            (Role::User, "second"),
            (Role::User, "third"),
            (Role::Assistant, cut_off.as_str()),
            (Role::User, "fourth"),
        ]
        .map(|(r, c)| (r, c.to_string()));
        assert_eq!(turns, expected.to_vec());
    }
}
