//! Who is calling.
//!
//! - [`password`]: argon2id hashing, off the async threads.
//! - [`jwt`]: HS256 access and refresh tokens in simplejwt's shape.
//! - [`caller`]: extractors that turn the `Authorization` header into a user,
//!   according to [`AuthMode`].

pub mod caller;
pub mod jwt;
pub mod password;

use std::str::FromStr;

pub use caller::{Caller, TokenUser};
pub use jwt::{JwtKeys, TokenKind};

/// How chat and bot routes authenticate (`AUTH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every chat and bot route requires a Bearer access token.
    Strict,
    /// The original app's way: a request without an `Authorization` header acts for
    /// the `user_id` it names. A request with a token is checked as in strict mode.
    Legacy,
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(AuthMode::Strict),
            "legacy" => Ok(AuthMode::Legacy),
            other => Err(format!("expected strict or legacy, got {other:?}")),
        }
    }
}
