//! What the model sees when it refreshes a bot's memory of a user: two pure
//! functions of (what is remembered so far, the messages since, the length cap),
//! one for the rolling summary and one for the profile.
//!
//! Both ask for facts the user stated and nothing invented, with newer facts
//! replacing older ones, so that the memory can be shown to the user as it is.

use crate::prompt::{Prompt, Role, Turn, TIME_FORMAT};

/// The rolling summary of what the user told the bot.
pub fn summary_prompt(previous: Option<&str>, messages: &[Turn], max_chars: usize) -> Prompt {
    let system = format!(
        "You keep the long-term memory of a chatbot about one user. Update the summary of \
         what the user has told the bot with the new messages below. Keep the user's \
         preferences, daily events, habits, plans, the people and things in their life, and \
         vivid details, with when they happened when that is known. Only keep facts the user \
         stated; never invent or guess. When a newer message contradicts an older fact, keep \
         the newer one. Leave out small talk and what the bot said, unless the user agreed \
         with it. Write plain prose in the third person, at most {max_chars} characters. \
         Answer with the summary alone."
    );
    Prompt {
        system,
        turns: vec![material("Summary so far", previous, messages)],
    }
}

/// A short description of the user.
pub fn profile_prompt(previous: Option<&str>, messages: &[Turn], max_chars: usize) -> Prompt {
    let system = format!(
        "You keep the long-term memory of a chatbot about one user. Update the short profile \
         of the user with the new messages below: who they are (name, age, work, where they \
         live, when stated), what they like and dislike, their habits, and how they like to \
         be talked to. Only keep facts the user stated about themselves; never invent or \
         guess. Newer facts replace older ones. At most {max_chars} characters. Answer with \
         the profile alone."
    );
    Prompt {
        system,
        turns: vec![material("Profile so far", previous, messages)],
    }
}

/// The one user turn: what is remembered, then the new messages as a transcript.
fn material(label: &str, previous: Option<&str>, messages: &[Turn]) -> Turn {
    let mut text = format!(
        "{label}: {}\n\nNew messages:\n",
        previous.unwrap_or("(nothing yet)")
    );
    for turn in messages {
        let who = match turn.role {
            Role::User => "User",
            Role::Assistant => "Bot",
        };
        match turn.at {
            Some(at) => text.push_str(&format!(
                "[{}] {who}: {}\n",
                at.format(TIME_FORMAT),
                turn.content
            )),
            None => text.push_str(&format!("{who}: {}\n", turn.content)),
        }
    }
    Turn {
        role: Role::User,
        content: text,
        at: None,
    }
}

/// The model's answer, cut to `max_chars` at a character boundary.
pub fn capped(text: &str, max_chars: usize) -> String {
    text.trim().chars().take(max_chars).collect()
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
    fn the_material_holds_the_previous_text_and_the_new_messages() {
        let messages = [
            turn(Role::User, "I moved to Lyon"),
            turn(Role::Assistant, "Nice!"),
        ];
        let prompt = summary_prompt(Some("Likes tea."), &messages, 500);
        assert!(prompt.system.contains("never invent"));
        assert!(prompt.system.contains("newer one"));
        assert!(prompt.system.contains("500 characters"));
        let material = &prompt.turns[0].content;
        assert!(material.contains("Summary so far: Likes tea."));
        assert!(material.contains("User: I moved to Lyon"));
        assert!(material.contains("Bot: Nice!"));
        let profile = profile_prompt(None, &messages, 300);
        assert!(profile.turns[0]
            .content
            .contains("Profile so far: (nothing yet)"));
    }

    #[test]
    fn answers_are_capped_by_characters() {
        assert_eq!(capped("  你好世界  ", 2), "你好");
        assert_eq!(capped("short", 100), "short");
    }
}
