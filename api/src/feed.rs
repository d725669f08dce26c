//! Reply notifications: how a waiting request learns that its answer is in.
//!
//! Every api process binds a private queue to the chat events on the bus and fans
//! them out in-process, over one broadcast channel per conversation being waited
//! on ([`Topics`], as mini-redis's pub/sub keys its channels by name): a notice
//! wakes the waiters of its own conversation, not every waiter of the api.
//! `new_chat` and history long-polls subscribe *before* they append or read, then
//! re-read the read model whenever a notice concerns them. Notices only wake; the
//! read model stays the source of truth.
//!
//! While the bus is healthy a waiter re-reads on its own only rarely (every
//! `HEALTHY_RECHECK`, jittered, so 10,000 waiters are not 10,000 queries a
//! second); every waiter re-reads right after a reconnect (notices may have been
//! missed), and every `DEGRADED_RECHECK` while the bus is away.
//!
//! The same queue carries `SessionRevoked`, which feeds the revoked-sessions view,
//! and the reply deltas, which feed [`LiveReplies`] and streaming clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use lapin::message::Delivery;
use sqlx::MySqlPool;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::bus::consumer::Subscription;
use events::bus::deltas::ReplyDelta;
use events::bus::ConsumerSupervisor;
use events::config::BusSettings;
use events::event::{stream, DomainEvent};
use events::projections::{ChatHistoryProjection, HistoryRow, MessageStatus};
use events::store::RecordedEvent;

use crate::live::{Applied, LiveReplies};
use crate::read_cache::ReadCache;
use crate::sessions::RevokedSessions;

/// How often a waiter re-reads the database without a notice, bus healthy...
const HEALTHY_RECHECK: Duration = Duration::from_secs(15);
/// ... and while the bus is away.
const DEGRADED_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An event was appended to a chat stream.
    Appended {
        stream_id: String,
        /// Set when the event answers a message.
        reply: Option<Reply>,
        /// The history row the event added, shared by every waiter, so that most
        /// wake-ups need no database read.
        row: Option<Arc<HistoryRow>>,
    },
    /// A reply being written gained text.
    Delta {
        stream_id: String,
        reply_to: Uuid,
        /// The model attempt, and this delta's place in it: each stream decides
        /// from these what its client still needs (see `routes::stream`).
        attempt: Uuid,
        index: u32,
        text: String,
    },
    /// The user asked for a message's reply again: its earlier outcome is
    /// withdrawn, and a new one is being written.
    Regenerating {
        stream_id: String,
        reply_to: Uuid,
        /// The regeneration's own event id, newer than any model attempt before it.
        attempt: Uuid,
    },
    /// The conversation was cleared: its rows before `before` (a seq) are gone.
    Cleared { stream_id: String, before: i64 },
    /// A bot was deleted: its streams end.
    BotDeleted { bot_id: events::event::BotId },
    /// The bus connection was (re)established: notices may have been missed.
    Resync,
}

/// The outcome of a user message, as `new_chat` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub reply_to: Uuid,
    /// Which attempt at answering it (1, then one more per regeneration).
    pub attempt: u32,
    /// `Done`, `Failed` or `Stopped`.
    pub status: MessageStatus,
    /// The reply, what went wrong, or the text written before a stop.
    pub content: String,
}

impl Reply {
    /// Notices carry the committed event itself, so the reply needs no read.
    fn from_event(decoded: &DomainEvent) -> Option<Self> {
        let (reply_to, attempt, status, content) = match decoded {
            DomainEvent::BotReplyGenerated(r) => {
                (r.reply_to, r.attempt, MessageStatus::Done, &r.content)
            }
            DomainEvent::BotReplyFailed(f) => {
                (f.reply_to, f.attempt, MessageStatus::Failed, &f.reason)
            }
            DomainEvent::BotReplyStopped(s) => {
                (s.reply_to, s.attempt, MessageStatus::Stopped, &s.content)
            }
            _ => return None,
        };
        Some(Reply {
            reply_to,
            attempt,
            status,
            content: content.clone(),
        })
    }

    fn from_row(reply_to: Uuid, row: HistoryRow) -> Self {
        let status = [MessageStatus::Failed, MessageStatus::Stopped]
            .into_iter()
            .find(|s| s.as_str() == row.status)
            .unwrap_or(MessageStatus::Done);
        Reply {
            reply_to,
            attempt: u32::try_from(row.attempt).unwrap_or(1),
            status,
            content: row.content,
        }
    }
}

/// Notices one conversation's waiters may miss before they re-read (they
/// lag: nothing is lost but a wake-up).
const NOTICES_PER_CONVERSATION: usize = 32;
/// Subscriptions between two sweeps of the conversations nobody waits on.
const SWEEP_EVERY: u64 = 1024;

/// One broadcast channel per conversation (`chat-<user>-<bot>`) with waiters.
#[derive(Default)]
struct Topics {
    senders: Mutex<HashMap<String, broadcast::Sender<Notice>>>,
    subscriptions: AtomicU64,
}

impl Topics {
    fn subscribe(&self, stream_id: &str) -> broadcast::Receiver<Notice> {
        let sweep = self
            .subscriptions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if sweep {
            senders.retain(|_, sender| sender.receiver_count() > 0);
        }
        senders
            .entry(stream_id.to_string())
            .or_insert_with(|| broadcast::channel(NOTICES_PER_CONVERSATION).0)
            .subscribe()
    }

    /// Wakes the conversation's waiters, if it has any.
    fn publish(&self, stream_id: &str, notice: Notice) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let gone = senders
            .get(stream_id)
            .is_some_and(|sender| sender.send(notice).is_err());
        if gone {
            senders.remove(stream_id);
        }
    }

    /// Wakes every waiter (after a reconnect, when anything may have been missed).
    fn publish_to_all(&self, notice: &Notice) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for sender in senders.values() {
            let _ = sender.send(notice.clone());
        }
    }
}

#[derive(Clone)]
pub struct ChatFeed {
    topics: Arc<Topics>,
    read_cache: Arc<ReadCache>,
    sessions: Arc<RevokedSessions>,
    live: Arc<LiveReplies>,
    connected: Arc<AtomicBool>,
}

/// What a waiter holds: the notices, and whether it can count on them.
pub struct Waiter {
    notices: broadcast::Receiver<Notice>,
    connected: Arc<AtomicBool>,
}

impl Waiter {
    /// The next notice, or `None` when a re-check is due (the bus may have missed
    /// something, or notices were dropped because this waiter lagged).
    pub async fn next(&mut self) -> Option<Notice> {
        let recheck = self.recheck_after();
        match tokio::time::timeout(recheck, self.notices.recv()).await {
            Ok(Ok(notice)) => Some(notice),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => None,
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                std::future::pending::<()>().await;
                None
            }
        }
    }

    /// When to re-read without a notice.
    fn recheck_after(&self) -> Duration {
        if self.connected.load(Ordering::Relaxed) {
            HEALTHY_RECHECK.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
        } else {
            DEGRADED_RECHECK
        }
    }
}

impl ChatFeed {
    pub fn new(
        read_cache: Arc<ReadCache>,
        sessions: Arc<RevokedSessions>,
        live: Arc<LiveReplies>,
    ) -> Self {
        Self {
            topics: Arc::new(Topics::default()),
            read_cache,
            sessions,
            live,
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Replies being written now.
    pub fn live(&self) -> &LiveReplies {
        &self.live
    }

    /// The notices of one conversation (`chat-<user>-<bot>`).
    pub fn subscribe(&self, stream_id: &str) -> Waiter {
        Waiter {
            notices: self.topics.subscribe(stream_id),
            connected: self.connected.clone(),
        }
    }

    /// Consumes chat events from the bus until `shutdown`.
    pub async fn run(self, settings: BusSettings, shutdown: CancellationToken) {
        let routing_keys = [
            DomainEvent::USER_MESSAGE_POSTED,
            DomainEvent::BOT_REPLY_GENERATED,
            DomainEvent::BOT_REPLY_FAILED,
            DomainEvent::BOT_REPLY_STOPPED,
            DomainEvent::REPLY_REGENERATION_REQUESTED,
            DomainEvent::CONVERSATION_CLEARED,
            DomainEvent::BOT_DELETED,
            // A renamed bot: its owner's cached chat list is dropped (below).
            DomainEvent::BOT_UPDATED,
            DomainEvent::SESSION_REVOKED,
        ]
        .map(str::to_string)
        .to_vec();
        let supervisor = ConsumerSupervisor::new(
            settings,
            Subscription::Private {
                routing_keys,
                deltas: true,
            },
            512,
            format!("api-feed-{}", Uuid::new_v4().simple()),
        )
        .with_grace(Duration::from_secs(1));
        let feed = self.clone();
        let on_connected = move |connected: bool| {
            self.connected.store(connected, Ordering::Relaxed);
            if connected {
                self.read_cache.clear();
                self.sessions.request_reload();
                self.topics.publish_to_all(&Notice::Resync);
            }
        };
        supervisor
            .run(
                shutdown,
                move |delivery| {
                    let feed = feed.clone();
                    async move { feed.handle(delivery).await }
                },
                on_connected,
            )
            .await;
    }

    async fn handle(&self, delivery: Delivery) {
        if delivery.exchange.as_str().ends_with(".deltas") {
            self.handle_delta(&delivery);
            return;
        }
        match serde_json::from_slice::<RecordedEvent>(&delivery.data) {
            Ok(event) if event.event_type == DomainEvent::SESSION_REVOKED => {
                if let Some(sid) = event.payload.get("session_id").and_then(|s| s.as_str()) {
                    self.sessions.revoke(sid);
                }
                // A password change: read the user's new credentials version.
                let reason = event.payload.get("reason").and_then(|r| r.as_str());
                if reason == Some(crate::domain::sessions::REASON_PASSWORD_CHANGED) {
                    self.sessions.request_reload();
                }
            }
            Ok(event) => {
                // Drop cached reads before waking anyone, so a woken reader re-reads.
                if let Some(user) = event.payload.get("user_id").and_then(|u| u.as_i64()) {
                    self.read_cache.invalidate(user);
                }
                // Decoded once, for the reply and the row alike.
                let decoded = DomainEvent::decode(&event).ok();
                match &decoded {
                    Some(DomainEvent::BotDeleted(deleted)) => {
                        self.topics.publish(
                            &stream::chat(deleted.user_id, deleted.bot_id),
                            Notice::BotDeleted {
                                bot_id: deleted.bot_id,
                            },
                        );
                        return;
                    }
                    Some(DomainEvent::BotUpdated(_)) => return,
                    Some(DomainEvent::ReplyRegenerationRequested(again)) => {
                        // Its deltas are wanted again, and the old text is not.
                        self.live
                            .restart(again.message_id, again.attempt, event.event_id);
                        self.topics.publish(
                            &event.stream_id,
                            Notice::Regenerating {
                                stream_id: event.stream_id.clone(),
                                reply_to: again.message_id,
                                attempt: event.event_id,
                            },
                        );
                        return;
                    }
                    Some(DomainEvent::ConversationCleared(_)) => {
                        self.topics.publish(
                            &event.stream_id,
                            Notice::Cleared {
                                stream_id: event.stream_id.clone(),
                                before: event.stream_version,
                            },
                        );
                        return;
                    }
                    _ => {}
                }
                let reply = decoded.as_ref().and_then(Reply::from_event);
                if let Some(reply) = &reply {
                    self.live.finish(reply.reply_to, reply.attempt);
                }
                let row = decoded
                    .as_ref()
                    .and_then(|decoded| ChatHistoryProjection::row_of(&event.stamp(), decoded))
                    .map(Arc::new);
                // No receivers is normal: nobody is waiting right now.
                self.topics.publish(
                    &event.stream_id,
                    Notice::Appended {
                        stream_id: event.stream_id.clone(),
                        reply,
                        row,
                    },
                );
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable notification"),
        }
    }
}

impl ChatFeed {
    fn handle_delta(&self, delivery: &Delivery) {
        let delta = match serde_json::from_slice::<ReplyDelta>(&delivery.data) {
            Ok(delta) => delta,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an unreadable delta");
                return;
            }
        };
        let stream_id = stream::chat(delta.user_id, delta.bot_id);
        if self.live.apply(&stream_id, &delta) == Applied::Forward {
            self.topics.publish(
                &stream_id,
                Notice::Delta {
                    stream_id: stream_id.clone(),
                    reply_to: delta.reply_to,
                    attempt: delta.attempt,
                    index: delta.index,
                    text: delta.text,
                },
            );
        }
    }
}

/// Waits until `message_id` has an outcome of attempt `attempt` or later (a
/// regeneration's, not the one it replaced), or `timeout` passes.
/// `just_posted` skips the first read, which cannot find a reply yet.
pub async fn wait_for_reply(
    pool: &MySqlPool,
    notices: &mut Waiter,
    (message_id, attempt): (Uuid, u32),
    just_posted: bool,
    timeout: Duration,
) -> Result<Option<Reply>, sqlx::Error> {
    let deadline = Instant::now() + timeout;
    let id = message_id.to_string();
    let mut read = !just_posted;
    loop {
        if read {
            if let Some(row) = ChatHistoryProjection::find_reply(pool, &id).await? {
                let reply = Reply::from_row(message_id, row);
                if reply.attempt >= attempt {
                    return Ok(Some(reply));
                }
            }
        }
        read = true;
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let relevant = |n: &Notice| match n {
            Notice::Appended { reply, .. } => reply
                .as_ref()
                .is_some_and(|r| r.reply_to == message_id && r.attempt >= attempt),
            Notice::Resync => true,
            Notice::Delta { .. }
            | Notice::BotDeleted { .. }
            | Notice::Regenerating { .. }
            | Notice::Cleared { .. } => false,
        };
        if let Some(Notice::Appended {
            reply: Some(reply), ..
        }) = wait_for_notice(notices, relevant, deadline).await
        {
            return Ok(Some(reply));
        }
    }
}

/// What a long-poll heard while it waited.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// Something may have changed: read again (with the very next row, when the
    /// notice brought one).
    Changed(Option<Arc<HistoryRow>>),
    /// The conversation's bot was deleted: nothing more will come.
    BotDeleted,
}

/// Waits until a notice concerning `stream_id` (or the deletion of `bot_id`)
/// arrives, or `deadline`.
pub async fn wait_for_stream(
    notices: &mut Waiter,
    stream_id: &str,
    bot_id: events::event::BotId,
    deadline: Instant,
) -> Heard {
    let relevant = |n: &Notice| match n {
        Notice::Appended { stream_id: s, .. } => s == stream_id,
        Notice::BotDeleted { bot_id: b } => *b == bot_id,
        Notice::Resync => true,
        Notice::Delta { .. } | Notice::Regenerating { .. } | Notice::Cleared { .. } => false,
    };
    match wait_for_notice(notices, relevant, deadline).await {
        Some(Notice::Appended { row, .. }) => Heard::Changed(row),
        Some(Notice::BotDeleted { .. }) => Heard::BotDeleted,
        _ => Heard::Changed(None),
    }
}

/// Returns a relevant notice, or `None` on a lag (something may have been missed),
/// when a re-check is due, or at the deadline, whichever comes first.
async fn wait_for_notice(
    subscription: &mut Waiter,
    relevant: impl Fn(&Notice) -> bool,
    deadline: Instant,
) -> Option<Notice> {
    let poll_at = (Instant::now() + subscription.recheck_after()).min(deadline);
    let notices = &mut subscription.notices;
    let wake = async {
        loop {
            match notices.recv().await {
                Ok(notice) if relevant(&notice) => return Some(notice),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return None,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        notice = wake => notice,
        _ = tokio::time::sleep_until(poll_at) => None,
    }
}
