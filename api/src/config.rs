//! The api's typed configuration. See the README's configuration table.

use std::net::SocketAddr;
use std::time::Duration;

use events::config::{env_opt, env_or, BusSettings, ConfigError, DatabaseSettings};

use crate::auth::AuthMode;

/// Used when `JWT_SECRET` is unset: fine on a laptop, refused when `APP_ENV=production`.
pub const DEV_JWT_SECRET: &str = "dev-only-insecure-secret-change-me";

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    /// `BIND_ADDR`.
    pub bind_addr: SocketAddr,
    /// `JWT_SECRET`.
    pub jwt_secret: String,
    /// `AUTH_MODE`: `strict` (default) or `legacy`.
    pub auth_mode: AuthMode,
    /// `ACCESS_TOKEN_TTL_SECS`, `REFRESH_TOKEN_TTL_SECS`.
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// `REPLY_WAIT_SECS`: how long `new_chat` waits for the reply before answering 202.
    pub reply_wait: Duration,
    /// `MAX_INPUT_CHARS`: longer `input` is refused with 413.
    pub max_input_chars: usize,
    /// `MAX_BODY_BYTES`: larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// `PERSONA_PRESETS`: comma-separated, served by `bots/get_persona`.
    pub persona_presets: Vec<String>,
    /// `READ_CACHE_TTL_MS`: longest life of a cached history or chat-list body
    /// (0 turns the cache off).
    pub read_cache_ttl: Duration,
}

impl ApiConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let jwt_secret = match env_opt("JWT_SECRET") {
            Some(secret) => secret,
            None if env_or("APP_ENV", String::new())? == "production" => {
                return Err(ConfigError::Invalid {
                    name: "JWT_SECRET",
                    value: String::new(),
                    reason: "must be set when APP_ENV=production".into(),
                })
            }
            None => {
                tracing::warn!("JWT_SECRET is not set: using the development secret; never do this in production");
                DEV_JWT_SECRET.to_string()
            }
        };
        let persona_presets = env_or(
            "PERSONA_PRESETS",
            "Jay Chou,Jackie Chan,Defined by me".to_string(),
        )?
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            bus: BusSettings::from_env()?,
            bind_addr: env_or("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?,
            jwt_secret,
            auth_mode: env_or("AUTH_MODE", AuthMode::Strict)?,
            access_ttl: Duration::from_secs(env_or("ACCESS_TOKEN_TTL_SECS", 3600)?),
            refresh_ttl: Duration::from_secs(env_or("REFRESH_TOKEN_TTL_SECS", 7 * 24 * 3600)?),
            reply_wait: Duration::from_secs(env_or("REPLY_WAIT_SECS", 60)?),
            max_input_chars: env_or("MAX_INPUT_CHARS", 4000)?,
            max_body_bytes: env_or("MAX_BODY_BYTES", 64 * 1024)?,
            persona_presets,
            read_cache_ttl: Duration::from_millis(env_or("READ_CACHE_TTL_MS", 1000)?),
        })
    }
}
