//! The read models as plain data, and how events change them in memory.
//!
//! The live tables are kept by SQL statements run inside each append (see the
//! sibling modules). Replaying a whole log that way costs several round trips per
//! event, so a rebuild instead loads the rows a batch of events touches, folds the
//! batch over them here, and writes the result back in bulk ([`super::bulk`]). As-of
//! history folds one conversation from nothing, with no database at all.
//!
//! These rules must give exactly what the SQL of the live projections gives: `worker
//! replay verify` compares the two, row by row, and the system tests run it against
//! live traffic.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;

use super::history::{HistoryRow, MessageStatus};
use crate::event::{BotId, DomainEvent, UserId};
use crate::store::EventStamp;

/// A conversation: `(user_id, chatbot_id)`.
pub type ConversationKey = (UserId, BotId);

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BotRow {
    pub chatbot_id: BotId,
    pub user_id: UserId,
    pub chatbot_name: String,
    pub chatbot_type: i8,
    pub chatbot_persona: String,
    pub created_at: NaiveDateTime,
    pub deleted_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub user_id: UserId,
    pub chatbot_id: BotId,
    pub row: HistoryRow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatListEntry {
    pub chatbot_name: String,
    pub last_content: String,
    pub last_at: NaiveDateTime,
    pub last_seq: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: String,
    pub user_id: UserId,
    pub refresh_jti: String,
    pub created_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoked_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct MemoryRow {
    pub user_id: UserId,
    pub chatbot_id: BotId,
    pub summary: Option<String>,
    pub summary_covers: Option<i64>,
    pub profile: Option<String>,
    pub profile_covers: Option<i64>,
    pub erased_through: i64,
    pub updated_at: Option<NaiveDateTime>,
}

/// The existing rows a batch of events needs before it can be folded.
#[derive(Debug, Default)]
pub struct Touched {
    pub bots: HashSet<BotId>,
    pub sessions: HashSet<String>,
    pub memory: HashSet<ConversationKey>,
}

impl Touched {
    pub fn of(events: &[(EventStamp, DomainEvent)]) -> Self {
        let mut touched = Touched::default();
        for (_, decoded) in events {
            match decoded {
                DomainEvent::BotCreated(e) => {
                    touched.bots.insert(e.bot_id);
                }
                DomainEvent::BotDeleted(e) => {
                    touched.bots.insert(e.bot_id);
                }
                DomainEvent::UserMessagePosted(e) => {
                    touched.bots.insert(e.bot_id);
                }
                DomainEvent::BotReplyGenerated(e) => {
                    touched.bots.insert(e.bot_id);
                }
                DomainEvent::BotReplyFailed(e) => {
                    touched.bots.insert(e.bot_id);
                }
                DomainEvent::SessionStarted(e) => {
                    touched.sessions.insert(e.session_id.to_string());
                }
                DomainEvent::SessionRefreshed(e) => {
                    touched.sessions.insert(e.session_id.to_string());
                }
                DomainEvent::SessionRevoked(e) => {
                    touched.sessions.insert(e.session_id.to_string());
                }
                DomainEvent::ConversationSummarized(e) => {
                    touched.memory.insert((e.user_id, e.bot_id));
                }
                DomainEvent::UserProfileUpdated(e) => {
                    touched.memory.insert((e.user_id, e.bot_id));
                }
                DomainEvent::MemoryErased(e) => {
                    touched.memory.insert((e.user_id, e.bot_id));
                }
            }
        }
        touched
    }
}

/// The touched rows of every read model, and what a batch did to them.
#[derive(Debug, Default)]
pub struct Fold {
    /// Bots as loaded, then as changed; `changed_bots` says which to write.
    pub bots: HashMap<BotId, BotRow>,
    pub changed_bots: HashSet<BotId>,
    /// History rows the batch added, in order.
    pub history: Vec<HistoryEntry>,
    history_index: HashMap<String, usize>,
    /// Status changes of rows added before this batch, by message id.
    pub history_status: HashMap<String, MessageStatus>,
    /// The latest message of each conversation the batch touched; `None` removes it.
    pub chat_list: HashMap<ConversationKey, Option<ChatListEntry>>,
    pub sessions: HashMap<String, SessionRow>,
    pub changed_sessions: HashSet<String>,
    pub memory: HashMap<ConversationKey, MemoryRow>,
    pub changed_memory: HashSet<ConversationKey>,
}

impl Fold {
    pub fn apply(&mut self, event: &EventStamp, decoded: &DomainEvent) {
        let at = event.recorded_at;
        match decoded {
            DomainEvent::BotCreated(e) => {
                self.bots.insert(
                    e.bot_id,
                    BotRow {
                        chatbot_id: e.bot_id,
                        user_id: e.user_id,
                        chatbot_name: e.name.clone(),
                        chatbot_type: i8::try_from(u8::from(e.kind)).unwrap_or(0),
                        chatbot_persona: e.persona.clone(),
                        created_at: at,
                        deleted_at: None,
                    },
                );
                self.changed_bots.insert(e.bot_id);
            }
            DomainEvent::BotDeleted(e) => {
                if let Some(bot) = self.bots.get_mut(&e.bot_id) {
                    bot.deleted_at = Some(at);
                    self.changed_bots.insert(e.bot_id);
                }
                self.chat_list.insert((e.user_id, e.bot_id), None);
            }
            DomainEvent::UserMessagePosted(e) => {
                self.message(event, decoded, e.user_id, e.bot_id, &e.content);
            }
            DomainEvent::BotReplyGenerated(e) => {
                self.message(event, decoded, e.user_id, e.bot_id, &e.content);
                self.set_status(e.reply_to.to_string(), MessageStatus::Done);
            }
            DomainEvent::BotReplyFailed(e) => {
                self.message(event, decoded, e.user_id, e.bot_id, &e.reason);
                self.set_status(e.reply_to.to_string(), MessageStatus::Failed);
            }
            DomainEvent::SessionStarted(e) => {
                let id = e.session_id.to_string();
                if !self.sessions.contains_key(&id) {
                    self.sessions.insert(
                        id.clone(),
                        SessionRow {
                            session_id: id.clone(),
                            user_id: e.user_id,
                            refresh_jti: e.refresh_jti.clone(),
                            created_at: at,
                            revoked_at: None,
                            revoked_reason: None,
                        },
                    );
                    self.changed_sessions.insert(id);
                }
            }
            DomainEvent::SessionRefreshed(e) => {
                let id = e.session_id.to_string();
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.refresh_jti = e.refresh_jti.clone();
                    self.changed_sessions.insert(id);
                }
            }
            DomainEvent::SessionRevoked(e) => {
                let id = e.session_id.to_string();
                if let Some(session) = self.sessions.get_mut(&id) {
                    if session.revoked_at.is_none() {
                        session.revoked_at = Some(at);
                        session.revoked_reason = Some(e.reason.clone());
                        self.changed_sessions.insert(id);
                    }
                }
            }
            DomainEvent::ConversationSummarized(e) => {
                let row = self.memory_row(e.user_id, e.bot_id);
                if let Some(row) = row {
                    if e.covers_version > row.summary_covers.unwrap_or(0)
                        && e.covers_version > row.erased_through
                    {
                        row.summary = Some(e.summary.clone());
                        row.summary_covers = Some(e.covers_version);
                        row.updated_at = Some(at);
                    }
                } else {
                    self.new_memory(e.user_id, e.bot_id, at, |row| {
                        row.summary = Some(e.summary.clone());
                        row.summary_covers = Some(e.covers_version);
                    });
                }
            }
            DomainEvent::UserProfileUpdated(e) => {
                let row = self.memory_row(e.user_id, e.bot_id);
                if let Some(row) = row {
                    if e.covers_version > row.profile_covers.unwrap_or(0)
                        && e.covers_version > row.erased_through
                    {
                        row.profile = Some(e.profile.clone());
                        row.profile_covers = Some(e.covers_version);
                        row.updated_at = Some(at);
                    }
                } else {
                    self.new_memory(e.user_id, e.bot_id, at, |row| {
                        row.profile = Some(e.profile.clone());
                        row.profile_covers = Some(e.covers_version);
                    });
                }
            }
            DomainEvent::MemoryErased(e) => {
                let version = event.stream_version;
                if let Some(row) = self.memory_row(e.user_id, e.bot_id) {
                    *row = MemoryRow {
                        user_id: e.user_id,
                        chatbot_id: e.bot_id,
                        erased_through: row.erased_through.max(version),
                        updated_at: Some(at),
                        ..MemoryRow::default()
                    };
                } else {
                    self.new_memory(e.user_id, e.bot_id, at, |row| {
                        row.erased_through = version;
                    });
                }
            }
        }
    }

    /// A message, a reply or a failure: a history row, and the conversation's
    /// latest entry in the chat list (unless its bot is gone).
    fn message(
        &mut self,
        event: &EventStamp,
        decoded: &DomainEvent,
        user_id: UserId,
        bot_id: BotId,
        text: &str,
    ) {
        if let Some(row) = super::ChatHistoryProjection::row_of(event, decoded) {
            self.history_index
                .insert(row.message_id.clone(), self.history.len());
            self.history.push(HistoryEntry {
                user_id,
                chatbot_id: bot_id,
                row,
            });
        }
        // Only a live bot's conversation is listed; a late reply to a deleted bot's
        // message must not bring it back.
        if let Some(bot) = self.bots.get(&bot_id).filter(|b| b.deleted_at.is_none()) {
            self.chat_list.insert(
                (user_id, bot_id),
                Some(ChatListEntry {
                    chatbot_name: bot.chatbot_name.clone(),
                    last_content: text.to_string(),
                    last_at: event.recorded_at,
                    last_seq: event.stream_version,
                    last_position: event.global_position,
                }),
            );
        }
    }

    fn set_status(&mut self, message_id: String, status: MessageStatus) {
        match self.history_index.get(&message_id) {
            Some(&index) => self.history[index].row.status = status.as_str().to_string(),
            None => {
                self.history_status.insert(message_id, status);
            }
        }
    }

    fn memory_row(&mut self, user_id: UserId, bot_id: BotId) -> Option<&mut MemoryRow> {
        let key = (user_id, bot_id);
        let row = self.memory.get_mut(&key)?;
        self.changed_memory.insert(key);
        Some(row)
    }

    fn new_memory(
        &mut self,
        user_id: UserId,
        bot_id: BotId,
        at: NaiveDateTime,
        fill: impl FnOnce(&mut MemoryRow),
    ) {
        let mut row = MemoryRow {
            user_id,
            chatbot_id: bot_id,
            updated_at: Some(at),
            ..MemoryRow::default()
        };
        fill(&mut row);
        self.memory.insert((user_id, bot_id), row);
        self.changed_memory.insert((user_id, bot_id));
    }

    /// A conversation's rows after folding all of its events from nothing, oldest
    /// first: what `GET /chat/history` would have served.
    pub fn into_history(self) -> Vec<HistoryRow> {
        self.history.into_iter().map(|entry| entry.row).collect()
    }
}
