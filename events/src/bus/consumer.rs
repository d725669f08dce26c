//! A consumer that stays subscribed through broker restarts.
//!
//! lapin reports a lost connection through `on_error` and through the status of the
//! connection and channel, but a consumer stream does not always end when the
//! connection dies. So the supervisor watches all three, and whichever fires first
//! tears the session down and starts a new one (connect, declare, consume) after a
//! backoff. Handlers run as tasks, at most `prefetch` at a time (the broker sends no
//! more unacked deliveries than that), and each acks or rejects its own delivery.
//!
//! On shutdown it cancels the subscription, lets the running handlers finish within
//! a grace period, then closes the channel; anything still unacked goes back to the
//! queue for another consumer.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{connect, Backoff, BusError, Topology};
use crate::config::BusSettings;

/// How often the connection's health is checked besides the stream itself.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(2);

/// Which queue to consume.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// The shared, durable work queue of user messages (workers).
    UserMessages,
    /// A private queue that lives as long as this connection and receives the given
    /// event types (an api process's reply notifications), delivered without acks.
    Private { routing_keys: Vec<String> },
}

pub struct ConsumerSupervisor {
    settings: BusSettings,
    topology: Topology,
    subscription: Subscription,
    prefetch: u16,
    name: String,
    grace: Duration,
}

impl ConsumerSupervisor {
    pub fn new(
        settings: BusSettings,
        subscription: Subscription,
        prefetch: u16,
        name: impl Into<String>,
    ) -> Self {
        Self {
            topology: Topology::new(&settings),
            settings,
            subscription,
            prefetch: prefetch.max(1),
            name: name.into(),
            grace: Duration::from_secs(30),
        }
    }

    /// How long in-flight handlers may run after shutdown begins.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as often as needed.
    /// `on_connected` runs after every successful (re)subscription.
    pub async fn run<H, Fut>(
        &self,
        shutdown: CancellationToken,
        handler: H,
        on_connected: impl Fn(),
    ) where
        H: Fn(Delivery) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = TaskTracker::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self
                .session(&shutdown, &handler, &tracker, &on_connected)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(consumer = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "consumer lost its broker session; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(consumer = %self.name, "handlers still running after the grace period");
        }
    }

    /// One connection's worth of consuming. `Ok` means shutdown was requested.
    async fn session<H, Fut>(
        &self,
        shutdown: &CancellationToken,
        handler: &H,
        tracker: &TaskTracker,
        on_connected: &impl Fn(),
    ) -> Result<(), BusError>
    where
        H: Fn(Delivery) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let connection = connect(&self.settings, &self.name).await?;
        let (lost_tx, mut lost_rx) = tokio::sync::mpsc::unbounded_channel();
        connection.on_error(move |e| {
            let _ = lost_tx.send(e.to_string());
        });
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        self.topology.declare(&channel).await?;
        let queue = match &self.subscription {
            Subscription::UserMessages => self.topology.user_messages_queue.clone(),
            Subscription::Private { routing_keys } => {
                let queue = channel
                    .queue_declare(
                        "",
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                for key in routing_keys {
                    channel
                        .queue_bind(
                            queue.name().as_str(),
                            &self.topology.events_exchange,
                            key,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                queue.name().to_string()
            }
        };
        // Notifications are best-effort wake-ups: the broker need not wait for acks.
        let no_ack = matches!(self.subscription, Subscription::Private { .. });
        let mut consumer = channel
            .basic_consume(
                &queue,
                &self.name,
                BasicConsumeOptions {
                    no_ack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tracing::info!(consumer = %self.name, queue = %queue, "consuming");
        on_connected();

        let mut watchdog = tokio::time::interval(WATCHDOG_INTERVAL);
        let outcome = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        tracker.spawn(async move { handler(delivery).await });
                    }
                    Some(Err(e)) => break Err(BusError::Amqp(e)),
                    None => break Err(BusError::Unavailable("consumer stream ended".into())),
                },
                lost = lost_rx.recv() => {
                    break Err(BusError::Unavailable(lost.unwrap_or_else(|| "connection lost".into())));
                }
                _ = watchdog.tick() => {
                    if !connection.status().connected() || !channel.status().connected() {
                        break Err(BusError::Unavailable("connection or channel is closed".into()));
                    }
                }
                _ = shutdown.cancelled() => break Ok(()),
            }
        };

        if outcome.is_ok() {
            // Stop new deliveries first, then let the running handlers ack.
            let _ = channel
                .basic_cancel(&self.name, BasicCancelOptions::default())
                .await;
            tracker.close();
            if tokio::time::timeout(self.grace, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(consumer = %self.name, "shutting down with handlers unfinished; their messages return to the queue");
            }
            let _ = channel.close(200, "shutdown").await;
            let _ = connection.close(200, "shutdown").await;
        }
        outcome
    }
}
