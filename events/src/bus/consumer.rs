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
//! one grace period, then cancels the ones still running (dropping a model call
//! mid-flight) and closes the channel; anything still unacked goes back to the queue
//! for another consumer.
//!
//! The reconnect backoff starts over after every session that got as far as
//! consuming, so a blip costs a fast reconnect however many came before it.

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
use crate::episode::Episode;
use lapin::options::BasicRejectOptions;

/// How often the connection's health is checked besides the stream itself.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(2);
/// The first reconnect delay, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Which queue to consume.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// The shared, durable work queue of user messages (workers).
    UserMessages,
    /// Messages given up on (the delivery limit, or rejected as poison).
    DeadLetters,
    /// Memory jobs: reply events, straight after the reply and again, through
    /// the idle queue for `idle`, once the conversation may be idle.
    MemoryJobs { idle: Duration },
    /// A private queue that lives as long as this connection and receives the given
    /// event types (an api process's reply notifications), and with `deltas` the
    /// reply deltas too, delivered without acks.
    Private {
        routing_keys: Vec<String>,
        deltas: bool,
    },
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
    /// `on_connected(true)` runs after every successful (re)subscription, and
    /// `on_connected(false)` whenever a session is lost.
    pub async fn run<H, Fut>(
        &self,
        shutdown: CancellationToken,
        handler: H,
        on_connected: impl Fn(bool),
    ) where
        H: Fn(Delivery) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = TaskTracker::new();
        let stop_handlers = CancellationToken::new();
        let lost = Episode::new("the consumer lost its broker session; reconnecting");
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        let mut drained = false;
        loop {
            let mut established = false;
            let outcome = self
                .session(
                    &shutdown,
                    &handler,
                    &tracker,
                    &stop_handlers,
                    &on_connected,
                    &mut established,
                )
                .await;
            if established {
                lost.recovered();
                backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
            }
            match outcome {
                Ok(()) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    on_connected(false);
                    let delay = backoff.next_delay();
                    lost.failed(&format_args!(
                        "{e} (consumer {}, retry in {} ms)",
                        self.name,
                        delay.as_millis()
                    ));
                    tracing::debug!(consumer = %self.name, retry_in_ms = delay.as_millis() as u64, "reconnecting");
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
        if !drained {
            // Stopped between sessions: handlers of the lost session may still run.
            self.drain(&tracker, &stop_handlers).await;
        }
    }

    /// Lets running handlers finish within the grace period, then cancels the rest.
    async fn drain(&self, tracker: &TaskTracker, stop_handlers: &CancellationToken) {
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(consumer = %self.name, grace_secs = self.grace.as_secs_f64(),
                "handlers still running after the grace period; cancelling them, their messages return to the queue");
            stop_handlers.cancel();
            tracker.wait().await;
        }
    }

    /// Whether a work queue's delivery has used up `DELIVERY_LIMIT`: the first
    /// delivery and that many redeliveries, as the broker's own limit counted.
    fn delivery_limit_reached(&self, delivery: &Delivery) -> bool {
        let limited = matches!(
            self.subscription,
            Subscription::UserMessages | Subscription::MemoryJobs { .. }
        );
        limited && super::earlier_deliveries(delivery) > u64::from(self.settings.delivery_limit)
    }

    /// One connection's worth of consuming. `Ok` means shutdown was requested.
    async fn session<H, Fut>(
        &self,
        shutdown: &CancellationToken,
        handler: &H,
        tracker: &TaskTracker,
        stop_handlers: &CancellationToken,
        on_connected: &impl Fn(bool),
        established: &mut bool,
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
        self.topology.declare(&connection, &channel).await?;
        let queue = match &self.subscription {
            Subscription::UserMessages => self.topology.user_messages_queue.clone(),
            Subscription::DeadLetters => self.topology.dead_letter_queue.clone(),
            Subscription::MemoryJobs { idle } => {
                self.topology
                    .declare_memory(&connection, &channel, *idle)
                    .await?;
                self.topology.memory_jobs_queue.clone()
            }
            Subscription::Private {
                routing_keys,
                deltas,
            } => {
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
                if *deltas {
                    channel
                        .queue_bind(
                            queue.name().as_str(),
                            &self.topology.deltas_exchange,
                            "",
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
        let in_order = no_ack;
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
        *established = true;
        on_connected(true);

        let mut watchdog = tokio::time::interval(WATCHDOG_INTERVAL);
        let outcome = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    // Notifications are handled in order, as they arrive: a reply's
                    // deltas must not overtake each other. Work is handled
                    // concurrently, up to the prefetch.
                    Some(Ok(delivery)) if in_order => handler(delivery).await,
                    Some(Ok(delivery)) if self.delivery_limit_reached(&delivery) => {
                        tracker.spawn(dead_letter(delivery, self.settings.delivery_limit));
                    }
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        let stop = stop_handlers.clone();
                        tracker.spawn(async move {
                            tokio::select! {
                                _ = handler(delivery) => {}
                                _ = stop.cancelled() => {}
                            }
                        });
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
            self.drain(tracker, stop_handlers).await;
            let _ = channel.close(200, "shutdown").await;
            let _ = connection.close(200, "shutdown").await;
        }
        outcome
    }
}

/// Sends a delivery that used up the delivery limit to the queue's dead-letter
/// exchange, without handling it again.
async fn dead_letter(delivery: Delivery, limit: u32) {
    tracing::warn!(
        delivery_limit = limit,
        earlier_deliveries = super::earlier_deliveries(&delivery),
        "a message reached the delivery limit; dead-lettering it"
    );
    if let Err(e) = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
    {
        tracing::warn!(error = %e, "could not dead-letter the delivery; it will be redelivered");
    }
}
