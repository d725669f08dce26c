//! Typed configuration shared by both binaries, read from environment variables.
//!
//! Every setting has a default that works against local services, so a fresh checkout
//! runs with no configuration at all. A value that is present but malformed is an
//! error at start, never silently replaced by the default.

use std::str::FromStr;

pub use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// `OPENAI_MODEL` when unset: the model the worker answers with, and (in the
/// api) the one model `bots/update` allows unless `ALLOWED_MODELS` says more.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Reads `name`, falling back to `default` when unset or empty.
pub fn env_or<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    value,
                    reason: e.to_string(),
                })
        }
        _ => Ok(default),
    }
}

/// Reads `name` as a string, `None` when unset or empty.
pub fn env_opt(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`; the database named in it is created when missing. Secret:
    /// it may carry a password, and `Debug` prints it as redacted.
    pub url: SecretString,
    /// `DB_MAX_CONNECTIONS`: pool size per process.
    pub max_connections: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS`: how long a request waits for a connection before it
    /// is answered 503 (short, so a database outage is reported rather than hung on).
    pub acquire_timeout: Duration,
    /// `DB_COMMIT_TIMEOUT_MS`: longest an append's commit may take; past it the
    /// connection is dropped and the append answered 503.
    pub commit_timeout: Duration,
    /// `OUTBOX_RETENTION_SECS`: how long sent outbox rows are kept before they
    /// are pruned (the event log is the record).
    pub outbox_retention: Duration,
    /// `DB_SESSION_IDLE_TIMEOUT_SECS`: the server closes a connection of ours
    /// that stays silent this long, in a transaction or not (MySQL's and
    /// MariaDB's `wait_timeout`), so that a frozen or partitioned process cannot
    /// hold the log's head lock for the server's default of 8 hours. `None` (0)
    /// leaves the server's default (`worker replay`, whose lock connection idles).
    pub session_idle_timeout: Option<Duration>,
    /// `SESSION_RETENTION_SECS`: how long a session unused since its start or last
    /// refresh is kept; at least the refresh tokens' TTL, since a pruned session
    /// cannot be refreshed.
    pub session_retention: Duration,
}

impl DatabaseSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: env_or(
                "DATABASE_URL",
                "mysql://root@127.0.0.1:3306/chatbot".to_string(),
            )?
            .into(),
            max_connections: env_or("DB_MAX_CONNECTIONS", 16)?,
            acquire_timeout: Duration::from_millis(env_or("DB_ACQUIRE_TIMEOUT_MS", 3000)?),
            commit_timeout: Duration::from_millis(env_or("DB_COMMIT_TIMEOUT_MS", 10_000)?),
            outbox_retention: Duration::from_secs(env_or("OUTBOX_RETENTION_SECS", 24 * 3600)?),
            session_idle_timeout: match env_or("DB_SESSION_IDLE_TIMEOUT_SECS", 20u64)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            session_retention: Duration::from_secs(env_or(
                "SESSION_RETENTION_SECS",
                30 * 24 * 3600,
            )?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `AMQP_URL`; secret, as it carries the broker's password.
    pub url: SecretString,
    /// `BUS_NAMESPACE`: prefix of every exchange and queue name, so that several
    /// deployments (or parallel tests) can share one broker.
    pub namespace: String,
    /// `AMQP_HEARTBEAT_SECS`: a dead connection is noticed within about twice this.
    pub heartbeat_secs: u16,
    /// `DELIVERY_LIMIT`: deliveries of one message before it is dead-lettered.
    pub delivery_limit: u32,
    /// `AMQP_CA_FILE`: a PEM file of the CA that signed an `amqps://` broker's
    /// certificate, for a private CA (without it, the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl BusSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: env_or(
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            )?
            .into(),
            namespace: env_or("BUS_NAMESPACE", "chatbot".to_string())?,
            heartbeat_secs: env_or("AMQP_HEARTBEAT_SECS", 10)?,
            delivery_limit: env_or("DELIVERY_LIMIT", 5)?,
            ca_file: env_opt("AMQP_CA_FILE").map(std::path::PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_no_password() {
        let database = DatabaseSettings {
            url: "mysql://app:hunter2@db.internal:3306/chatbot"
                .to_string()
                .into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
            commit_timeout: Duration::from_secs(1),
            outbox_retention: Duration::from_secs(1),
            session_idle_timeout: None,
            session_retention: Duration::from_secs(1),
        };
        let bus = BusSettings {
            url: "amqps://app:swordfish@mq.internal/%2f".to_string().into(),
            namespace: "chatbot".into(),
            heartbeat_secs: 10,
            delivery_limit: 5,
            ca_file: None,
        };
        let printed = format!("{database:?} {bus:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("swordfish"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert_eq!(
            bus.url.expose_secret(),
            "amqps://app:swordfish@mq.internal/%2f"
        );
    }
}
