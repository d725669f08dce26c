//! The key-encryption key (KEK): it wraps every data key, and is kept outside
//! the database (an environment variable, or a mounted file). Without it
//! nothing sealed opens; production refuses to start without one.

use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::cipher;
use crate::config::{env_opt, ConfigError};

/// The key-encryption key used when none is configured, outside production
/// only: anyone can read it here, so it protects nothing.
const DEVELOPMENT_KEK: [u8; 32] = *b"development-only-kek-not-secret!";

/// The key-encryption key, from `DATA_KEY_ENCRYPTION_KEY` (base64 of 32 bytes),
/// and during a rotation the one before it, `DATA_KEY_ENCRYPTION_KEY_PREVIOUS`:
/// new keys are wrapped with the current one, and keys wrapped with either
/// open, so the rotation needs no downtime (see `worker replay rotate-kek`).
#[derive(Clone)]
pub struct Kek {
    pub(super) current: Arc<Aes256Gcm>,
    pub(super) previous: Option<Arc<Aes256Gcm>>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut kek = Self::current_from_env()?;
        if let Some(value) = env_opt("DATA_KEY_ENCRYPTION_KEY_PREVIOUS") {
            kek.previous = Some(Arc::new(cipher(&decode_key(
                "DATA_KEY_ENCRYPTION_KEY_PREVIOUS",
                &value,
            )?)));
        }
        Ok(kek)
    }

    /// The current key: `DATA_KEY_ENCRYPTION_KEY`, or the file named by
    /// `DATA_KEY_ENCRYPTION_KEY_FILE` (a secret mounted into a container).
    /// Required when `APP_ENV=production`, as `JWT_SECRET` is; elsewhere a
    /// fixed development key stands in, with a warning.
    fn current_from_env() -> Result<Self, ConfigError> {
        const NAME: &str = "DATA_KEY_ENCRYPTION_KEY";
        let production = std::env::var("APP_ENV").is_ok_and(|env| env == "production");
        let value = match (env_opt(NAME), env_opt("DATA_KEY_ENCRYPTION_KEY_FILE")) {
            (Some(value), _) => Some(value),
            (None, Some(path)) => {
                Some(
                    std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                        name: "DATA_KEY_ENCRYPTION_KEY_FILE",
                        value: path.clone(),
                        reason: format!("cannot be read: {e}"),
                    })?,
                )
            }
            (None, None) => None,
        };
        let Some(value) = value else {
            if production {
                return Err(ConfigError::Invalid {
                    name: NAME,
                    value: String::new(),
                    reason:
                        "must be set when APP_ENV=production (or DATA_KEY_ENCRYPTION_KEY_FILE): \
                             32 random bytes in base64, e.g. `openssl rand -base64 32`; back it up \
                             apart from the database, since nothing sealed opens without it"
                            .into(),
                });
            }
            tracing::warn!("DATA_KEY_ENCRYPTION_KEY is not set: using the development key; never do this in production");
            return Ok(Self::from_bytes(&DEVELOPMENT_KEK));
        };
        let bytes = decode_key(NAME, &value)?;
        if production && bytes.as_slice() == DEVELOPMENT_KEK.as_slice() {
            return Err(ConfigError::Invalid {
                name: NAME,
                value: "(hidden)".into(),
                reason: "is the development key, which anyone can read".into(),
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            current: Arc::new(cipher(bytes)),
            previous: None,
        }
    }
}

fn decode_key(name: &'static str, value: &str) -> Result<Vec<u8>, ConfigError> {
    BASE64
        .decode(value.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| ConfigError::Invalid {
            name,
            value: "(hidden)".into(),
            reason: "must be 32 bytes in base64, e.g. `openssl rand -base64 32`".into(),
        })
}
