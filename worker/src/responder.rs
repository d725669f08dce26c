//! Answering one user message, exactly once.
//!
//! The reply's idempotency key is derived from the message it answers, so however
//! many deliveries or workers race on a message, only one `BotReplyGenerated` (or
//! `BotReplyFailed`) can be appended; the losers see `Duplicate` and move on. Older
//! unanswered messages of the same conversation are answered first, so that every
//! reply is generated with the replies before it in its context.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::bus::Backoff;
use events::db::is_unavailable;
use events::event::{
    stream, BotReplyFailed, BotReplyGenerated, DecodeError, DomainEvent, EventMetadata,
    UserMessagePosted,
};
use events::outbox::OutboxRelay;
use events::projections::BotsProjection;
use events::store::{AppendError, EventStore, ExpectedVersion};

use crate::conversation::Conversation;
use crate::model::Model;
use crate::prompt::{build_prompt, BotProfile};

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The database is unreachable or failed: try the delivery again later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    /// The stream holds an event this worker cannot read: retrying will not help.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] serde_json::Error),
}

impl RespondError {
    /// Worth another try later (the delivery is requeued), as opposed to a message
    /// that can never be answered (dead-lettered).
    pub fn is_transient(&self) -> bool {
        matches!(self, RespondError::Database(_) | RespondError::Append(_))
    }

    /// The database is unreachable: wait it out rather than spend deliveries.
    fn is_outage(&self) -> bool {
        match self {
            RespondError::Database(e) | RespondError::Append(AppendError::Database(e)) => {
                is_unavailable(e)
            }
            _ => false,
        }
    }
}

/// How much of a conversation is read to answer a message: about as many turns as
/// a prompt's context budget holds, and reading more costs every message.
const RECENT_EVENTS: u32 = 100;

/// Other database errors (a deadlock, say) are retried this often in place.
const IN_PLACE_ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct Responder {
    store: EventStore,
    relay: OutboxRelay,
    model: Arc<Model>,
    context_budget_chars: usize,
    shutdown: CancellationToken,
}

impl Responder {
    pub fn new(
        store: EventStore,
        relay: OutboxRelay,
        model: Arc<Model>,
        context_budget_chars: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            relay,
            model,
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
        message: &UserMessagePosted,
        correlation_id: Option<String>,
    ) -> Result<(), RespondError> {
        let stream_id = stream::chat(message.user_id, message.bot_id);
        loop {
            // The recent part of the conversation is all a prompt can use; the whole
            // stream is read only for a message older than that.
            let recent = self
                .persist("read the conversation", || async {
                    Ok(self
                        .store
                        .read_stream_tail(&stream_id, RECENT_EVENTS)
                        .await?)
                })
                .await?;
            let mut conversation = Conversation::from_events(&recent)?;
            if !conversation.contains(message.message_id) && recent.len() as u32 == RECENT_EVENTS {
                let events = self
                    .persist("read the whole conversation", || async {
                        Ok(self.store.read_stream(&stream_id).await?)
                    })
                    .await?;
                conversation = Conversation::from_events(&events)?;
            }
            if !conversation.contains(message.message_id) {
                tracing::warn!(message_id = %message.message_id, "message not found in its stream; nothing to answer");
                return Ok(());
            }
            let Some(next) = conversation.next_unanswered_up_to(message.message_id) else {
                return Ok(());
            };
            let outcome = self.outcome_for(next, &conversation).await?;
            let metadata = EventMetadata {
                correlation_id: correlation_id.clone(),
                causation_id: Some(next.message_id),
                user_id: Some(next.user_id),
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
                    tracing::info!(reply_to = %next.message_id, event = outcome.event_type(), "reply recorded");
                    self.relay.publish_now(&recorded).await;
                }
                None => {
                    tracing::info!(reply_to = %next.message_id, "another delivery answered this message first");
                }
            }
        }
    }

    /// Calls the model (or explains why not) for one message.
    async fn outcome_for(
        &self,
        message: &UserMessagePosted,
        conversation: &Conversation,
    ) -> Result<DomainEvent, RespondError> {
        let failed = |reason: String| {
            DomainEvent::BotReplyFailed(BotReplyFailed {
                message_id: Uuid::now_v7(),
                reply_to: message.message_id,
                user_id: message.user_id,
                bot_id: message.bot_id,
                reason,
            })
        };
        let bot = self
            .persist("load the bot", || async {
                Ok(BotsProjection::find(self.store.pool(), message.bot_id).await?)
            })
            .await?;
        let bot = match bot {
            Some(bot) if bot.deleted_at.is_none() && bot.user_id == message.user_id => bot,
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
        let prompt = build_prompt(
            &profile,
            None,
            &conversation.turns_until(message.message_id),
            Utc::now(),
            self.context_budget_chars,
        );
        Ok(match self.model.complete(&prompt).await {
            Ok(content) => DomainEvent::BotReplyGenerated(BotReplyGenerated {
                message_id: Uuid::now_v7(),
                reply_to: message.message_id,
                user_id: message.user_id,
                bot_id: message.bot_id,
                content,
                model: self.model.name().to_string(),
            }),
            Err(failure) => failed(failure.0),
        })
    }
}
