//! The HTTP API: the original Django backend's contract (see `API.md`), served by an
//! event-sourced core.
//!
//! - [`config`]: typed settings (`BIND_ADDR`, `JWT_SECRET`, `AUTH_MODE`, ...).
//! - [`startup`]: builds the application (pool, bus, relay, router) and runs it;
//!   `main.rs` only reads configuration and calls it, and tests build the same thing
//!   on a random port.
//! - [`extract`]: the contract's quirks, parsed once: JSON or form bodies, ids as
//!   numbers or strings, `//` and trailing-slash URLs, the correlation id.
//! - [`auth`]: argon2id passwords, simplejwt-shaped tokens, and the [`auth::Caller`]
//!   extractor that decides who a request acts for (`strict` or `legacy` mode).
//! - [`domain`]: commands (register, create a bot, post a message) as typed values
//!   parsed at the edge, and the events they append. Knows nothing of HTTP.
//! - [`routes`]: thin handlers, one module per route family.
//! - [`views`]: the response shapes: envelopes and positional rows.
//! - [`web_app`]: the reference web client, served at `/app/`.
//! - [`feed`]: reply notifications from the bus, which wake waiting `new_chat`
//!   requests, history long-polls and streams.
//! - [`hangup`]: what ends a stream or a long-poll early (revoked session, expired
//!   token, shutdown).
//! - [`live`]: replies being written now, with their text so far (from deltas).
//! - [`read_cache`]: rendered history and chat-list bodies for pollers, dropped
//!   as soon as the user's data changes, within a memory budget.
//! - [`sessions`]: recently revoked login sessions, in memory, fed by the bus.
//! - [`known_users`]: user ids known to exist, so requests for nobody are refused.
//! - [`server`]: the accept loop, with header and body read timeouts, and
//!   [`send_stall`]: clients that stop reading are cut off.
//! - [`streams`]: open `chat/stream`s per user, capped.
//! - [`heavy_reads`]: how many large answers (history pages, lists) are read and
//!   rendered at once.
//! - [`rate_limits`]: per-process rate limits on posting, logging in and
//!   registering, and [`client_address`]: whose address a request comes from.
//! - [`cors`]: which other origins' pages may call the api.
//! - [`http_metrics`]: Prometheus metrics, served at `/metrics`.
//! - [`error`]: every failure and the one place it becomes an HTTP response.

pub mod auth;
pub mod client_address;
pub mod config;
pub mod cors;
pub mod domain;
pub mod error;
pub mod extract;
pub mod feed;
pub mod hangup;
pub mod heavy_reads;
pub mod http_metrics;
pub mod known_users;
pub mod live;
pub mod openapi;
pub mod rate_limits;
pub mod read_cache;
pub mod routes;
pub mod send_stall;
pub mod server;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod streams;
pub mod views;
pub mod web_app;
