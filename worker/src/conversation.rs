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

    /// The turns up to and including `message_id`, for the prompt. Failures and
    /// messages that are still unanswered elsewhere in the stream are left out.
    pub fn turns_until(&self, message_id: Uuid) -> Vec<Turn> {
        let mut turns = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::User(m) => {
                    turns.push(Turn {
                        role: Role::User,
                        content: m.content.clone(),
                    });
                    if m.message_id == message_id {
                        break;
                    }
                }
                Entry::Reply { content, .. } => turns.push(Turn {
                    role: Role::Assistant,
                    content: content.clone(),
                }),
                Entry::Failed { .. } => {}
            }
        }
        turns
    }
}
