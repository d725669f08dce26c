//! Reply notifications: how a waiting request learns that its answer is in.
//!
//! Every api process binds a private queue to the chat events on the bus and fans
//! them out in-process over a broadcast channel. `new_chat` and history long-polls
//! subscribe *before* they append or read, then re-read the read model whenever a
//! notice concerns them. Notices only wake; the read model stays the source of
//! truth, and a slow fallback poll covers notices lost while the broker was away.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use sqlx::MySqlPool;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::bus::consumer::Subscription;
use events::bus::ConsumerSupervisor;
use events::config::BusSettings;
use events::event::DomainEvent;
use events::projections::{ChatHistoryProjection, HistoryRow};
use events::store::RecordedEvent;

use crate::read_cache::ReadCache;

/// How often a waiter re-reads the database even without a notice.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An event was appended to a chat stream.
    Appended {
        stream_id: String,
        reply_to: Option<Uuid>,
    },
    /// The bus connection was (re)established: notices may have been missed.
    Resync,
}

#[derive(Clone)]
pub struct ChatFeed {
    sender: broadcast::Sender<Notice>,
    read_cache: Arc<ReadCache>,
}

impl ChatFeed {
    pub fn new(read_cache: Arc<ReadCache>) -> Self {
        Self {
            sender: broadcast::channel(4096).0,
            read_cache,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }

    /// Consumes chat events from the bus until `shutdown`.
    pub async fn run(self, settings: BusSettings, shutdown: CancellationToken) {
        let routing_keys = [
            DomainEvent::USER_MESSAGE_POSTED,
            DomainEvent::BOT_REPLY_GENERATED,
            DomainEvent::BOT_REPLY_FAILED,
            DomainEvent::BOT_DELETED,
        ]
        .map(str::to_string)
        .to_vec();
        let supervisor = ConsumerSupervisor::new(
            settings,
            Subscription::Private { routing_keys },
            512,
            format!("api-feed-{}", Uuid::new_v4().simple()),
        )
        .with_grace(Duration::from_secs(1));
        let feed = self.clone();
        let on_connected = move || {
            let _ = self.sender.send(Notice::Resync);
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
        match serde_json::from_slice::<RecordedEvent>(&delivery.data) {
            Ok(event) => {
                // Drop cached reads before waking anyone, so a woken reader re-reads.
                if let Some(user) = event.payload.get("user_id").and_then(|u| u.as_i64()) {
                    self.read_cache.invalidate(user);
                }
                let reply_to = event
                    .payload
                    .get("reply_to")
                    .and_then(|v| v.as_str())
                    .and_then(|s| Uuid::parse_str(s).ok());
                // No receivers is normal: nobody is waiting right now.
                let _ = self.sender.send(Notice::Appended {
                    stream_id: event.stream_id,
                    reply_to,
                });
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable notification"),
        }
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            tracing::debug!(error = %e, "could not ack a notification");
        }
    }
}

/// Waits until `message_id` has a reply (or failure) row, or `timeout` passes.
pub async fn wait_for_reply(
    pool: &MySqlPool,
    notices: &mut broadcast::Receiver<Notice>,
    message_id: Uuid,
    timeout: Duration,
) -> Result<Option<HistoryRow>, sqlx::Error> {
    let deadline = Instant::now() + timeout;
    let id = message_id.to_string();
    loop {
        if let Some(row) = ChatHistoryProjection::find_reply(pool, &id).await? {
            return Ok(Some(row));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let relevant = |n: &Notice| match n {
            Notice::Appended { reply_to, .. } => *reply_to == Some(message_id),
            Notice::Resync => true,
        };
        wait_for_notice(notices, relevant, deadline).await;
    }
}

/// Waits until a notice concerning `stream_id` arrives, or `deadline`.
pub async fn wait_for_stream(
    notices: &mut broadcast::Receiver<Notice>,
    stream_id: &str,
    deadline: Instant,
) {
    let relevant = |n: &Notice| match n {
        Notice::Appended { stream_id: s, .. } => s == stream_id,
        Notice::Resync => true,
    };
    wait_for_notice(notices, relevant, deadline).await
}

/// Returns on a relevant notice, on a lag (something may have been missed), after the
/// fallback poll interval, or at the deadline, whichever comes first.
async fn wait_for_notice(
    notices: &mut broadcast::Receiver<Notice>,
    relevant: impl Fn(&Notice) -> bool,
    deadline: Instant,
) {
    let wake = async {
        loop {
            match notices.recv().await {
                Ok(notice) if relevant(&notice) => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let poll_at = (Instant::now() + FALLBACK_POLL).min(deadline);
    tokio::select! {
        _ = wake => {}
        _ = tokio::time::sleep_until(poll_at) => {}
    }
}
