//! Forwarding a reply's text to the transient deltas exchange while the model
//! writes it, so that streaming clients on any api see it appear.
//!
//! The model call pushes pieces into an unbounded channel (it never waits on the
//! broker); one task per reply publishes them in order, numbering them per attempt.
//! A publish that fails ends the forwarding for that reply: deltas are a courtesy,
//! and the final `BotReplyGenerated` carries the whole text.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use events::bus::deltas::ReplyDelta;
use events::bus::Publisher;
use events::event::{BotId, UserId};

use crate::model::{DeltaSink, Streamed};

/// Starts forwarding one reply's deltas; drop the sink once the model is done,
/// and the task ends when the last delta is out (or the broker took none in time).
pub fn forward(
    publisher: Arc<Publisher>,
    reply_to: Uuid,
    user_id: UserId,
    bot_id: BotId,
) -> (DeltaSink, JoinHandle<()>) {
    let (sink, mut written) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut attempt = Uuid::now_v7();
        let mut index = 0;
        let mut broken = false;
        while let Some(piece) = written.recv().await {
            match piece {
                Streamed::Attempt => {
                    attempt = Uuid::now_v7();
                    index = 0;
                }
                Streamed::Text(_) if broken => {}
                Streamed::Text(text) => {
                    let delta = ReplyDelta {
                        reply_to,
                        user_id,
                        bot_id,
                        attempt,
                        index,
                        text,
                    };
                    index += 1;
                    if let Err(e) = publisher.publish_delta(&delta).await {
                        tracing::debug!(error = %e, "cannot forward deltas; the final reply will carry the text");
                        broken = true;
                    }
                }
            }
        }
    });
    (sink, task)
}
