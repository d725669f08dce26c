//! Access and refresh tokens: HS256 JWTs carrying simplejwt's claims
//! (`token_type`, `user_id`, `exp`, `iat`, `jti`) and the login session they belong
//! to (`sid`), so that a session can be revoked with all its tokens.
//!
//! Only HS256 is accepted, so `alg: none` and algorithm-confusion tokens fail, and
//! the `token_type` claim keeps a refresh token from ever working as an access token
//! and the other way round.

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use events::event::{BotId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
    /// A stream ticket: opens `chat/stream` for one bot of one user, from a URL
    /// (see `routes::stream`).
    Stream,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub token_type: TokenKind,
    pub user_id: UserId,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The session (one login) that issued this token.
    pub sid: String,
    /// The user's credentials version when the session was started: a password
    /// change raises it, and older tokens stop working. Absent (0) in tokens from
    /// before it existed.
    #[serde(default)]
    pub cv: u32,
    /// The one bot a stream ticket opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<BotId>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is invalid or expired")]
    Invalid,
    #[error("token is a {0:?} token")]
    WrongKind(TokenKind),
    #[error("cannot sign a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(secret: &str, access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    /// A fresh random token id.
    pub fn new_jti() -> String {
        Uuid::new_v4().simple().to_string()
    }

    pub fn issue(
        &self,
        (user_id, sid, cv): (UserId, &str, u32),
        kind: TokenKind,
        jti: String,
    ) -> Result<String, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let ttl = match kind {
            TokenKind::Access | TokenKind::Stream => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            token_type: kind,
            user_id,
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti,
            sid: sid.to_string(),
            cv,
            bot: None,
        };
        self.sign(&claims)
    }

    /// A ticket that opens `bot`'s stream for the holder of session `sid`,
    /// until `expires_at` (Unix seconds).
    pub fn stream_ticket(
        &self,
        (user_id, sid, cv): (UserId, &str, u32),
        bot: BotId,
        expires_at: i64,
    ) -> Result<String, TokenError> {
        self.sign(&Claims {
            token_type: TokenKind::Stream,
            user_id,
            iat: chrono::Utc::now().timestamp(),
            exp: expires_at,
            jti: Self::new_jti(),
            sid: sid.to_string(),
            cv,
            bot: Some(bot),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// A fresh access token and the refresh token `refresh_jti` of session `sid`,
    /// started under credentials version `cv`.
    pub fn pair(
        &self,
        subject: (UserId, &str, u32),
        refresh_jti: &str,
    ) -> Result<(String, String), TokenError> {
        Ok((
            self.issue(subject, TokenKind::Access, Self::new_jti())?,
            self.issue(subject, TokenKind::Refresh, refresh_jti.to_string())?,
        ))
    }

    pub fn verify(&self, token: &str, expected: TokenKind) -> Result<Claims, TokenError> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        if claims.token_type != expected {
            return Err(TokenError::WrongKind(claims.token_type));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(
            "test-secret",
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn a_real_token_round_trips_and_kinds_do_not_mix() {
        let keys = keys();
        let (access, refresh) = keys.pair((42, "s1", 0), "j1").unwrap();
        assert_eq!(keys.verify(&access, TokenKind::Access).unwrap().user_id, 42);
        let claims = keys.verify(&refresh, TokenKind::Refresh).unwrap();
        assert_eq!((claims.sid.as_str(), claims.jti.as_str()), ("s1", "j1"));
        assert_eq!(
            keys.verify(&refresh, TokenKind::Refresh).unwrap().user_id,
            42
        );
        assert!(matches!(
            keys.verify(&refresh, TokenKind::Access),
            Err(TokenError::WrongKind(TokenKind::Refresh))
        ));
        assert!(keys.verify(&access, TokenKind::Refresh).is_err());
    }

    #[test]
    fn tampered_foreign_and_unsigned_tokens_fail() {
        let keys = keys();
        let access = keys
            .issue((1, "s", 0), TokenKind::Access, JwtKeys::new_jti())
            .unwrap();
        let mut parts: Vec<String> = access.split('.').map(str::to_string).collect();
        // Re-sign nothing: swap the payload for one naming another user.
        let other = keys
            .issue((2, "s", 0), TokenKind::Access, JwtKeys::new_jti())
            .unwrap();
        parts[1] = other.split('.').nth(1).unwrap().to_string();
        assert!(keys.verify(&parts.join("."), TokenKind::Access).is_err());

        let foreign = JwtKeys::new("other", Duration::from_secs(60), Duration::from_secs(60))
            .issue((1, "s", 0), TokenKind::Access, JwtKeys::new_jti())
            .unwrap();
        assert!(keys.verify(&foreign, TokenKind::Access).is_err());

        // base64url of {"alg":"none","typ":"JWT"}, with the real claims and no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            access.split('.').nth(1).unwrap()
        );
        assert!(keys.verify(&none, TokenKind::Access).is_err());
    }
}
