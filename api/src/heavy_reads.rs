//! A bound on the reads whose answers can be large: uncached `chat/history`
//! pages and `bots/list` / `chat/list`. Each is bounded on its own (rows and
//! bytes per page, bots per user); this bounds how many are in memory at once
//! (`HEAVY_READS_AT_ONCE`), from the read until the answer is sent, so that the
//! api's peak is bounded under any mix of requests. Past it a read waits its
//! turn, holding nothing. A client that stops reading its answer gives the turn
//! back after `SEND_STALL_SECS` (see `send_stall`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How an answer is handed to the connection: in slices of the rendered body,
/// none of them a copy.
const CHUNK_BYTES: usize = 64 * 1024;

pub struct HeavyReads {
    turns: Arc<Semaphore>,
}

/// A turn to read, render and send one large answer; dropping it gives the
/// turn back.
#[derive(Default)]
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

impl HeavyReads {
    pub fn new(at_once: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(at_once.max(1))),
        }
    }

    /// Waits for a turn. (The semaphore is never closed; if it were, the read
    /// would go ahead unbounded rather than fail.)
    pub async fn turn(&self) -> Turn {
        Turn {
            _permit: self.turns.clone().acquire_owned().await.ok(),
        }
    }
}

impl Turn {
    /// `body` as a JSON answer that keeps the turn until it has been sent, or
    /// the connection ends.
    pub fn answer(self, body: Bytes) -> Response {
        let chunks: Vec<Bytes> = (0..body.len())
            .step_by(CHUNK_BYTES)
            .map(|start| body.slice(start..(start + CHUNK_BYTES).min(body.len())))
            .collect();
        let turn = self;
        let stream = futures::stream::iter(chunks).map(move |chunk| {
            let _ = &turn;
            Ok::<_, std::convert::Infallible>(chunk)
        });
        (
            [(CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn past_its_bound_a_read_waits_for_a_turn() {
        let reads = HeavyReads::new(2);
        let first = reads.turn().await;
        let _second = reads.turn().await;
        let third = tokio::time::timeout(Duration::from_millis(50), reads.turn()).await;
        assert!(third.is_err(), "a third read waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_millis(50), reads.turn()).await;
        assert!(third.is_ok(), "and goes once a turn frees");
    }

    #[tokio::test]
    async fn an_answer_keeps_its_turn_until_it_is_sent() {
        let reads = HeavyReads::new(1);
        let body = Bytes::from(vec![b'x'; 3 * CHUNK_BYTES + 5]);
        let answer = reads.turn().await.answer(body.clone());
        let waiting = tokio::time::timeout(Duration::from_millis(50), reads.turn()).await;
        assert!(
            waiting.is_err(),
            "the turn is held while the answer is unsent"
        );
        let sent = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .expect("read");
        assert_eq!(sent, body);
        let next = tokio::time::timeout(Duration::from_millis(50), reads.turn()).await;
        assert!(next.is_ok(), "and given back once it is");
    }
}
