//! argon2id password hashes.
//!
//! Hashing is deliberately slow and memory-hungry (19 MiB each), so it runs on the
//! blocking pool, at most one per core at a time: 500 concurrent logins queue for
//! a permit instead of costing 10 GB at once.
//!
//! A login for an unknown user still verifies (against a fixed dummy hash), so the
//! answer takes as long as for a real one and does not reveal which usernames
//! exist.

use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::ApiError;

static PERMITS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// A hash of a password nobody has, computed once, to verify unknown users against.
static DUMMY_HASH: LazyLock<Option<String>> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(b"no user has this password", &salt)
        .map(|h| h.to_string())
        .ok()
});

/// Computes the dummy hash now, so the first unknown login is not slower.
pub async fn warm_up() {
    let _ = tokio::task::spawn_blocking(|| LazyLock::force(&DUMMY_HASH).is_some()).await;
}

async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    bounded_once_allowed(|| Ok(()), work).await
}

/// `work` on the blocking pool with a permit, if `allowed` still agrees once the
/// permit is granted.
async fn bounded_once_allowed<T: Send + 'static>(
    allowed: impl FnOnce() -> Result<(), ApiError>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("hashing permits closed: {e}")))?;
    allowed()?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))
}

pub async fn hash(password: String) -> Result<String, ApiError> {
    bounded(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(format!("hashing failed: {e}")))
    })
    .await?
}

/// `true` when `password` matches `stored_hash` (an unreadable hash never
/// matches). Without a hash (an unknown user) it spends the same work on a dummy
/// hash and fails. `allowed` is asked again when this login's turn to hash
/// comes: of a burst of guesses queued together, those past a rate limit are
/// refused, not tried.
pub async fn verify_once_allowed(
    password: String,
    stored_hash: Option<String>,
    allowed: impl FnOnce() -> Result<(), ApiError>,
) -> Result<bool, ApiError> {
    bounded_once_allowed(allowed, move || match stored_hash {
        Some(hash) => matches(&password, &hash),
        None => {
            if let Some(dummy) = DUMMY_HASH.as_deref() {
                let _ = matches(&password, dummy);
            }
            false
        }
    })
    .await
}

fn matches(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hash = super::hash("s3cret pass".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let verify = |password: &str, hash: Option<String>| {
            super::verify_once_allowed(password.into(), hash, || Ok(()))
        };
        assert!(verify("s3cret pass", Some(hash.clone())).await.unwrap());
        assert!(!verify("wrong", Some(hash.clone())).await.unwrap());
        assert!(!verify("x", Some("not a hash".into())).await.unwrap());
        assert!(!verify("s3cret pass", None).await.unwrap());
        let refused = super::verify_once_allowed("s3cret pass".into(), Some(hash), || {
            Err(crate::error::ApiError::BadRequest("blocked".into()))
        })
        .await;
        assert!(refused.is_err(), "a refused login is not tried");
    }
}
