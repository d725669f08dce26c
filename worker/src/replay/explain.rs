//! `worker replay explain --message <id>`: why a reply said what it said.
//!
//! A reply records a snapshot of what produced its prompt (see
//! [`events::event::PromptSnapshot`]). From the log alone this rebuilds that
//! prompt with the worker's own pure builder: the bot folded up to the version
//! recorded, the memory texts that covered what was recorded, and the turns of
//! the conversation folded up to just before the reply, in the range recorded.
//! It then compares the rebuilt prompt's digests with the recorded ones: a match
//! shows the log still holds exactly what the model was sent; a difference
//! (an event changed after the fact) is named by part.

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlRow};

use events::event::{reply_key, stream, BotReplyGenerated, DomainEvent, PromptSnapshot};
use events::projections::fold::Fold;
use events::projections::shadow::ReplayError::Unreadable;
use events::projections::{Exchange, HistoryRow};
use events::store::{recorded_from_row, RecordedEvent, SELECT_EVENTS};

use super::ReplayError;
use crate::conversation::turns;
use crate::prompt::{build_prompt, BotProfile, Memory, Prompt};
use events::sealing::{Keyring, Opened};

/// A reply, and its prompt rebuilt from the log.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub reply: BotReplyGenerated,
    pub recorded_at: DateTime<Utc>,
    pub rebuilt: Rebuilt,
}

#[derive(Debug, Clone)]
pub enum Rebuilt {
    /// The reply was written before snapshots were recorded.
    Unrecorded,
    Prompt {
        snapshot: Box<PromptSnapshot>,
        prompt: Prompt,
        /// The parts whose digests differ from the recorded ones; empty: a match.
        differs: Vec<&'static str>,
        /// The memory the prompt carried was forgotten since (its key destroyed):
        /// only the turns can be checked.
        memory_erased: bool,
    },
}

impl Explanation {
    pub fn matches(&self) -> bool {
        match &self.rebuilt {
            Rebuilt::Unrecorded => true,
            Rebuilt::Prompt { differs, .. } => differs.is_empty(),
        }
    }
}

/// Explains the reply whose id, or whose message's id, is `id` (the latest
/// attempt's, for a message).
pub async fn explain(
    (pool, keyring): (&MySqlPool, &Keyring),
    id: &str,
) -> Result<Explanation, ReplayError> {
    let event = find_reply(pool, id).await?.ok_or_else(|| {
        ReplayError::NotFound(format!(
            "no reply with id {id}, nor a reply to a message with that id, is in the log"
        ))
    })?;
    let DomainEvent::BotReplyGenerated(reply) = decode(&event)? else {
        return Err(ReplayError::NotFound(format!("event {id} is not a reply")));
    };
    let recorded_at = event.recorded_at.and_utc();
    let Some(snapshot) = reply.prompt.clone() else {
        return Ok(Explanation {
            reply,
            recorded_at,
            rebuilt: Rebuilt::Unrecorded,
        });
    };
    let bot_events = read_stream(pool, &stream::bot(reply.bot_id), snapshot.bot_version).await?;
    let mut bots = Fold::default();
    for event in &bot_events {
        bots.apply(&event.stamp(), &decode(event)?);
    }
    let bot = bots
        .bots
        .remove(&reply.bot_id)
        .ok_or_else(|| ReplayError::NotFound(format!("bot {} is not in the log", reply.bot_id)))?;
    let bot = keyring.open_row(bot).await?;
    let profile = BotProfile {
        kind: bot.kind(),
        name: bot.chatbot_name,
        persona: bot.chatbot_persona,
    };
    // The conversation just before the reply: the turns as the worker read them.
    let chat = read_stream(
        pool,
        &stream::chat(reply.user_id, reply.bot_id),
        event.stream_version - 1,
    )
    .await?;
    let mut conversation = Fold::default();
    let mut memory = Memory::default();
    let mut memory_erased = false;
    for event in &chat {
        let decoded = decode(event)?;
        let remembered = match &decoded {
            DomainEvent::ConversationSummarized(e)
                if Some(e.covers_version) == snapshot.summary_covers =>
            {
                Some((&mut memory.summary, &e.summary, "summary"))
            }
            DomainEvent::UserProfileUpdated(e)
                if Some(e.covers_version) == snapshot.profile_covers =>
            {
                Some((&mut memory.user_profile, &e.profile, "profile"))
            }
            _ => None,
        };
        if let Some((slot, sealed, field)) = remembered {
            match keyring.open(sealed, field, Some(event.event_id)).await? {
                Opened::Text(text) => *slot = Some(text),
                Opened::Erased => memory_erased = true,
            }
        }
        conversation.apply(&event.stamp(), &decoded);
    }
    let mut rows = conversation.into_history();
    keyring.open_rows(&mut rows).await?;
    let exchanges = exchanges(&rows, &snapshot);
    let prompt = build_prompt(
        &profile,
        Some(&memory),
        &turns(&exchanges, snapshot.last_seq),
        snapshot.now,
        usize::try_from(snapshot.context_budget_chars).unwrap_or(usize::MAX),
    );
    let digests = prompt.digests();
    let mut differs = Vec::new();
    // Memory forgotten since is unreadable by design: the system message it was
    // part of cannot be rebuilt, and is not counted as a difference.
    if digests.system != snapshot.system_sha256 && !memory_erased {
        differs.push("the system message (the bot's persona, the memory, or the time)");
    }
    if digests.turns != snapshot.turns_sha256 {
        differs.push("the conversation's turns");
    }
    if digests.all != snapshot.sha256 && differs.is_empty() && !memory_erased {
        differs.push("the messages as a whole");
    }
    Ok(Explanation {
        reply,
        recorded_at,
        rebuilt: Rebuilt::Prompt {
            snapshot,
            prompt,
            differs,
            memory_erased,
        },
    })
}

/// The user messages in the recorded range, each with its outcome, oldest first.
fn exchanges(rows: &[HistoryRow], snapshot: &PromptSnapshot) -> Vec<Exchange> {
    rows.iter()
        .filter(|r| {
            // The message answered is a turn even when it is older than an
            // erasure, as the worker has it.
            r.by_user == 1
                && (r.seq > snapshot.after_seq || r.seq == snapshot.last_seq)
                && r.seq >= snapshot.first_seq
                && r.seq <= snapshot.last_seq
        })
        .map(|m| {
            let outcome = rows
                .iter()
                .find(|r| r.reply_to.as_deref() == Some(m.message_id.as_str()));
            Exchange {
                seq: m.seq,
                content: m.content.clone(),
                created_at: m.created_at,
                reply: outcome.map(|r| r.content.clone()),
                reply_status: outcome.map(|r| r.status.clone()),
            }
        })
        .collect()
}

/// The reply itself, or the latest reply to the message.
async fn find_reply(pool: &MySqlPool, id: &str) -> Result<Option<RecordedEvent>, ReplayError> {
    // By the message's reply keys (an index range), the latest attempt first.
    let by_message = sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE (idempotency_key = ? OR idempotency_key LIKE ?) \
         AND event_type = ? ORDER BY global_position DESC LIMIT 1"
    ))
    .bind(reply_key(parse(id)?, 1))
    .bind(format!("reply:{id}:%"))
    .bind(DomainEvent::BOT_REPLY_GENERATED)
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_optional(pool)
    .await?;
    if by_message.is_some() {
        return Ok(by_message);
    }
    Ok(sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE event_type = ? \
         AND JSON_UNQUOTE(JSON_EXTRACT(payload, '$.message_id')) = ? LIMIT 1"
    ))
    .bind(DomainEvent::BOT_REPLY_GENERATED)
    .bind(id)
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_optional(pool)
    .await?)
}

fn parse(id: &str) -> Result<uuid::Uuid, ReplayError> {
    uuid::Uuid::parse_str(id.trim())
        .map_err(|_| ReplayError::NotFound(format!("{id:?} is not a message id (a UUID)")))
}

async fn read_stream(
    pool: &MySqlPool,
    stream_id: &str,
    through: i64,
) -> Result<Vec<RecordedEvent>, ReplayError> {
    Ok(sqlx::query(&format!(
        "{SELECT_EVENTS} WHERE stream_id = ? AND stream_version <= ? ORDER BY stream_version"
    ))
    .bind(stream_id)
    .bind(through)
    .try_map(|row: MySqlRow| recorded_from_row(&row))
    .fetch_all(pool)
    .await?)
}

fn decode(event: &RecordedEvent) -> Result<DomainEvent, ReplayError> {
    DomainEvent::decode(event).map_err(|source| {
        Unreadable {
            position: event.global_position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            source,
        }
        .into()
    })
}

/// The explanation as an operator reads it.
pub fn describe(explanation: &Explanation) -> String {
    let reply = &explanation.reply;
    let mut text = format!(
        "reply {} to message {} (attempt {}), recorded {}\nmodel: {}\n",
        reply.message_id,
        reply.reply_to,
        reply.attempt,
        explanation.recorded_at.to_rfc3339(),
        reply.model,
    );
    if let Some(usage) = &reply.usage {
        let (prompt, completion) = usage.billed();
        text.push_str(&format!(
            "usage: {prompt} prompt + {completion} completion tokens{}, {} attempt(s), {} ms\n",
            if usage.estimated { " (estimated)" } else { "" },
            usage.attempts,
            usage.latency_ms,
        ));
    } else {
        text.push_str("usage: unrecorded\n");
    }
    match &explanation.rebuilt {
        Rebuilt::Unrecorded => {
            text.push_str(
                "prompt: unrecorded (written before prompt snapshots were): the bot's version, \
                 the memory, the turns, the settings, the time and the digest are unknown, so \
                 the prompt cannot be rebuilt or checked\n",
            );
        }
        Rebuilt::Prompt {
            snapshot,
            prompt,
            differs,
            memory_erased,
        } => {
            text.push_str(&format!(
                "settings: temperature {}, max tokens {}\nbot: version {} of its stream\n\
                 memory: summary {}, profile {}\nturns: seq {}..={} (after {}), {} read, {} \
                 trimmed by the {}-character budget\nnow: {}\n\n",
                snapshot
                    .temperature
                    .map_or("default".to_string(), |t| t.to_string()),
                snapshot
                    .max_tokens
                    .map_or("default".to_string(), |t| t.to_string()),
                snapshot.bot_version,
                covers(snapshot.summary_covers),
                covers(snapshot.profile_covers),
                snapshot.first_seq,
                snapshot.last_seq,
                snapshot.after_seq,
                snapshot.turns_read,
                snapshot.turns_trimmed,
                snapshot.context_budget_chars,
                snapshot.now.to_rfc3339(),
            ));
            for (i, (role, content)) in prompt.messages().iter().enumerate() {
                text.push_str(&format!("[{i}] {role}: {content}\n"));
            }
            text.push('\n');
            if differs.is_empty() && *memory_erased {
                text.push_str(
                    "the memory this prompt carried was erased since (forget): the system \
                     message cannot be rebuilt; the turns match the digest recorded with the reply\n",
                );
            } else if differs.is_empty() {
                text.push_str(&format!(
                    "sha256 {}: matches the digest recorded with the reply\n",
                    snapshot.sha256
                ));
            } else {
                text.push_str(&format!(
                    "sha256 DIFFERS from the digest recorded with the reply ({}): {} \
                     differ(s) from what the model was sent; an event was changed after the \
                     fact\n",
                    snapshot.sha256,
                    differs.join(", ")
                ));
            }
        }
    }
    text
}

fn covers(version: Option<i64>) -> String {
    version.map_or("none".to_string(), |v| format!("covering through seq {v}"))
}
