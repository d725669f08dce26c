//! Replies being written right now: the text each has so far, in memory, fed by
//! the deltas every api hears on the bus. A client that joins mid-reply gets this
//! text first, then the rest as it comes.
//!
//! An attempt's deltas are numbered: a delta of a newer attempt (the worker crashed
//! and the message was redelivered) starts the text over, one of an older attempt
//! is ignored. A reply's entry goes when its final event arrives, or, if it never
//! does, after `FORGET_AFTER`; the map is also capped, so it cannot grow without
//! bound whatever the deltas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use events::bus::deltas::ReplyDelta;

/// How long a reply with no news is kept (a worker died and nobody took over).
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Most replies tracked at once.
const MAX_LIVE: usize = 100_000;

struct Partial {
    stream_id: String,
    attempt: Uuid,
    next: u32,
    text: String,
    touched: Instant,
}

/// What a delta changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Text to forward to streaming clients.
    Forward(String),
    /// Nothing (an older attempt, a repeat).
    Nothing,
}

#[derive(Default)]
pub struct LiveReplies {
    partials: Mutex<HashMap<Uuid, Partial>>,
}

impl LiveReplies {
    pub fn apply(&self, stream_id: &str, delta: &ReplyDelta) -> Applied {
        let Ok(mut partials) = self.partials.lock() else {
            return Applied::Nothing;
        };
        if partials.len() >= MAX_LIVE && !partials.contains_key(&delta.reply_to) {
            partials.retain(|_, p| p.touched.elapsed() < FORGET_AFTER);
            if partials.len() >= MAX_LIVE {
                return Applied::Nothing;
            }
        }
        let partial = partials.entry(delta.reply_to).or_insert_with(|| Partial {
            stream_id: stream_id.to_string(),
            attempt: delta.attempt,
            next: 0,
            text: String::new(),
            touched: Instant::now(),
        });
        if delta.attempt != partial.attempt {
            // Attempt ids are v7 UUIDs: the later one is the newer attempt.
            if delta.attempt < partial.attempt {
                return Applied::Nothing;
            }
            partial.attempt = delta.attempt;
            partial.next = 0;
            partial.text.clear();
        }
        if delta.index < partial.next {
            return Applied::Nothing;
        }
        partial.next = delta.index + 1;
        partial.text.push_str(&delta.text);
        partial.touched = Instant::now();
        Applied::Forward(delta.text.clone())
    }

    /// The reply is final: forget its partial text.
    pub fn finish(&self, reply_to: Uuid) {
        if let Ok(mut partials) = self.partials.lock() {
            partials.remove(&reply_to);
        }
    }

    /// The text written so far of this conversation's replies in progress.
    pub fn in_progress(&self, stream_id: &str) -> Vec<(Uuid, String)> {
        self.partials
            .lock()
            .map(|partials| {
                partials
                    .iter()
                    .filter(|(_, p)| p.stream_id == stream_id && p.touched.elapsed() < FORGET_AFTER)
                    .map(|(id, p)| (*id, p.text.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.partials.lock().map_or(0, |p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(reply_to: Uuid, attempt: Uuid, index: u32, text: &str) -> ReplyDelta {
        ReplyDelta {
            reply_to,
            user_id: 1,
            bot_id: 1,
            attempt,
            index,
            text: text.into(),
        }
    }

    #[test]
    fn a_newer_attempt_starts_the_text_over_and_an_older_one_is_ignored() {
        let live = LiveReplies::default();
        let (message, first, second) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            live.apply("s", &delta(message, first, 0, "Hel")),
            Applied::Forward("Hel".into())
        );
        live.apply("s", &delta(message, first, 1, "lo"));
        assert_eq!(live.in_progress("s"), vec![(message, "Hello".to_string())]);
        live.apply("s", &delta(message, second, 0, "Hi"));
        assert_eq!(live.in_progress("s"), vec![(message, "Hi".to_string())]);
        assert_eq!(
            live.apply("s", &delta(message, first, 2, "!")),
            Applied::Nothing
        );
        assert_eq!(
            live.apply("s", &delta(message, second, 0, "Hi")),
            Applied::Nothing
        );
        assert!(live.in_progress("other").is_empty());
        live.finish(message);
        assert!(live.is_empty());
    }
}
