//! The model: an OpenAI-compatible server through async-openai, or the offline
//! responder when no key is configured.
//!
//! There is exactly one retry layer, [`Model::complete`]: async-openai's own retry
//! middleware is replaced by a plain transport, and a message whose model call fails
//! for good is answered with `BotReplyFailed` (and acked) rather than redelivered,
//! so redelivery never multiplies the attempts.
//!
//! Replies stream: given a [`DeltaSink`], each attempt asks the model to stream
//! and hands every piece of text to the sink as it arrives (an attempt that fails
//! midway is started over, and the sink is told so).
//!
//! A streamed attempt has three clocks, because a long answer is not a stuck one:
//! the first text must come within `MODEL_FIRST_TOKEN_SECS`, no gap between two
//! chunks may pass `MODEL_IDLE_SECS`, and `MODEL_TIMEOUT_SECS` caps the whole
//! attempt generously. A dropped connection mid-answer is worth another attempt.
//! An answer is complete when the model says so (`finish_reason`), whether or not
//! a `[DONE]` follows: several OpenAI-compatible servers keep the connection open.
//! An answer longer than `MAX_REPLY_BYTES` fails at once, without a retry: asking
//! again would cost as much and end the same way.
//!
//! Every call is metered (see [`crate::meter`]): streamed calls ask for the
//! provider's usage (`stream_options.include_usage`), which comes in a chunk of
//! its own after the one that finishes the answer.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequest,
};
use async_openai::Client;
use events::config::ExposeSecret;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::ModelSettings;
use crate::meter::Meter;
use crate::prompt::{Prompt, Role};

/// How long the usage chunk may follow the chunk that finishes an answer; a
/// server that sends none (or holds the connection open) gets an estimate.
const USAGE_GRACE: Duration = Duration::from_millis(500);

/// How one attempt failed. The text is safe to show a user and to store in the
/// history: it names the kind of failure and the HTTP status, never the provider's
/// own message, which can carry account details ("Incorrect API key provided:
/// sk-..."). That message goes to the log only.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttemptError {
    /// Worth another attempt: rate limits, 5xx, timeouts, network errors.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help: a rejected request, bad credentials, no quota.
    #[error("{0}")]
    Permanent(String),
}

/// What a streamed call reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed {
    /// An attempt starts: text from an earlier attempt no longer counts.
    Attempt,
    /// The text just written.
    Text(String),
}

/// Where a streamed reply's text goes while the model writes it.
pub type DeltaSink = mpsc::UnboundedSender<Streamed>;

/// What a bot's owner chose for its replies (`bots/update`); `None` leaves the
/// choice to `OPENAI_MODEL` and the model's own defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSettings {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// Why a message gets no reply, worded for the person who sent it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ModelFailure(pub String);

enum Backend {
    OpenAi {
        client: Box<Client<OpenAIConfig>>,
        model: String,
    },
    /// Used when `OPENAI_API_KEY` is unset, so a fresh checkout runs end to end.
    Offline,
}

pub struct Model {
    backend: Backend,
    max_attempts: u32,
    retry_base: Duration,
    timeout: Duration,
    first_token_timeout: Duration,
    idle_timeout: Duration,
    max_reply_bytes: usize,
    stream_usage: bool,
}

pub const OFFLINE_MODEL_NAME: &str = "offline-responder";

impl Model {
    pub fn from_settings(settings: &ModelSettings) -> Result<Self, reqwest::Error> {
        let backend = match &settings.api_key {
            Some(key) => {
                let http = reqwest::Client::builder()
                    .timeout(settings.timeout)
                    .connect_timeout(Duration::from_secs(10))
                    .build()?;
                let config = OpenAIConfig::new()
                    .with_api_key(key.expose_secret())
                    .with_api_base(settings.base_url.trim_end_matches('/'));
                Backend::OpenAi {
                    client: Box::new(
                        Client::with_config(config).with_http_service(ReqwestService::new(http)),
                    ),
                    model: settings.model.clone(),
                }
            }
            None => {
                tracing::warn!("OPENAI_API_KEY is not set: replies come from the offline responder, not a model");
                Backend::Offline
            }
        };
        Ok(Self {
            backend,
            max_attempts: settings.max_attempts,
            retry_base: settings.retry_base,
            timeout: settings.timeout,
            first_token_timeout: settings.first_token_timeout,
            idle_timeout: settings.idle_timeout,
            max_reply_bytes: settings.max_reply_bytes,
            stream_usage: settings.stream_usage,
        })
    }

    pub fn name(&self) -> &str {
        match &self.backend {
            Backend::OpenAi { model, .. } => model,
            Backend::Offline => OFFLINE_MODEL_NAME,
        }
    }

    /// The model a call with `settings` goes to.
    pub fn name_for<'a>(&'a self, settings: &'a CallSettings) -> &'a str {
        match (&self.backend, &settings.model) {
            (Backend::OpenAi { .. }, Some(chosen)) => chosen,
            _ => self.name(),
        }
    }

    /// Calls the model, retrying transient failures with exponential backoff; with
    /// `deltas`, the reply streams into it as it is written. `meter` keeps the
    /// call's account, whatever becomes of it.
    pub async fn complete(
        &self,
        prompt: &Prompt,
        settings: &CallSettings,
        deltas: Option<&DeltaSink>,
        meter: &mut Meter<'_>,
    ) -> Result<String, ModelFailure> {
        let started = std::time::Instant::now();
        let outcome = self.complete_untimed(prompt, settings, deltas, meter).await;
        let label = match &outcome {
            Ok(_) => "answered",
            Err(failure) if failure.0.starts_with("The model is unavailable") => "unavailable",
            Err(_) => "refused",
        };
        metrics::counter!(events::metrics::MODEL_CALLS, "outcome" => label).increment(1);
        metrics::histogram!(events::metrics::MODEL_DURATION)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn complete_untimed(
        &self,
        prompt: &Prompt,
        settings: &CallSettings,
        deltas: Option<&DeltaSink>,
        meter: &mut Meter<'_>,
    ) -> Result<String, ModelFailure> {
        let mut delay = self.retry_base;
        let mut attempt = 1;
        loop {
            meter.attempt();
            let attempted = self.attempt(prompt, settings, deltas, &mut *meter);
            let outcome = match tokio::time::timeout(self.timeout, attempted).await {
                Ok(outcome) => outcome,
                Err(_) => Err(AttemptError::Transient(format!(
                    "no answer within {}s",
                    self.timeout.as_secs()
                ))),
            };
            match outcome {
                Ok(text) => return Ok(text),
                Err(AttemptError::Permanent(reason)) => {
                    tracing::warn!(attempt, %reason, "model refused the request");
                    return Err(ModelFailure(format!(
                        "The model could not answer this message: {reason}."
                    )));
                }
                Err(AttemptError::Transient(reason)) if attempt >= self.max_attempts => {
                    tracing::warn!(attempt, %reason, "model still failing; giving up");
                    return Err(ModelFailure(format!(
                        "The model is unavailable right now ({reason}; tried {attempt} times). \
                         Please send the message again later."
                    )));
                }
                Err(AttemptError::Transient(reason)) => {
                    tracing::info!(attempt, %reason, retry_in_ms = delay.as_millis() as u64, "model call failed; retrying");
                    metrics::counter!(events::metrics::MODEL_RETRIES).increment(1);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        prompt: &Prompt,
        settings: &CallSettings,
        deltas: Option<&DeltaSink>,
        meter: &mut Meter<'_>,
    ) -> Result<String, AttemptError> {
        if let Some(sink) = deltas {
            let _ = sink.send(Streamed::Attempt);
        }
        match (&self.backend, deltas) {
            (Backend::Offline, deltas) => {
                let reply = offline_reply(prompt);
                meter.wrote(&reply);
                if let Some(sink) = deltas {
                    let _ = sink.send(Streamed::Text(reply.clone()));
                }
                Ok(reply)
            }
            (Backend::OpenAi { client, model }, Some(sink)) => {
                let request = CreateChatCompletionRequest {
                    model: settings.model.clone().unwrap_or_else(|| model.clone()),
                    messages: to_messages(prompt),
                    temperature: settings.temperature,
                    max_completion_tokens: settings.max_tokens,
                    stream_options: self.stream_usage.then_some(ChatCompletionStreamOptions {
                        include_usage: Some(true),
                        include_obfuscation: None,
                    }),
                    ..Default::default()
                };
                let started = tokio::time::Instant::now();
                let mut stream = tokio::time::timeout(
                    self.first_token_timeout,
                    client.chat().create_stream(request),
                )
                .await
                .map_err(|_| self.no_first_token())?
                .map_err(classify)?;
                let mut reply = String::new();
                let mut finished = false;
                loop {
                    let until = if reply.is_empty() {
                        started + self.first_token_timeout
                    } else {
                        tokio::time::Instant::now() + self.idle_timeout
                    };
                    let chunk = match tokio::time::timeout_at(until, stream.next()).await {
                        Ok(Some(chunk)) => chunk.map_err(classify_mid_stream)?,
                        Ok(None) => break,
                        Err(_) if reply.is_empty() => return Err(self.no_first_token()),
                        Err(_) => {
                            return Err(AttemptError::Transient(format!(
                                "the model went quiet for {}s mid-answer",
                                self.idle_timeout.as_secs()
                            )))
                        }
                    };
                    if let Some(usage) = &chunk.usage {
                        meter.reported(usage.prompt_tokens, usage.completion_tokens);
                    }
                    let Some(choice) = chunk.choices.into_iter().next() else {
                        continue;
                    };
                    if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                        if reply.is_empty() {
                            metrics::histogram!(events::metrics::MODEL_FIRST_TOKEN)
                                .record(started.elapsed().as_secs_f64());
                        }
                        if reply.len() + text.len() > self.max_reply_bytes {
                            return Err(self.too_long());
                        }
                        reply.push_str(&text);
                        meter.wrote(&text);
                        let _ = sink.send(Streamed::Text(text));
                    }
                    if choice.finish_reason.is_some() {
                        finished = true;
                        break;
                    }
                }
                // The usage chunk follows the one that finished the answer.
                if finished {
                    let usage_chunk = tokio::time::timeout(USAGE_GRACE, async {
                        while let Some(Ok(chunk)) = stream.next().await {
                            if chunk.usage.is_some() {
                                return chunk.usage;
                            }
                        }
                        None
                    });
                    if let Ok(Some(usage)) = usage_chunk.await {
                        meter.reported(usage.prompt_tokens, usage.completion_tokens);
                    }
                }
                // A stream cut off before the model said it was done is a failed
                // attempt, not a shorter reply.
                if !finished {
                    return Err(AttemptError::Transient(
                        "the model's answer was cut off".into(),
                    ));
                }
                if reply.trim().is_empty() {
                    return Err(AttemptError::Transient(
                        "the model returned an empty answer".into(),
                    ));
                }
                Ok(reply)
            }
            (Backend::OpenAi { client, model }, None) => {
                let request = CreateChatCompletionRequest {
                    model: settings.model.clone().unwrap_or_else(|| model.clone()),
                    messages: to_messages(prompt),
                    temperature: settings.temperature,
                    max_completion_tokens: settings.max_tokens,
                    ..Default::default()
                };
                let response = client.chat().create(request).await.map_err(classify)?;
                if let Some(usage) = &response.usage {
                    meter.reported(usage.prompt_tokens, usage.completion_tokens);
                }
                let text = response
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|choice| choice.message.content.or(choice.message.refusal))
                    .filter(|text| !text.trim().is_empty())
                    .ok_or_else(|| {
                        AttemptError::Transient("the model returned an empty answer".into())
                    })?;
                if text.len() > self.max_reply_bytes {
                    return Err(self.too_long());
                }
                meter.wrote(&text);
                Ok(text)
            }
        }
    }

    fn no_first_token(&self) -> AttemptError {
        AttemptError::Transient(format!(
            "the model sent nothing within {}s",
            self.first_token_timeout.as_secs()
        ))
    }

    fn too_long(&self) -> AttemptError {
        AttemptError::Permanent(format!(
            "the model's answer is longer than the limit of {} bytes",
            self.max_reply_bytes
        ))
    }
}

/// An error while the answer streams: a dropped connection or a garbled event is
/// worth another attempt, unlike a refusal of the request itself.
fn classify_mid_stream(error: OpenAIError) -> AttemptError {
    match error {
        OpenAIError::StreamError(e) => {
            tracing::warn!(error = %e, "the model's stream broke off");
            AttemptError::Transient("the model's answer broke off".into())
        }
        other => classify(other),
    }
}

/// The request's messages: exactly [`Prompt::messages`], whose digests a reply
/// records.
fn to_messages(prompt: &Prompt) -> Vec<ChatCompletionRequestMessage> {
    prompt
        .messages()
        .into_iter()
        .map(|(role, text)| match role {
            "system" => ChatCompletionRequestSystemMessage::from(text).into(),
            "assistant" => ChatCompletionRequestAssistantMessage::from(text).into(),
            _ => ChatCompletionRequestUserMessage::from(text).into(),
        })
        .collect()
}

/// Sorts an async-openai error into "try again" or "give up", with a reason safe
/// for users; the provider's own text is logged here and goes nowhere else.
pub fn classify(error: OpenAIError) -> AttemptError {
    match error {
        OpenAIError::ApiError(response) => {
            let status = response.status_code.as_u16();
            let api = response.api_error;
            tracing::warn!(status, provider_message = %api.message, code = ?api.code,
                kind = ?api.r#type, "the model provider returned an error");
            let no_quota = api.code.as_deref() == Some("insufficient_quota")
                || api.r#type.as_deref() == Some("insufficient_quota");
            if no_quota {
                AttemptError::Permanent(format!(
                    "the model provider's quota is exhausted (HTTP {status})"
                ))
            } else if status == 429 {
                AttemptError::Transient(format!("the model is rate limited (HTTP {status})"))
            } else if status == 408 || status >= 500 {
                AttemptError::Transient(format!("the model server failed (HTTP {status})"))
            } else if status == 401 || status == 403 {
                AttemptError::Permanent(format!(
                    "the model provider refused this server's credentials (HTTP {status})"
                ))
            } else {
                AttemptError::Permanent(format!("the model refused the request (HTTP {status})"))
            }
        }
        OpenAIError::Reqwest(e) => {
            tracing::warn!(error = %e, "network error calling the model");
            let reason = if e.is_timeout() {
                "the model did not answer in time"
            } else {
                "the model server could not be reached"
            };
            AttemptError::Transient(reason.into())
        }
        OpenAIError::JSONDeserialize(e, _) => {
            tracing::warn!(error = %e, "unreadable answer from the model server");
            AttemptError::Transient("the model server sent an unreadable answer".into())
        }
        other => {
            tracing::warn!(error = %other, "the model call failed");
            AttemptError::Permanent("the model call failed".into())
        }
    }
}

fn offline_reply(prompt: &Prompt) -> String {
    let question = prompt
        .turns
        .iter()
        .rev()
        .find(|t| t.role == Role::User)
        .map(|t| t.content.as_str())
        .unwrap_or("");
    format!("[offline responder: no OPENAI_API_KEY is configured] You said: {question}")
}
