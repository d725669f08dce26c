//! Creating, changing and deleting bots: the `bot-<id>` stream.

use events::event::{
    stream, BotCreated, BotDeleted, BotId, BotKind, BotUpdated, DomainEvent, EventMetadata, UserId,
};
use events::projections::{Bot, BotsProjection};
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

/// What the operator lets a bot's owner choose (`ALLOWED_MODELS`,
/// `BOT_MAX_REPLY_TOKENS`).
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsAllowed {
    pub models: Vec<String>,
    pub max_reply_tokens: u32,
}

/// What a `bots/update` asks to change, as given.
#[derive(Debug, Default)]
pub struct RequestedChanges {
    pub name: Option<String>,
    pub kind: Option<i64>,
    pub persona: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_reply_tokens: Option<i64>,
}

/// A valid change to a bot: each field checked as creation checks it, and the
/// model settings against what the operator allows.
#[derive(Debug, Clone, PartialEq)]
pub struct BotChanges(BotUpdated);

impl BotChanges {
    pub fn parse(asked: RequestedChanges, allowed: &SettingsAllowed) -> Result<Self, DomainError> {
        let name = match asked.name.map(|n| n.trim().to_string()) {
            Some(name) if super::is_blank(&name) => {
                return Err(DomainError::Invalid(
                    "chatbot_name must not be empty".into(),
                ))
            }
            Some(name) if name.chars().count() > MAX_NAME_CHARS => {
                return Err(DomainError::Invalid(format!(
                    "chatbot_name must be at most {MAX_NAME_CHARS} characters"
                )))
            }
            name => name,
        };
        let kind = match asked.kind {
            None => None,
            Some(0) => Some(BotKind::Assistant),
            Some(1) => Some(BotKind::Cosplay),
            Some(other) => {
                return Err(DomainError::Invalid(format!(
                    "chatbot_type must be 0 (assistant) or 1 (cosplay), got {other}"
                )))
            }
        };
        let persona = asked.persona.map(|p| p.trim().to_string());
        if persona
            .as_ref()
            .is_some_and(|p| p.chars().count() > MAX_PERSONA_CHARS)
        {
            return Err(DomainError::Invalid(format!(
                "chatbot_persona must be at most {MAX_PERSONA_CHARS} characters"
            )));
        }
        let model = match asked.model.map(|m| m.trim().to_string()) {
            Some(model) if !allowed.models.contains(&model) => {
                return Err(DomainError::Invalid(format!(
                    "model must be one of {}, not {model:?}",
                    allowed.models.join(", ")
                )))
            }
            model => model,
        };
        if asked.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(DomainError::Invalid(
                "temperature must be between 0 and 2".into(),
            ));
        }
        let max_reply_tokens = match asked.max_reply_tokens {
            None => None,
            Some(n) if n >= 1 && n <= i64::from(allowed.max_reply_tokens) => u32::try_from(n).ok(),
            Some(_) => {
                return Err(DomainError::Invalid(format!(
                    "max_reply_tokens must be between 1 and {}",
                    allowed.max_reply_tokens
                )))
            }
        };
        let changes = BotUpdated {
            name,
            kind,
            persona,
            model,
            temperature: asked.temperature,
            max_reply_tokens,
            ..BotUpdated::default()
        };
        if changes == BotUpdated::default() {
            return Err(DomainError::Invalid(
                "nothing to change: give chatbot_name, chatbot_type, chatbot_persona, model, \
                 temperature or max_reply_tokens"
                    .into(),
            ));
        }
        Ok(Self(changes))
    }
}

/// Records `BotUpdated` for the caller's live bot, and answers the bot as it now
/// is. A cosplay bot keeps a persona: changing to one needs a persona, given now
/// or already there; an assistant has none.
pub async fn update_bot(
    store: &EventStore,
    user_id: UserId,
    bot_id: BotId,
    BotChanges(mut changes): BotChanges,
    metadata: EventMetadata,
) -> Result<(Bot, Vec<RecordedEvent>), DomainError> {
    // The version is read before the check: the read model is written in the
    // append's transaction, so a change the check could miss makes our append
    // (at that version) fail rather than land on a state we never checked.
    let stream_id = stream::bot(bot_id);
    let version = store.stream_version(&stream_id).await?;
    let Some(mut bot) = BotsProjection::find_owned(store.pool(), user_id, bot_id).await? else {
        return Err(DomainError::BotNotFound);
    };
    if let Some(keyring) = store.keyring() {
        bot = keyring.open_row(bot).await?;
    }
    let kind = changes.kind.unwrap_or(bot.kind());
    match kind {
        BotKind::Assistant if changes.persona.as_ref().is_some_and(|p| !p.is_empty()) => {
            return Err(DomainError::Invalid(
                "an assistant (chatbot_type 0) has no persona".into(),
            ))
        }
        BotKind::Cosplay
            if super::is_blank(changes.persona.as_deref().unwrap_or(&bot.chatbot_persona)) =>
        {
            return Err(DomainError::Invalid(
                "chatbot_persona is required when chatbot_type is 1".into(),
            ))
        }
        BotKind::Assistant if changes.kind.is_some() => changes.persona = Some(String::new()),
        _ => {}
    }
    changes.bot_id = bot_id;
    changes.user_id = user_id;
    let event = DomainEvent::BotUpdated(changes.clone());
    let recorded = match store
        .append_to_stream(
            &stream_id,
            ExpectedVersion::Exact(version),
            &[event.to_new_event(metadata)?],
        )
        .await
    {
        Ok(recorded) => recorded,
        Err(AppendError::Conflict { .. }) => {
            return Err(DomainError::Invalid(
                "the bot changed at the same moment; send the change again".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    bot.update(&changes);
    Ok((bot, recorded))
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
    // Read before the check, as in `update_bot`: a second delete, or a change,
    // committed since makes this append fail instead of landing after it.
    let stream_id = stream::bot(bot_id);
    let version = store.stream_version(&stream_id).await?;
    if BotsProjection::find_owned(store.pool(), user_id, bot_id)
        .await?
        .is_none()
    {
        return Err(DomainError::BotNotFound);
    }
    let event = DomainEvent::BotDeleted(BotDeleted { bot_id, user_id });
    match store
        .append_to_stream(
            &stream_id,
            ExpectedVersion::Exact(version),
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
