//! One chat stream, folded into what the worker needs: the turns so far, and which
//! user messages have no outcome (reply or failure) yet.

use uuid::Uuid;

use events::event::{DecodeError, DomainEvent, UserMessagePosted};
use events::store::RecordedEvent;

use crate::prompt::{Role, Turn};

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    User(UserMessagePosted),
    Reply { reply_to: Uuid, content: String },
    Failed { reply_to: Uuid },
}

#[derive(Debug, Default, Clone)]
pub struct Conversation {
    entries: Vec<Entry>,
}

impl Conversation {
    pub fn from_events(events: &[RecordedEvent]) -> Result<Self, DecodeError> {
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            entries.push(match DomainEvent::decode(event)? {
                DomainEvent::UserMessagePosted(m) => Entry::User(m),
                DomainEvent::BotReplyGenerated(r) => Entry::Reply {
                    reply_to: r.reply_to,
                    content: r.content,
                },
                DomainEvent::BotReplyFailed(f) => Entry::Failed {
                    reply_to: f.reply_to,
                },
                _ => continue,
            });
        }
        Ok(Self { entries })
    }

    pub fn contains(&self, message_id: Uuid) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::User(m) if m.message_id == message_id))
    }

    fn is_answered(&self, message_id: Uuid) -> bool {
        self.entries.iter().any(|e| match e {
            Entry::Reply { reply_to, .. } | Entry::Failed { reply_to } => *reply_to == message_id,
            Entry::User(_) => false,
        })
    }

    /// The oldest unanswered message up to and including `message_id`: earlier
    /// messages are answered first, so every reply sees the replies before it.
    pub fn next_unanswered_up_to(&self, message_id: Uuid) -> Option<&UserMessagePosted> {
        for entry in &self.entries {
            if let Entry::User(m) = entry {
                if !self.is_answered(m.message_id) {
                    return Some(m);
                }
                if m.message_id == message_id {
                    return None;
                }
            }
        }
        None
    }

    /// The turns up to and including `message_id`, for the prompt: each message
    /// followed by its reply, even when the reply was recorded after later messages
    /// (a user who posts twice quickly). Failures are left out.
    pub fn turns_until(&self, message_id: Uuid) -> Vec<Turn> {
        let mut turns = Vec::new();
        for entry in &self.entries {
            let Entry::User(m) = entry else { continue };
            turns.push(Turn {
                role: Role::User,
                content: m.content.clone(),
            });
            if m.message_id == message_id {
                break;
            }
            let reply = self.entries.iter().find_map(|e| match e {
                Entry::Reply { reply_to, content } if *reply_to == m.message_id => Some(content),
                _ => None,
            });
            if let Some(content) = reply {
                turns.push(Turn {
                    role: Role::Assistant,
                    content: content.clone(),
                });
            }
        }
        turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid, content: &str) -> Entry {
        Entry::User(UserMessagePosted {
            message_id: id,
            user_id: 1,
            bot_id: 1,
            content: content.into(),
            client_msg_id: None,
        })
    }

    #[test]
    fn replies_follow_their_messages_and_earlier_messages_come_first() {
        let (m1, m2, m3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let conversation = Conversation {
            entries: vec![
                user(m1, "first"),
                user(m2, "second"),
                Entry::Reply {
                    reply_to: m1,
                    content: "one".into(),
                },
                user(m3, "third"),
                Entry::Failed { reply_to: m2 },
            ],
        };
        let turns: Vec<(Role, String)> = conversation
            .turns_until(m3)
            .into_iter()
            .map(|t| (t.role, t.content))
            .collect();
        let expected = [
            (Role::User, "first"),
            (Role::Assistant, "one"),
            (Role::User, "second"),
            (Role::User, "third"),
        ]
        .map(|(r, c)| (r, c.to_string()));
        assert_eq!(turns, expected.to_vec());
        assert_eq!(
            conversation.next_unanswered_up_to(m3).map(|m| m.message_id),
            Some(m3)
        );
        assert!(conversation.next_unanswered_up_to(m1).is_none());
        let pending = Conversation {
            entries: vec![user(m1, "a"), user(m2, "b")],
        };
        assert_eq!(
            pending.next_unanswered_up_to(m2).map(|m| m.message_id),
            Some(m1)
        );
    }
}
