//! The commands the api accepts, as typed values that cannot hold bad input
//! ("parse, don't validate"), and the functions that turn them into events or rows.
//! Nothing here knows about HTTP.

pub mod bots;
pub mod chat;
pub mod controls;
pub mod erasure;
pub mod memory;
pub mod sessions;
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
    /// An idempotency key presented again with different content.
    #[error("{0}")]
    KeyReused(String),
    /// Past `USER_MAX_BOTS`.
    #[error("you have {0} bots, the most allowed; delete one to create another")]
    TooManyBots(u32),
    /// Past an admission cap on unanswered messages.
    #[error("{count} messages already wait for an answer ({scope})")]
    TooManyUnanswered { scope: &'static str, count: i64 },
    /// Not now: the conversation is in a state that does not allow it (a reply
    /// is being written, or the conversation kept changing).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Sealed(#[from] events::sealing::SealError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// `true` when `text` has nothing a person could see: empty, white space, or only
/// invisible characters (zero-width spaces and joiners, direction marks, fillers,
/// variation selectors, tag characters).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || is_invisible(c))
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// A required field, or a clear error naming it.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, DomainError> {
    value.ok_or_else(|| DomainError::Invalid(format!("{field} is required")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn invisible_text_is_blank() {
        assert!(super::is_blank("\u{200b}\u{200b}"));
        assert!(super::is_blank(" \u{feff}\t\u{2060}"));
        assert!(!super::is_blank("\u{200b}a"));
        assert!(!super::is_blank("你"));
    }
}
