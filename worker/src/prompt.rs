//! What the model sees: one function of (bot, memory, recent turns, now).
//!
//! Keeping this pure makes prompts testable and lets long-term memory (a rolling
//! summary and a profile of the user, see DESIGN.md) slot in as data rather than as
//! string pasting spread over the worker.
//!
//! Time matters to a companion: every user turn carries the time it was sent, the
//! system prompt carries the current time, and the bot is asked to notice long
//! gaps. Turns beyond the context budget are dropped from the oldest, and the
//! summary (which covers them) stands in for them.

use chrono::{DateTime, NaiveDateTime, Utc};

use events::event::BotKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
    /// When it was sent (UTC), if known.
    pub at: Option<NaiveDateTime>,
}

impl Turn {
    /// The turn as the model reads it: a user's message prefixed with its time.
    pub fn rendered(&self) -> String {
        match (self.role, self.at) {
            (Role::User, Some(at)) => format!("[{}] {}", at.format(TIME_FORMAT), self.content),
            _ => self.content.clone(),
        }
    }
}

/// How times are written in prompts.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M UTC";

/// The bot as the prompt needs it.
#[derive(Debug, Clone)]
pub struct BotProfile {
    pub name: String,
    pub kind: BotKind,
    pub persona: String,
}

/// What a bot remembers about a conversation beyond the recent turns.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub summary: Option<String>,
    pub user_profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    /// Oldest first; the last one is the message being answered.
    pub turns: Vec<Turn>,
}

pub fn build_prompt(
    bot: &BotProfile,
    memory: Option<&Memory>,
    recent: &[Turn],
    now: DateTime<Utc>,
    budget_chars: usize,
) -> Prompt {
    let mut system = match bot.kind {
        BotKind::Cosplay => format!(
            "You are {persona}. Stay in character as {persona} for the whole conversation: \
             speak in their voice, with their personality, knowledge and way of talking. \
             Do not say that you are an AI or a language model, and do not break character.",
            persona = bot.persona
        ),
        BotKind::Assistant => format!(
            "You are {name}, a helpful assistant. Answer clearly, accurately and concisely.",
            name = bot.name
        ),
    };
    if let Some(memory) = memory {
        if let Some(summary) = &memory.summary {
            system.push_str(&format!(
                "\nWhat the user has told you in earlier conversations (a summary; it covers \
                 what is older than the messages below): {summary}"
            ));
        }
        if let Some(profile) = &memory.user_profile {
            system.push_str(&format!("\nWhat you know about the user: {profile}"));
        }
    }
    system.push_str(&format!(
        "\nThe current time is {}. Each of the user's messages starts with the time it was \
         sent. If the user comes back after a long gap (many hours or days since their \
         previous message), acknowledge it naturally, as a friend would (\"Long time no \
         see!\"); do not repeat the timestamps.",
        now.format(TIME_FORMAT)
    ));
    Prompt {
        system,
        turns: trim_to_budget(recent, budget_chars),
    }
}

/// SHA-256 digests (hex) of a prompt as it is sent: the whole, the system
/// message alone, and the turns alone. What a reply records, and what `worker
/// replay explain` compares a rebuilt prompt against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub all: String,
    pub system: String,
    pub turns: String,
}

impl Prompt {
    /// The messages as the model receives them, system first: `(role, text)`.
    pub fn messages(&self) -> Vec<(&'static str, String)> {
        let mut messages = Vec::with_capacity(self.turns.len() + 1);
        messages.push(("system", self.system.clone()));
        for turn in &self.turns {
            let role = match turn.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push((role, turn.rendered()));
        }
        messages
    }

    pub fn digests(&self) -> Digests {
        use sha2::{Digest, Sha256};
        let hex = |messages: &[(&str, String)]| {
            // Length-prefixed, so no two different lists hash alike.
            let mut hasher = Sha256::new();
            for (role, text) in messages {
                hasher.update(format!("{}:{role}:{}:", role.len(), text.len()));
                hasher.update(text.as_bytes());
            }
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let messages = self.messages();
        Digests {
            all: hex(&messages),
            system: hex(&messages[..1]),
            turns: hex(&messages[1..]),
        }
    }
}

/// The most recent turns that fit in `budget_chars`; the last turn always stays.
fn trim_to_budget(turns: &[Turn], budget_chars: usize) -> Vec<Turn> {
    let mut used = 0;
    let mut keep = 0;
    for (i, turn) in turns.iter().rev().enumerate() {
        used += turn.content.chars().count();
        if i > 0 && used > budget_chars {
            break;
        }
        keep += 1;
    }
    turns[turns.len() - keep..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, content: &str) -> Turn {
        Turn {
            role,
            content: content.into(),
            at: None,
        }
    }

    #[test]
    fn cosplay_bots_stay_in_character_and_assistants_do_not_pretend() {
        let now = Utc::now();
        let cosplay = BotProfile {
            name: "b".into(),
            kind: BotKind::Cosplay,
            persona: "Jackie Chan".into(),
        };
        let prompt = build_prompt(&cosplay, None, &[turn(Role::User, "hi")], now, 100);
        assert!(prompt.system.contains("You are Jackie Chan"));
        assert!(prompt.system.contains("in character"));
        let plain = BotProfile {
            name: "Helper".into(),
            kind: BotKind::Assistant,
            persona: String::new(),
        };
        let prompt = build_prompt(&plain, None, &[turn(Role::User, "hi")], now, 100);
        assert!(prompt.system.contains("helpful assistant"));
        assert!(!prompt.system.contains("in character"));
    }

    #[test]
    fn context_is_trimmed_from_the_oldest_but_keeps_the_question() {
        let turns = vec![
            turn(Role::User, "aaaaaaaaaa"),
            turn(Role::Assistant, "bbbbbbbbbb"),
            turn(Role::User, "cccccccccc"),
        ];
        let trimmed = trim_to_budget(&turns, 25);
        assert_eq!(trimmed, turns[1..].to_vec());
        let tiny = trim_to_budget(&turns, 1);
        assert_eq!(tiny, turns[2..].to_vec());
        assert_eq!(trim_to_budget(&turns, 1000), turns);
    }

    #[test]
    fn memory_goes_into_the_system_prompt() {
        let bot = BotProfile {
            name: "b".into(),
            kind: BotKind::Assistant,
            persona: String::new(),
        };
        let memory = Memory {
            summary: Some("talked about tea".into()),
            user_profile: Some("likes green tea".into()),
        };
        let prompt = build_prompt(&bot, Some(&memory), &[], Utc::now(), 10);
        assert!(prompt.system.contains("talked about tea"));
        assert!(prompt.system.contains("likes green tea"));
    }

    #[test]
    fn user_turns_carry_their_time_and_the_system_prompt_the_current_time() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_opt(3, 4, 5))
            .unwrap_or_default();
        let said = Turn {
            role: Role::User,
            content: "hi".into(),
            at: Some(at),
        };
        assert_eq!(said.rendered(), "[2026-01-02 03:04 UTC] hi");
        let answer = Turn {
            role: Role::Assistant,
            content: "hello".into(),
            at: Some(at),
        };
        assert_eq!(answer.rendered(), "hello");
        let bot = BotProfile {
            name: "b".into(),
            kind: BotKind::Assistant,
            persona: String::new(),
        };
        let now = at.and_utc() + chrono::TimeDelta::days(3);
        let prompt = build_prompt(&bot, None, &[said], now, 100);
        assert!(prompt
            .system
            .contains("The current time is 2026-01-05 03:04 UTC"));
        assert!(prompt.system.contains("Long time no see"));
    }
}
