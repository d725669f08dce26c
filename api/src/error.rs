//! Every way a request can fail, and the one `match` that turns each into the
//! contract's response.
//!
//! Three shapes exist because the original had three: the `{code, msg, data}`
//! envelope (chat and bot routes, with the bot module's "HTTP 200, code -1"), Django
//! REST framework's field errors (`{"username": ["..."]}`) on the user routes, and
//! simplejwt's `{"detail", "code"}` for credentials and tokens.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use events::episode::Episode;
use events::sealing::SealError;
use events::store::AppendError;
use serde_json::json;

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The bot module's failure: HTTP 200 with `code: -1`, as the app expects.
    #[error("{0}")]
    BotModule(String),
    /// Field errors on the user routes, in DRF's shape.
    #[error("invalid fields: {0:?}")]
    FieldErrors(BTreeMap<&'static str, Vec<String>>),
    /// Wrong username/email or password.
    #[error("no active account found with the given credentials")]
    InvalidCredentials,
    /// A missing, expired, tampered or wrong-kind token on a user route.
    #[error("token is not valid: {detail}")]
    TokenNotValid {
        detail: &'static str,
        /// simplejwt adds the per-token-class messages for access tokens.
        access_messages: bool,
    },
    /// No `Authorization` header on a user route.
    #[error("authentication credentials were not provided")]
    NotAuthenticated,
    /// A user route acting on someone else.
    #[error("permission denied")]
    PermissionDenied,
    /// Authentication failed on a chat or bot route.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but acting for another user on a chat or bot route.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but contradicts what was recorded (a reused `client_msg_id`).
    #[error("{0}")]
    Unprocessable(String),
    /// Past a per-user limit; worth trying again after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The client did not send its request (headers or body) in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The model failed for good.
    #[error("{0}")]
    BadGateway(String),
    /// The database or the broker is unreachable.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn envelope(status: StatusCode, code: i64, msg: &str) -> Response {
    (
        status,
        Json(json!({ "code": code, "msg": msg, "data": null })),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let failure = |status: StatusCode, msg: &str| envelope(status, status.as_u16().into(), msg);
        match &self {
            ApiError::BadRequest(msg) => failure(StatusCode::BAD_REQUEST, msg),
            ApiError::PayloadTooLarge(msg) => failure(StatusCode::PAYLOAD_TOO_LARGE, msg),
            ApiError::UnsupportedMediaType(msg) => failure(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg),
            ApiError::BotModule(msg) => (
                StatusCode::OK,
                Json(json!({ "code": -1, "msg": msg, "data": [] })),
            )
                .into_response(),
            ApiError::FieldErrors(fields) => {
                (StatusCode::BAD_REQUEST, Json(json!(fields))).into_response()
            }
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "detail": "No active account found with the given credentials" })),
            )
                .into_response(),
            ApiError::TokenNotValid {
                detail,
                access_messages,
            } => {
                let body = if *access_messages {
                    json!({
                        "detail": detail,
                        "code": "token_not_valid",
                        "messages": [{
                            "token_class": "AccessToken",
                            "token_type": "access",
                            "message": "Token is invalid or expired",
                        }],
                    })
                } else {
                    json!({ "detail": detail, "code": "token_not_valid" })
                };
                (StatusCode::UNAUTHORIZED, Json(body)).into_response()
            }
            ApiError::NotAuthenticated => (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "detail": "Authentication credentials were not provided." })),
            )
                .into_response(),
            ApiError::PermissionDenied => (
                StatusCode::FORBIDDEN,
                Json(json!({ "detail": "You do not have permission to perform this action." })),
            )
                .into_response(),
            ApiError::Unauthorized(msg) => failure(StatusCode::UNAUTHORIZED, msg),
            ApiError::Forbidden(msg) => failure(StatusCode::FORBIDDEN, msg),
            ApiError::NotFound(msg) => failure(StatusCode::NOT_FOUND, msg),
            ApiError::MethodNotAllowed(msg) => failure(StatusCode::METHOD_NOT_ALLOWED, msg),
            ApiError::Conflict(msg) => failure(StatusCode::CONFLICT, msg),
            ApiError::Unprocessable(msg) => failure(StatusCode::UNPROCESSABLE_ENTITY, msg),
            ApiError::RequestTimeout(msg) => failure(StatusCode::REQUEST_TIMEOUT, msg),
            ApiError::TooManyRequests {
                message,
                retry_after_secs,
            } => {
                let mut response = failure(StatusCode::TOO_MANY_REQUESTS, message);
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                );
                response
            }
            ApiError::BadGateway(msg) => failure(StatusCode::BAD_GATEWAY, msg),
            ApiError::Unavailable(msg) => failure(StatusCode::SERVICE_UNAVAILABLE, msg),
            ApiError::Internal(detail) => {
                // The details go to the log, never to the client.
                tracing::error!(error = %detail, "internal error");
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error; it has been logged. Please try again.",
                )
            }
        }
    }
}

/// One WARN per database outage, however many requests it fails.
static DATABASE_DOWN: Episode = Episode::new("the database is unavailable; requests get 503");

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if events::db::is_unavailable(&e) {
            DATABASE_DOWN.failed(&e);
            ApiError::Unavailable("The database is unavailable; please try again shortly.".into())
        } else if events::db::is_lock_contention(&e) {
            tracing::info!(error = %e, "lost a lock race; the client is asked to retry");
            ApiError::Unavailable("The server is busy with this data; please try again.".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// A request was answered without a 5xx: a database outage, if one was going on,
/// is over (`/healthz` aside, which never touches the database).
pub fn database_reached() {
    if DATABASE_DOWN.ongoing() > 0 {
        DATABASE_DOWN.recovered();
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { .. } | AppendError::Duplicate(_) => ApiError::Conflict(
                "The conversation changed while this request was handled; please retry.".into(),
            ),
            AppendError::Database(e) => e.into(),
            AppendError::Sealing(e) => e.into(),
        }
    }
}

impl From<SealError> for ApiError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Database(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(msg) => ApiError::BadRequest(msg),
            DomainError::TooLong(msg) => ApiError::PayloadTooLarge(msg),
            DomainError::BotNotFound => ApiError::NotFound(
                "No such chatbot for this user (it may have been deleted).".into(),
            ),
            DomainError::KeyReused(msg) => ApiError::Unprocessable(msg),
            DomainError::TooManyBots(_) => ApiError::BadRequest(e.to_string()),
            DomainError::TooManyUnanswered { scope, count } => ApiError::TooManyRequests {
                message: format!(
                    "{count} of your messages {scope} are still waiting for an answer: \
                     wait for the bot to answer your earlier messages, then send this one again."
                ),
                retry_after_secs: 5,
            },
            DomainError::Busy(msg) => ApiError::Conflict(msg),
            DomainError::Append(e) => e.into(),
            DomainError::Sealed(e) => e.into(),
            DomainError::Database(e) => e.into(),
            DomainError::Encode(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// The bot module reports its own failures (bad fields, unknown bots) as
    /// `code: -1`; outages and auth failures keep their true status.
    pub fn into_bot_module(self) -> Self {
        match self {
            ApiError::BadRequest(msg)
            | ApiError::PayloadTooLarge(msg)
            | ApiError::UnsupportedMediaType(msg)
            | ApiError::NotFound(msg) => ApiError::BotModule(msg),
            other => other,
        }
    }
}
