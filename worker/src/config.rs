//! The worker's typed configuration. See the README's configuration table.

use std::time::Duration;

use events::config::{env_opt, env_or, BusSettings, ConfigError, DatabaseSettings};

#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// `OPENAI_API_KEY`; without it the worker uses the offline responder.
    pub api_key: Option<String>,
    /// `OPENAI_BASE_URL`: any OpenAI-compatible server.
    pub base_url: String,
    /// `OPENAI_MODEL`.
    pub model: String,
    /// `MODEL_TIMEOUT_SECS`: one attempt's limit.
    pub timeout: Duration,
    /// `MODEL_MAX_ATTEMPTS`: attempts for rate limits, 5xx and network errors.
    pub max_attempts: u32,
    /// `MODEL_RETRY_BASE_MS`: first backoff; it doubles per attempt.
    pub retry_base: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub model: ModelSettings,
    /// `WORKER_PREFETCH`: messages handled at once by this process.
    pub prefetch: u16,
    /// `CONTEXT_BUDGET_CHARS`: how much of the conversation goes into a prompt.
    pub context_budget_chars: usize,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight messages may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `CONVERSATION_LEASE_SECS`: how long a crashed worker's hold on a
    /// conversation keeps others waiting (a live one renews it).
    pub conversation_lease: Duration,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            bus: BusSettings::from_env()?,
            model: ModelSettings {
                api_key: env_opt("OPENAI_API_KEY"),
                base_url: env_or("OPENAI_BASE_URL", "https://api.openai.com/v1".to_string())?,
                model: env_or("OPENAI_MODEL", "gpt-4o-mini".to_string())?,
                timeout: Duration::from_secs(env_or("MODEL_TIMEOUT_SECS", 60)?),
                max_attempts: env_or("MODEL_MAX_ATTEMPTS", 4)?.max(1),
                retry_base: Duration::from_millis(env_or("MODEL_RETRY_BASE_MS", 500)?),
            },
            prefetch: env_or("WORKER_PREFETCH", 64)?,
            context_budget_chars: env_or("CONTEXT_BUDGET_CHARS", 12_000)?,
            shutdown_grace: Duration::from_secs(env_or("SHUTDOWN_GRACE_SECS", 30)?),
            conversation_lease: Duration::from_secs(env_or("CONVERSATION_LEASE_SECS", 10)?),
        })
    }
}
