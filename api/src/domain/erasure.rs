//! Deleting an account, and everything its user wrote (`DELETE /users/users/<id>/`).
//!
//! The log is immutable, so erasure is crypto-shredding: destroying the user's
//! keys makes every text they sealed unreadable. Texts written before sealing
//! (until `worker replay encrypt-history` has run) are still in the clear;
//! those are blanked in place, the sanctioned rewrite of stored events, so
//! that erasure is never partial. In order:
//! 1. every session is revoked (its tokens stop working on every api);
//! 2. the user's data keys are destroyed (theirs, and their memories'), and a
//!    tombstone keeps any new one from being made for them;
//! 3. their texts still in the clear in the log are replaced by `"[erased]"`
//!    (the outbox holds only positions): messages, replies, memory texts, and
//!    their bots' names and personas;
//! 4. `UserErased` is appended (no personal data): every read-model row of
//!    theirs goes, now and in any rebuild;
//! 5. the account's row goes, so its username can be registered again.

use sqlx::MySqlPool;
use uuid::Uuid;

use events::event::{stream, DomainEvent, EventMetadata, UserErased, UserId};
use events::sealing::{Keyring, ERASED};
use events::store::{EventStore, ExpectedVersion, RecordedEvent};

use super::sessions;
use super::DomainError;

/// Why the sessions of an erased account were revoked.
pub const REASON_ACCOUNT_ERASED: &str = "account erased";

/// The text fields of a user's events, by where they are.
const CHAT_TEXT_FIELDS: [&str; 4] = ["content", "summary", "profile", "reason"];
const BOT_TEXT_FIELDS: [&str; 2] = ["name", "persona"];

/// Erases `user`'s account (the caller checked the password). Returns the
/// sessions revoked and the events to publish.
pub async fn erase_account(
    (store, keyring): (&EventStore, &Keyring),
    user: UserId,
    metadata: EventMetadata,
) -> Result<(Vec<Uuid>, Vec<RecordedEvent>), DomainError> {
    let pool = store.pool();
    let (revoked, mut published) =
        sessions::revoke_all(store, user, REASON_ACCOUNT_ERASED, metadata.clone()).await?;
    keyring.erase_user(user).await?;
    blank_texts(pool, user).await?;
    let erased = DomainEvent::UserErased(UserErased { user_id: user });
    published.extend(
        store
            .append_to_stream(
                &stream::user(user),
                ExpectedVersion::Any,
                &[erased.to_new_event(metadata)?],
            )
            .await?,
    );
    for statement in [
        "DELETE FROM token_reservations WHERE user_id = ?",
        "DELETE FROM token_budgets WHERE user_id = ?",
        "DELETE FROM users WHERE id = ?",
    ] {
        sqlx::query(statement).bind(user).execute(pool).await?;
    }
    Ok((revoked, published))
}

/// Replaces the user's texts in the log by `"[erased]"`: those of their
/// conversations, and of their bots' streams.
async fn blank_texts(pool: &MySqlPool, user: UserId) -> Result<(), sqlx::Error> {
    let chats = format!("chat-{user}-%");
    for field in CHAT_TEXT_FIELDS {
        blank(pool, field, "stream_id LIKE ?", &chats).await?;
    }
    let bots: Vec<i64> = sqlx::query_scalar("SELECT chatbot_id FROM bots WHERE user_id = ?")
        .bind(user)
        .fetch_all(pool)
        .await?;
    for bot in bots {
        let stream_id = stream::bot(bot);
        for field in BOT_TEXT_FIELDS {
            blank(pool, field, "stream_id = ?", &stream_id).await?;
        }
    }
    Ok(())
}

/// Sets `field` to `"[erased]"` in the payloads of the events `filter` picks,
/// where it is still in the clear (a text sealed for its event is erased with
/// its key; one that only starts like one is a user's text).
async fn blank(
    pool: &MySqlPool,
    field: &str,
    filter: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    let path = format!("$.{field}");
    sqlx::query(&format!(
        "UPDATE events SET payload = JSON_SET(payload, ?, ?) \
         WHERE {filter} AND JSON_CONTAINS_PATH(payload, 'one', ?) \
         AND JSON_UNQUOTE(JSON_EXTRACT(payload, ?)) NOT LIKE CONCAT('sealed:v1:%:', event_id, ':%')"
    ))
    .bind(&path)
    .bind(ERASED)
    .bind(value)
    .bind(&path)
    .bind(&path)
    .execute(pool)
    .await?;
    Ok(())
}
