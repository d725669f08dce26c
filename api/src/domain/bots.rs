//! Creating and deleting bots: the `bot-<id>` stream.

use events::event::{
    stream, BotCreated, BotDeleted, BotId, BotKind, DomainEvent, EventMetadata, UserId,
};
use events::projections::BotsProjection;
use events::store::{AppendError, EventStore, ExpectedVersion, RecordedEvent};

use super::{required, DomainError};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_PERSONA_CHARS: usize = 2000;

/// A bot about to be created; only a valid one can exist.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBot {
    name: String,
    kind: BotKind,
    persona: String,
}

impl NewBot {
    pub fn parse(
        name: Option<String>,
        kind: Option<i64>,
        persona: Option<String>,
    ) -> Result<Self, DomainError> {
        let name = required(name, "chatbot_name")?.trim().to_string();
        if super::is_blank(&name) {
            return Err(DomainError::Invalid(
                "chatbot_name must not be empty".into(),
            ));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(DomainError::Invalid(format!(
                "chatbot_name must be at most {MAX_NAME_CHARS} characters"
            )));
        }
        let kind = match required(kind, "chatbot_type")? {
            0 => BotKind::Assistant,
            1 => BotKind::Cosplay,
            other => {
                return Err(DomainError::Invalid(format!(
                    "chatbot_type must be 0 (assistant) or 1 (cosplay), got {other}"
                )))
            }
        };
        let persona = match kind {
            BotKind::Assistant => String::new(),
            BotKind::Cosplay => {
                let persona = persona.unwrap_or_default().trim().to_string();
                if super::is_blank(&persona) {
                    return Err(DomainError::Invalid(
                        "chatbot_persona is required when chatbot_type is 1".into(),
                    ));
                }
                if persona.chars().count() > MAX_PERSONA_CHARS {
                    return Err(DomainError::Invalid(format!(
                        "chatbot_persona must be at most {MAX_PERSONA_CHARS} characters"
                    )));
                }
                persona
            }
        };
        Ok(Self {
            name,
            kind,
            persona,
        })
    }
}

/// `Ok` when `bot_id` is one of `user_id`'s bots, not deleted; the same answer
/// for another user's bot as for an unknown one.
pub async fn ensure_owned(
    store: &EventStore,
    user_id: UserId,
    bot_id: BotId,
) -> Result<(), DomainError> {
    match BotsProjection::find_owned(store.pool(), user_id, bot_id).await? {
        Some(_) => Ok(()),
        None => Err(DomainError::BotNotFound),
    }
}

/// Allocates an id and records `BotCreated`.
/// Records `BotCreated`, unless the user already has `max_bots` live bots (`0`:
/// no cap). Two creations racing at the cap may both pass it: a cap, not a
/// quota.
pub async fn create_bot(
    store: &EventStore,
    user_id: UserId,
    bot: NewBot,
    max_bots: u32,
    metadata: EventMetadata,
) -> Result<(BotId, Vec<RecordedEvent>), DomainError> {
    if max_bots > 0
        && BotsProjection::count_live(store.pool(), user_id, max_bots).await? >= i64::from(max_bots)
    {
        return Err(DomainError::TooManyBots(max_bots));
    }
    let bot_id = sqlx::query("INSERT INTO bot_id_sequence () VALUES ()")
        .execute(store.pool())
        .await?
        .last_insert_id();
    let bot_id = BotId::try_from(bot_id).map_err(|e| DomainError::Invalid(e.to_string()))?;
    let event = DomainEvent::BotCreated(BotCreated {
        bot_id,
        user_id,
        name: bot.name,
        kind: bot.kind,
        persona: bot.persona,
    });
    let recorded = store
        .append_to_stream(
            &stream::bot(bot_id),
            ExpectedVersion::NoStream,
            &[event.to_new_event(metadata)?],
        )
        .await?;
    Ok((bot_id, recorded))
}

/// Records `BotDeleted` for the caller's live bot.
pub async fn delete_bot(
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
    let event = DomainEvent::BotDeleted(BotDeleted { bot_id, user_id });
    // A bot stream holds BotCreated (version 1) and at most one BotDeleted: expecting
    // version 1 makes a concurrent second delete fail instead of appending twice.
    match store
        .append_to_stream(
            &stream::bot(bot_id),
            ExpectedVersion::Exact(1),
            &[event.to_new_event(metadata)?],
        )
        .await
    {
        Ok(recorded) => Ok(recorded),
        Err(AppendError::Conflict { .. }) => Err(DomainError::BotNotFound),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_parsed_at_the_edge() {
        let ok = NewBot::parse(Some(" Jay ".into()), Some(1), Some("Jay Chou".into())).unwrap();
        assert_eq!(ok.name, "Jay");
        assert_eq!(ok.kind, BotKind::Cosplay);
        let plain = NewBot::parse(Some("a".into()), Some(0), Some("ignored".into())).unwrap();
        assert_eq!(plain.persona, "");
        for (name, kind, persona) in [
            (None, Some(0), None),
            (Some("  ".to_string()), Some(0), None),
            (Some("x".repeat(MAX_NAME_CHARS + 1)), Some(0), None),
            (Some("a".into()), Some(2), None),
            (Some("a".into()), None, None),
            (Some("a".into()), Some(1), None),
            (Some("a".into()), Some(1), Some(" ".into())),
        ] {
            assert!(
                NewBot::parse(name.clone(), kind, persona.clone()).is_err(),
                "{name:?} {kind:?} {persona:?}"
            );
        }
    }
}
