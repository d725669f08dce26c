//! `worker replay history --as-of`: a conversation as it stood at an instant,
//! rebuilt from the log alone (the read models only know the present).
//!
//! The bot's stream and the conversation's stream are read up to the instant and
//! folded from nothing by the same rules a rebuild uses, so the rows are exactly
//! what `GET /chat/history` would have served then, including for a bot that has
//! been deleted since.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::mysql::{MySqlPool, MySqlRow};

use events::event::{stream, BotId, DomainEvent, UserId};
use events::projections::fold::Fold;
use events::projections::rows::{history_rows, RowFormat};
use events::projections::shadow::ReplayError::Unreadable;
use events::sealing::Keyring;
use events::store::{recorded_from_row, SELECT_EVENTS};

use super::ReplayError;

/// The conversation's rows at `as_of`, in the route's shape.
pub async fn history_as_of(
    (pool, keyring): (&MySqlPool, &Keyring),
    user: UserId,
    bot: BotId,
    as_of: DateTime<Utc>,
    format: RowFormat,
) -> Result<Value, ReplayError> {
    let erased: Option<chrono::NaiveDateTime> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE stream_id = ? AND event_type = ? LIMIT 1",
    )
    .bind(stream::user(user))
    .bind(DomainEvent::USER_ERASED)
    .fetch_optional(pool)
    .await?;
    if let Some(at) = erased {
        return Err(ReplayError::NoSuchBot(format!(
            "user {user} was erased at {}: their conversations are gone from the log's texts \
             and from every view",
            DateTime::<Utc>::from_naive_utc_and_offset(at, Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )));
    }
    let events = sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE stream_id IN (?, ?) AND recorded_at <= ? ORDER BY global_position"
    ))
    .bind(stream::bot(bot))
    .bind(stream::chat(user, bot))
    .bind(as_of.naive_utc())
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_all(pool)
    .await?;
    let mut fold = Fold::default();
    for event in &events {
        let decoded = DomainEvent::decode(event).map_err(|source| Unreadable {
            position: event.global_position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            source,
        })?;
        fold.apply(&event.stamp(), &decoded);
    }
    let at = as_of.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    match fold.bots.get(&bot) {
        None => {
            return Err(ReplayError::NoSuchBot(format!(
                "bot {bot} did not exist yet at {at}"
            )))
        }
        Some(b) if b.user_id != user => {
            return Err(ReplayError::NoSuchBot(format!(
                "bot {bot} belongs to user {}, not to user {user}",
                b.user_id
            )))
        }
        Some(b) => {
            if let Some(deleted) = b.deleted_at {
                return Err(ReplayError::NoSuchBot(format!(
                    "bot {bot} had already been deleted at {at} (deleted {})",
                    DateTime::<Utc>::from_naive_utc_and_offset(deleted, Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                )));
            }
        }
    }
    let mut rows = fold.into_history();
    keyring.open_rows(&mut rows).await?;
    Ok(history_rows(rows, format))
}
