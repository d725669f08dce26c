//! What a bot remembers of a user: read it, or make it forget.

use events::event::{stream, BotId, DomainEvent, EventMetadata, MemoryErased, UserId};
use events::projections::{BotsProjection, ConversationMemory, MemoryProjection};
use events::store::{EventStore, ExpectedVersion, RecordedEvent};

use super::DomainError;

/// The memory of the caller's conversation with one of their bots.
pub async fn recall(
    store: &EventStore,
    user_id: UserId,
    bot_id: BotId,
) -> Result<ConversationMemory, DomainError> {
    if BotsProjection::find_owned(store.pool(), user_id, bot_id)
        .await?
        .is_none()
    {
        return Err(DomainError::BotNotFound);
    }
    Ok(MemoryProjection::find(store.pool(), user_id, bot_id).await?)
}

/// Records `MemoryErased`: from its version on, nothing remembered before it is
/// used again, and a refresh still running for older messages is dropped.
pub async fn forget(
    store: &EventStore,
    user_id: UserId,
    bot_id: BotId,
    metadata: EventMetadata,
) -> Result<Vec<RecordedEvent>, DomainError> {
    if BotsProjection::find_owned(store.pool(), user_id, bot_id)
        .await?
        .is_none()
    {
        return Err(DomainError::BotNotFound);
    }
    let event = DomainEvent::MemoryErased(MemoryErased { user_id, bot_id });
    Ok(store
        .append_to_stream(
            &stream::chat(user_id, bot_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata)?],
        )
        .await?)
}
