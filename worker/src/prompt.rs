//! What the model sees: one function of (bot, memory, recent turns, now).
//!
//! Keeping this pure makes prompts testable and lets long-term memory (a rolling
//! summary and a profile of the user, see DESIGN.md) slot in as data rather than as
//! string pasting spread over the worker.

use chrono::{DateTime, Utc};

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
}

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
    system.push_str(&format!(
        "\nThe current time is {} UTC.",
        now.format("%Y-%m-%d %H:%M")
    ));
    if let Some(memory) = memory {
        if let Some(summary) = &memory.summary {
            system.push_str(&format!("\nSummary of the conversation so far: {summary}"));
        }
        if let Some(profile) = &memory.user_profile {
            system.push_str(&format!("\nWhat you know about the user: {profile}"));
        }
    }
    Prompt {
        system,
        turns: trim_to_budget(recent, budget_chars),
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
}
