//! Publishing events with publisher confirms.
//!
//! An event counts as published only when the broker has confirmed it (and, for the
//! messages workers must get, has routed it to a queue). The publisher keeps one
//! confirm-mode channel and opens a new connection lazily after any failure; while
//! the broker is down it fails fast instead of making every caller wait for a
//! connect timeout, and the outbox keeps the events until it is back.
//!
//! Reply deltas go on a second channel of the same connection, one that is *not*
//! in confirm mode. On a confirm-mode channel every publish yields a confirm, and
//! lapin keeps each one that is dropped unawaited until `wait_for_confirms()`
//! drains it: fire-and-forget deltas there grew a worker by ~23 MiB per 1,000
//! replies. A delta publish is also bounded in time, so a broker that stops
//! reading (a memory alarm) cannot hold a stream, or anything behind it, back.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::{connect, BusError, Topology, CORRELATION_HEADER};
use crate::config::BusSettings;
use crate::event::DomainEvent;
use crate::store::RecordedEvent;

/// How long to wait after a failed connect before trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// A broker that neither confirms nor fails within this is treated as down.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// A broker that accepts a connection but stalls the handshake, the channel or the
/// declarations after it is treated as down after this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(6);
/// The longest one [`Publisher::publish`] takes when it has the connection to
/// itself: opening one, then waiting for the confirm.
pub const LONGEST_PUBLISH: Duration =
    Duration::from_secs(OPEN_TIMEOUT.as_secs() + CONFIRM_TIMEOUT.as_secs());
/// How long a replaced connection gets to close cleanly.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A delta that cannot be handed to the broker within this is dropped (and the
/// reply's forwarding stops): the final event carries the whole text anyway.
const DELTA_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Publisher {
    settings: BusSettings,
    topology: Topology,
    name: String,
    link: Mutex<Link>,
}

/// The two channels of one connection: events with confirms, deltas without.
#[derive(Clone)]
struct Channels {
    confirming: Channel,
    deltas: Channel,
}

#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    /// Numbered, so that a late failure from an older channel cannot tear down
    /// its replacement.
    channel: Generational<Channels>,
    retry_after: Option<Instant>,
}

/// A value that is replaced over time, each replacement numbered: whoever reports
/// that a value failed names the one it used, and only that one is forgotten.
#[derive(Debug)]
struct Generational<T> {
    value: Option<T>,
    generation: u64,
}

impl<T> Default for Generational<T> {
    fn default() -> Self {
        Self {
            value: None,
            generation: 0,
        }
    }
}

impl<T: Clone> Generational<T> {
    fn current(&self) -> Option<(&T, u64)> {
        self.value.as_ref().map(|v| (v, self.generation))
    }

    fn replace(&mut self, value: T) -> u64 {
        self.generation += 1;
        self.value = Some(value);
        self.generation
    }

    /// Forgets the value of `generation`, if it is still the current one.
    fn forget(&mut self, generation: u64) {
        if self.generation == generation {
            self.value = None;
        }
    }

    fn clear(&mut self) {
        self.value = None;
    }
}

impl Publisher {
    pub fn new(settings: BusSettings, name: impl Into<String>) -> Self {
        Self {
            topology: Topology::new(&settings),
            settings,
            name: name.into(),
            link: Mutex::new(Link::default()),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A live confirm-mode channel, connecting (and declaring the topology) if needed.
    pub async fn channel(&self) -> Result<Channel, BusError> {
        self.current()
            .await
            .map(|(channels, _)| channels.confirming)
    }

    /// The live channels and their generation.
    async fn current(&self) -> Result<(Channels, u64), BusError> {
        let mut link = self.link.lock().await;
        if let Some((channels, generation)) = link.channel.current() {
            if channels.confirming.status().connected() && channels.deltas.status().connected() {
                return Ok((channels.clone(), generation));
            }
        }
        if link.retry_after.is_some_and(|at| Instant::now() < at) {
            return Err(BusError::Unavailable("reconnect pending".into()));
        }
        link.channel.clear();
        if let Some(old) = link.connection.take() {
            // A hung connection may never answer a close: never make callers wait
            // on it (this lock is held), and give up on it after a while.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.close(0, "reconnecting")).await;
            });
        }
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open())
            .await
            .unwrap_or(Err(BusError::ConnectTimeout));
        match opened {
            Ok((connection, channel)) => {
                tracing::info!(publisher = %self.name, "connected to the message broker");
                link.connection = Some(connection);
                let generation = link.channel.replace(channel.clone());
                link.retry_after = None;
                Ok((channel, generation))
            }
            Err(e) => {
                link.retry_after = Some(Instant::now() + RECONNECT_PAUSE);
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<(Connection, Channels), BusError> {
        let connection = connect(&self.settings, &self.name).await?;
        let confirming = connection.create_channel().await?;
        confirming
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&connection, &confirming).await?;
        let deltas = connection.create_channel().await?;
        Ok((connection, Channels { confirming, deltas }))
    }

    /// Closes the connection cleanly (at shutdown), so the broker does not log an
    /// abrupt disconnect.
    pub async fn close(&self) {
        let mut link = self.link.lock().await;
        link.channel.clear();
        if let Some(connection) = link.connection.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "shutdown")).await;
        }
    }

    /// Forgets the channel of `generation`, if it is still the current one, so the
    /// next call reconnects. A newer channel is left alone.
    async fn reset(&self, generation: u64) {
        self.link.lock().await.channel.forget(generation);
    }

    /// Publishes a reply delta on the transient deltas exchange, on the channel
    /// without confirms, within `DELTA_TIMEOUT`: a lost delta costs nothing (the
    /// final event carries the whole text), and a stream must not wait on the
    /// broker.
    pub async fn publish_delta(&self, delta: &super::deltas::ReplyDelta) -> Result<(), BusError> {
        let body = serde_json::to_vec(delta)?;
        let send = async {
            let (channels, generation) = self.current().await?;
            let sent = channels
                .deltas
                .basic_publish(
                    &self.topology.deltas_exchange,
                    "",
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(1)
                        .with_content_type("application/json".into()),
                )
                .await;
            if let Err(e) = sent {
                self.reset(generation).await;
                return Err(e.into());
            }
            Ok(())
        };
        tokio::time::timeout(DELTA_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| {
                Err(BusError::Unavailable(
                    "the broker took no delta in time".into(),
                ))
            })
    }

    /// Publishes one event and waits for the broker's confirm.
    pub async fn publish(&self, event: &RecordedEvent) -> Result<(), BusError> {
        let (channels, generation) = self.current().await?;
        let result = self.publish_on(&channels.confirming, event).await;
        if matches!(
            result,
            Err(BusError::Amqp(_) | BusError::Unavailable(_) | BusError::ConnectTimeout)
        ) {
            self.reset(generation).await;
        }
        result
    }

    async fn publish_on(&self, channel: &Channel, event: &RecordedEvent) -> Result<(), BusError> {
        let body = serde_json::to_vec(event)?;
        // Only the messages a worker must act on are mandatory: for them "no queue
        // bound" is a failure to retry, not a success.
        let mandatory = event.event_type == DomainEvent::USER_MESSAGE_POSTED;
        let mut headers = FieldTable::default();
        if let Some(correlation_id) = &event.metadata.correlation_id {
            headers.insert(
                CORRELATION_HEADER.into(),
                AMQPValue::LongString(correlation_id.as_str().into()),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(event.event_id.to_string().into())
            .with_type(event.event_type.as_str().into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let target = (
            self.topology.events_exchange.as_str(),
            event.event_type.as_str(),
        );
        confirmed(channel, target, options, &body, properties).await
    }

    /// Puts a copy of a memory job on the idle queue for `delay`, to come back to
    /// the job queue after it (see `Topology::declare_memory`, which declares the
    /// queue), and waits for the broker's confirm.
    pub async fn publish_idle_check(
        &self,
        body: &[u8],
        headers: FieldTable,
        delay: Duration,
    ) -> Result<(), BusError> {
        let (channels, generation) = self.current().await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        // The default exchange routes by queue name.
        let queue = self.topology.memory_idle_queue(delay);
        let target = ("", queue.as_str());
        let result = confirmed(&channels.confirming, target, options, body, properties).await;
        if matches!(
            result,
            Err(BusError::Amqp(_) | BusError::Unavailable(_) | BusError::ConnectTimeout)
        ) {
            self.reset(generation).await;
        }
        result
    }
}

/// Publishes on a confirm-mode channel and waits for the broker's verdict: a
/// mandatory message that no queue took is `Unroutable`.
async fn confirmed(
    channel: &Channel,
    (exchange, routing_key): (&str, &str),
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BusError> {
    let confirm = async {
        channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await?
            .await
    };
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| BusError::Unavailable("no publisher confirm in time".into()))??;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(BusError::Unroutable(routing_key.to_string())),
        Confirmation::Nack(_) => Err(BusError::Nacked),
    }
}

#[cfg(test)]
mod tests {
    use super::Generational;

    #[test]
    fn a_late_failure_of_an_old_channel_leaves_its_replacement_alone() {
        let mut channel = Generational::default();
        let old = channel.replace("first connection");
        let new = channel.replace("second connection");
        channel.forget(old); // the first connection's publish failed late
        assert_eq!(channel.current(), Some((&"second connection", new)));
        channel.forget(new);
        assert_eq!(channel.current(), None);
    }
}
