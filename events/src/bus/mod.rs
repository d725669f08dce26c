//! RabbitMQ: the names and shape of our exchanges and queues, connecting, and the two
//! roles built on them.
//!
//! - `<ns>.events` (topic exchange): every event, routed by its type.
//! - `<ns>.chat.user_messages` (quorum queue, bound to `UserMessagePosted` and
//!   `ReplyRegenerationRequested`): the workers' work. A delivery limit sends
//!   poison messages to `<ns>.dlx` → `<ns>.dead_letters` instead of letting
//!   them loop. The limit is the
//!   consumers' (`DELIVERY_LIMIT`, checked against the quorum queue's
//!   `x-delivery-count`), not a queue argument: a queue's arguments are fixed at
//!   its creation, and redeclaring one with another value fails, so a new limit
//!   rolled out as an argument would take every process off the broker.
//! - each api process binds a private, auto-deleted queue to the reply events, to wake
//!   the requests that wait for them.
//! - `<ns>.deltas` (fanout, not durable): the text of replies as the model writes
//!   them, for streaming clients. Transient by design: never the event log, lost on
//!   a broker restart, and covered by the final `BotReplyGenerated` either way.
//! - memory (declared by the workers that keep it): `<ns>.memory.jobs` (quorum,
//!   bound to `BotReplyGenerated`; delivery limit → `<ns>.memory.dlx` →
//!   `<ns>.memory.dead_letters`), and `<ns>.memory.idle.<N>s`, bound to nothing:
//!   a worker that handled a reply's job puts a copy there, which expires after
//!   N seconds (`MEMORY_IDLE_SECS`) into the job queue, so the reply comes back as
//!   an "is it idle now?" job. One queue per delay, since a queue expires only the
//!   message at its head; and since none is bound to the events, a new
//!   `MEMORY_IDLE_SECS` leaves no old queue doubling the idle jobs (an earlier
//!   release bound them: see `declare_memory`).
//!
//! [`publisher::Publisher`] publishes with confirms; [`consumer::ConsumerSupervisor`]
//! consumes, and reconnects and redeclares when the broker goes away.

pub mod consumer;
pub mod deltas;
pub mod publisher;

use std::str::FromStr;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{BusSettings, ExposeSecret};
use crate::event::DomainEvent;

pub use crate::backoff::Backoff;
pub use consumer::ConsumerSupervisor;
pub use publisher::Publisher;

/// Message header that carries the correlation id from the API into the worker.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id a message carries, if any.
pub fn correlation_id(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(CORRELATION_HEADER)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("AMQP_URL is not a valid AMQP URL: {0}")]
    Url(String),
    #[error("the message broker is unreachable: {0}")]
    Unavailable(String),
    #[error("timed out connecting to the message broker")]
    ConnectTimeout,
    #[error("TLS to the message broker failed: {0}. Check AMQP_CA_FILE (a PEM file of the CA that signed the broker's certificate) and that AMQP_URL's host is a name the certificate holds")]
    Tls(String),
    #[error("the broker did not route the message (no queue bound for {0})")]
    Unroutable(String),
    #[error("the broker refused the message")]
    Nacked,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Names of everything this deployment declares on the broker.
#[derive(Debug, Clone)]
pub struct Topology {
    pub events_exchange: String,
    pub deltas_exchange: String,
    pub dead_letter_exchange: String,
    pub user_messages_queue: String,
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
    pub memory_jobs_queue: String,
    pub memory_dead_letter_exchange: String,
    pub memory_dead_letter_queue: String,
    /// `<ns>.memory.idle.`, to which [`Topology::memory_idle_queue`] adds `<N>s`.
    memory_idle_prefix: String,
}

impl Topology {
    pub fn new(settings: &BusSettings) -> Self {
        let ns = &settings.namespace;
        Self {
            events_exchange: format!("{ns}.events"),
            deltas_exchange: format!("{ns}.deltas"),
            dead_letter_exchange: format!("{ns}.dlx"),
            user_messages_queue: format!("{ns}.chat.user_messages"),
            dead_letter_queue: format!("{ns}.dead_letters"),
            delivery_limit: settings.delivery_limit,
            memory_jobs_queue: format!("{ns}.memory.jobs"),
            memory_dead_letter_exchange: format!("{ns}.memory.dlx"),
            memory_dead_letter_queue: format!("{ns}.memory.dead_letters"),
            memory_idle_prefix: format!("{ns}.memory.idle."),
        }
    }

    /// The idle queue whose messages come back to the jobs after `delay`.
    pub fn memory_idle_queue(&self, delay: Duration) -> String {
        format!("{}{}s", self.memory_idle_prefix, delay.as_secs().max(1))
    }

    /// Declares the memory queues (idempotent; see the module's doc), with the
    /// idle queue for `idle`. An earlier release bound its idle queue (for its
    /// own `MEMORY_IDLE_SECS`) to the reply events; the ones for `idle` and for
    /// the default, 60 s, are unbound here, so they double no idle jobs.
    pub async fn declare_memory(
        &self,
        connection: &Connection,
        channel: &Channel,
        idle: Duration,
    ) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.memory_dead_letter_exchange,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // Kept for a person to inspect, never consumed: bounded, oldest dropped first.
        let mut dead = quorum_args();
        dead.insert(
            "x-max-length".into(),
            AMQPValue::LongInt(MEMORY_DEAD_LETTERS_KEPT),
        );
        channel
            .queue_declare(&self.memory_dead_letter_queue, queue, dead)
            .await?;
        self.bind(
            channel,
            &self.memory_dead_letter_queue,
            &self.memory_dead_letter_exchange,
            "",
        )
        .await?;
        let mut jobs = quorum_args();
        jobs.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.memory_dead_letter_exchange.as_str().into()),
        );
        declare_work_queue(connection, channel, &self.memory_jobs_queue, jobs).await?;
        self.bind(
            channel,
            &self.memory_jobs_queue,
            &self.events_exchange,
            DomainEvent::BOT_REPLY_GENERATED,
        )
        .await?;
        // Expired messages go, through the default exchange, to the job queue.
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongUInt(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.memory_jobs_queue.as_str().into()),
        );
        channel
            .queue_declare(&self.memory_idle_queue(idle), queue, args)
            .await?;
        for legacy in [idle, Duration::from_secs(60)] {
            self.unbind_legacy_idle_queue(connection, &self.memory_idle_queue(legacy))
                .await;
        }
        Ok(())
    }

    /// Unbinds an idle queue from the reply events, if an earlier release bound
    /// it; what it holds still expires into the job queue. On a channel of its
    /// own, since the broker closes a channel that names a missing queue.
    async fn unbind_legacy_idle_queue(&self, connection: &Connection, queue: &str) {
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        let unbound = channel
            .queue_unbind(
                queue,
                &self.events_exchange,
                DomainEvent::BOT_REPLY_GENERATED,
                FieldTable::default(),
            )
            .await;
        if unbound.is_ok() {
            let _ = channel.close(200, "done").await;
        }
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), lapin::Error> {
        channel
            .queue_bind(
                queue,
                exchange,
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares the shared exchanges and durable queues. Idempotent, so every process
    /// declares on every (re)connect and none depends on another having run first.
    pub async fn declare(
        &self,
        connection: &Connection,
        channel: &Channel,
    ) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.events_exchange,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.dead_letter_exchange,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                &self.deltas_exchange,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(&self.dead_letter_queue, queue, quorum_args())
            .await?;
        channel
            .queue_bind(
                &self.dead_letter_queue,
                &self.dead_letter_exchange,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut args = quorum_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        declare_work_queue(connection, channel, &self.user_messages_queue, args).await?;
        for work in [
            DomainEvent::USER_MESSAGE_POSTED,
            DomainEvent::REPLY_REGENERATION_REQUESTED,
        ] {
            self.bind(
                channel,
                &self.user_messages_queue,
                &self.events_exchange,
                work,
            )
            .await?;
        }
        Ok(())
    }

    /// Removes everything [`Topology::declare`] made (for tests and teardown).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for queue in [
            &self.user_messages_queue,
            &self.dead_letter_queue,
            &self.memory_jobs_queue,
            &self.memory_dead_letter_queue,
            &self.memory_idle_queue(Duration::from_secs(60)),
        ] {
            channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            &self.events_exchange,
            &self.deltas_exchange,
            &self.dead_letter_exchange,
            &self.memory_dead_letter_exchange,
        ] {
            channel
                .exchange_delete(exchange, ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares a work queue with `args` if it does not exist yet, and otherwise
/// takes it as it is: an earlier release declared these with an `x-delivery-limit`
/// argument, and redeclaring without it would fail. The check runs on a channel of
/// its own, since the broker closes a channel that asks after a missing queue.
async fn declare_work_queue(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = probe
        .queue_declare(queue, passive, FieldTable::default())
        .await
        .is_ok();
    if probe.status().connected() {
        let _ = probe.close(200, "done").await;
    }
    if !exists {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel.queue_declare(queue, durable, args).await?;
    }
    Ok(())
}

/// How many times the broker delivered this message before, by the quorum
/// queue's `x-delivery-count` (absent on a first delivery).
pub fn earlier_deliveries(delivery: &lapin::message::Delivery) -> u64 {
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest AMQP frame asked for, unless the URL names one (`?frame_max=`).
/// lapin keeps a receive and a send buffer of 32 frames per connection, zeroed
/// up front: at RabbitMQ's default of 128 KiB that is 8 MiB of memory per
/// connection, most of a process's footprint at rest. Our messages are events of
/// a few KiB; a longer one goes out in more than one frame.
const FRAME_MAX: u32 = 16 * 1024;

/// How many failed memory jobs `<ns>.memory.dead_letters` keeps.
const MEMORY_DEAD_LETTERS_KEPT: i32 = 10_000;

/// Opens a connection on the tokio runtime, with heartbeats so that a dead peer is
/// noticed even when no traffic flows.
pub async fn connect(settings: &BusSettings, name: &str) -> Result<Connection, BusError> {
    let mut uri = AMQPUri::from_str(settings.url.expose_secret()).map_err(BusError::Url)?;
    uri.query.heartbeat = Some(settings.heartbeat_secs);
    uri.query.frame_max = uri.query.frame_max.or(Some(FRAME_MAX));
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    let tls = match &settings.ca_file {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                BusError::Tls(format!("cannot read AMQP_CA_FILE {}: {e}", path.display()))
            })?),
        },
        None => OwnedTLSConfig::default(),
    };
    let connecting = Connection::connect_uri_with_config(uri, properties, tls);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) if e.to_string().contains("certificate") => Err(BusError::Tls(e.to_string())),
        Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
        Err(_) => Err(BusError::ConnectTimeout),
    }
}
