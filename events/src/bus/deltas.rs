//! Reply deltas: the text a reply gains as the model writes it, for clients that
//! stream (`GET /chat/stream`).
//!
//! They travel on the transient `<ns>.deltas` exchange and never enter the event
//! log: only the finished reply is an event. A delta may be lost (a broker blip, a
//! full queue); the final `BotReplyGenerated` carries the whole text and settles
//! what any client shows. Each model attempt has its own id, so a reply restarted
//! after a worker crash replaces the partial one instead of mixing with it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{BotId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyDelta {
    /// The user message this reply answers.
    pub reply_to: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
    /// One model attempt: deltas of another attempt start the text over.
    pub attempt: Uuid,
    /// Position of this delta within its attempt, from 0.
    pub index: u32,
    /// The text just written.
    pub text: String,
}
