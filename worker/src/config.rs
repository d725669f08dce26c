//! The worker's typed configuration. See the README's configuration table.

use std::time::Duration;

use events::config::{env_opt, env_or, BusSettings, ConfigError, DatabaseSettings, SecretString};

#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// `OPENAI_API_KEY`; without it the worker uses the offline responder.
    pub api_key: Option<SecretString>,
    /// `OPENAI_BASE_URL`: any OpenAI-compatible server.
    pub base_url: String,
    /// `OPENAI_MODEL`.
    pub model: String,
    /// `MODEL_TIMEOUT_SECS`: the cap on one whole attempt, however it streams.
    pub timeout: Duration,
    /// `MODEL_FIRST_TOKEN_SECS`: how long the first text of an answer may take.
    pub first_token_timeout: Duration,
    /// `MODEL_IDLE_SECS`: the longest pause between two chunks of an answer.
    pub idle_timeout: Duration,
    /// `MAX_REPLY_BYTES`: a longer answer fails, without a retry.
    pub max_reply_bytes: usize,
    /// `MODEL_MAX_ATTEMPTS`: attempts for rate limits, 5xx and network errors.
    pub max_attempts: u32,
    /// `MODEL_RETRY_BASE_MS`: first backoff; it doubles per attempt.
    pub retry_base: Duration,
    /// `MAX_REPLY_TOKENS`: the cap on a reply's tokens, unless its bot sets its
    /// own (`max_reply_tokens`).
    pub max_reply_tokens: u32,
    /// `MODEL_STREAM_USAGE`: streamed calls ask for the provider's usage
    /// (`stream_options.include_usage`); `off` for a server that refuses the field.
    pub stream_usage: bool,
}

/// Long-term memory (see `memory`).
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// `MEMORY_EVERY_MESSAGES`: user messages that make a refresh due.
    pub every_messages: u32,
    /// `MEMORY_IDLE_SECS`: an idle conversation with anything unsummarized is
    /// refreshed after this.
    pub idle: Duration,
    /// `MEMORY_MAX_CHARS`: the longest summary or profile.
    pub max_chars: usize,
    /// `MEMORY_PREFETCH`: memory jobs handled at once by this process.
    pub prefetch: u16,
    /// `MEMORY_MAX_TOKENS`: the cap on each memory call's answer.
    pub max_tokens: u32,
    /// `USER_DAILY_TOKEN_BUDGET`, which memory refreshes count against too.
    pub token_budget: events::budget::DailyBudget,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub model: ModelSettings,
    /// `WORKER_PREFETCH`: messages handled at once by this process.
    pub prefetch: u16,
    /// `USER_MAX_MODEL_CALLS`: one user's sure share of this process's model
    /// calls in flight (their conversations answered at once); more only while
    /// others leave slots idle. `0` turns shares off.
    pub user_max_model_calls: u32,
    /// `DELIVERY_HOLD_SECS`: a drain started by a delivery (which it holds
    /// unacknowledged) leaves the rest of its conversation to the sweep after
    /// this, well before RabbitMQ's `consumer_timeout`.
    pub delivery_hold: Duration,
    /// `CONTEXT_BUDGET_CHARS`: how much of the conversation goes into a prompt.
    pub context_budget_chars: usize,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight messages may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `CONVERSATION_LEASE_SECS`: how long a crashed worker's hold on a
    /// conversation keeps others waiting (a live one renews it).
    pub conversation_lease: Duration,
    /// `METRICS_ADDR`: where the worker serves its Prometheus metrics (`GET /metrics`);
    /// unset, it serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub memory: MemorySettings,
    /// `USER_DAILY_TOKEN_BUDGET`: tokens a user's model calls (replies and memory
    /// refreshes) may use per UTC day. Unset: no budget.
    pub token_budget: events::budget::DailyBudget,
    /// `DATA_KEY_ENCRYPTION_KEY`: wraps the data keys that seal personal text.
    pub kek: events::sealing::Kek,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let bus = BusSettings::from_env()?;
        // A call's longest run, every attempt to its timeout: its budget
        // reservation must not run out before it does.
        let attempts = env_or("MODEL_MAX_ATTEMPTS", 4u32)?.max(1);
        let call_ttl = Duration::from_secs(env_or("MODEL_TIMEOUT_SECS", 600u64)?)
            .saturating_mul(attempts)
            .saturating_add(Duration::from_secs(300));
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            memory: MemorySettings {
                every_messages: env_or("MEMORY_EVERY_MESSAGES", 6)?.max(1),
                idle: Duration::from_secs(env_or("MEMORY_IDLE_SECS", 60u64)?.max(1)),
                max_chars: env_or("MEMORY_MAX_CHARS", 2000)?.max(1),
                prefetch: env_or("MEMORY_PREFETCH", 8)?,
                max_tokens: env_or("MEMORY_MAX_TOKENS", 1024u32)?.max(1),
                token_budget: events::budget::DailyBudget::from_env()?
                    .with_reservation_ttl(call_ttl),
            },
            bus,
            model: ModelSettings {
                api_key: env_opt("OPENAI_API_KEY").map(SecretString::from),
                base_url: env_or("OPENAI_BASE_URL", "https://api.openai.com/v1".to_string())?,
                model: env_or("OPENAI_MODEL", events::config::DEFAULT_MODEL.to_string())?,
                timeout: Duration::from_secs(env_or("MODEL_TIMEOUT_SECS", 600)?),
                first_token_timeout: Duration::from_secs(env_or("MODEL_FIRST_TOKEN_SECS", 60)?),
                idle_timeout: Duration::from_secs(env_or("MODEL_IDLE_SECS", 30)?),
                max_reply_bytes: env_or("MAX_REPLY_BYTES", 256 * 1024)?.max(1),
                max_attempts: env_or("MODEL_MAX_ATTEMPTS", 4)?.max(1),
                retry_base: Duration::from_millis(env_or("MODEL_RETRY_BASE_MS", 500)?),
                max_reply_tokens: env_or("MAX_REPLY_TOKENS", 2048u32)?.max(1),
                stream_usage: env_or("MODEL_STREAM_USAGE", "on".to_string())?.trim() != "off",
            },
            token_budget: events::budget::DailyBudget::from_env()?.with_reservation_ttl(call_ttl),
            kek: events::sealing::Kek::from_env()?,
            prefetch: env_or("WORKER_PREFETCH", 256)?,
            user_max_model_calls: env_or("USER_MAX_MODEL_CALLS", 8)?,
            delivery_hold: Duration::from_secs(env_or("DELIVERY_HOLD_SECS", 600u64)?.max(1)),
            context_budget_chars: env_or("CONTEXT_BUDGET_CHARS", 12_000)?,
            shutdown_grace: Duration::from_secs(env_or("SHUTDOWN_GRACE_SECS", 30)?),
            conversation_lease: Duration::from_secs(env_or("CONVERSATION_LEASE_SECS", 10)?),
            metrics_addr: env_opt("METRICS_ADDR")
                .map(|addr| {
                    addr.parse().map_err(|e| ConfigError::Invalid {
                        name: "METRICS_ADDR",
                        value: addr.clone(),
                        reason: format!("{e}; write host:port, e.g. 0.0.0.0:9100"),
                    })
                })
                .transpose()?,
        })
    }
}
