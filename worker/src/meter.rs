//! What a model call costs: tokens, attempts and time, as the call goes.
//!
//! The provider's own count wins (streamed calls ask for it with
//! `stream_options.include_usage`). A provider that reports none gets an
//! estimate, marked as one, counted with the `o200k_base` tokenizer (the
//! encoding of OpenAI's current models) rather than by characters. Failed
//! attempts are counted too, since a failed attempt is paid as well: one that
//! broke off mid-answer used its prompt and what it wrote; one refused before
//! any text (an HTTP error) used nothing the provider bills.
//!
//! The meter lives with the caller, not the call: a call dropped mid-answer
//! (the user stopped it) still leaves what it cost so far.

use std::time::{Duration, Instant};

use events::event::Usage;

use crate::prompt::Prompt;

/// Tokens a chat message costs beyond its text (role and separators), and a
/// reply's priming, as OpenAI documents for its chat formats.
const TOKENS_PER_MESSAGE: usize = 4;
const REPLY_PRIMING: usize = 3;

/// Tokens of `text` as the model counts them.
pub fn count_tokens(text: &str) -> usize {
    tiktoken_rs::o200k_base_singleton()
        .encode_with_special_tokens(text)
        .len()
}

/// Tokens of a whole prompt.
pub fn prompt_tokens(prompt: &Prompt) -> usize {
    let turns: usize = prompt
        .turns
        .iter()
        .map(|turn| count_tokens(&turn.rendered()) + TOKENS_PER_MESSAGE)
        .sum();
    count_tokens(&prompt.system) + TOKENS_PER_MESSAGE + turns + REPLY_PRIMING
}

/// One call's running account.
#[derive(Debug)]
pub struct Meter<'p> {
    prompt: &'p Prompt,
    started: Instant,
    /// Counted the first time an estimate needs it: a provider that reports
    /// usage, with no budget to weigh, never costs the tokenizer's work.
    prompt_tokens: std::sync::OnceLock<u32>,
    attempts: u32,
    failed_prompt_tokens: u32,
    failed_completion_tokens: u32,
    /// The current attempt: when it started, its text so far, when its first
    /// text came, and the provider's count once it gave one.
    attempt_started: Instant,
    text: String,
    first_token: Option<Duration>,
    reported: Option<(u32, u32)>,
}

fn tokens(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'p> Meter<'p> {
    /// A call about to send `prompt`.
    pub fn new(prompt: &'p Prompt) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            prompt,
            prompt_tokens: std::sync::OnceLock::new(),
            attempts: 0,
            failed_prompt_tokens: 0,
            failed_completion_tokens: 0,
            attempt_started: now,
            text: String::new(),
            first_token: None,
            reported: None,
        }
    }

    /// The prompt's tokens, as counted here.
    pub fn prompt_tokens(&self) -> u32 {
        *self
            .prompt_tokens
            .get_or_init(|| tokens(prompt_tokens(self.prompt)))
    }

    /// An attempt starts; the one before it, if any, failed.
    pub fn attempt(&mut self) {
        if self.attempts > 0 {
            self.failed();
        }
        self.attempts += 1;
        self.attempt_started = Instant::now();
        self.text.clear();
        self.first_token = None;
        self.reported = None;
    }

    /// The current attempt wrote `text`.
    pub fn wrote(&mut self, text: &str) {
        if self.first_token.is_none() {
            self.first_token = Some(self.attempt_started.elapsed());
        }
        self.text.push_str(text);
    }

    /// The provider counted the current attempt.
    pub fn reported(&mut self, prompt_tokens: u32, completion_tokens: u32) {
        self.reported = Some((prompt_tokens, completion_tokens));
    }

    /// Moves the current attempt to the failed ones: paid if it wrote anything.
    fn failed(&mut self) {
        let (prompt, completion) = match self.reported {
            Some(counted) => counted,
            None if self.text.is_empty() => (0, 0),
            None => (self.prompt_tokens(), tokens(count_tokens(&self.text))),
        };
        self.failed_prompt_tokens = self.failed_prompt_tokens.saturating_add(prompt);
        self.failed_completion_tokens = self.failed_completion_tokens.saturating_add(completion);
        self.text.clear();
        self.reported = None;
    }

    /// The call's usage, its last attempt as it stands (answered, failed, or
    /// dropped part-way).
    pub fn usage(&self, model: &str) -> Usage {
        let (prompt_tokens, completion_tokens, estimated) = match self.reported {
            Some((prompt, completion)) => (prompt, completion, false),
            None if self.attempts == 0 => (0, 0, false),
            None => (self.prompt_tokens(), tokens(count_tokens(&self.text)), true),
        };
        Usage {
            model: model.to_string(),
            prompt_tokens,
            completion_tokens,
            estimated,
            latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            first_token_ms: self
                .first_token
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            attempts: self.attempts,
            failed_prompt_tokens: self.failed_prompt_tokens,
            failed_completion_tokens: self.failed_completion_tokens,
        }
    }

    /// The usage of a call whose every attempt failed: all of them are the
    /// failed ones.
    pub fn failed_usage(&mut self, model: &str) -> Usage {
        if self.attempts > 0 {
            self.failed();
        }
        let mut usage = self.usage(model);
        usage.prompt_tokens = 0;
        usage.completion_tokens = 0;
        usage.estimated = false;
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{Role, Turn};

    fn prompt() -> Prompt {
        Prompt {
            system: "You are a helpful assistant.".into(),
            turns: vec![Turn {
                role: Role::User,
                content: "Hello there, how are you today?".into(),
                at: None,
            }],
        }
    }

    #[test]
    fn tokens_are_counted_by_the_tokenizer_not_by_characters() {
        assert_eq!(count_tokens("hello world"), 2);
        assert!(count_tokens("The quick brown fox jumps over the lazy dog.") < 15);
        assert!(prompt_tokens(&prompt()) > count_tokens("You are a helpful assistant."));
    }

    #[test]
    fn the_provider_count_wins_and_failed_attempts_are_kept_apart() {
        let asked = prompt();
        let mut meter = Meter::new(&asked);
        meter.attempt();
        meter.wrote("Half an ans");
        meter.attempt();
        meter.wrote("A whole answer.");
        meter.reported(30, 4);
        let usage = meter.usage("m");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (30, 4));
        assert!(!usage.estimated);
        assert_eq!(usage.attempts, 2);
        assert_eq!(usage.failed_prompt_tokens, meter.prompt_tokens());
        assert_eq!(
            usage.failed_completion_tokens as usize,
            count_tokens("Half an ans")
        );
        assert!(usage.first_token_ms.is_some());

        let asked = prompt();
        let mut unreported = Meter::new(&asked);
        unreported.attempt();
        unreported.wrote("Partly written");
        let usage = unreported.usage("m");
        assert!(usage.estimated);
        assert_eq!(
            usage.completion_tokens as usize,
            count_tokens("Partly written")
        );
        assert!(usage.completion_tokens > 0);
        assert_eq!(usage.failed_prompt_tokens, 0);
    }

    #[test]
    fn a_refused_attempt_costs_nothing_but_is_counted() {
        let asked = prompt();
        let mut meter = Meter::new(&asked);
        meter.attempt();
        meter.attempt();
        let usage = meter.failed_usage("m");
        assert_eq!(usage.attempts, 2);
        assert_eq!(usage.billed(), (0, 0));
    }
}
