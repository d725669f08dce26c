//! The commands the api accepts, as typed values that cannot hold bad input
//! ("parse, don't validate"), and the functions that turn them into events or rows.
//! Nothing here knows about HTTP.

pub mod bots;
pub mod chat;
pub mod users;

use events::store::AppendError;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLong(String),
    #[error("no such bot for this user")]
    BotNotFound,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A required field, or a clear error naming it.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, DomainError> {
    value.ok_or_else(|| DomainError::Invalid(format!("{field} is required")))
}
