//! The read models' rules: the rows as plain data, and how each event changes
//! them in memory. This is the only place they are written down.
//!
//! A batch of events is folded over the rows it touches ([`Touched`]), loaded
//! before it; what the batch changed is then written back ([`super::bulk`]). Rows
//! from earlier batches that the fold did not load (history rows, chat-list rows)
//! are changed by what the [`Fold`] records for them: statuses, clears,
//! withdrawals, renames. As-of history folds one conversation from nothing.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;

use super::history::{HistoryRow, MessageStatus};
use super::usage::{UsageAmounts, UsageKey, UsageProjection};
use super::{Bot, ConversationMemory};
use crate::event::{self, BotId, DomainEvent, UserId};
use crate::store::EventStamp;

/// A conversation: `(user_id, chatbot_id)`.
pub type ConversationKey = (UserId, BotId);

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
    /// Started or last refreshed.
    pub last_active_at: NaiveDateTime,
}

/// A conversation's memory with its key, as the table stores it.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct MemoryRow {
    pub user_id: UserId,
    pub chatbot_id: BotId,
    #[sqlx(flatten)]
    pub memory: ConversationMemory,
}

/// Which of a conversation's two memory texts an event sets.
enum Remembered<'a> {
    Summary(&'a str),
    Profile(&'a str),
}

/// The existing rows a batch of events needs before it can be folded.
#[derive(Debug, Default)]
pub struct Touched {
    pub bots: HashSet<BotId>,
    pub sessions: HashSet<String>,
    pub memory: HashSet<ConversationKey>,
    pub usage: HashSet<UsageKey>,
}

impl Touched {
    pub fn of(events: &[(EventStamp, DomainEvent)]) -> Self {
        use DomainEvent::*;
        let mut touched = Touched::default();
        for (stamp, decoded) in events {
            if let Some((key, _)) = UsageProjection::contribution(stamp, decoded) {
                touched.usage.insert(key);
            }
            match decoded {
                BotCreated(event::BotCreated { bot_id, .. })
                | BotUpdated(event::BotUpdated { bot_id, .. })
                | BotDeleted(event::BotDeleted { bot_id, .. })
                | UserMessagePosted(event::UserMessagePosted { bot_id, .. })
                | BotReplyGenerated(event::BotReplyGenerated { bot_id, .. })
                | BotReplyFailed(event::BotReplyFailed { bot_id, .. })
                | BotReplyStopped(event::BotReplyStopped { bot_id, .. }) => {
                    touched.bots.insert(*bot_id);
                }
                ModelCallStopped(_) | UserErased(_) | HistoryEncrypted(_) => {}
                ReplyRegenerationRequested(_) => {}
                ConversationCleared(event::ConversationCleared {
                    user_id,
                    bot_id,
                    forget_memory,
                }) => {
                    if *forget_memory {
                        touched.memory.insert((*user_id, *bot_id));
                    }
                }
                SessionStarted(event::SessionStarted { session_id, .. })
                | SessionRefreshed(event::SessionRefreshed { session_id, .. })
                | SessionRevoked(event::SessionRevoked { session_id, .. }) => {
                    touched.sessions.insert(session_id.to_string());
                }
                ConversationSummarized(event::ConversationSummarized {
                    user_id, bot_id, ..
                })
                | UserProfileUpdated(event::UserProfileUpdated {
                    user_id, bot_id, ..
                })
                | MemoryErased(event::MemoryErased {
                    user_id, bot_id, ..
                }) => {
                    touched.memory.insert((*user_id, *bot_id));
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
    pub bots: HashMap<BotId, Bot>,
    pub changed_bots: HashSet<BotId>,
    /// History rows the batch added, in order; `None` where a later event of
    /// the batch took the row out again (see [`Fold::history`]).
    history: Vec<Option<HistoryEntry>>,
    history_index: HashMap<String, usize>,
    /// Status changes of rows added before this batch, by message id.
    pub history_status: HashMap<String, MessageStatus>,
    /// Messages added before this batch that wait for a later attempt.
    pub history_attempts: HashMap<String, i32>,
    /// Messages whose outcomes from before this batch are withdrawn (regenerated).
    pub withdrawn: HashSet<String>,
    /// Conversations cleared by the batch, with the version of their last clear:
    /// their rows before it go.
    pub cleared: HashMap<ConversationKey, i64>,
    /// The latest message of each conversation the batch touched; `None` removes it.
    pub chat_list: HashMap<ConversationKey, Option<ChatListEntry>>,
    /// Bots renamed by the batch, with their new names, for the chat list's rows
    /// from earlier batches.
    pub renamed: HashMap<ConversationKey, String>,
    pub sessions: HashMap<String, SessionRow>,
    pub changed_sessions: HashSet<String>,
    pub memory: HashMap<ConversationKey, MemoryRow>,
    pub changed_memory: HashSet<ConversationKey>,
    /// Usage rows as loaded, then with the batch's calls added: every one is
    /// written back.
    pub usage: HashMap<UsageKey, UsageAmounts>,
    /// Users erased by the batch: their rows from earlier batches go first.
    pub erased_users: HashSet<UserId>,
}

impl Fold {
    pub fn apply(&mut self, event: &EventStamp, decoded: &DomainEvent) {
        let at = event.recorded_at;
        if let Some((key, add)) = UsageProjection::contribution(event, decoded) {
            self.usage.entry(key).or_default().add(&add);
        }
        match decoded {
            DomainEvent::BotCreated(e) => {
                self.bots.insert(
                    e.bot_id,
                    Bot {
                        chatbot_id: e.bot_id,
                        user_id: e.user_id,
                        chatbot_name: e.name.clone(),
                        chatbot_type: i8::try_from(u8::from(e.kind)).unwrap_or(0),
                        chatbot_persona: e.persona.clone(),
                        created_at: at,
                        deleted_at: None,
                        model: None,
                        temperature: None,
                        max_reply_tokens: None,
                        version: event.stream_version,
                    },
                );
                self.changed_bots.insert(e.bot_id);
            }
            DomainEvent::BotUpdated(e) => {
                if let Some(bot) = self.bots.get_mut(&e.bot_id) {
                    bot.update(e);
                    bot.version = event.stream_version;
                    self.changed_bots.insert(e.bot_id);
                }
                if let Some(name) = &e.name {
                    self.renamed.insert((e.user_id, e.bot_id), name.clone());
                    let listed = self
                        .chat_list
                        .iter_mut()
                        .filter(|((_, bot), _)| *bot == e.bot_id)
                        .filter_map(|(_, entry)| entry.as_mut());
                    for entry in listed {
                        entry.chatbot_name.clone_from(name);
                    }
                }
            }
            DomainEvent::BotDeleted(e) => {
                if let Some(bot) = self.bots.get_mut(&e.bot_id) {
                    bot.deleted_at = Some(at);
                    bot.version = event.stream_version;
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
            DomainEvent::BotReplyStopped(e) => {
                self.message(event, decoded, e.user_id, e.bot_id, &e.content);
                self.set_status(e.reply_to.to_string(), MessageStatus::Stopped);
            }
            DomainEvent::ModelCallStopped(_) | DomainEvent::HistoryEncrypted(_) => {}
            DomainEvent::UserErased(e) => self.erase_user(e.user_id),
            DomainEvent::ReplyRegenerationRequested(e) => self.reopen(e),
            DomainEvent::ConversationCleared(e) => {
                let key = (e.user_id, e.bot_id);
                let before = event.stream_version;
                for slot in &mut self.history {
                    let gone = slot.as_ref().is_some_and(|entry| {
                        (entry.user_id, entry.chatbot_id) == key && entry.row.seq < before
                    });
                    if gone {
                        *slot = None;
                    }
                }
                let latest = self.cleared.entry(key).or_insert(before);
                *latest = (*latest).max(before);
                self.chat_list.insert(key, None);
                if e.forget_memory {
                    self.erase_memory(key, event.stream_version, at);
                }
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
                            last_active_at: at,
                        },
                    );
                    self.changed_sessions.insert(id);
                }
            }
            DomainEvent::SessionRefreshed(e) => {
                let id = e.session_id.to_string();
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.refresh_jti = e.refresh_jti.clone();
                    session.last_active_at = at;
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
            DomainEvent::ConversationSummarized(e) => self.remember(
                (e.user_id, e.bot_id),
                Remembered::Summary(&e.summary),
                e.covers_version,
                at,
            ),
            DomainEvent::UserProfileUpdated(e) => self.remember(
                (e.user_id, e.bot_id),
                Remembered::Profile(&e.profile),
                e.covers_version,
                at,
            ),
            DomainEvent::MemoryErased(e) => {
                self.erase_memory((e.user_id, e.bot_id), event.stream_version, at);
            }
        }
    }

    /// A user erased: nothing of theirs stays, from this batch or before.
    fn erase_user(&mut self, user: UserId) {
        self.erased_users.insert(user);
        self.bots.retain(|_, bot| bot.user_id != user);
        self.changed_bots.retain(|id| self.bots.contains_key(id));
        for slot in &mut self.history {
            if slot.as_ref().is_some_and(|entry| entry.user_id == user) {
                *slot = None;
            }
        }
        self.cleared.retain(|(u, _), _| *u != user);
        self.chat_list.retain(|(u, _), _| *u != user);
        self.renamed.retain(|(u, _), _| *u != user);
        self.sessions.retain(|_, session| session.user_id != user);
        self.changed_sessions
            .retain(|id| self.sessions.contains_key(id));
        self.memory.retain(|(u, _), _| *u != user);
        self.changed_memory.retain(|(u, _)| *u != user);
        self.usage.retain(|(u, ..), _| *u != user);
    }

    /// Nothing remembered through `version` is kept.
    fn erase_memory(&mut self, key: ConversationKey, version: i64, at: NaiveDateTime) {
        let row = self.memory_row(key);
        row.memory = ConversationMemory {
            erased_through: row.memory.erased_through.max(version),
            updated_at: Some(at),
            ..ConversationMemory::default()
        };
    }

    /// A regeneration: the message's outcome leaves the history, and the
    /// message waits for the new attempt.
    fn reopen(&mut self, e: &event::ReplyRegenerationRequested) {
        let message_id = e.message_id.to_string();
        for slot in &mut self.history {
            if slot
                .as_ref()
                .is_some_and(|entry| entry.row.reply_to.as_deref() == Some(message_id.as_str()))
            {
                *slot = None;
            }
        }
        self.withdrawn.insert(message_id.clone());
        let attempt = i32::try_from(e.attempt).unwrap_or(i32::MAX);
        match self.history_index.get(&message_id) {
            Some(&index) => {
                if let Some(entry) = self.history[index].as_mut() {
                    entry.row.status = MessageStatus::Pending.as_str().to_string();
                    entry.row.attempt = attempt;
                }
            }
            None => {
                self.history_status
                    .insert(message_id.clone(), MessageStatus::Pending);
                self.history_attempts.insert(message_id, attempt);
            }
        }
    }

    /// A memory text replaces the stored one only if it covers more of the
    /// conversation, and more than the last erasure; into a conversation with no
    /// memory yet it goes as it is.
    fn remember(
        &mut self,
        key: ConversationKey,
        text: Remembered<'_>,
        covers: i64,
        at: NaiveDateTime,
    ) {
        let fresh = !self.memory.contains_key(&key);
        let memory = &mut self.memory_row(key).memory;
        let erased_through = memory.erased_through;
        let (stored, stored_covers, new) = match text {
            Remembered::Summary(new) => (&mut memory.summary, &mut memory.summary_covers, new),
            Remembered::Profile(new) => (&mut memory.profile, &mut memory.profile_covers, new),
        };
        if fresh || (covers > stored_covers.unwrap_or(0) && covers > erased_through) {
            *stored = Some(new.to_string());
            *stored_covers = Some(covers);
            memory.updated_at = Some(at);
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
            self.history.push(Some(HistoryEntry {
                user_id,
                chatbot_id: bot_id,
                row,
            }));
        }
        // A stop before the model wrote anything leaves the user's message as
        // the conversation's latest words.
        if text.is_empty() && matches!(decoded, DomainEvent::BotReplyStopped(_)) {
            return;
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
            Some(&index) => {
                if let Some(entry) = self.history[index].as_mut() {
                    entry.row.status = status.as_str().to_string();
                }
            }
            None => {
                self.history_status.insert(message_id, status);
            }
        }
    }

    /// The history rows the batch added and left in place, in order.
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter().flatten()
    }

    /// The conversation's memory row, created empty if it has none, and marked to
    /// be written back.
    fn memory_row(&mut self, key: ConversationKey) -> &mut MemoryRow {
        self.changed_memory.insert(key);
        self.memory.entry(key).or_insert_with(|| MemoryRow {
            user_id: key.0,
            chatbot_id: key.1,
            memory: ConversationMemory::default(),
        })
    }

    /// A conversation's rows after folding all of its events from nothing, oldest
    /// first: what `GET /chat/history` would have served.
    pub fn into_history(self) -> Vec<HistoryRow> {
        self.history
            .into_iter()
            .flatten()
            .map(|entry| entry.row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        BotCreated, BotDeleted, BotKind, BotReplyGenerated, ConversationSummarized, MemoryErased,
        MessageSource, UserMessagePosted,
    };
    use uuid::Uuid;

    fn stamp(version: i64) -> EventStamp {
        EventStamp {
            global_position: version,
            stream_version: version,
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000 + version, 0)
                .map(|at| at.naive_utc())
                .unwrap_or_default(),
        }
    }

    fn summary(covers: i64, text: &str) -> DomainEvent {
        DomainEvent::ConversationSummarized(ConversationSummarized {
            user_id: 1,
            bot_id: 2,
            summary: text.into(),
            covers_version: covers,
            usage: None,
        })
    }

    #[test]
    fn memory_keeps_the_text_that_covers_most_and_nothing_from_before_an_erasure() {
        let mut fold = Fold::default();
        fold.apply(&stamp(7), &summary(6, "six"));
        fold.apply(&stamp(8), &summary(4, "stale"));
        let memory = |fold: &Fold| fold.memory[&(1, 2)].memory.clone();
        assert_eq!(memory(&fold).summary.as_deref(), Some("six"));
        fold.apply(
            &stamp(10),
            &DomainEvent::MemoryErased(MemoryErased {
                user_id: 1,
                bot_id: 2,
            }),
        );
        assert_eq!(memory(&fold).summary, None);
        assert_eq!(memory(&fold).erased_through, 10);
        fold.apply(&stamp(11), &summary(8, "from before the erasure"));
        assert_eq!(memory(&fold).summary, None);
        fold.apply(&stamp(13), &summary(12, "twelve"));
        assert_eq!(memory(&fold).summary.as_deref(), Some("twelve"));
        assert!(fold.changed_memory.contains(&(1, 2)));
    }

    #[test]
    fn an_update_changes_only_what_it_names_and_renames_the_listed_conversation() {
        let mut fold = Fold::default();
        fold.apply(
            &stamp(1),
            &DomainEvent::BotCreated(BotCreated {
                bot_id: 2,
                user_id: 1,
                name: "Jay".into(),
                kind: BotKind::Cosplay,
                persona: "Jay Chou".into(),
            }),
        );
        fold.apply(
            &stamp(2),
            &DomainEvent::UserMessagePosted(UserMessagePosted {
                message_id: Uuid::now_v7(),
                user_id: 1,
                bot_id: 2,
                content: "hi".into(),
                client_msg_id: None,
                source: MessageSource::Api,
            }),
        );
        fold.apply(
            &stamp(3),
            &DomainEvent::BotUpdated(crate::event::BotUpdated {
                bot_id: 2,
                user_id: 1,
                name: Some("Moon".into()),
                temperature: Some(0.5),
                ..Default::default()
            }),
        );
        let bot = &fold.bots[&2];
        assert_eq!(bot.chatbot_name, "Moon");
        assert_eq!(bot.chatbot_persona, "Jay Chou", "not named, so unchanged");
        assert_eq!(bot.temperature, Some(0.5));
        assert_eq!(bot.model, None);
        assert!(fold.changed_bots.contains(&2));
        let listed = fold.chat_list[&(1, 2)]
            .as_ref()
            .map(|e| e.chatbot_name.clone());
        assert_eq!(listed.as_deref(), Some("Moon"));
        assert_eq!(fold.renamed.get(&(1, 2)).map(String::as_str), Some("Moon"));
    }

    #[test]
    fn a_reply_marks_its_message_and_a_deleted_bot_leaves_the_chat_list() {
        let mut fold = Fold::default();
        fold.apply(
            &stamp(1),
            &DomainEvent::BotCreated(BotCreated {
                bot_id: 2,
                user_id: 1,
                name: "Li".into(),
                kind: BotKind::Assistant,
                persona: String::new(),
            }),
        );
        let message_id = Uuid::now_v7();
        fold.apply(
            &stamp(2),
            &DomainEvent::UserMessagePosted(UserMessagePosted {
                message_id,
                user_id: 1,
                bot_id: 2,
                content: "hi".into(),
                client_msg_id: None,
                source: MessageSource::Api,
            }),
        );
        let reply = |reply_to| {
            DomainEvent::BotReplyGenerated(BotReplyGenerated {
                message_id: Uuid::now_v7(),
                reply_to,
                user_id: 1,
                bot_id: 2,
                content: "hello".into(),
                model: "m".into(),
                attempt: 1,
                usage: None,
                prompt: None,
            })
        };
        fold.apply(&stamp(3), &reply(message_id));
        assert_eq!(
            fold.history().next().map(|e| e.row.status.as_str()),
            Some("done")
        );
        assert_eq!(
            fold.chat_list[&(1, 2)]
                .as_ref()
                .map(|e| e.last_content.as_str()),
            Some("hello")
        );

        // A reply to a message of an earlier batch is a status change to write.
        let older = Uuid::now_v7();
        fold.apply(&stamp(4), &reply(older));
        assert_eq!(
            fold.history_status.get(&older.to_string()),
            Some(&MessageStatus::Done)
        );

        fold.apply(
            &stamp(5),
            &DomainEvent::BotDeleted(BotDeleted {
                bot_id: 2,
                user_id: 1,
            }),
        );
        fold.apply(&stamp(6), &reply(message_id));
        assert_eq!(
            fold.chat_list[&(1, 2)],
            None,
            "a late reply does not list it again"
        );
        assert!(fold.bots[&2].deleted_at.is_some());
    }
}
