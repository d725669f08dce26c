//! argon2id password hashes. Hashing is deliberately slow, so it runs on the blocking
//! pool rather than stalling the request threads.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::error::ApiError;

pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(format!("hashing failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))?
}

/// `true` when `password` matches the stored hash. An unreadable hash never matches.
pub async fn verify(password: String, stored_hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored_hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("verification task failed: {e}")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hash = super::hash("s3cret pass".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(super::verify("s3cret pass".into(), hash.clone())
            .await
            .unwrap());
        assert!(!super::verify("wrong".into(), hash).await.unwrap());
        assert!(!super::verify("x".into(), "not a hash".into())
            .await
            .unwrap());
    }
}
