//! Which fields are personal: the one place that knows, on the write path and
//! for every reader, as `upcast.rs` is for versions.
//!
//! - Writing: the event store seals every append's personal fields
//!   ([`Keyring::seal_events`]): messages, replies (stopped ones too), bots' names
//!   and personas under their user's key; memory texts under the
//!   conversation's memory key. Ids, types, versions, times, statuses and usage
//!   stay in clear, so ordering, replay, `verify`, metrics and billing need no
//!   key.
//! - Reading the log: [`Keyring::open_event`] (export, explain, as-of history).
//! - Reading the views: the read models keep the sealed text as the events
//!   have it (a rebuild or `verify` needs no key), and whatever shows or uses
//!   a row opens it first ([`Keyring::open_rows`], [`Keyring::open_memory`]).
//!
//! An empty text is left as it is: there is nothing in it to erase, and "no
//! persona" must still read as none.

use std::collections::hash_map::{Entry, HashMap};

use serde_json::Value;

use uuid::Uuid;

use super::{is_sealed, is_sealed_for, Keyring, Opened, Scope, SealError, ERASED};
use crate::event::DomainEvent;
use crate::projections::{Bot, ChatListRow, ConversationMemory, Exchange, HistoryRow};
use crate::record::{NewEvent, RecordedEvent};

/// The personal text fields of an event, and the scope whose key seals them.
fn personal_fields(event_type: &str, payload: &Value) -> Option<(Scope, &'static [&'static str])> {
    let user = payload.get("user_id")?.as_i64()?;
    let bot = || payload.get("bot_id").and_then(Value::as_i64);
    match event_type {
        "BotCreated" | DomainEvent::BOT_UPDATED => Some((Scope::User(user), &["name", "persona"])),
        DomainEvent::USER_MESSAGE_POSTED
        | DomainEvent::BOT_REPLY_GENERATED
        | DomainEvent::BOT_REPLY_STOPPED => Some((Scope::User(user), &["content"])),
        DomainEvent::CONVERSATION_SUMMARIZED => Some((Scope::Memory(user, bot()?), &["summary"])),
        DomainEvent::USER_PROFILE_UPDATED => Some((Scope::Memory(user, bot()?), &["profile"])),
        _ => None,
    }
}

/// A field's text, when it is one that sealing concerns (a string, not empty).
fn text_of<'a>(payload: &'a Value, field: &str) -> Option<&'a str> {
    payload
        .get(field)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

/// A personal text of a stored event, sealed to replace the plaintext an
/// earlier release wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    pub field: &'static str,
    pub plaintext: String,
    pub sealed: String,
}

/// A read-model row with texts that may be sealed.
pub trait SealedText {
    /// Each such text, with the name of the event field it was copied from
    /// (part of what its seal authenticates).
    fn sealed_texts(&mut self) -> Vec<(&mut String, &'static str)>;
}

impl SealedText for HistoryRow {
    fn sealed_texts(&mut self) -> Vec<(&mut String, &'static str)> {
        vec![(&mut self.content, "content")]
    }
}

impl SealedText for ChatListRow {
    fn sealed_texts(&mut self) -> Vec<(&mut String, &'static str)> {
        vec![
            (&mut self.chatbot_name, "name"),
            (&mut self.last_content, "content"),
        ]
    }
}

impl SealedText for Bot {
    fn sealed_texts(&mut self) -> Vec<(&mut String, &'static str)> {
        vec![
            (&mut self.chatbot_name, "name"),
            (&mut self.chatbot_persona, "persona"),
        ]
    }
}

impl SealedText for Exchange {
    fn sealed_texts(&mut self) -> Vec<(&mut String, &'static str)> {
        let mut texts = vec![(&mut self.content, "content")];
        if let Some(reply) = self.reply.as_mut() {
            texts.push((reply, "content"));
        }
        texts
    }
}

impl Keyring {
    /// Seals the personal fields of an append's events, looking each scope's
    /// key up once: a memory refresh's two texts share one lookup.
    pub async fn seal_events(&self, events: &mut [NewEvent]) -> Result<(), SealError> {
        let mut keys = HashMap::new();
        for event in events {
            let Some((scope, fields)) = personal_fields(&event.event_type, &event.payload) else {
                continue;
            };
            // No text, no key: an empty reply of an erased user is still recorded.
            if fields
                .iter()
                .all(|field| text_of(&event.payload, field).is_none())
            {
                continue;
            }
            let key = match keys.entry(scope) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => slot.insert(self.sealing_key(scope).await?),
            };
            for field in fields {
                // Always sealed: nothing arrives here sealed, and a text that
                // looks sealed is a user's.
                let Some(text) = text_of(&event.payload, field) else {
                    continue;
                };
                let sealed = Self::seal_under(key, (event.event_id, field), text)?;
                event.payload[*field] = Value::String(sealed);
            }
        }
        Ok(())
    }

    /// The personal texts of a stored event that are still in the clear, each
    /// sealed (for `encrypt-history`). An erased text (`"[erased]"`) is left:
    /// its user is gone, and sealing it would give them a key again.
    pub async fn seal_plaintext(
        &self,
        event_type: &str,
        event_id: Uuid,
        payload: &Value,
    ) -> Result<Vec<SealedField>, SealError> {
        let Some((scope, fields)) = personal_fields(event_type, payload) else {
            return Ok(Vec::new());
        };
        let mut sealed = Vec::new();
        for field in fields {
            let Some(text) =
                text_of(payload, field).filter(|t| !is_sealed_for(t, event_id) && *t != ERASED)
            else {
                continue;
            };
            // An erased user's text (one written as the account went) is
            // blanked, as erasure blanks the rest: no key is made for them.
            let sealed_text = match self.seal(scope, (event_id, field), text).await {
                Err(SealError::Erased(_)) => ERASED.to_string(),
                other => other?,
            };
            sealed.push(SealedField {
                field,
                plaintext: text.to_string(),
                sealed: sealed_text,
            });
        }
        Ok(sealed)
    }

    /// Opens a stored event's personal fields in place: a destroyed key's
    /// texts read `"[erased]"`; a text that does not authenticate for this
    /// event and field is an error naming both.
    pub async fn open_event(&self, event: &mut RecordedEvent) -> Result<(), SealError> {
        let Some((_, fields)) = personal_fields(&event.event_type, &event.payload) else {
            return Ok(());
        };
        for field in fields {
            let Some(text) = text_of(&event.payload, field).filter(|t| is_sealed(t)) else {
                continue;
            };
            let opened = self
                .open(text, field, Some(event.event_id))
                .await?
                .into_text();
            event.payload[*field] = Value::String(opened);
        }
        Ok(())
    }

    /// Opens the texts of read-model rows in place (an erased one reads
    /// `"[erased]"`).
    pub async fn open_rows<T: SealedText>(&self, rows: &mut [T]) -> Result<(), SealError> {
        let texts: Vec<_> = rows.iter_mut().flat_map(SealedText::sealed_texts).collect();
        self.open_all(texts).await
    }

    /// One row, opened.
    pub async fn open_row<T: SealedText>(&self, mut row: T) -> Result<T, SealError> {
        self.open_rows(std::slice::from_mut(&mut row)).await?;
        Ok(row)
    }

    /// A conversation's memory as its readers use it: its texts opened; an
    /// erased text is no memory.
    pub async fn open_memory(
        &self,
        mut memory: ConversationMemory,
    ) -> Result<ConversationMemory, SealError> {
        for (text, field) in [
            (&mut memory.summary, "summary"),
            (&mut memory.profile, "profile"),
        ] {
            if let Some(sealed) = text.take() {
                *text = match self.open(&sealed, field, None).await? {
                    Opened::Text(opened) => Some(opened),
                    Opened::Erased => None,
                };
            }
        }
        Ok(memory)
    }
}
