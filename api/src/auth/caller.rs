//! Extractors that decide whom a request acts for.
//!
//! [`Caller`] serves the chat and bot routes and follows `AUTH_MODE`; [`TokenUser`]
//! serves the user routes, which always need an access token. Handlers receive the
//! result and never read headers themselves.

use std::sync::atomic::Ordering;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use events::event::UserId;

use super::{AuthMode, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// The caller of a chat or bot route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A valid access token named this user.
    Token(UserId),
    /// No `Authorization` header, under `AUTH_MODE=legacy`.
    Legacy,
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
            Some(Ok(token)) => state
                .jwt
                .verify(token, TokenKind::Access)
                .map(|claims| Caller::Token(claims.user_id))
                .map_err(|e| ApiError::Unauthorized(format!("Access token rejected: {e}. Log in again or refresh the token."))),
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
    /// The user this request acts for, given the `user_id` it names (if any).
    pub fn acting_for(
        self,
        requested: Option<UserId>,
        state: &AppState,
    ) -> Result<UserId, ApiError> {
        match (self, requested) {
            (Caller::Token(user), Some(requested)) if requested != user => Err(
                ApiError::Forbidden("user_id does not match the access token's user.".into()),
            ),
            (Caller::Token(user), _) => Ok(user),
            (Caller::Legacy, Some(requested)) => {
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
            Some(Ok(token)) => state
                .jwt
                .verify(token, TokenKind::Access)
                .map(|claims| TokenUser(claims.user_id))
                .map_err(|_| invalid),
        }
    }
}
