//! Extractors that decide whom a request acts for.
//!
//! [`Caller`] serves the chat and bot routes and follows `AUTH_MODE`; [`TokenUser`]
//! serves the user routes, which always need an access token. Handlers receive the
//! result and never read headers themselves.
//!
//! A token is refused when its signature, type or expiry is wrong, when its
//! session was revoked (logout, password change, a reused refresh token) or it
//! was issued before the user's last password change, and when its user does
//! not exist. The last two are answered from memory (see
//! `sessions` and `known_users`), so a valid token costs no database round trip.

use std::sync::atomic::Ordering;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use events::event::UserId;

use super::jwt::Claims;
use super::{AuthMode, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// The caller of a chat or bot route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid access token named this user.
    Token(TokenSession),
    /// No `Authorization` header, under `AUTH_MODE=legacy`.
    Legacy,
}

/// What a valid access token says about how long its holder may act: a stream or
/// a long-poll ends when either runs out (see `hangup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSession {
    pub user: UserId,
    /// The login session the token belongs to.
    pub sid: String,
    /// The token's `exp`, in Unix seconds.
    pub expires_at: i64,
    /// The credentials version the token was issued under.
    pub credentials: u32,
}

fn bearer(parts: &Parts) -> Option<Result<&str, ()>> {
    let header = parts.headers.get(AUTHORIZATION)?;
    Some(
        header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(()),
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match bearer(parts) {
            Some(Ok(token)) => {
                let claims = state
                    .jwt
                    .verify(token, TokenKind::Access)
                    .map_err(|e| ApiError::Unauthorized(format!("Access token rejected: {e}. Log in again or refresh the token.")))?;
                Caller::from_live_session(claims, state, "Access token").await
            }
            Some(Err(())) => Err(ApiError::Unauthorized(
                "The Authorization header must be `Bearer <access token>`.".into(),
            )),
            None if state.config.auth_mode == AuthMode::Legacy => Ok(Caller::Legacy),
            None => Err(ApiError::Unauthorized(
                "Authentication required: send `Authorization: Bearer <access token>` (from POST /login/).".into(),
            )),
        }
    }
}

impl Caller {
    /// The caller a stream ticket names, for `bot`'s stream only. A ticket is
    /// refused as an access token would be (its session revoked, its user gone,
    /// expired), and for any other bot.
    pub async fn from_stream_ticket(
        ticket: &str,
        bot: events::event::BotId,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let claims = state.jwt.verify(ticket, TokenKind::Stream).map_err(|e| {
            ApiError::Unauthorized(format!(
                "Stream ticket rejected: {e}. Get a new one from POST /chat/stream/ticket."
            ))
        })?;
        if claims.bot != Some(bot) {
            return Err(ApiError::Unauthorized(
                "This stream ticket is for another chatbot.".into(),
            ));
        }
        Caller::from_live_session(claims, state, "Stream ticket").await
    }

    /// The caller a verified token or ticket names, if its session may still act.
    async fn from_live_session(
        claims: Claims,
        state: &AppState,
        what: &str,
    ) -> Result<Self, ApiError> {
        match check_session(&claims, state).await? {
            Ok(()) => Ok(Caller::Token(TokenSession {
                user: claims.user_id,
                sid: claims.sid,
                expires_at: claims.exp,
                credentials: claims.cv,
            })),
            Err(why) => Err(ApiError::Unauthorized(format!(
                "{what} rejected: {why}. Log in again."
            ))),
        }
    }
}

/// Whether a validly signed access token may still act: `Ok(Err(why))` when not.
async fn check_session(
    claims: &Claims,
    state: &AppState,
) -> Result<Result<(), &'static str>, ApiError> {
    if state
        .sessions
        .is_revoked(&claims.sid, claims.user_id, claims.cv)
    {
        return Ok(Err(
            "its session was signed out, or the password changed since",
        ));
    }
    if !state.users.exists(&state.pool, claims.user_id).await? {
        return Ok(Err("its user does not exist"));
    }
    Ok(Ok(()))
}

impl Caller {
    /// The token's session, if the caller sent one.
    pub fn session(&self) -> Option<&TokenSession> {
        match self {
            Caller::Token(token) => Some(token),
            Caller::Legacy => None,
        }
    }

    /// The user this request acts for, given the `user_id` it names (if any). A
    /// legacy request naming a user that does not exist gets the route's usual
    /// "not found", and nothing is stored for nobody.
    pub async fn acting_for(
        &self,
        requested: Option<UserId>,
        state: &AppState,
    ) -> Result<UserId, ApiError> {
        match (self, requested) {
            (Caller::Token(token), Some(requested)) if requested != token.user => Err(
                ApiError::Forbidden("user_id does not match the access token's user.".into()),
            ),
            (Caller::Token(token), _) => Ok(token.user),
            (Caller::Legacy, Some(requested)) => {
                if !state.users.exists(&state.pool, requested).await? {
                    return Err(ApiError::NotFound(format!(
                        "No user with user_id {requested}."
                    )));
                }
                let served = state.legacy_requests.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    legacy_request = true,
                    user_id = requested,
                    legacy_requests_total = served,
                    "served without a token (AUTH_MODE=legacy)"
                );
                Ok(requested)
            }
            (Caller::Legacy, None) => Err(ApiError::Unauthorized(
                "Send `Authorization: Bearer <access token>`, or user_id in legacy mode.".into(),
            )),
        }
    }
}

/// The user named by a valid access token, for the user routes (simplejwt's errors).
#[derive(Debug, Clone, Copy)]
pub struct TokenUser(pub UserId);

impl FromRequestParts<AppState> for TokenUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let invalid = ApiError::TokenNotValid {
            detail: "Given token not valid for any token type",
            access_messages: true,
        };
        match bearer(parts) {
            None => Err(ApiError::NotAuthenticated),
            Some(Err(())) => Err(invalid),
            Some(Ok(token)) => {
                let claims = state
                    .jwt
                    .verify(token, TokenKind::Access)
                    .map_err(|_| invalid)?;
                match check_session(&claims, state).await? {
                    Ok(()) => Ok(TokenUser(claims.user_id)),
                    Err(_) => Err(ApiError::TokenNotValid {
                        detail: "Given token not valid for any token type",
                        access_messages: true,
                    }),
                }
            }
        }
    }
}
