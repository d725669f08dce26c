//! What a bot remembers of a user: read it, or make it forget.

use events::event::{stream, BotId, DomainEvent, EventMetadata, MemoryErased, UserId};
use events::projections::{ConversationMemory, MemoryProjection};
use events::sealing::{memory_scope, Keyring};
use events::store::{EventStore, ExpectedVersion, RecordedEvent};

use super::bots::ensure_owned;
use super::DomainError;

/// The memory of the caller's conversation with one of their bots, opened.
pub async fn recall(
    store: &EventStore,
    keyring: &Keyring,
    user_id: UserId,
    bot_id: BotId,
) -> Result<ConversationMemory, DomainError> {
    ensure_owned(store, user_id, bot_id).await?;
    let sealed = MemoryProjection::find(store.pool(), user_id, bot_id).await?;
    Ok(keyring.open_memory(sealed).await?)
}

/// Records `MemoryErased`: from its version on, nothing remembered before it is
/// used again, and a refresh still running for older messages is dropped. Then
/// destroys the memory's key, so what was remembered is unreadable in every
/// copy of the log; new memory gets a new key.
pub async fn forget(
    store: &EventStore,
    keyring: &Keyring,
    user_id: UserId,
    bot_id: BotId,
    metadata: EventMetadata,
) -> Result<Vec<RecordedEvent>, DomainError> {
    ensure_owned(store, user_id, bot_id).await?;
    let event = DomainEvent::MemoryErased(MemoryErased { user_id, bot_id });
    let recorded = store
        .append_to_stream(
            &stream::chat(user_id, bot_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata)?],
        )
        .await?;
    keyring.destroy(&memory_scope(user_id, bot_id)).await?;
    Ok(recorded)
}
