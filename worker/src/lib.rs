//! The worker: turns each `UserMessagePosted` into exactly one `BotReplyGenerated`
//! (or `BotReplyFailed`), however often the message is delivered and however many
//! workers run.
//!
//! - [`config`]: typed settings (`OPENAI_*`, `WORKER_PREFETCH`, retry budget, ...).
//! - [`conversation`]: a chat stream folded into turns, and which messages still
//!   wait for an answer.
//! - [`prompt`]: the one function that builds what the model sees, from (bot,
//!   memory, recent turns, now).
//! - [`model`]: the model behind async-openai, or the offline responder, and the
//!   single retry layer around it.
//! - [`responder`]: answers a message: load, prompt, call, append, publish.
//! - [`consumer`]: a delivery's life: decode, trace, answer, then ack, requeue or
//!   dead-letter.
//! - [`replay`]: `worker replay rebuild` and `worker replay export`, for operators.
//! - [`startup`]: wires it together and runs until SIGTERM.

pub mod config;
pub mod consumer;
pub mod conversation;
pub mod model;
pub mod prompt;
pub mod replay;
pub mod responder;
pub mod startup;
