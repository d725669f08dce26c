//! The core shared by the `api` and the `worker`: everything that is about events
//! rather than HTTP or models.
//!
//! - [`config`]: typed settings read from the environment, with working defaults.
//! - [`telemetry`]: the `tracing` subscriber, set up once per process.
//! - [`db`]: connect to MySQL/MariaDB, create the database if missing, migrate.
//! - [`event`]: the domain events (`BotCreated`, `UserMessagePosted`, ...) and their
//!   stream names; how they are read back, whatever version wrote them.
//! - [`upcast`]: the upcasters that bring older event schemas to today's shapes.
//! - [`store`]: the append-only event store (`append_to_stream`, `read_stream`,
//!   `read_all`). It knows nothing about chats: it stores typed rows and hands each
//!   append's events to an [`store::InlineProjector`] inside the same transaction.
//! - [`record`]: what the log stores: new and recorded events, their metadata.
//! - [`sealing`]: crypto-shredding: every personal text sealed under data keys
//!   kept outside the log (a user's, a conversation memory's), which account
//!   deletion and `forget` destroy; the store seals, every reader opens.
//! - [`appender`]: how an append goes (expected versions, the errors, the inline
//!   projector it calls), and group commit: concurrent appends share one
//!   transaction.
//! - [`projections`]: the read models (`bots`, `chat_history`, `chat_list`,
//!   `sessions`, `conversation_memory`, `usage_daily`) and the queries the GET routes and the
//!   worker use; and replaying the log into them in bulk (`fold`, `bulk`, `shadow`,
//!   `rebuild`, `verify`).
//! - [`budget`]: daily token budgets, checked and reserved before a model call.
//! - [`bus`]: RabbitMQ topology, a confirming publisher, and a consumer supervisor that
//!   reconnects with backoff.
//! - [`shutdown`]: SIGTERM/Ctrl-C as a future and a cancellation token.
//! - [`supervisor`]: a process's background tasks, watched: one that ends early
//!   stops the process rather than leaving it half alive.
//! - [`episode`]: expected, handled conditions logged once per episode.
//! - [`backoff`]: exponential backoff with jitter, for retry loops.
//! - [`metrics`]: the Prometheus metrics' names, and what only the database knows.
//! - [`tls`]: the TLS crypto both binaries use to reach the database and broker.
//! - [`outbox`]: the relay that moves committed events from the outbox table to the bus.
//!
//! The flow: a command appends events (event rows, outbox rows and read models in
//! one transaction) → the outbox relay publishes them → workers consume
//! `UserMessagePosted` and append a reply the same way → api processes hear about
//! replies on the bus and answer waiting requests from the read models.

pub mod appender;
pub mod backoff;
pub mod budget;
pub mod bus;
pub mod config;
pub mod db;
pub mod episode;
pub mod event;
pub mod metrics;
pub mod outbox;
pub mod projections;
pub mod record;
pub mod sealing;
pub mod shutdown;
pub mod statement_shape;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod upcast;
