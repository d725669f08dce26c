//! Forwarding a reply's text to the transient deltas exchange while the model
//! writes it, so that streaming clients on any api see it appear.
//!
//! The model call pushes pieces into an unbounded channel (it never waits on the
//! broker); one task per reply publishes them in order, numbering them per attempt.
//! Pieces are coalesced: the first goes out at once, and what follows within
//! [`COALESCE`] of a publish goes out together at its end, so a reply is a
//! handful of publishes rather than one per token (every publish is a message
//! for the broker and a wake-up for every api's streams).
//! A publish that fails ends the forwarding for that reply: deltas are a courtesy,
//! and the final `BotReplyGenerated` carries the whole text.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use events::bus::deltas::ReplyDelta;
use events::bus::Publisher;
use events::event::{BotId, UserId};

use crate::model::{DeltaSink, Streamed};

/// How long text written after a publish waits to go out with what follows it.
pub const COALESCE: Duration = Duration::from_millis(50);

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
        let mut out = Outgoing {
            publisher,
            reply_to,
            user_id,
            bot_id,
            attempt: Uuid::now_v7(),
            index: 0,
            pending: String::new(),
            last_sent: None,
            broken: false,
        };
        loop {
            let piece = match out.due() {
                None => written.recv().await,
                Some(due) => tokio::select! {
                    piece = written.recv() => piece,
                    _ = tokio::time::sleep_until(due) => {
                        out.flush().await;
                        continue;
                    }
                },
            };
            match piece {
                None => {
                    out.flush().await;
                    break;
                }
                Some(Streamed::Attempt) => {
                    out.flush().await;
                    out.attempt = Uuid::now_v7();
                    out.index = 0;
                    out.last_sent = None;
                }
                Some(Streamed::Text(text)) => {
                    out.pending.push_str(&text);
                    if out.due().is_none_or(|due| Instant::now() >= due) {
                        out.flush().await;
                    }
                }
            }
        }
    });
    (sink, task)
}

/// One reply's deltas on their way out.
struct Outgoing {
    publisher: Arc<Publisher>,
    reply_to: Uuid,
    user_id: UserId,
    bot_id: BotId,
    attempt: Uuid,
    index: u32,
    /// Written, not yet published.
    pending: String,
    last_sent: Option<Instant>,
    broken: bool,
}

impl Outgoing {
    /// When what is pending goes out: [`COALESCE`] after the last publish;
    /// `None` when nothing waits or nothing was published yet (it goes at once).
    fn due(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        self.last_sent.map(|at| at + COALESCE)
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.pending);
        if self.broken {
            return;
        }
        let delta = ReplyDelta {
            reply_to: self.reply_to,
            user_id: self.user_id,
            bot_id: self.bot_id,
            attempt: self.attempt,
            index: self.index,
            text,
        };
        self.index += 1;
        self.last_sent = Some(Instant::now());
        if let Err(e) = self.publisher.publish_delta(&delta).await {
            tracing::debug!(error = %e, "cannot forward deltas; the final reply will carry the text");
            self.broken = true;
        }
    }
}
