//! Posting a message to a bot: the `chat-<user>-<bot>` stream.

use uuid::Uuid;

use events::event::{
    message_key, stream, BotId, DomainEvent, EventMetadata, MessageSource, UserId,
    UserMessagePosted,
};
use events::projections::ChatHistoryProjection;
use events::store::{AppendError, EventStore, ExpectedVersion, RecordedEvent};

use super::bots::ensure_owned;
use super::{required, DomainError};

pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;

/// A message a user may send: not blank, not longer than the configured limit.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInput(String);

impl MessageInput {
    pub fn parse(input: Option<String>, max_chars: usize) -> Result<Self, DomainError> {
        let input = required(input, "input")?;
        if super::is_blank(&input) {
            return Err(DomainError::Invalid("input must not be empty".into()));
        }
        if input.chars().count() > max_chars {
            return Err(DomainError::TooLong(format!(
                "input is longer than the limit of {max_chars} characters"
            )));
        }
        Ok(Self(input))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostMessage {
    pub user_id: UserId,
    pub bot_id: BotId,
    pub input: MessageInput,
    pub client_msg_id: Option<String>,
}

impl PostMessage {
    pub fn parse(
        user_id: UserId,
        bot_id: Option<i64>,
        input: Option<String>,
        client_msg_id: Option<String>,
        max_input_chars: usize,
    ) -> Result<Self, DomainError> {
        let bot_id = required(bot_id, "chatbot_id")?;
        let input = MessageInput::parse(input, max_input_chars)?;
        let client_msg_id = client_msg_id
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        if client_msg_id
            .as_ref()
            .is_some_and(|id| id.chars().count() > MAX_CLIENT_MSG_ID_CHARS)
        {
            return Err(DomainError::Invalid(format!(
                "client_msg_id must be at most {MAX_CLIENT_MSG_ID_CHARS} characters"
            )));
        }
        Ok(Self {
            user_id,
            bot_id,
            input,
            client_msg_id,
        })
    }
}

/// The outcome of posting.
#[derive(Debug, Clone)]
pub enum Posted {
    /// Recorded now; these events still need publishing.
    New {
        message_id: Uuid,
        events: Vec<RecordedEvent>,
    },
    /// The client retried a message (same `client_msg_id`) recorded earlier.
    Existing { message_id: Uuid },
}

impl Posted {
    pub fn message_id(&self) -> Uuid {
        match self {
            Posted::New { message_id, .. } | Posted::Existing { message_id } => *message_id,
        }
    }
}

/// Caps on unanswered messages (`0` turns one off): past one, a new message is
/// refused until the bot has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnansweredCaps {
    /// `CONVERSATION_MAX_UNANSWERED`.
    pub conversation: u32,
    /// `USER_MAX_UNANSWERED`, across all of the user's bots.
    pub user: u32,
}

impl UnansweredCaps {
    /// Refuses a message to a bot that is not the user's (deleted, or never
    /// theirs), and a new message past a cap. A retry of a message accepted
    /// earlier (its `client_msg_id` is recorded) is never refused by a cap: it
    /// is answered as before. Two posts racing at the cap may both pass it: a
    /// cap, not a quota.
    async fn admit(&self, store: &EventStore, command: &PostMessage) -> Result<(), DomainError> {
        if self.conversation == 0 && self.user == 0 {
            return ensure_owned(store, command.user_id, command.bot_id).await;
        }
        let (in_conversation, in_all) = ChatHistoryProjection::count_unanswered(
            store.pool(),
            (command.user_id, command.bot_id),
            (self.conversation, self.user),
        )
        .await?
        .ok_or(DomainError::BotNotFound)?;
        let checks = [
            (self.conversation, in_conversation, "in this conversation"),
            (self.user, in_all, "across your bots"),
        ];
        for (cap, count, scope) in checks {
            if cap == 0 || count < i64::from(cap) {
                continue;
            }
            let key = command
                .client_msg_id
                .as_ref()
                .map(|id| message_key(command.user_id, command.bot_id, id));
            if let Some(key) = key {
                if store.find_by_idempotency_key(&key).await?.is_some() {
                    return Ok(());
                }
            }
            return Err(DomainError::TooManyUnanswered { scope, count });
        }
        Ok(())
    }
}

pub async fn post_message(
    store: &EventStore,
    command: PostMessage,
    caps: UnansweredCaps,
    metadata: EventMetadata,
) -> Result<Posted, DomainError> {
    caps.admit(store, &command).await?;
    let message_id = Uuid::now_v7();
    let content = command.input.0;
    let event = DomainEvent::UserMessagePosted(UserMessagePosted {
        message_id,
        user_id: command.user_id,
        bot_id: command.bot_id,
        content: content.clone(),
        client_msg_id: command.client_msg_id.clone(),
        source: MessageSource::Api,
    });
    match store
        .append_to_stream(
            &stream::chat(command.user_id, command.bot_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata)?],
        )
        .await
    {
        Ok(events) => Ok(Posted::New { message_id, events }),
        Err(AppendError::Duplicate(key)) => {
            let mut existing = store
                .find_by_idempotency_key(&key)
                .await?
                .ok_or(DomainError::Append(AppendError::Duplicate(key)))?;
            if let Some(keyring) = store.keyring() {
                keyring.open_event(&mut existing).await?;
            }
            match DomainEvent::decode(&existing) {
                // A retry must be the same message: a key reused for other content
                // is a client bug, and answering with the first reply would hide it.
                Ok(DomainEvent::UserMessagePosted(m)) if m.content != content => {
                    Err(DomainError::KeyReused(format!(
                        "client_msg_id {:?} was already used for a different message; \
                         use a new client_msg_id for new content",
                        command.client_msg_id.unwrap_or_default()
                    )))
                }
                Ok(DomainEvent::UserMessagePosted(m)) => Ok(Posted::Existing {
                    message_id: m.message_id,
                }),
                _ => Err(DomainError::Invalid(
                    "client_msg_id is already used by another event".into(),
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_checked_once_at_the_edge() {
        assert!(matches!(
            MessageInput::parse(None, 10),
            Err(DomainError::Invalid(_))
        ));
        assert!(matches!(
            MessageInput::parse(Some(" \n".into()), 10),
            Err(DomainError::Invalid(_))
        ));
        assert!(matches!(
            MessageInput::parse(Some("x".repeat(11)), 10),
            Err(DomainError::TooLong(_))
        ));
        // The limit counts characters, not bytes.
        assert!(MessageInput::parse(Some("你".repeat(10)), 10).is_ok());
    }
}
