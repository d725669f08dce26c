//! A bound on the reads whose answers can be large: uncached `chat/history`
//! pages and `bots/list` / `chat/list`. Each is bounded on its own (rows and
//! bytes per page, bots per user); this bounds how many are in memory at once
//! (`HEAVY_READS_AT_ONCE`), from the read until the answer is handed to the
//! connection, so that the api's peak is bounded under any mix of requests.
//! Past it a read waits its turn, holding nothing. One user holds at most
//! [`PER_USER`] turns at once, so that one user's slow clients cannot hold
//! every turn; and a client that stops reading is cut off after
//! `SEND_STALL_SECS` (see `send_stall`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use events::event::UserId;

/// How an answer is handed to the connection: in copies of this much of the
/// rendered body, so that what the connection still buffers when the turn is
/// given back is a chunk or two, never the whole answer.
const CHUNK_BYTES: usize = 64 * 1024;
/// The most turns one user holds at once.
pub const PER_USER: usize = 2;

pub struct HeavyReads {
    turns: Arc<Semaphore>,
    /// Each user's own turns, while they hold or wait for one.
    users: Arc<Mutex<HashMap<UserId, Arc<Semaphore>>>>,
}

/// A turn to read, render and send one large answer; dropping it gives the
/// turn back.
#[derive(Default)]
pub struct Turn {
    _permits: Option<(UserTurn, OwnedSemaphorePermit)>,
}

/// A user's share of the turns: the last one out removes the user's entry.
struct UserTurn {
    users: Arc<Mutex<HashMap<UserId, Arc<Semaphore>>>>,
    user: UserId,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UserTurn {
    fn drop(&mut self) {
        self.permit = None;
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and ours: nobody else holds or waits.
        if users
            .get(&self.user)
            .is_some_and(|s| Arc::ptr_eq(s, &self.semaphore) && Arc::strong_count(s) == 2)
        {
            users.remove(&self.user);
        }
    }
}

impl HeavyReads {
    pub fn new(at_once: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(at_once.max(1))),
            users: Arc::default(),
        }
    }

    /// Waits for a turn of `user`'s, then for one of all. (The semaphores are
    /// never closed; if one were, the read would go ahead unbounded rather than
    /// fail.)
    pub async fn turn(&self, user: UserId) -> Turn {
        let semaphore = self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_USER)))
            .clone();
        let mut mine = UserTurn {
            users: self.users.clone(),
            user,
            semaphore: semaphore.clone(),
            permit: None,
        };
        mine.permit = semaphore.acquire_owned().await.ok();
        match self.turns.clone().acquire_owned().await {
            Ok(permit) => Turn {
                _permits: Some((mine, permit)),
            },
            Err(_) => Turn::default(),
        }
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.users.lock().map(|u| u.len()).unwrap_or(0)
    }
}

impl Turn {
    /// `body` as a JSON answer that keeps the turn until the connection has
    /// taken all of it, or ends.
    pub fn answer(self, body: Bytes) -> Response {
        let length = body.len();
        let chunks = futures::stream::unfold((body, 0usize, self), |(body, at, turn)| async move {
            if at >= body.len() {
                return None;
            }
            let end = (at + CHUNK_BYTES).min(body.len());
            let chunk = Bytes::copy_from_slice(&body[at..end]);
            Some((Ok::<_, std::convert::Infallible>(chunk), (body, end, turn)))
        });
        (
            [
                (CONTENT_TYPE, "application/json".to_string()),
                (CONTENT_LENGTH, length.to_string()),
            ],
            Body::from_stream(chunks),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn waits<T>(future: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), future)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn past_its_bound_a_read_waits_for_a_turn() {
        let reads = HeavyReads::new(2);
        let first = reads.turn(1).await;
        let _second = reads.turn(2).await;
        assert!(waits(reads.turn(3)).await, "a third read waits");
        drop(first);
        assert!(!waits(reads.turn(3)).await, "and goes once a turn frees");
    }

    #[tokio::test]
    async fn one_user_holds_at_most_their_own_turns() {
        let reads = HeavyReads::new(8);
        let held: Vec<Turn> = futures::future::join_all((0..PER_USER).map(|_| reads.turn(1))).await;
        assert!(
            waits(reads.turn(1)).await,
            "the user waits for their own turn"
        );
        assert!(!waits(reads.turn(2)).await, "others do not");
        drop(held);
        assert!(!waits(reads.turn(1)).await);
        assert_eq!(reads.users(), 0, "nobody holds or waits: no entries");
    }

    #[tokio::test]
    async fn an_answer_keeps_its_turn_until_it_is_taken() {
        let reads = HeavyReads::new(1);
        let body = Bytes::from(vec![b'x'; 3 * CHUNK_BYTES + 5]);
        let answer = reads.turn(1).await.answer(body.clone());
        assert_eq!(
            answer.headers()[CONTENT_LENGTH],
            body.len().to_string().as_str()
        );
        assert!(
            waits(reads.turn(2)).await,
            "the turn is held while the answer is unsent"
        );
        let sent = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .expect("read");
        assert_eq!(sent, body);
        assert!(!waits(reads.turn(2)).await, "and given back once it is");
    }
}
