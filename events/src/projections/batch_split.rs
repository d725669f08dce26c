//! The read models must not depend on how the log was cut into batches: the
//! appender folds whatever a commit holds (one event, or sixty), a rebuild folds
//! a thousand at a time, and `verify` compares the two. This property test folds
//! random event sequences, cut at random places, over tables kept in memory, and
//! checks that every cut gives the same rows as one batch of everything.
//!
//! [`Rows`] plays the database: `load` and `write` do to maps what
//! [`super::bulk`]'s statements do to the tables, in the same order.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use proptest::prelude::*;
use uuid::Uuid;

use super::fold::{
    ChatListEntry, ConversationKey, Fold, HistoryEntry, MemoryRow, SessionRow, Touched,
};
use super::usage::{UsageAmounts, UsageKey};
use super::Bot;
use crate::event::{self, BotKind, DomainEvent, MessageSource, Usage, UserId};
use crate::store::EventStamp;

/// Every read-model table, as rows in memory.
#[derive(Debug, Default, Clone, PartialEq)]
struct Rows {
    bots: BTreeMap<i64, Bot>,
    /// Keyed as the table is: `(user, bot, seq)`.
    history: BTreeMap<(UserId, i64, i64), HistoryEntry>,
    chat_list: BTreeMap<ConversationKey, ChatListEntry>,
    sessions: BTreeMap<String, SessionRow>,
    memory: BTreeMap<ConversationKey, MemoryRow>,
    usage: BTreeMap<UsageKey, UsageAmounts>,
}

impl Rows {
    fn apply_batch(&mut self, events: &[(EventStamp, DomainEvent)]) {
        let mut fold = self.load(&Touched::of(events));
        for (stamp, decoded) in events {
            fold.apply(stamp, decoded);
        }
        self.write(fold);
    }

    /// `bulk::load`: the rows the batch touches.
    fn load(&self, touched: &Touched) -> Fold {
        let mut fold = Fold::default();
        fold.bots = touched
            .bots
            .iter()
            .filter_map(|id| self.bots.get(id).map(|bot| (*id, bot.clone())))
            .collect();
        fold.sessions = touched
            .sessions
            .iter()
            .filter_map(|id| self.sessions.get(id).map(|s| (id.clone(), s.clone())))
            .collect();
        fold.memory = touched
            .memory
            .iter()
            .filter_map(|key| self.memory.get(key).map(|m| (*key, m.clone())))
            .collect();
        fold.usage = touched
            .usage
            .iter()
            .filter_map(|key| self.usage.get(key).map(|u| (key.clone(), *u)))
            .collect();
        fold
    }

    /// `bulk::write`: what the batch changed, in the statements' order.
    fn write(&mut self, fold: Fold) {
        for user in &fold.erased_users {
            self.bots.retain(|_, bot| bot.user_id != *user);
            self.history.retain(|(u, ..), _| u != user);
            self.chat_list.retain(|(u, _), _| u != user);
            self.sessions.retain(|_, s| s.user_id != *user);
            self.memory.retain(|(u, _), _| u != user);
            self.usage.retain(|(u, ..), _| u != user);
        }
        for id in &fold.changed_bots {
            if let Some(bot) = fold.bots.get(id) {
                self.bots.insert(*id, bot.clone());
            }
        }
        for ((user, bot), before) in &fold.cleared {
            self.history
                .retain(|(u, b, seq), _| !(u == user && b == bot && seq < before));
        }
        self.history.retain(|_, entry| {
            entry
                .row
                .reply_to
                .as_ref()
                .is_none_or(|to| !fold.withdrawn.contains(to))
        });
        for entry in fold.history() {
            let key = (entry.user_id, entry.chatbot_id, entry.row.seq);
            assert!(
                self.history.insert(key, entry.clone()).is_none(),
                "a history row is written once"
            );
        }
        for entry in self.history.values_mut() {
            if let Some(status) = fold.history_status.get(&entry.row.message_id) {
                entry.row.status = status.as_str().to_string();
            }
            if let Some(attempt) = fold.history_attempts.get(&entry.row.message_id) {
                entry.row.attempt = *attempt;
            }
        }
        for (key, name) in &fold.renamed {
            if let Some(entry) = self.chat_list.get_mut(key) {
                entry.chatbot_name.clone_from(name);
            }
        }
        for (key, entry) in &fold.chat_list {
            match entry {
                Some(entry) => self.chat_list.insert(*key, entry.clone()),
                None => self.chat_list.remove(key),
            };
        }
        for id in &fold.changed_sessions {
            if let Some(session) = fold.sessions.get(id) {
                self.sessions.insert(id.clone(), session.clone());
            }
        }
        for key in &fold.changed_memory {
            if let Some(memory) = fold.memory.get(key) {
                self.memory.insert(*key, memory.clone());
            }
        }
        self.usage.extend(fold.usage);
    }
}

/// One step of a random script; indices pick among a few users, bots and sessions.
#[derive(Debug, Clone)]
enum Step {
    CreateBot(usize),
    RenameBot(usize),
    DeleteBot(usize),
    Post(usize),
    /// Answers one of the conversation's messages: done, failed or stopped.
    Answer(usize, usize, u8),
    Regenerate(usize, usize),
    Clear(usize, bool),
    Remember(usize, i64, bool),
    ForgetMemory(usize),
    StartSession(usize),
    RefreshSession(usize),
    RevokeSession(usize),
    EraseUser(usize),
    /// Hours pass (so usage falls on more than one day).
    Wait(u8),
}

const BOTS: usize = 4;
const USERS: usize = 2;
const SESSIONS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..BOTS).prop_map(Step::CreateBot),
        1 => (0..BOTS).prop_map(Step::RenameBot),
        1 => (0..BOTS).prop_map(Step::DeleteBot),
        6 => (0..BOTS).prop_map(Step::Post),
        6 => (0..BOTS, 0..8usize, 0..3u8).prop_map(|(b, m, k)| Step::Answer(b, m, k)),
        2 => (0..BOTS, 0..8usize).prop_map(|(b, m)| Step::Regenerate(b, m)),
        1 => (0..BOTS, any::<bool>()).prop_map(|(b, f)| Step::Clear(b, f)),
        2 => (0..BOTS, -3..3i64, any::<bool>()).prop_map(|(b, c, p)| Step::Remember(b, c, p)),
        1 => (0..BOTS).prop_map(Step::ForgetMemory),
        1 => (0..SESSIONS).prop_map(Step::StartSession),
        1 => (0..SESSIONS).prop_map(Step::RefreshSession),
        1 => (0..SESSIONS).prop_map(Step::RevokeSession),
        1 => (0..USERS).prop_map(Step::EraseUser),
        1 => (0..30u8).prop_map(Step::Wait),
    ]
}

/// Turns a script into a log: positions, stream versions and times as the
/// store would give them, and only events the api and workers could record
/// (nothing for an erased user, a bot created once).
fn log_of(steps: &[Step]) -> Vec<(EventStamp, DomainEvent)> {
    let user_of = |bot: usize| (bot % USERS) as UserId + 1;
    let bot_id = |bot: usize| bot as i64 + 100;
    let mut log = Log::default();
    let mut messages: BTreeMap<usize, Vec<Uuid>> = BTreeMap::new();
    let mut created = [false; BOTS];
    let mut erased = [false; USERS];
    let mut attempts: BTreeMap<Uuid, u32> = BTreeMap::new();
    let mut sessions: BTreeMap<usize, Uuid> = BTreeMap::new();
    let mut at = NaiveDateTime::default() + chrono::Duration::days(20_000);
    let usage = |tokens: u32| Usage {
        model: if tokens.is_multiple_of(2) { "a" } else { "b" }.into(),
        prompt_tokens: tokens,
        completion_tokens: tokens + 1,
        attempts: 1,
        ..Usage::default()
    };
    for (i, step) in steps.iter().enumerate() {
        at += chrono::Duration::seconds(1);
        let bot = match step {
            Step::CreateBot(b)
            | Step::RenameBot(b)
            | Step::DeleteBot(b)
            | Step::Post(b)
            | Step::Answer(b, ..)
            | Step::Regenerate(b, _)
            | Step::Clear(b, _)
            | Step::Remember(b, ..)
            | Step::ForgetMemory(b) => Some(*b),
            _ => None,
        };
        if let Some(b) = bot {
            let creating = matches!(step, Step::CreateBot(_));
            if erased[user_of(b) as usize - 1] || created[b] == creating {
                continue;
            }
        }
        let chat = |b: usize| format!("chat-{}-{}", user_of(b), bot_id(b));
        match step {
            Step::CreateBot(b) => {
                created[*b] = true;
                let e = event::BotCreated {
                    bot_id: bot_id(*b),
                    user_id: user_of(*b),
                    name: format!("bot {b}"),
                    kind: BotKind::Assistant,
                    persona: String::new(),
                };
                log.record(format!("bot-{b}"), DomainEvent::BotCreated(e), at);
            }
            Step::RenameBot(b) => {
                let e = event::BotUpdated {
                    bot_id: bot_id(*b),
                    user_id: user_of(*b),
                    name: Some(format!("bot {b} renamed at {i}")),
                    temperature: Some(0.5),
                    ..Default::default()
                };
                log.record(format!("bot-{b}"), DomainEvent::BotUpdated(e), at);
            }
            Step::DeleteBot(b) => {
                let e = event::BotDeleted {
                    bot_id: bot_id(*b),
                    user_id: user_of(*b),
                };
                log.record(format!("bot-{b}"), DomainEvent::BotDeleted(e), at);
            }
            Step::Post(b) => {
                let message_id = Uuid::from_u128(i as u128 + 1);
                messages.entry(*b).or_default().push(message_id);
                let e = event::UserMessagePosted {
                    message_id,
                    user_id: user_of(*b),
                    bot_id: bot_id(*b),
                    content: format!("message {i}"),
                    client_msg_id: None,
                    source: MessageSource::Api,
                };
                log.record(chat(*b), DomainEvent::UserMessagePosted(e), at);
            }
            Step::Answer(b, m, kind) => {
                let Some(reply_to) = pick(&messages, *b, *m) else {
                    continue;
                };
                let attempt = attempts.get(&reply_to).copied().unwrap_or(1);
                let (message_id, user_id, bot_id) =
                    (Uuid::from_u128(i as u128 + 1), user_of(*b), bot_id(*b));
                let answer = match kind {
                    0 => DomainEvent::BotReplyGenerated(event::BotReplyGenerated {
                        message_id,
                        reply_to,
                        user_id,
                        bot_id,
                        content: format!("reply {i}"),
                        model: "a".into(),
                        attempt,
                        usage: Some(usage(i as u32)),
                        prompt: None,
                    }),
                    1 => DomainEvent::BotReplyFailed(event::BotReplyFailed {
                        message_id,
                        reply_to,
                        user_id,
                        bot_id,
                        reason: format!("failure {i}"),
                        attempt,
                        usage: None,
                    }),
                    _ => DomainEvent::BotReplyStopped(event::BotReplyStopped {
                        message_id,
                        reply_to,
                        user_id,
                        bot_id,
                        content: if i.is_multiple_of(2) {
                            String::new()
                        } else {
                            format!("cut {i}")
                        },
                        attempt,
                    }),
                };
                log.record(chat(*b), answer, at);
            }
            Step::Regenerate(b, m) => {
                let Some(message_id) = pick(&messages, *b, *m) else {
                    continue;
                };
                let attempt = attempts.entry(message_id).or_insert(1);
                *attempt += 1;
                let e = event::ReplyRegenerationRequested {
                    message_id,
                    user_id: user_of(*b),
                    bot_id: bot_id(*b),
                    attempt: *attempt,
                };
                log.record(chat(*b), DomainEvent::ReplyRegenerationRequested(e), at);
            }
            Step::Clear(b, forget_memory) => {
                let e = event::ConversationCleared {
                    user_id: user_of(*b),
                    bot_id: bot_id(*b),
                    forget_memory: *forget_memory,
                };
                log.record(chat(*b), DomainEvent::ConversationCleared(e), at);
            }
            Step::Remember(b, back, profile) => {
                let covers = log.versions.get(&chat(*b)).copied().unwrap_or(0) + back;
                let (user_id, bot_id) = (user_of(*b), bot_id(*b));
                let e = if *profile {
                    DomainEvent::UserProfileUpdated(event::UserProfileUpdated {
                        user_id,
                        bot_id,
                        profile: format!("profile {i}"),
                        covers_version: covers,
                        usage: Some(usage(i as u32)),
                    })
                } else {
                    DomainEvent::ConversationSummarized(event::ConversationSummarized {
                        user_id,
                        bot_id,
                        summary: format!("summary {i}"),
                        covers_version: covers,
                        usage: None,
                    })
                };
                log.record(format!("memory-{b}"), e, at);
            }
            Step::ForgetMemory(b) => {
                let e = event::MemoryErased {
                    user_id: user_of(*b),
                    bot_id: bot_id(*b),
                };
                log.record(chat(*b), DomainEvent::MemoryErased(e), at);
            }
            Step::StartSession(s) | Step::RefreshSession(s) | Step::RevokeSession(s) => {
                let user_id = (*s % USERS) as UserId + 1;
                if erased[user_id as usize - 1] {
                    continue;
                }
                let session_id = *sessions
                    .entry(*s)
                    .or_insert_with(|| Uuid::from_u128(1_000_000 + i as u128));
                let e = match step {
                    Step::StartSession(_) => DomainEvent::SessionStarted(event::SessionStarted {
                        session_id,
                        user_id,
                        refresh_jti: format!("jti {i}"),
                    }),
                    Step::RefreshSession(_) => {
                        DomainEvent::SessionRefreshed(event::SessionRefreshed {
                            session_id,
                            user_id,
                            spent_jti: String::new(),
                            refresh_jti: format!("jti {i}"),
                        })
                    }
                    _ => DomainEvent::SessionRevoked(event::SessionRevoked {
                        session_id,
                        user_id,
                        reason: format!("reason {i}"),
                    }),
                };
                log.record(format!("session-{session_id}"), e, at);
            }
            Step::EraseUser(u) => {
                if !erased[*u] {
                    erased[*u] = true;
                    let user_id = *u as UserId + 1;
                    let e = DomainEvent::UserErased(event::UserErased { user_id });
                    log.record(format!("user-{user_id}"), e, at);
                }
            }
            Step::Wait(hours) => at += chrono::Duration::hours(i64::from(*hours)),
        }
    }
    log.events
}

/// The events so far, and each stream's version.
#[derive(Default)]
struct Log {
    events: Vec<(EventStamp, DomainEvent)>,
    versions: BTreeMap<String, i64>,
}

impl Log {
    fn record(&mut self, stream: String, event: DomainEvent, at: NaiveDateTime) {
        let version = self.versions.entry(stream).or_default();
        *version += 1;
        let stamp = EventStamp {
            global_position: self.events.len() as i64 + 1,
            stream_version: *version,
            recorded_at: at,
        };
        self.events.push((stamp, event));
    }
}

fn pick(messages: &BTreeMap<usize, Vec<Uuid>>, bot: usize, nth: usize) -> Option<Uuid> {
    let sent = messages.get(&bot)?;
    sent.get(sent.len().checked_sub(1 + nth % sent.len().max(1))?)
        .copied()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn how_the_log_is_cut_into_batches_makes_no_difference(
        steps in prop::collection::vec(step(), 1..120),
        cuts in prop::collection::vec(1..12usize, 1..40),
    ) {
        let log = log_of(&steps);
        let mut whole = Rows::default();
        whole.apply_batch(&log);

        let mut batched = Rows::default();
        let mut rest = log.as_slice();
        for size in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at((*size).min(rest.len()));
            batched.apply_batch(batch);
            rest = after;
        }
        prop_assert_eq!(&batched, &whole);

        let mut one_by_one = Rows::default();
        for event in log.chunks(1) {
            one_by_one.apply_batch(event);
        }
        prop_assert_eq!(&one_by_one, &whole);
    }
}
