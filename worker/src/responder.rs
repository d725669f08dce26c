//! Answering one user message, exactly once, with one model call.
//!
//! - Exactly once: the reply's idempotency key is derived from the message it
//!   answers, so however many deliveries or workers race on a message, only one
//!   `BotReplyGenerated` (or `BotReplyFailed`) can be appended.
//! - One model call: a delivery first takes the conversation's lease (see
//!   [`crate::lease`]), so only one delivery at a time calls the model for a
//!   conversation, and it answers the oldest unanswered messages up to its own, in
//!   order. The deliveries behind it mostly find their message answered already.
//! - In order: the next message is found in the `chat_history` read model, however
//!   old it is, and every reply is generated with the replies before it in context.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::bus::Backoff;
use events::db::{is_lock_contention, is_unavailable};
use events::event::{
    stream, BotId, BotReplyFailed, BotReplyGenerated, DomainEvent, EventMetadata, UserId,
};
use events::outbox::OutboxRelay;
use events::projections::{
    BotsProjection, ChatHistoryProjection, ConversationMemory, HistoryRow, MessageStatus,
};
use events::store::{AppendError, EventStore, ExpectedVersion};

use crate::conversation::ConversationId;
use crate::lease::ConversationLeases;
use crate::model::Model;
use crate::prompt::{build_prompt, BotProfile, Memory, Turn};

/// What the worker needs of a delivered `UserMessagePosted`, whatever its schema
/// version: any version that still names these three fields can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct MessageRef {
    pub message_id: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
}

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The database is unreachable or failed: try the delivery again later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the read model holds a malformed message id {0:?}")]
    MalformedId(String),
    /// The worker is shutting down: the message goes back to the queue.
    #[error("the worker is stopping")]
    Stopping,
}

impl RespondError {
    /// Worth another try later (the delivery is requeued), as opposed to a message
    /// that can never be answered (dead-lettered).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RespondError::Database(_) | RespondError::Append(_) | RespondError::Stopping
        )
    }

    /// The database is unreachable or contended: wait it out rather than spend
    /// deliveries.
    fn is_outage(&self) -> bool {
        match self {
            RespondError::Database(e) | RespondError::Append(AppendError::Database(e)) => {
                is_unavailable(e) || is_lock_contention(e)
            }
            _ => false,
        }
    }
}

/// Other database errors (a deadlock, say) are retried this often in place.
const IN_PLACE_ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct Responder {
    store: EventStore,
    relay: OutboxRelay,
    model: Arc<Model>,
    leases: ConversationLeases,
    context_budget_chars: usize,
    shutdown: CancellationToken,
}

impl Responder {
    pub fn new(
        store: EventStore,
        relay: OutboxRelay,
        model: Arc<Model>,
        leases: ConversationLeases,
        context_budget_chars: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            relay,
            model,
            leases,
            context_budget_chars,
            shutdown,
        }
    }

    /// Runs a database step, waiting out an outage (until shutdown) so that a
    /// reply the model already produced is not lost and the model is not called
    /// again for it.
    async fn persist<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T, RespondError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RespondError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let mut attempts = 0;
        loop {
            attempts += 1;
            match step().await {
                Err(e)
                    if !self.shutdown.is_cancelled()
                        && (e.is_outage()
                            || (e.is_transient() && attempts < IN_PLACE_ATTEMPTS)) =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, step = what, retry_in_ms = delay.as_millis() as u64,
                        "database step failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Makes sure `message` (and any older unanswered message before it) has an
    /// outcome. Safe to call any number of times, from any number of workers.
    pub async fn answer(
        &self,
        message: &MessageRef,
        correlation_id: Option<String>,
    ) -> Result<(), RespondError> {
        let id = message.message_id.to_string();
        let pool = self.store.pool();
        let row = self
            .persist("find the message", || async {
                Ok(ChatHistoryProjection::find_message(pool, &id).await?)
            })
            .await?;
        let Some(row) = row else {
            tracing::warn!("message not found in the history; nothing to answer");
            return Ok(());
        };
        if row.status != MessageStatus::Pending.as_str() {
            return Ok(());
        }
        let conversation = ConversationId {
            user_id: message.user_id,
            bot_id: message.bot_id,
        };
        let stream_id = stream::chat(message.user_id, message.bot_id);
        let lease = self
            .persist("take the conversation's lease", || async {
                Ok(self.leases.acquire(&stream_id, &self.shutdown).await?)
            })
            .await?
            .ok_or(RespondError::Stopping)?;
        let answered = self
            .answer_through(conversation, row.seq, correlation_id)
            .await;
        lease.release().await;
        answered
    }

    /// Answers the conversation's unanswered messages, oldest first, up to the one
    /// at `seq`. Runs under the conversation's lease.
    async fn answer_through(
        &self,
        conversation: ConversationId,
        seq: i64,
        correlation_id: Option<String>,
    ) -> Result<(), RespondError> {
        let pool = self.store.pool();
        let stream_id = stream::chat(conversation.user_id, conversation.bot_id);
        loop {
            let next = self
                .persist("find the oldest unanswered message", || async {
                    Ok(conversation.oldest_pending(pool).await?)
                })
                .await?;
            let Some(next) = next.filter(|next| next.seq <= seq) else {
                return Ok(());
            };
            let reply_to = Uuid::parse_str(&next.message_id)
                .map_err(|_| RespondError::MalformedId(next.message_id.clone()))?;
            let (memory, turns) = self
                .persist("read the conversation and its memory", || async {
                    let memory = conversation.memory(pool).await?;
                    let turns = conversation
                        .turns_through(pool, memory.erased_through, next.seq)
                        .await?;
                    Ok((memory, turns))
                })
                .await?;
            let outcome = self
                .outcome_for(conversation, reply_to, &next, &memory, &turns)
                .await?;
            let metadata = EventMetadata {
                correlation_id: correlation_id.clone(),
                causation_id: Some(reply_to),
                user_id: Some(conversation.user_id),
            };
            let event = outcome.to_new_event(metadata)?;
            let appended = self
                .persist("record the reply", || async {
                    let append = self
                        .store
                        .append_to_stream(
                            &stream_id,
                            ExpectedVersion::Any,
                            std::slice::from_ref(&event),
                        )
                        .await;
                    match append {
                        Err(AppendError::Duplicate(_)) => Ok(None),
                        other => Ok(Some(other?)),
                    }
                })
                .await?;
            match appended {
                Some(recorded) => {
                    tracing::info!(%reply_to, event = outcome.event_type(), "reply recorded");
                    self.relay.publish_now(&recorded).await;
                }
                None => {
                    tracing::info!(%reply_to, "another delivery answered this message first");
                }
            }
        }
    }

    /// Calls the model (or explains why not) for one message.
    async fn outcome_for(
        &self,
        conversation: ConversationId,
        reply_to: Uuid,
        message: &HistoryRow,
        memory: &ConversationMemory,
        turns: &[Turn],
    ) -> Result<DomainEvent, RespondError> {
        let failed = |reason: String| {
            DomainEvent::BotReplyFailed(BotReplyFailed {
                message_id: Uuid::now_v7(),
                reply_to,
                user_id: conversation.user_id,
                bot_id: conversation.bot_id,
                reason,
            })
        };
        let pool = self.store.pool();
        let bot = self
            .persist("load the bot", || async {
                Ok(BotsProjection::find(pool, conversation.bot_id).await?)
            })
            .await?;
        let bot = match bot {
            Some(bot) if bot.deleted_at.is_none() && bot.user_id == conversation.user_id => bot,
            // Posted just as the bot was deleted: answered without calling the model.
            _ => {
                return Ok(failed(
                    "This chatbot has been deleted, so it cannot reply.".into(),
                ))
            }
        };
        let profile = BotProfile {
            kind: bot.kind(),
            name: bot.chatbot_name,
            persona: bot.chatbot_persona,
        };
        let remembered = Memory {
            summary: memory.summary.clone(),
            user_profile: memory.profile.clone(),
        };
        let prompt = build_prompt(
            &profile,
            Some(&remembered),
            turns,
            Utc::now(),
            self.context_budget_chars,
        );
        tracing::debug!(seq = message.seq, "calling the model");
        let (sink, forwarding) = crate::deltas::forward(
            self.relay.publisher().clone(),
            reply_to,
            conversation.user_id,
            conversation.bot_id,
        );
        let completed = self.model.complete(&prompt, Some(&sink)).await;
        // The forwarding finishes on its own (each delta publish is bounded): the
        // reply is recorded without waiting for deltas, and the apis ignore any
        // delta that arrives after the final event.
        drop(sink);
        drop(forwarding);
        Ok(match completed {
            Ok(content) => DomainEvent::BotReplyGenerated(BotReplyGenerated {
                message_id: Uuid::now_v7(),
                reply_to,
                user_id: conversation.user_id,
                bot_id: conversation.bot_id,
                content,
                model: self.model.name().to_string(),
            }),
            Err(failure) => failed(failure.0),
        })
    }

    /// Records that `message` was given up on (dead-lettered), unless it already has
    /// an outcome, so that nobody waits for it forever.
    pub async fn give_up(&self, message: &MessageRef, reason: &str) -> Result<(), RespondError> {
        let id = message.message_id.to_string();
        match ChatHistoryProjection::find_message(self.store.pool(), &id).await? {
            Some(row) if row.status == MessageStatus::Pending.as_str() => {}
            Some(_) => return Ok(()),
            None => {
                tracing::error!(message_id = %id, "a dead-lettered message is not in any history; dropping it");
                return Ok(());
            }
        }
        let event = DomainEvent::BotReplyFailed(BotReplyFailed {
            message_id: Uuid::now_v7(),
            reply_to: message.message_id,
            user_id: message.user_id,
            bot_id: message.bot_id,
            reason: reason.to_string(),
        })
        .to_new_event(EventMetadata {
            correlation_id: None,
            causation_id: Some(message.message_id),
            user_id: Some(message.user_id),
        })?;
        let stream_id = stream::chat(message.user_id, message.bot_id);
        match self
            .store
            .append_to_stream(&stream_id, ExpectedVersion::Any, &[event])
            .await
        {
            Ok(recorded) => {
                tracing::warn!(message_id = %message.message_id, %reason, "gave up on a message; recorded its failure");
                self.relay.publish_now(&recorded).await;
                Ok(())
            }
            Err(AppendError::Duplicate(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
