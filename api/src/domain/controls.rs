//! What a user can do to a conversation besides writing to it: stop the reply
//! being written, ask for the last reply again, clear the conversation.
//!
//! Each is an event on the conversation's stream, so each replays, verifies and
//! shows in as-of history like the messages themselves:
//! - a stop is `BotReplyStopped`, the outcome of the attempt it stops. It shares
//!   the reply's idempotency key, so of a reply finishing and a stop landing at
//!   the same moment, exactly one is recorded. The worker writing the reply hears
//!   the stop on the bus and cancels its model call (see the worker's `stops`).
//! - a regeneration is `ReplyRegenerationRequested`, which the workers take as
//!   work, like a new message.
//! - a clear is `ConversationCleared`, appended after stops for whatever is still
//!   pending, in one append at the version read: nothing can be left waiting
//!   behind a clear, and nothing posted meanwhile is cleared unseen.

use uuid::Uuid;

use events::event::{
    stream, Attempt, BotId, BotReplyStopped, ConversationCleared, DomainEvent, EventMetadata,
    ReplyRegenerationRequested, UserId, FIRST_ATTEMPT,
};
use events::projections::{ChatHistoryProjection, HistoryRow};
use events::record::NewEvent;
use events::sealing::{memory_scope, Keyring};
use events::store::{AppendError, EventStore, ExpectedVersion, RecordedEvent};

use super::bots::ensure_owned;
use super::DomainError;

/// Tries at an append that found the conversation moved on (a reply or a
/// memory refresh recorded in between) before the client is asked to retry.
const TRIES: usize = 5;
/// Most pending messages one append of a clear stops; more take several.
const STOPS_PER_APPEND: u32 = 500;

/// What a stop did.
#[derive(Debug)]
pub enum Stop {
    /// The reply being written (or next in line) is stopped: its row, and the
    /// events to publish.
    Stopped {
        row: HistoryRow,
        events: Vec<RecordedEvent>,
    },
    /// Nothing was being written: the conversation's last reply row, if any.
    Nothing(Option<HistoryRow>),
}

/// Stops the reply being written, or about to be written (the conversation's
/// oldest message without an outcome); the messages behind it are still
/// answered. `text_so_far` gives the text the model has written of a reply.
pub async fn stop(
    store: &EventStore,
    (user_id, bot_id): (UserId, BotId),
    text_so_far: impl Fn(Uuid) -> Option<String>,
    metadata: EventMetadata,
) -> Result<Stop, DomainError> {
    ensure_owned(store, user_id, bot_id).await?;
    let pool = store.pool();
    let Some(target) = ChatHistoryProjection::oldest_pending(pool, user_id, bot_id).await? else {
        let last = ChatHistoryProjection::last_by(pool, user_id, bot_id, 0).await?;
        return Ok(Stop::Nothing(last));
    };
    let (reply_to, event) = stop_event(&target, user_id, bot_id, &text_so_far)?;
    match store
        .append_to_stream(
            &stream::chat(user_id, bot_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata)?],
        )
        .await
    {
        Ok(events) => {
            let row = events
                .first()
                .and_then(|recorded| ChatHistoryProjection::row_of(&recorded.stamp(), &event))
                .ok_or_else(|| DomainError::Invalid("the stop was not recorded".into()))?;
            Ok(Stop::Stopped { row, events })
        }
        // The reply was recorded (or stopped) first: it stands, unchanged.
        Err(AppendError::Duplicate(_)) => Ok(Stop::Nothing(
            ChatHistoryProjection::find_reply(pool, &reply_to.to_string()).await?,
        )),
        Err(e) => Err(e.into()),
    }
}

/// The stop of a pending message's current attempt, with the text written so far.
fn stop_event(
    message: &HistoryRow,
    user_id: UserId,
    bot_id: BotId,
    text_so_far: &impl Fn(Uuid) -> Option<String>,
) -> Result<(Uuid, DomainEvent), DomainError> {
    let reply_to = parse_id(&message.message_id)?;
    let event = DomainEvent::BotReplyStopped(BotReplyStopped {
        message_id: Uuid::now_v7(),
        reply_to,
        user_id,
        bot_id,
        content: text_so_far(reply_to).unwrap_or_default(),
        attempt: attempt_of(message),
    });
    Ok((reply_to, event))
}

/// Asks again for a reply to the conversation's last message: returns that
/// message's id and the new attempt, whose outcome is awaited like a new
/// message's, and the events to publish. Refused while a reply is being written.
pub async fn regenerate(
    store: &EventStore,
    (user_id, bot_id): (UserId, BotId),
    metadata: EventMetadata,
) -> Result<(Uuid, Attempt, Vec<RecordedEvent>), DomainError> {
    ensure_owned(store, user_id, bot_id).await?;
    let pool = store.pool();
    let stream_id = stream::chat(user_id, bot_id);
    for _ in 0..TRIES {
        // Read before the checks: whatever they could miss moves the version,
        // and the append at this one fails.
        let version = store.stream_version(&stream_id).await?;
        let Some(last) = ChatHistoryProjection::last_by(pool, user_id, bot_id, 1).await? else {
            return Err(DomainError::Invalid(
                "there is no message to answer again: send one first".into(),
            ));
        };
        if ChatHistoryProjection::oldest_pending(pool, user_id, bot_id)
            .await?
            .is_some()
        {
            return Err(DomainError::Busy(
                "a reply is being written: stop it, or wait for it, then regenerate".into(),
            ));
        }
        let message_id = parse_id(&last.message_id)?;
        let attempt = attempt_of(&last).saturating_add(1);
        let event = DomainEvent::ReplyRegenerationRequested(ReplyRegenerationRequested {
            message_id,
            user_id,
            bot_id,
            attempt,
        });
        match append_at(
            store,
            &stream_id,
            version,
            &[event.to_new_event(metadata.clone())?],
        )
        .await
        {
            Ok(events) => return Ok((message_id, attempt, events)),
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::Duplicate(_)) => {
                return Err(DomainError::Busy(
                    "this reply is already being written again".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(moved_on())
}

/// Clears the conversation: stops whatever is pending, then records
/// `ConversationCleared` (with `forget_memory`, the memory goes too). Returns
/// the events to publish.
pub async fn clear(
    (store, keyring): (&EventStore, &Keyring),
    (user_id, bot_id): (UserId, BotId),
    forget_memory: bool,
    text_so_far: impl Fn(Uuid) -> Option<String>,
    metadata: EventMetadata,
) -> Result<Vec<RecordedEvent>, DomainError> {
    ensure_owned(store, user_id, bot_id).await?;
    let pool = store.pool();
    let stream_id = stream::chat(user_id, bot_id);
    let mut published = Vec::new();
    for _ in 0..TRIES {
        let version = store.stream_version(&stream_id).await?;
        let pending =
            ChatHistoryProjection::pending(pool, user_id, bot_id, STOPS_PER_APPEND).await?;
        let mut events = Vec::with_capacity(pending.len() + 1);
        for message in &pending {
            let (_, stop) = stop_event(message, user_id, bot_id, &text_so_far)?;
            events.push(stop.to_new_event(metadata.clone())?);
        }
        // More pending than one append stops: stop these, then look again.
        let clears = pending.len() < STOPS_PER_APPEND as usize;
        if clears {
            let cleared = DomainEvent::ConversationCleared(ConversationCleared {
                user_id,
                bot_id,
                forget_memory,
            });
            events.push(cleared.to_new_event(metadata.clone())?);
        }
        match append_at(store, &stream_id, version, &events).await {
            Ok(recorded) if clears => {
                published.extend(recorded);
                // As `chat/memory/forget`: the memory's key goes too.
                if forget_memory {
                    keyring.destroy(&memory_scope(user_id, bot_id)).await?;
                }
                return Ok(published);
            }
            Ok(recorded) => published.extend(recorded),
            // A reply recorded in between: look again.
            Err(AppendError::Conflict { .. } | AppendError::Duplicate(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(moved_on())
}

async fn append_at(
    store: &EventStore,
    stream_id: &str,
    version: i64,
    events: &[NewEvent],
) -> Result<Vec<RecordedEvent>, AppendError> {
    store
        .append_to_stream(stream_id, ExpectedVersion::Exact(version), events)
        .await
}

fn moved_on() -> DomainError {
    DomainError::Busy(
        "the conversation kept changing while this was recorded; please try again".into(),
    )
}

fn attempt_of(message: &HistoryRow) -> Attempt {
    Attempt::try_from(message.attempt).unwrap_or(FIRST_ATTEMPT)
}

fn parse_id(id: &str) -> Result<Uuid, DomainError> {
    Uuid::parse_str(id)
        .map_err(|_| DomainError::Invalid(format!("the history holds a malformed id {id:?}")))
}
