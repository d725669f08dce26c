//! Login sessions: the `session-<id>` stream.
//!
//! A login starts a session, which may spend one refresh token at a time. Spending
//! it (`login/refresh/`) issues the next; presenting an already spent one means a
//! second holder exists, so the whole session is revoked. Logging out revokes the
//! session; changing the password revokes every session of the user. The `sid`
//! claim ties every token to its session, so revoking the session ends them all.

use uuid::Uuid;

use events::event::{
    stream, DomainEvent, EventMetadata, SessionRefreshed, SessionRevoked, SessionStarted, UserId,
};
use events::projections::SessionsProjection;
use events::store::{AppendError, EventStore, ExpectedVersion, RecordedEvent};

use super::DomainError;
use crate::auth::JwtKeys;

pub const REASON_LOGOUT: &str = "logout";
pub const REASON_PASSWORD_CHANGED: &str = "password changed";
pub const REASON_REUSED: &str = "refresh token reused";

/// A session's current refresh token, and the events that recorded it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub session_id: Uuid,
    pub refresh_jti: String,
    pub events: Vec<RecordedEvent>,
}

/// Why a refresh was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshRefused {
    /// Unknown, revoked, or someone else's session.
    NoSession,
    /// A spent token was presented again: the session was revoked now.
    Reused { revoked: Vec<RecordedEvent> },
}

pub async fn start(
    store: &EventStore,
    user_id: UserId,
    metadata: EventMetadata,
) -> Result<Issued, DomainError> {
    let session_id = Uuid::now_v7();
    let refresh_jti = JwtKeys::new_jti();
    let event = DomainEvent::SessionStarted(SessionStarted {
        session_id,
        user_id,
        refresh_jti: refresh_jti.clone(),
    });
    let events = store
        .append_to_stream(
            &stream::session(session_id),
            ExpectedVersion::NoStream,
            &[event.to_new_event(metadata)?],
        )
        .await?;
    Ok(Issued {
        session_id,
        refresh_jti,
        events,
    })
}

/// Spends the refresh token `jti` of session `sid` and issues the next one.
pub async fn refresh(
    store: &EventStore,
    sid: &str,
    jti: &str,
    user_id: UserId,
    metadata: EventMetadata,
) -> Result<Result<Issued, RefreshRefused>, DomainError> {
    let Ok(session_id) = Uuid::parse_str(sid) else {
        return Ok(Err(RefreshRefused::NoSession));
    };
    let session = SessionsProjection::find(store.pool(), sid).await?;
    let Some(session) = session.filter(|s| s.user_id == user_id && s.revoked_at.is_none()) else {
        return Ok(Err(RefreshRefused::NoSession));
    };
    if session.refresh_jti != jti {
        let revoked = revoke(store, session_id, user_id, REASON_REUSED, metadata).await?;
        return Ok(Err(RefreshRefused::Reused { revoked }));
    }
    let refresh_jti = JwtKeys::new_jti();
    let event = DomainEvent::SessionRefreshed(SessionRefreshed {
        session_id,
        user_id,
        spent_jti: jti.to_string(),
        refresh_jti: refresh_jti.clone(),
    });
    let appended = store
        .append_to_stream(
            &stream::session(session_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata.clone())?],
        )
        .await;
    match appended {
        Ok(events) => Ok(Ok(Issued {
            session_id,
            refresh_jti,
            events,
        })),
        // Spent a moment ago by a concurrent request with the same token.
        Err(AppendError::Duplicate(_)) => {
            let revoked = revoke(store, session_id, user_id, REASON_REUSED, metadata).await?;
            Ok(Err(RefreshRefused::Reused { revoked }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Revokes one session; revoking it again is harmless.
pub async fn revoke(
    store: &EventStore,
    session_id: Uuid,
    user_id: UserId,
    reason: &str,
    metadata: EventMetadata,
) -> Result<Vec<RecordedEvent>, DomainError> {
    let event = DomainEvent::SessionRevoked(SessionRevoked {
        session_id,
        user_id,
        reason: reason.to_string(),
    });
    Ok(store
        .append_to_stream(
            &stream::session(session_id),
            ExpectedVersion::Any,
            &[event.to_new_event(metadata)?],
        )
        .await?)
}

/// Revokes every session of `user_id`; returns their ids and the events.
pub async fn revoke_all(
    store: &EventStore,
    user_id: UserId,
    reason: &str,
    metadata: EventMetadata,
) -> Result<(Vec<Uuid>, Vec<RecordedEvent>), DomainError> {
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for sid in SessionsProjection::active_for_user(store.pool(), user_id).await? {
        let Ok(session_id) = Uuid::parse_str(&sid) else {
            continue;
        };
        events.extend(revoke(store, session_id, user_id, reason, metadata.clone()).await?);
        ids.push(session_id);
    }
    Ok((ids, events))
}
