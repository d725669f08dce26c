//! `POST /chat/stream/ticket`: a short-lived ticket that opens one bot's stream
//! from a URL, for the browser's `EventSource`, which cannot send an
//! `Authorization` header.
//!
//! Why a ticket and not the access token in the URL: URLs end up in proxies'
//! and servers' access logs. A ticket opens only `chat/stream`, for one user and
//! one bot, lives `STREAM_TICKET_TTL_SECS` (never past the access token it was
//! made with), and is refused once its session is revoked (logout, password
//! change). Within its life, `EventSource`'s own reconnect (with its
//! `Last-Event-ID`) resumes the stream on any replica; after it, the client asks
//! for a new ticket and reopens with `after=<the last id it has>`. Our own logs
//! record the path of a request, never its query.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use events::projections::BotsProjection;

use crate::auth::Caller;
use crate::domain::required;
use crate::error::ApiError;
use crate::extract::{lenient, Payload};
use crate::openapi::StreamTicket;
use crate::state::AppState;
use crate::views::chat_ok;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TicketBody {
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
}

/// A short-lived ticket that opens one bot's stream from a URL, for a browser's
/// `EventSource`, which cannot send an `Authorization` header.
#[utoipa::path(post, path = "/chat/stream/ticket", operation_id = "stream_ticket", tag = "chat", request_body(content((TicketBody = "application/json"), (TicketBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The ticket, and the URL it opens.", body = StreamTicket)), security(("bearer" = [])))]
pub async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    Payload(body): Payload<TicketBody>,
) -> Result<Json<Value>, ApiError> {
    let Caller::Token(session) = caller else {
        return Err(ApiError::Unauthorized(
            "A stream ticket is made from an access token: send `Authorization: Bearer <access token>`.".into(),
        ));
    };
    let bot = required(body.chatbot_id, "chatbot_id")?;
    if BotsProjection::find_owned(&state.pool, session.user, bot)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(
            "No such chatbot for this user (it may have been deleted).".into(),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(state.config.stream_ticket_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let expires_at = session.expires_at.min(now.saturating_add(ttl));
    let ticket = state
        .jwt
        .stream_ticket(
            (session.user, &session.sid, session.credentials),
            bot,
            expires_at,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(chat_ok(json!({
        "ticket": ticket,
        "expires_in": (expires_at - now).max(0),
        "url": format!("/chat/stream?chatbot_id={bot}&ticket={ticket}"),
    })))
}
