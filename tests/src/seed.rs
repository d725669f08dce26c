//! A synthetic event log, written in bulk through the event store (not HTTP), for
//! replay benchmarks and tests: users with sessions and bots, one conversation per
//! bot with messages, replies, an occasional failure, memory every six messages, and
//! a few deleted bots, their texts sealed (or not, as before sealing). The live views are left empty (the store runs with
//! [`crate::NoProjection`]); a rebuild fills them.

use std::sync::Arc;

use futures::{stream, StreamExt, TryStreamExt};
use uuid::Uuid;

use events::event::{
    stream as streams, BotCreated, BotDeleted, BotKind, BotReplyFailed, BotReplyGenerated,
    ConversationSummarized, DomainEvent, EventMetadata, MessageSource, SessionRefreshed,
    SessionStarted, UserMessagePosted, UserProfileUpdated,
};
use events::store::{EventStore, ExpectedVersion, NewEvent};

#[derive(Debug, Clone, Copy)]
pub struct SeedPlan {
    pub users: i64,
    pub bots_per_user: i64,
    /// The log's size, roughly (it is filled conversation by conversation).
    pub events: u64,
    /// Texts sealed, as today's release writes them; or in the clear, as
    /// releases before sealing did.
    pub sealed: bool,
}

/// Appends the plan's events; returns how many were written.
pub async fn seed_log(
    pool: &sqlx::MySqlPool,
    plan: SeedPlan,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut store = EventStore::new(pool.clone(), Arc::new(crate::NoProjection));
    if plan.sealed {
        store = store.sealing_with(crate::test_keyring(pool));
    }
    let conversations = (plan.users * plan.bots_per_user).max(1) as u64;
    let deletions = conversations / 20;
    let overhead = plan.users as u64 * 2 + conversations + deletions;
    let chat_events = plan.events.saturating_sub(overhead);
    // Spread so that the log holds exactly `plan.events`.
    let per_conversation = |index: u64| {
        (chat_events / conversations + u64::from(index < chat_events % conversations)).max(2)
    };

    // Accounts first: a session (started, then refreshed once) and the bots.
    let mut batches: Vec<(String, Vec<NewEvent>)> = Vec::new();
    for user in 1..=plan.users {
        let session_id = Uuid::now_v7();
        batches.push((
            streams::session(session_id),
            vec![
                packed(DomainEvent::SessionStarted(SessionStarted {
                    session_id,
                    user_id: user,
                    refresh_jti: Uuid::new_v4().simple().to_string(),
                }))?,
                packed(DomainEvent::SessionRefreshed(SessionRefreshed {
                    session_id,
                    user_id: user,
                    spent_jti: format!("first-{user}"),
                    refresh_jti: Uuid::new_v4().simple().to_string(),
                }))?,
            ],
        ));
        for n in 0..plan.bots_per_user {
            let bot_id = bot_id(plan, user, n);
            batches.push((
                streams::bot(bot_id),
                vec![packed(DomainEvent::BotCreated(BotCreated {
                    bot_id,
                    user_id: user,
                    name: format!("bot {n} of user {user}"),
                    kind: if n % 2 == 0 {
                        BotKind::Assistant
                    } else {
                        BotKind::Cosplay
                    },
                    persona: if n % 2 == 0 {
                        String::new()
                    } else {
                        "Jay Chou".into()
                    },
                }))?],
            ));
        }
    }
    let mut written = append_all(&store, batches, &mut progress, 0).await?;

    // Then the conversations, a few at a time so memory stays small.
    let mut keys: Vec<(i64, i64)> = Vec::new();
    for user in 1..=plan.users {
        for n in 0..plan.bots_per_user {
            keys.push((user, n));
        }
    }
    for (chunk_index, chunk) in keys.chunks(200).enumerate() {
        let mut batches = Vec::new();
        for (i, &(user, n)) in chunk.iter().enumerate() {
            let bot_id = bot_id(plan, user, n);
            let index = (chunk_index * 200 + i) as u64;
            batches.push((
                streams::chat(user, bot_id),
                conversation(user, bot_id, per_conversation(index))?,
            ));
            // One bot in twenty is deleted once its conversation is over.
            if bot_id % 20 == 0 {
                batches.push((
                    streams::bot(bot_id),
                    vec![packed(DomainEvent::BotDeleted(BotDeleted {
                        bot_id,
                        user_id: user,
                    }))?],
                ));
            }
        }
        written = append_all(&store, batches, &mut progress, written).await?;
    }
    Ok(written)
}

fn bot_id(plan: SeedPlan, user: i64, n: i64) -> i64 {
    (user - 1) * plan.bots_per_user + n + 1
}

/// `count` events of one conversation: message, reply (one in fifty fails), and a
/// summary and a profile after every sixth exchange.
fn conversation(user: i64, bot: i64, count: u64) -> anyhow::Result<Vec<NewEvent>> {
    let mut events = Vec::with_capacity(count as usize);
    let mut exchange = 0u64;
    while (events.len() as u64) < count {
        exchange += 1;
        let message_id = Uuid::now_v7();
        events.push(packed(DomainEvent::UserMessagePosted(UserMessagePosted {
            message_id,
            user_id: user,
            bot_id: bot,
            content: format!(
                "message {exchange}: what should I cook tonight, given what I told you?"
            ),
            client_msg_id: None,
            source: MessageSource::Import,
        }))?);
        if events.len() as u64 >= count {
            break;
        }
        let reply = if exchange.is_multiple_of(50) {
            DomainEvent::BotReplyFailed(BotReplyFailed {
                message_id: Uuid::now_v7(),
                reply_to: message_id,
                user_id: user,
                bot_id: bot,
                reason: "The model is unavailable right now. Please try again.".into(),
                attempt: 1,
                usage: None,
            })
        } else {
            DomainEvent::BotReplyGenerated(BotReplyGenerated {
                message_id: Uuid::now_v7(),
                reply_to: message_id,
                user_id: user,
                bot_id: bot,
                content: format!(
                    "reply {exchange}: since you liked the noodles last week, try a spicy \
                     version with more garlic, and tell me how it went tomorrow."
                ),
                model: "fake".into(),
                attempt: 1,
                usage: None,
                prompt: None,
            })
        };
        events.push(packed(reply)?);
        if exchange.is_multiple_of(6) && (events.len() as u64) + 2 <= count {
            let covers = events.len() as i64;
            events.push(packed(DomainEvent::ConversationSummarized(
                ConversationSummarized {
                    user_id: user,
                    bot_id: bot,
                    summary: format!("The user cooks noodles; {exchange} exchanges so far."),
                    covers_version: covers,
                    usage: None,
                },
            ))?);
            events.push(packed(DomainEvent::UserProfileUpdated(
                UserProfileUpdated {
                    user_id: user,
                    bot_id: bot,
                    profile: "Likes spicy food; cooks in the evening.".into(),
                    covers_version: covers,
                    usage: None,
                },
            ))?);
        }
    }
    Ok(events)
}

fn packed(event: DomainEvent) -> anyhow::Result<NewEvent> {
    Ok(event.to_new_event(EventMetadata {
        correlation_id: Some(format!("seed-{}", Uuid::new_v4().simple())),
        ..Default::default()
    })?)
}

async fn append_all(
    store: &EventStore,
    batches: Vec<(String, Vec<NewEvent>)>,
    progress: &mut impl FnMut(u64),
    mut written: u64,
) -> anyhow::Result<u64> {
    let mut appends = stream::iter(batches)
        .map(|(stream_id, events)| {
            let store = store.clone();
            async move {
                store
                    .append_to_stream(&stream_id, ExpectedVersion::Any, &events)
                    .await?;
                anyhow::Ok(events.len() as u64)
            }
        })
        .buffer_unordered(8);
    while let Some(count) = appends.try_next().await? {
        written += count;
        progress(written);
    }
    Ok(written)
}

/// Appends `exchanges` answered messages to a conversation through the event
/// store, with the live read models, as the api and the worker would; `texts`
/// gives the `i`th message and its reply.
pub async fn seed_conversation(
    pool: &sqlx::MySqlPool,
    (user, bot): (i64, i64),
    exchanges: usize,
    texts: impl Fn(usize) -> (String, String),
) -> anyhow::Result<()> {
    let store = EventStore::new(pool.clone(), Arc::new(events::projections::ReadModels));
    let stream_id = streams::chat(user, bot);
    for start in (0..exchanges).step_by(50) {
        let mut batch = Vec::new();
        for i in start..(start + 50).min(exchanges) {
            let (message, reply) = texts(i);
            let message_id = Uuid::now_v7();
            for event in [
                DomainEvent::UserMessagePosted(UserMessagePosted {
                    message_id,
                    user_id: user,
                    bot_id: bot,
                    content: message,
                    client_msg_id: None,
                    source: MessageSource::Import,
                }),
                DomainEvent::BotReplyGenerated(BotReplyGenerated {
                    message_id: Uuid::now_v7(),
                    reply_to: message_id,
                    user_id: user,
                    bot_id: bot,
                    content: reply,
                    model: "seed".into(),
                    attempt: 1,
                    usage: None,
                    prompt: None,
                }),
            ] {
                batch.push(event.to_new_event(EventMetadata::default())?);
            }
        }
        store
            .append_to_stream(&stream_id, ExpectedVersion::Any, &batch)
            .await?;
    }
    Ok(())
}
