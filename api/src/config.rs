//! The api's typed configuration. See the README's configuration table.

use crate::domain::bots::SettingsAllowed;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use events::config::{env_opt, env_or, BusSettings, ConfigError, DatabaseSettings, SecretString};

use crate::auth::AuthMode;
use crate::cors::AllowedOrigins;
use crate::rate_limits::RateLimitSettings;

/// Used when `JWT_SECRET` is unset: fine on a laptop, refused when `APP_ENV=production`.
pub const DEV_JWT_SECRET: &str = "dev-only-insecure-secret-change-me";

/// Secrets that appear in this repository (defaults, examples, tests, and what
/// earlier compose files shipped): anyone can read them, so production refuses them.
const KNOWN_SECRETS: &[&str] = &[
    DEV_JWT_SECRET,
    "change-me-in-production",
    "system-test-secret",
    "test-secret",
    "replace-with-at-least-32-random-bytes",
];

/// The shortest secret production accepts (HS256 keys should be at least 256 bits).
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    /// `BIND_ADDR`.
    pub bind_addr: SocketAddr,
    /// `JWT_SECRET`.
    pub jwt_secret: SecretString,
    /// `DATA_KEY_ENCRYPTION_KEY`: wraps the data keys that seal personal text.
    pub kek: events::sealing::Kek,
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
    /// `READ_CACHE_MAX_BYTES`: the read cache's memory budget.
    pub read_cache_max_bytes: usize,
    /// `HEADER_READ_TIMEOUT_SECS`: a client must send its headers within this.
    pub header_read_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECS`: ... and its body within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// `WEB_APP`: `on` (default) serves the web client at `/app/`; `off` does not.
    pub web_app: bool,
    /// `ALLOWED_MODELS` (comma-separated; default `OPENAI_MODEL`) and
    /// `BOT_MAX_REPLY_TOKENS` (4096): what `bots/update` lets an owner choose.
    pub bot_settings: SettingsAllowed,
    /// `METRICS`: `on` (default) records Prometheus metrics and serves them at
    /// `/metrics`; `off` records nothing (`/metrics` answers 404).
    pub metrics: bool,
    /// `STREAM_TICKET_TTL_SECS`: how long a stream ticket opens its stream.
    pub stream_ticket_ttl: Duration,
    /// `SEND_STALL_SECS`: a connection whose client reads nothing of what it is
    /// sent for this long is closed.
    pub send_stall: Duration,
    /// `SSE_MAX_STREAMS_PER_USER`: open `chat/stream`s per user (429 past it).
    pub max_streams_per_user: usize,
    /// `CONVERSATION_MAX_UNANSWERED`, `USER_MAX_UNANSWERED`: past these many
    /// unanswered messages (in one conversation, across a user's bots), a new
    /// message gets 429; `0` turns a cap off.
    pub conversation_max_unanswered: u32,
    pub user_max_unanswered: u32,
    /// `USER_DAILY_TOKEN_BUDGET`: tokens a user's model calls may use per UTC
    /// day; past it `new_chat` and `regenerate` answer 429. Unset: no budget.
    pub token_budget: events::budget::DailyBudget,
    /// `USER_MAX_BOTS`: live bots per user; `0` turns the cap off.
    pub user_max_bots: u32,
    /// `HEAVY_READS_AT_ONCE`: uncached history pages and lists read and
    /// rendered at once; more wait their turn.
    pub heavy_reads_at_once: usize,
    /// `NEW_CHAT_PER_MINUTE`, `LOGIN_FAILURES_PER_MINUTE`, `REGISTER_PER_MINUTE`.
    pub rate_limits: RateLimitSettings,
    /// `TRUSTED_PROXIES`: comma-separated addresses whose `X-Forwarded-For` is
    /// believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// `CORS_ALLOWED_ORIGINS`: origins whose pages may call the api (see `cors`).
    pub cors_allowed_origins: AllowedOrigins,
    /// `SSE_KEEPALIVE_SECS`: a comment goes out on an idle stream this often.
    pub stream_keep_alive: Duration,
}

impl ApiConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let production = env_or("APP_ENV", String::new())? == "production";
        let jwt_secret = match env_opt("JWT_SECRET") {
            Some(secret) if production => check_production_secret(secret)?,
            Some(secret) => secret,
            None if production => {
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
        // The worker answers with OPENAI_MODEL unless a bot chose another.
        let default_model = env_or("OPENAI_MODEL", events::config::DEFAULT_MODEL.to_string())?;
        let allowed_models: Vec<String> = env_or("ALLOWED_MODELS", default_model)?
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        let bot_settings = SettingsAllowed {
            models: allowed_models,
            max_reply_tokens: env_or("BOT_MAX_REPLY_TOKENS", 4096)?.max(1),
        };
        let persona_presets = env_or(
            "PERSONA_PRESETS",
            "Jay Chou,Jackie Chan,Defined by me".to_string(),
        )?
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
        let database = DatabaseSettings::from_env()?;
        let refresh_ttl = Duration::from_secs(env_or("REFRESH_TOKEN_TTL_SECS", 7 * 24 * 3600)?);
        if database.session_retention < refresh_ttl {
            return Err(ConfigError::Invalid {
                name: "SESSION_RETENTION_SECS",
                value: database.session_retention.as_secs().to_string(),
                reason: format!(
                    "must be at least REFRESH_TOKEN_TTL_SECS ({}), or sessions are pruned while still refreshable",
                    refresh_ttl.as_secs()
                ),
            });
        }
        Ok(Self {
            database,
            bus: BusSettings::from_env()?,
            bind_addr: env_or("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?,
            jwt_secret: jwt_secret.into(),
            kek: events::sealing::Kek::from_env()?,
            auth_mode: env_or("AUTH_MODE", AuthMode::Strict)?,
            access_ttl: Duration::from_secs(env_or("ACCESS_TOKEN_TTL_SECS", 3600)?),
            refresh_ttl,
            reply_wait: Duration::from_secs(env_or("REPLY_WAIT_SECS", 60)?),
            max_input_chars: env_or("MAX_INPUT_CHARS", 4000)?,
            max_body_bytes: env_or("MAX_BODY_BYTES", 64 * 1024)?,
            persona_presets,
            read_cache_ttl: Duration::from_millis(env_or("READ_CACHE_TTL_MS", 1000)?),
            read_cache_max_bytes: env_or("READ_CACHE_MAX_BYTES", 64 * 1024 * 1024)?,
            header_read_timeout: Duration::from_secs(
                env_or("HEADER_READ_TIMEOUT_SECS", 10)?.max(1),
            ),
            body_read_timeout: Duration::from_secs(env_or("BODY_READ_TIMEOUT_SECS", 30)?.max(1)),
            send_stall: Duration::from_secs(env_or("SEND_STALL_SECS", 30)?.max(1)),
            web_app: on_unless_off("WEB_APP")?,
            bot_settings,
            metrics: on_unless_off("METRICS")?,
            stream_ticket_ttl: Duration::from_secs(env_or("STREAM_TICKET_TTL_SECS", 300)?.max(1)),
            max_streams_per_user: env_or("SSE_MAX_STREAMS_PER_USER", 5)?,
            conversation_max_unanswered: env_or("CONVERSATION_MAX_UNANSWERED", 50)?,
            user_max_unanswered: env_or("USER_MAX_UNANSWERED", 200)?,
            token_budget: events::budget::DailyBudget::from_env()?,
            user_max_bots: env_or("USER_MAX_BOTS", 1000)?,
            heavy_reads_at_once: env_or("HEAVY_READS_AT_ONCE", 8)?,
            rate_limits: RateLimitSettings {
                new_chat_per_minute: env_or("NEW_CHAT_PER_MINUTE", 0)?,
                login_failures_per_minute: env_or("LOGIN_FAILURES_PER_MINUTE", 10)?,
                register_per_minute: env_or("REGISTER_PER_MINUTE", 0)?,
            },
            trusted_proxies: trusted_proxies()?,
            cors_allowed_origins: AllowedOrigins::parse(
                &std::env::var("CORS_ALLOWED_ORIGINS").unwrap_or_default(),
            )?,
            stream_keep_alive: Duration::from_secs(env_or("SSE_KEEPALIVE_SECS", 15)?.max(1)),
        })
    }
}

/// A setting that is `on` (the default) or `off`.
fn on_unless_off(name: &'static str) -> Result<bool, ConfigError> {
    let value = std::env::var(name).unwrap_or_default();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name,
            value,
            reason: "use on or off".into(),
        }),
    }
}

fn trusted_proxies() -> Result<Vec<IpAddr>, ConfigError> {
    let Some(list) = env_opt("TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                    name: "TRUSTED_PROXIES",
                    value: list.clone(),
                    reason: format!("{a:?} is not an IP address: {e}"),
                })
        })
        .collect()
}

/// Production refuses a secret anyone could guess or read in this repository.
fn check_production_secret(secret: String) -> Result<String, ConfigError> {
    let refuse = |reason: String| ConfigError::Invalid {
        name: "JWT_SECRET",
        value: "(hidden)".into(),
        reason,
    };
    if KNOWN_SECRETS.contains(&secret.trim()) {
        return Err(refuse(
            "is an example value published in the repository; generate one with `openssl rand -base64 48`".into(),
        ));
    }
    if secret.len() < MIN_PRODUCTION_SECRET_BYTES {
        return Err(refuse(format!(
            "must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes when APP_ENV=production; \
             generate one with `openssl rand -base64 48`"
        )));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_short_and_published_secrets() {
        assert!(check_production_secret("short".into()).is_err());
        assert!(check_production_secret("change-me-in-production".into()).is_err());
        assert!(check_production_secret(DEV_JWT_SECRET.into()).is_err());
        let good = "k".repeat(MIN_PRODUCTION_SECRET_BYTES);
        assert_eq!(check_production_secret(good.clone()).ok(), Some(good));
    }
}
