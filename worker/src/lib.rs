//! The worker: turns each `UserMessagePosted` (and each regeneration of one) into
//! exactly one outcome, `BotReplyGenerated` or `BotReplyFailed` (or the user's own
//! `BotReplyStopped`), however often the message is delivered and however many
//! workers run.
//!
//! - [`config`]: typed settings (`OPENAI_*`, `WORKER_PREFETCH`, retry budget, ...).
//! - [`conversation`]: a conversation read from the history read model: which
//!   message to answer next, and the turns before it.
//! - [`lease`]: one answerer per conversation at a time, across processes.
//! - [`memory`]: the bot's long-term memory of a user (a summary and a profile),
//!   refreshed by jobs on their own queue; [`memory_prompt`] is what the model
//!   sees for it.
//! - [`prompt`]: the one function that builds what the model sees, from (bot,
//!   memory, recent turns, now).
//! - [`meter`]: what a model call costs (tokens, attempts, time), reported or
//!   counted with a tokenizer.
//! - [`model`]: the model behind async-openai, or the offline responder, and the
//!   single retry layer around it.
//! - [`responder`]: answers a message: load, prompt, call (streaming), append,
//!   publish; [`deltas`] forwards the text as it is written.
//! - [`share`]: fair shares of the worker's model calls between users.
//! - [`stops`]: hears the stops users ask for, and cancels those model calls.
//! - [`consumer`]: a delivery's life: read, trace, answer, then ack or requeue;
//!   and dead letters, which get their failure recorded.
//! - [`replay`]: `worker replay rebuild`, `verify`, `export` and `history --as-of`,
//!   for operators and auditors.
//! - [`startup`]: wires it together and runs until SIGTERM.

pub mod config;
pub mod consumer;
pub mod conversation;
pub mod deltas;
pub mod lease;
pub mod memory;
pub mod memory_prompt;
pub mod meter;
pub mod model;
pub mod prompt;
pub mod replay;
pub mod responder;
pub mod share;
pub mod startup;
pub mod stops;
