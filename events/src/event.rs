//! The domain events and the streams they live in.
//!
//! Streams: `bot-<bot_id>` holds `BotCreated` and `BotDeleted`;
//! `chat-<user_id>-<bot_id>` holds one conversation's `UserMessagePosted`, its
//! outcomes (`BotReplyGenerated`, `BotReplyFailed`, `BotReplyStopped`), the
//! user's controls (`ReplyRegenerationRequested`, `ConversationCleared`), and what
//! the bot remembers of it (`ConversationSummarized`, `UserProfileUpdated`,
//! `MemoryErased`), and the costs of dropped calls (`ModelCallStopped`);
//! `session-<session_id>` holds one login's `SessionStarted`, `SessionRefreshed`
//! and `SessionRevoked`; `user-<user_id>` holds `UserErased`; `maintenance`
//! holds what operators' tools did to the log (`HistoryEncrypted`).
//!
//! Events are immutable once written, with two sanctioned exceptions for
//! texts written in the clear by releases before sealing: erasure blanks an
//! erased user's (see `api::domain::erasure`), and `worker replay
//! encrypt-history` seals them (see [`crate::sealing`]). Each carries the `schema_version` it was
//! written with; [`DomainEvent::decode`] brings older shapes up to today's through
//! [`crate::upcast`], so the whole log still replays after a type changes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::record::EventMetadata;
use crate::record::{NewEvent, RecordedEvent};

pub type UserId = i64;
pub type BotId = i64;

/// Stream names, built in one place so that writers and readers agree.
pub mod stream {
    use super::{BotId, UserId};

    pub fn bot(bot_id: BotId) -> String {
        format!("bot-{bot_id}")
    }

    pub fn chat(user_id: UserId, bot_id: BotId) -> String {
        format!("chat-{user_id}-{bot_id}")
    }

    pub fn session(session_id: uuid::Uuid) -> String {
        format!("session-{session_id}")
    }

    /// What operators' tools did to the log.
    pub const MAINTENANCE: &str = "maintenance";

    pub fn user(user_id: UserId) -> String {
        format!("user-{user_id}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum BotKind {
    /// A plain assistant (`chatbot_type` 0).
    Assistant,
    /// Speaks in character as its persona (`chatbot_type` 1).
    Cosplay,
}

impl From<BotKind> for u8 {
    fn from(kind: BotKind) -> u8 {
        match kind {
            BotKind::Assistant => 0,
            BotKind::Cosplay => 1,
        }
    }
}

impl TryFrom<u8> for BotKind {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(BotKind::Assistant),
            1 => Ok(BotKind::Cosplay),
            other => Err(format!("chatbot_type must be 0 or 1, got {other}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotCreated {
    pub bot_id: BotId,
    pub user_id: UserId,
    pub name: String,
    pub kind: BotKind,
    /// Empty for an assistant.
    pub persona: String,
}

/// A bot's settings changed: only the fields given (`Some`) changed, the rest
/// stand. A model setting that was never chosen is the worker's default
/// (`OPENAI_MODEL`, the model's own temperature, no token cap); once chosen, it
/// can be changed but not unset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BotUpdated {
    pub bot_id: BotId,
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BotKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// The model to answer with, one of the operator's `ALLOWED_MODELS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// A cap on each reply's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reply_tokens: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotDeleted {
    pub bot_id: BotId,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMessagePosted {
    pub message_id: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    pub content: String,
    /// The client's own id for this message, when it sent one (idempotent retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Where the message came from (schema v2; older events read as `Unrecorded`).
    pub source: MessageSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageSource {
    /// Posted through the HTTP API.
    Api,
    /// Written in bulk by a tool (seeding, an import).
    Import,
    /// Written by a release that did not record it.
    Unrecorded,
}

/// What one model call cost, and how long it took: the model, the tokens of the
/// attempt that answered (as the provider reported them, or counted here when it
/// reported none), and the attempts that failed before it, which are paid too.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Counted by the worker's tokenizer: the provider reported no usage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// The whole call, from its first attempt to its last answer, retries
    /// and their pauses included.
    pub latency_ms: u64,
    /// From the last attempt's start to its first text (a streamed call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Attempts made: 1, or more after retries.
    pub attempts: u32,
    /// What the failed attempts before the last one used.
    #[serde(default)]
    pub failed_prompt_tokens: u32,
    #[serde(default)]
    pub failed_completion_tokens: u32,
}

impl Usage {
    /// Every token paid for: the last attempt's and the failed ones'.
    pub fn billed(&self) -> (u64, u64) {
        (
            u64::from(self.prompt_tokens) + u64::from(self.failed_prompt_tokens),
            u64::from(self.completion_tokens) + u64::from(self.failed_completion_tokens),
        )
    }
}

/// What produced a reply's prompt, enough to build the very same prompt again
/// from the log (`worker replay explain`): the bot as of a version of its
/// stream, the memory texts by what they covered, the turns by their range in
/// the conversation, the settings, the time, and digests of what was sent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PromptSnapshot {
    /// The bot's stream version its name, persona and settings were read at.
    pub bot_version: i64,
    /// The `covers_version` of the summary and the profile in the prompt.
    pub summary_covers: Option<i64>,
    pub profile_covers: Option<i64>,
    /// The conversation's turns came from after `after_seq` (an erasure or a
    /// clear) up to `last_seq`, the message answered, from `first_seq` on.
    pub after_seq: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    /// Turns read, and how many of the oldest the context budget left out.
    pub turns_read: u32,
    pub turns_trimmed: u32,
    pub context_budget_chars: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The "now" the prompt was built with.
    pub now: chrono::DateTime<chrono::Utc>,
    /// SHA-256 (hex) of the messages sent, of the system message alone, and of
    /// the turns alone.
    pub sha256: String,
    pub system_sha256: String,
    pub turns_sha256: String,
}

/// Which answer to a message an outcome is: 1 for the first, one more for each
/// regeneration. Events written before regeneration existed read as 1, and an
/// outcome of attempt 1 is stored without the field.
pub type Attempt = u32;

pub const FIRST_ATTEMPT: Attempt = 1;

fn first_attempt() -> Attempt {
    FIRST_ATTEMPT
}

fn is_first_attempt(attempt: &Attempt) -> bool {
    *attempt == FIRST_ATTEMPT
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotReplyGenerated {
    pub message_id: Uuid,
    /// The `UserMessagePosted` this answers; at most one outcome exists per
    /// message and attempt.
    pub reply_to: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    pub content: String,
    pub model: String,
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: Attempt,
    /// Schema v2; `None`: unrecorded (written before usage was).
    pub usage: Option<Usage>,
    /// Schema v2; `None`: unrecorded.
    #[serde(default)]
    pub prompt: Option<Box<PromptSnapshot>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotReplyFailed {
    pub message_id: Uuid,
    pub reply_to: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    /// What went wrong, worded for the person who sent the message.
    pub reason: String,
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: Attempt,
    /// What the failed attempts used (schema v2; `None`: no model call, or
    /// unrecorded).
    pub usage: Option<Usage>,
}

/// The user stopped the reply to `reply_to` while it was being written, or
/// before it was started. It is that attempt's outcome (a reply finished
/// meanwhile makes it a duplicate), so the reply can never also be recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotReplyStopped {
    pub message_id: Uuid,
    pub reply_to: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    /// The text written before the stop; empty when the model had not started.
    pub content: String,
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: Attempt,
}

/// A worker dropped its model call for a reply the user stopped (the api
/// recorded the stop, `BotReplyStopped`, at once): what the call had cost by
/// then, which only the worker knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCallStopped {
    pub reply_to: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: Attempt,
    pub usage: Usage,
}

/// The user asked again for a reply to `message_id`, the conversation's last
/// message: its earlier outcome leaves the history (not the log), and the
/// message waits for attempt `attempt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyRegenerationRequested {
    pub message_id: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    pub attempt: Attempt,
}

/// The user cleared the conversation: nothing before this event's own stream
/// version is shown or prompted again (the log keeps it). With `forget_memory`,
/// what the bot remembered goes too, as with `MemoryErased`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationCleared {
    pub user_id: UserId,
    pub bot_id: BotId,
    #[serde(default)]
    pub forget_memory: bool,
}

/// A rolling summary of what the user told the bot, through `covers_version` of the
/// chat stream. It replaces an earlier summary only if it covers more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummarized {
    pub user_id: UserId,
    pub bot_id: BotId,
    pub summary: String,
    pub covers_version: i64,
    /// Schema v2; `None`: unrecorded.
    pub usage: Option<Usage>,
}

/// A short description of the user, through `covers_version` of the chat stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProfileUpdated {
    pub user_id: UserId,
    pub bot_id: BotId,
    pub profile: String,
    pub covers_version: i64,
    /// Schema v2; `None`: unrecorded.
    pub usage: Option<Usage>,
}

/// The user asked the bot to forget: nothing at or before this event's own stream
/// version is remembered again, by any job or prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryErased {
    pub user_id: UserId,
    pub bot_id: BotId,
}

/// The user deleted their account: every read-model row of theirs is gone, and
/// their texts in the log are unreadable (their keys destroyed, plaintext
/// blanked). It holds no personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserErased {
    pub user_id: UserId,
}

/// `worker replay encrypt-history` sealed the personal texts that earlier
/// releases wrote in the clear: what it did, in counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEncrypted {
    /// The log was sealed through this global position.
    pub through_position: i64,
    /// Events with a text sealed by this run.
    pub events_sealed: u64,
    /// Texts sealed by this run.
    pub fields_sealed: u64,
    /// Texts sealed by every run so far.
    pub fields_sealed_in_all: u64,
}

/// A login: the refresh token it issued may be spent once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub user_id: UserId,
    /// The `jti` of the one refresh token this session may spend next.
    pub refresh_jti: String,
}

/// A refresh token was spent and a new one issued in its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub user_id: UserId,
    pub spent_jti: String,
    pub refresh_jti: String,
}

/// No token of this session works any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub session_id: Uuid,
    pub user_id: UserId,
    /// `logout`, `password changed`, `refresh token reused`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    BotCreated(BotCreated),
    BotUpdated(BotUpdated),
    BotDeleted(BotDeleted),
    UserMessagePosted(UserMessagePosted),
    BotReplyGenerated(BotReplyGenerated),
    BotReplyFailed(BotReplyFailed),
    BotReplyStopped(BotReplyStopped),
    ModelCallStopped(ModelCallStopped),
    ReplyRegenerationRequested(ReplyRegenerationRequested),
    ConversationCleared(ConversationCleared),
    SessionStarted(SessionStarted),
    SessionRefreshed(SessionRefreshed),
    SessionRevoked(SessionRevoked),
    ConversationSummarized(ConversationSummarized),
    UserProfileUpdated(UserProfileUpdated),
    MemoryErased(MemoryErased),
    UserErased(UserErased),
    HistoryEncrypted(HistoryEncrypted),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Upcast(#[from] crate::upcast::UpcastError),
    #[error("unknown event type {event_type} (schema version {schema_version})")]
    Unknown {
        event_type: String,
        schema_version: u16,
    },
    #[error("event {event_type} has a malformed payload: {source}")]
    Payload {
        event_type: String,
        source: serde_json::Error,
    },
}

impl DomainEvent {
    pub const USER_MESSAGE_POSTED: &'static str = "UserMessagePosted";
    pub const BOT_REPLY_GENERATED: &'static str = "BotReplyGenerated";
    pub const BOT_REPLY_FAILED: &'static str = "BotReplyFailed";
    pub const BOT_REPLY_STOPPED: &'static str = "BotReplyStopped";
    pub const MODEL_CALL_STOPPED: &'static str = "ModelCallStopped";
    pub const REPLY_REGENERATION_REQUESTED: &'static str = "ReplyRegenerationRequested";
    pub const CONVERSATION_CLEARED: &'static str = "ConversationCleared";
    pub const BOT_DELETED: &'static str = "BotDeleted";
    pub const BOT_UPDATED: &'static str = "BotUpdated";
    pub const SESSION_STARTED: &'static str = "SessionStarted";
    pub const SESSION_REFRESHED: &'static str = "SessionRefreshed";
    pub const SESSION_REVOKED: &'static str = "SessionRevoked";
    pub const CONVERSATION_SUMMARIZED: &'static str = "ConversationSummarized";
    pub const USER_PROFILE_UPDATED: &'static str = "UserProfileUpdated";
    pub const MEMORY_ERASED: &'static str = "MemoryErased";
    pub const USER_ERASED: &'static str = "UserErased";
    pub const HISTORY_ENCRYPTED: &'static str = "HistoryEncrypted";

    pub fn event_type(&self) -> &'static str {
        match self {
            DomainEvent::BotCreated(_) => "BotCreated",
            DomainEvent::BotUpdated(_) => Self::BOT_UPDATED,
            DomainEvent::BotDeleted(_) => Self::BOT_DELETED,
            DomainEvent::UserMessagePosted(_) => Self::USER_MESSAGE_POSTED,
            DomainEvent::BotReplyGenerated(_) => Self::BOT_REPLY_GENERATED,
            DomainEvent::BotReplyFailed(_) => Self::BOT_REPLY_FAILED,
            DomainEvent::BotReplyStopped(_) => Self::BOT_REPLY_STOPPED,
            DomainEvent::ModelCallStopped(_) => Self::MODEL_CALL_STOPPED,
            DomainEvent::ReplyRegenerationRequested(_) => Self::REPLY_REGENERATION_REQUESTED,
            DomainEvent::ConversationCleared(_) => Self::CONVERSATION_CLEARED,
            DomainEvent::SessionStarted(_) => Self::SESSION_STARTED,
            DomainEvent::SessionRefreshed(_) => Self::SESSION_REFRESHED,
            DomainEvent::SessionRevoked(_) => Self::SESSION_REVOKED,
            DomainEvent::ConversationSummarized(_) => Self::CONVERSATION_SUMMARIZED,
            DomainEvent::UserProfileUpdated(_) => Self::USER_PROFILE_UPDATED,
            DomainEvent::MemoryErased(_) => Self::MEMORY_ERASED,
            DomainEvent::UserErased(_) => Self::USER_ERASED,
            DomainEvent::HistoryEncrypted(_) => Self::HISTORY_ENCRYPTED,
        }
    }

    /// The user whose data the event is about; `None` for an operator's.
    pub fn user_id(&self) -> Option<UserId> {
        Some(match self {
            DomainEvent::BotCreated(e) => e.user_id,
            DomainEvent::BotUpdated(e) => e.user_id,
            DomainEvent::BotDeleted(e) => e.user_id,
            DomainEvent::UserMessagePosted(e) => e.user_id,
            DomainEvent::BotReplyGenerated(e) => e.user_id,
            DomainEvent::BotReplyFailed(e) => e.user_id,
            DomainEvent::BotReplyStopped(e) => e.user_id,
            DomainEvent::ModelCallStopped(e) => e.user_id,
            DomainEvent::ReplyRegenerationRequested(e) => e.user_id,
            DomainEvent::ConversationCleared(e) => e.user_id,
            DomainEvent::SessionStarted(e) => e.user_id,
            DomainEvent::SessionRefreshed(e) => e.user_id,
            DomainEvent::SessionRevoked(e) => e.user_id,
            DomainEvent::ConversationSummarized(e) => e.user_id,
            DomainEvent::UserProfileUpdated(e) => e.user_id,
            DomainEvent::MemoryErased(e) => e.user_id,
            DomainEvent::UserErased(e) => e.user_id,
            DomainEvent::HistoryEncrypted(_) => return None,
        })
    }

    /// The schema version written for new events of this type.
    pub fn schema_version(&self) -> u16 {
        crate::upcast::current_version(self.event_type())
    }

    /// The key that makes appending this event idempotent, if it must be.
    pub fn idempotency_key(&self) -> Option<String> {
        match self {
            DomainEvent::UserMessagePosted(e) => e
                .client_msg_id
                .as_ref()
                .map(|id| message_key(e.user_id, e.bot_id, id)),
            DomainEvent::BotReplyGenerated(e) => Some(reply_key(e.reply_to, e.attempt)),
            DomainEvent::BotReplyFailed(e) => Some(reply_key(e.reply_to, e.attempt)),
            DomainEvent::BotReplyStopped(e) => Some(reply_key(e.reply_to, e.attempt)),
            DomainEvent::ModelCallStopped(e) => {
                Some(format!("stopped-call:{}:{}", e.reply_to, e.attempt))
            }
            // Two regenerations racing for the same attempt: one is recorded.
            DomainEvent::ReplyRegenerationRequested(e) => {
                Some(format!("regenerate:{}:{}", e.message_id, e.attempt))
            }
            // A refresh token is spent once: a second spend of the same one is a
            // duplicate, which the session treats as reuse.
            DomainEvent::SessionRefreshed(e) => {
                Some(format!("refresh:{}:{}", e.session_id, e.spent_jti))
            }
            // A repeated memory job records the same texts once.
            DomainEvent::ConversationSummarized(e) => Some(format!(
                "summary:{}:{}:{}",
                e.user_id, e.bot_id, e.covers_version
            )),
            DomainEvent::UserProfileUpdated(e) => Some(format!(
                "profile:{}:{}:{}",
                e.user_id, e.bot_id, e.covers_version
            )),
            DomainEvent::BotCreated(_)
            | DomainEvent::BotUpdated(_)
            | DomainEvent::BotDeleted(_)
            | DomainEvent::SessionStarted(_)
            | DomainEvent::SessionRevoked(_)
            | DomainEvent::MemoryErased(_)
            | DomainEvent::ConversationCleared(_)
            | DomainEvent::UserErased(_)
            | DomainEvent::HistoryEncrypted(_) => None,
        }
    }

    fn payload(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            DomainEvent::BotCreated(e) => serde_json::to_value(e),
            DomainEvent::BotUpdated(e) => serde_json::to_value(e),
            DomainEvent::BotDeleted(e) => serde_json::to_value(e),
            DomainEvent::UserMessagePosted(e) => serde_json::to_value(e),
            DomainEvent::BotReplyGenerated(e) => serde_json::to_value(e),
            DomainEvent::BotReplyFailed(e) => serde_json::to_value(e),
            DomainEvent::BotReplyStopped(e) => serde_json::to_value(e),
            DomainEvent::ModelCallStopped(e) => serde_json::to_value(e),
            DomainEvent::ReplyRegenerationRequested(e) => serde_json::to_value(e),
            DomainEvent::ConversationCleared(e) => serde_json::to_value(e),
            DomainEvent::SessionStarted(e) => serde_json::to_value(e),
            DomainEvent::SessionRefreshed(e) => serde_json::to_value(e),
            DomainEvent::SessionRevoked(e) => serde_json::to_value(e),
            DomainEvent::ConversationSummarized(e) => serde_json::to_value(e),
            DomainEvent::UserProfileUpdated(e) => serde_json::to_value(e),
            DomainEvent::MemoryErased(e) => serde_json::to_value(e),
            DomainEvent::UserErased(e) => serde_json::to_value(e),
            DomainEvent::HistoryEncrypted(e) => serde_json::to_value(e),
        }
    }

    /// Packs the event for [`crate::store::EventStore::append_to_stream`].
    pub fn to_new_event(&self, metadata: EventMetadata) -> Result<NewEvent, serde_json::Error> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: self.event_type().to_string(),
            schema_version: self.schema_version(),
            payload: self.payload()?,
            metadata,
            idempotency_key: self.idempotency_key(),
        })
    }

    /// Reads a stored event back, whatever schema version it was written with.
    pub fn decode(event: &RecordedEvent) -> Result<Self, DecodeError> {
        let payload =
            crate::upcast::upcast(&event.event_type, event.schema_version, &event.payload)?;
        Self::from_current(&event.event_type, event.schema_version, payload.as_ref())
    }

    /// [`Self::decode`] straight from the stored JSON text: an event in the current
    /// schema is parsed into its type with no JSON tree in between (what a replay of
    /// millions of events wants); an older one goes through the upcasters.
    pub fn decode_json(
        event_type: &str,
        schema_version: u16,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        let malformed = |source| DecodeError::Payload {
            event_type: event_type.to_string(),
            source,
        };
        if schema_version != crate::upcast::current_version(event_type) {
            let stored: serde_json::Value = serde_json::from_str(payload).map_err(malformed)?;
            let current = crate::upcast::upcast(event_type, schema_version, &stored)?;
            return Self::from_current(event_type, schema_version, current.as_ref());
        }
        let mut parser = serde_json::Deserializer::from_str(payload);
        let decoded = Self::parse(event_type, &mut parser)
            .and_then(|decoded| parser.end().map(|()| decoded))
            .map_err(malformed)?;
        decoded.ok_or_else(|| DecodeError::Unknown {
            event_type: event_type.to_string(),
            schema_version,
        })
    }

    fn from_current(
        event_type: &str,
        schema_version: u16,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        // Deserializing from a reference spares a deep copy of the payload.
        Self::parse(event_type, payload)
            .map_err(|source| DecodeError::Payload {
                event_type: event_type.to_string(),
                source,
            })?
            .ok_or_else(|| DecodeError::Unknown {
                event_type: event_type.to_string(),
                schema_version,
            })
    }

    /// The current-schema payload of `event_type`; `None` for a type this release
    /// does not know.
    fn parse<'de, D: serde::Deserializer<'de>>(
        event_type: &str,
        payload: D,
    ) -> Result<Option<Self>, D::Error> {
        Ok(Some(match event_type {
            "BotCreated" => DomainEvent::BotCreated(Deserialize::deserialize(payload)?),
            Self::BOT_DELETED => DomainEvent::BotDeleted(Deserialize::deserialize(payload)?),
            Self::BOT_UPDATED => DomainEvent::BotUpdated(Deserialize::deserialize(payload)?),
            Self::USER_MESSAGE_POSTED => {
                DomainEvent::UserMessagePosted(Deserialize::deserialize(payload)?)
            }
            Self::BOT_REPLY_GENERATED => {
                DomainEvent::BotReplyGenerated(Deserialize::deserialize(payload)?)
            }
            Self::BOT_REPLY_FAILED => {
                DomainEvent::BotReplyFailed(Deserialize::deserialize(payload)?)
            }
            Self::BOT_REPLY_STOPPED => {
                DomainEvent::BotReplyStopped(Deserialize::deserialize(payload)?)
            }
            Self::MODEL_CALL_STOPPED => {
                DomainEvent::ModelCallStopped(Deserialize::deserialize(payload)?)
            }
            Self::REPLY_REGENERATION_REQUESTED => {
                DomainEvent::ReplyRegenerationRequested(Deserialize::deserialize(payload)?)
            }
            Self::CONVERSATION_CLEARED => {
                DomainEvent::ConversationCleared(Deserialize::deserialize(payload)?)
            }
            Self::SESSION_STARTED => {
                DomainEvent::SessionStarted(Deserialize::deserialize(payload)?)
            }
            Self::SESSION_REFRESHED => {
                DomainEvent::SessionRefreshed(Deserialize::deserialize(payload)?)
            }
            Self::SESSION_REVOKED => {
                DomainEvent::SessionRevoked(Deserialize::deserialize(payload)?)
            }
            Self::CONVERSATION_SUMMARIZED => {
                DomainEvent::ConversationSummarized(Deserialize::deserialize(payload)?)
            }
            Self::USER_PROFILE_UPDATED => {
                DomainEvent::UserProfileUpdated(Deserialize::deserialize(payload)?)
            }
            Self::MEMORY_ERASED => DomainEvent::MemoryErased(Deserialize::deserialize(payload)?),
            Self::USER_ERASED => DomainEvent::UserErased(Deserialize::deserialize(payload)?),
            Self::HISTORY_ENCRYPTED => {
                DomainEvent::HistoryEncrypted(Deserialize::deserialize(payload)?)
            }
            _ => return Ok(None),
        }))
    }
}

/// The idempotency key of a user message sent with the client's `client_msg_id`.
pub fn message_key(user_id: UserId, bot_id: BotId, client_msg_id: &str) -> String {
    format!("msg:{user_id}:{bot_id}:{client_msg_id}")
}

/// The idempotency key of the one outcome (a reply, a failure or a stop) of
/// `attempt` at answering `message_id`. The first attempt's key is the one
/// releases before regeneration wrote.
pub fn reply_key(message_id: Uuid, attempt: Attempt) -> String {
    if attempt == FIRST_ATTEMPT {
        format!("reply:{message_id}")
    } else {
        format!("reply:{message_id}:{attempt}")
    }
}
