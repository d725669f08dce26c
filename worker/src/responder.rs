//! Answering one user message, exactly once.
//!
//! The reply's idempotency key is derived from the message it answers, so however
//! many deliveries or workers race on a message, only one `BotReplyGenerated` (or
//! `BotReplyFailed`) can be appended; the losers see `Duplicate` and move on. Older
//! unanswered messages of the same conversation are answered first, so that every
//! reply is generated with the replies before it in its context.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

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
    pub fn is_transient(&self) -> bool {
        matches!(self, RespondError::Database(_) | RespondError::Append(_))
    }
}

#[derive(Clone)]
pub struct Responder {
    store: EventStore,
    relay: OutboxRelay,
    model: Arc<Model>,
    context_budget_chars: usize,
}

impl Responder {
    pub fn new(
        store: EventStore,
        relay: OutboxRelay,
        model: Arc<Model>,
        context_budget_chars: usize,
    ) -> Self {
        Self {
            store,
            relay,
            model,
            context_budget_chars,
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
            let events = self.store.read_stream(&stream_id).await?;
            let conversation = Conversation::from_events(&events)?;
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
            match self
                .store
                .append_to_stream(
                    &stream_id,
                    ExpectedVersion::Any,
                    &[outcome.to_new_event(metadata)?],
                )
                .await
            {
                Ok(recorded) => {
                    tracing::info!(reply_to = %next.message_id, event = outcome.event_type(), "reply recorded");
                    self.relay.publish_now(&recorded).await;
                }
                Err(AppendError::Duplicate(_)) => {
                    tracing::info!(reply_to = %next.message_id, "another delivery answered this message first");
                }
                Err(e) => return Err(e.into()),
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
        let bot = match BotsProjection::find(self.store.pool(), message.bot_id).await? {
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
