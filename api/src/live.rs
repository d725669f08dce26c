//! Replies being written right now: the text each has so far, in memory, fed by
//! the deltas every api hears on the bus. A client that joins mid-reply gets this
//! text first, then the rest as it comes.
//!
//! An attempt's deltas are numbered: a delta of a newer attempt (a retry, or the
//! message was redelivered after a worker crash) starts the text over; one of an
//! older attempt is ignored. A reply's entry goes when its final event arrives, or, if it never
//! does, after `FORGET_AFTER`. Deltas that arrive after the final event (they
//! travel on another channel, and the worker never waits for them) are ignored:
//! the ids of recently finished replies are remembered, a bounded number of them,
//! with the attempt (regeneration) that finished. A regeneration starts a reply
//! over: deltas of model attempts from before it, and outcomes of earlier
//! regeneration attempts heard late, are ignored.
//!
//! The map is bounded by bytes as well as by count, whatever the deltas: a reply
//! keeps at most `MAX_REPLY_BYTES` of text, and all of them at most
//! `MAX_TOTAL_BYTES`; past either, deltas are still forwarded to the streams
//! listening now, but a client joining later gets the text from the final event.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use uuid::Uuid;

use events::bus::deltas::ReplyDelta;

/// How long a reply with no news is kept (a worker died and nobody took over).
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Most replies tracked at once.
const MAX_LIVE: usize = 100_000;
/// Most text kept for one reply in progress.
const MAX_REPLY_BYTES: usize = 1 << 20;
/// Most text kept for all of them.
const MAX_TOTAL_BYTES: usize = 64 << 20;
/// How many finished replies are remembered, to ignore their late deltas.
const FINISHED_REMEMBERED: usize = 16_384;

struct Partial {
    stream_id: String,
    attempt: Uuid,
    next: u32,
    text: String,
    /// The text went over a cap: it is no longer kept (joining clients get none).
    overflowed: bool,
    touched: Instant,
}

/// What a delta changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Text to forward to streaming clients.
    Forward,
    /// Nothing (an older attempt, a repeat, a reply already finished).
    Nothing,
}

/// The text so far of one reply in progress, as a joining client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgress {
    pub reply_to: Uuid,
    pub attempt: Uuid,
    /// The deltas `0..next` of `attempt` are in `text`.
    pub next: u32,
    pub text: String,
}

/// A reply written again: which attempt, and the id before which model
/// attempts' deltas belong to earlier ones (ids are time-ordered v7 UUIDs).
#[derive(Debug, Clone, Copy)]
struct Restart {
    attempt: u32,
    floor: Uuid,
}

struct State {
    partials: HashMap<Uuid, Partial>,
    bytes: usize,
    /// Finished replies, with the attempt that finished them.
    finished: LruCache<Uuid, u32>,
    restarted: LruCache<Uuid, Restart>,
}

impl State {
    /// The attempt being written for `reply_to`: 1 unless it was regenerated.
    fn current_attempt(&self, reply_to: &Uuid) -> u32 {
        self.restarted.peek(reply_to).map_or(1, |r| r.attempt)
    }
}

pub struct LiveReplies {
    state: Mutex<State>,
}

impl Default for LiveReplies {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                partials: HashMap::new(),
                bytes: 0,
                finished: LruCache::new(
                    NonZeroUsize::new(FINISHED_REMEMBERED).unwrap_or(NonZeroUsize::MIN),
                ),
                restarted: LruCache::new(
                    NonZeroUsize::new(FINISHED_REMEMBERED).unwrap_or(NonZeroUsize::MIN),
                ),
            }),
        }
    }
}

impl LiveReplies {
    pub fn apply(&self, stream_id: &str, delta: &ReplyDelta) -> Applied {
        let Ok(mut state) = self.state.lock() else {
            return Applied::Nothing;
        };
        let state = &mut *state;
        let current = state.current_attempt(&delta.reply_to);
        if state
            .finished
            .peek(&delta.reply_to)
            .is_some_and(|&done| done >= current)
        {
            return Applied::Nothing;
        }
        if state
            .restarted
            .peek(&delta.reply_to)
            .is_some_and(|r| delta.attempt < r.floor)
        {
            return Applied::Nothing;
        }
        if state.partials.len() >= MAX_LIVE && !state.partials.contains_key(&delta.reply_to) {
            state.forget_stale();
            if state.partials.len() >= MAX_LIVE {
                return Applied::Nothing;
            }
        }
        let partial = state
            .partials
            .entry(delta.reply_to)
            .or_insert_with(|| Partial {
                stream_id: stream_id.to_string(),
                attempt: delta.attempt,
                next: 0,
                text: String::new(),
                overflowed: false,
                touched: Instant::now(),
            });
        if delta.attempt != partial.attempt {
            // Attempt ids are v7 UUIDs: the later one is the newer attempt.
            if delta.attempt < partial.attempt {
                return Applied::Nothing;
            }
            partial.attempt = delta.attempt;
            partial.next = 0;
            state.bytes -= partial.text.len();
            partial.text = String::new();
            partial.overflowed = false;
        }
        if delta.index < partial.next {
            return Applied::Nothing;
        }
        partial.next = delta.index.saturating_add(1);
        partial.touched = Instant::now();
        let fits = partial.text.len() + delta.text.len() <= MAX_REPLY_BYTES
            && state.bytes + delta.text.len() <= MAX_TOTAL_BYTES;
        if partial.overflowed || !fits {
            state.bytes -= partial.text.len();
            partial.text = String::new();
            partial.overflowed = true;
        } else {
            partial.text.push_str(&delta.text);
            state.bytes += delta.text.len();
        }
        Applied::Forward
    }

    /// The reply is final: forget its partial text, and ignore its late deltas.
    /// (An outcome of an attempt older than the one being written is a late
    /// echo, and changes nothing.)
    pub fn finish(&self, reply_to: Uuid, attempt: u32) {
        if let Ok(mut state) = self.state.lock() {
            if attempt < state.current_attempt(&reply_to) {
                return;
            }
            if let Some(partial) = state.partials.remove(&reply_to) {
                state.bytes -= partial.text.len();
            }
            state.finished.put(reply_to, attempt);
        }
    }

    /// The reply is being written again (a regeneration, attempt `attempt`,
    /// recorded as event `since`): its deltas count again, from nothing, and
    /// only those of model attempts started after `since`.
    pub fn restart(&self, reply_to: Uuid, attempt: u32, since: Uuid) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(partial) = state.partials.remove(&reply_to) {
                state.bytes -= partial.text.len();
            }
            state.restarted.put(
                reply_to,
                Restart {
                    attempt,
                    floor: since,
                },
            );
        }
    }

    /// The text written so far of one reply in progress, if this api has it.
    pub fn text_so_far(&self, reply_to: Uuid) -> Option<String> {
        let state = self.state.lock().ok()?;
        state
            .partials
            .get(&reply_to)
            .filter(|p| !p.overflowed)
            .map(|p| p.text.clone())
    }

    /// The text written so far of this conversation's replies in progress.
    pub fn in_progress(&self, stream_id: &str) -> Vec<InProgress> {
        self.state
            .lock()
            .map(|state| {
                state
                    .partials
                    .iter()
                    .filter(|(_, p)| {
                        p.stream_id == stream_id
                            && !p.overflowed
                            && p.touched.elapsed() < FORGET_AFTER
                    })
                    .map(|(id, p)| InProgress {
                        reply_to: *id,
                        attempt: p.attempt,
                        next: p.next,
                        text: p.text.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.partials.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of text kept.
    pub fn bytes(&self) -> usize {
        self.state.lock().map_or(0, |s| s.bytes)
    }
}

impl State {
    fn forget_stale(&mut self) {
        let mut freed = 0;
        self.partials.retain(|_, p| {
            let keep = p.touched.elapsed() < FORGET_AFTER;
            if !keep {
                freed += p.text.len();
            }
            keep
        });
        self.bytes -= freed;
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
            Applied::Forward
        );
        live.apply("s", &delta(message, first, 1, "lo"));
        let text = |live: &LiveReplies| {
            live.in_progress("s")
                .into_iter()
                .map(|p| (p.reply_to, p.text))
                .collect::<Vec<_>>()
        };
        assert_eq!(text(&live), vec![(message, "Hello".to_string())]);
        assert_eq!(
            live.apply("s", &delta(message, second, 0, "Hi")),
            Applied::Forward
        );
        assert_eq!(text(&live), vec![(message, "Hi".to_string())]);
        assert_eq!(live.in_progress("s")[0].next, 1);
        assert_eq!(
            live.apply("s", &delta(message, first, 2, "!")),
            Applied::Nothing
        );
        assert_eq!(
            live.apply("s", &delta(message, second, 0, "Hi")),
            Applied::Nothing
        );
        assert!(live.in_progress("other").is_empty());
        live.finish(message, 1);
        assert!(live.is_empty());
        assert_eq!(live.bytes(), 0);
        // A delta that arrives after the final event starts nothing.
        assert_eq!(
            live.apply("s", &delta(message, second, 1, " there")),
            Applied::Nothing
        );
        assert!(live.is_empty());
    }

    #[test]
    fn kept_text_is_bounded_by_bytes() {
        let live = LiveReplies::default();
        let (message, attempt) = (Uuid::now_v7(), Uuid::now_v7());
        let piece = "x".repeat(64 * 1024);
        for i in 0..40 {
            assert_eq!(
                live.apply("s", &delta(message, attempt, i, &piece)),
                Applied::Forward,
                "deltas are forwarded past the cap too"
            );
            assert!(live.bytes() <= MAX_REPLY_BYTES);
        }
        assert_eq!(live.bytes(), 0, "a reply over the cap keeps no text");
        assert!(live.in_progress("s").is_empty());
        live.finish(message, 1);
        assert!(live.is_empty());
    }

    #[test]
    fn a_regeneration_starts_over_and_ignores_what_came_before_it() {
        let live = LiveReplies::default();
        let message = Uuid::now_v7();
        let old_attempt = Uuid::now_v7();
        live.apply("s", &delta(message, old_attempt, 0, "Old"));
        live.finish(message, 1);
        let since = Uuid::now_v7();
        live.restart(message, 2, since);
        // A late delta of the attempt before the regeneration: ignored.
        assert_eq!(
            live.apply("s", &delta(message, old_attempt, 1, " text")),
            Applied::Nothing
        );
        // The first attempt's outcome, heard late: ignored too.
        live.finish(message, 1);
        let new_attempt = Uuid::now_v7();
        assert_eq!(
            live.apply("s", &delta(message, new_attempt, 0, "New")),
            Applied::Forward
        );
        assert_eq!(live.text_so_far(message).as_deref(), Some("New"));
        live.finish(message, 2);
        assert_eq!(
            live.apply("s", &delta(message, new_attempt, 1, "!")),
            Applied::Nothing
        );
    }
}
