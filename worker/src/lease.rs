//! One answerer per conversation at a time, across every worker process.
//!
//! Without it, every in-flight delivery of a conversation answers the oldest
//! unanswered message, and all but one of those model calls are thrown away as
//! duplicates: a burst of N messages cost N(N+1)/2 calls. With it, only the lease's
//! holder answers a conversation, one model call per message. A delivery that
//! finds the lease held hands its message to the holder ([`ConversationLeases::hand_off`])
//! rather than waiting; memory refreshes, which are few, wait for theirs
//! ([`ConversationLeases::acquire`]).
//!
//! Two levels:
//! - in this process, an async mutex per conversation (waiters hold no database
//!   connection and make no queries);
//! - across processes, a row in `conversation_leases` with an expiry on the
//!   database's clock. The holder renews it while it works; a holder that crashed
//!   simply lets it expire, and the redelivered message's worker takes over.
//!
//! A lease is an optimization of cost, not of correctness: if a holder stalls past
//! its expiry and a second one starts, both may call the model, and the reply's
//! idempotency key still lets only one answer be recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sqlx::MySqlPool;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use events::event::UserId;

/// How often a waiting process checks whether another process's lease is gone.
const POLL: Duration = Duration::from_millis(150);

#[derive(Clone)]
pub struct ConversationLeases {
    pool: MySqlPool,
    ttl: Duration,
    local: LocalMutexes,
}

/// A held lease; renewed in the background until [`Lease::release`].
pub struct Lease {
    leases: ConversationLeases,
    stream_id: String,
    holder: String,
    renewing: CancellationToken,
    /// Cancelled when a renewal finds the lease taken over.
    lost: CancellationToken,
    /// Holders before this one that gave up part-way, in a row (until a reply
    /// is recorded: see [`Lease::made_progress`]).
    failures: std::sync::atomic::AtomicI64,
    /// The hand-offs counted when this holder took the lease (see
    /// [`Lease::handoffs_when_taken`]).
    handoffs_when_taken: i64,
    _local: LocalSlot,
}

/// What the row said as a holder took the lease.
#[derive(Debug, Clone, Copy)]
struct Taken {
    failures: i64,
    handoffs: i64,
}

/// What [`Lease::release_if_quiet`] did.
pub enum Release {
    Released,
    /// A hand-off came meanwhile: the lease is still held, look for work again.
    Busy(Lease),
    /// The lease ran out and another holder took it (and the work with it).
    Lost,
}

/// A caller's share of a conversation's in-process mutex (and its guard, once
/// taken). However the caller ends (a lease released or dropped, an error, a
/// stop, a cancelled future), the last one out removes the map's entry, so the
/// map holds only conversations in use.
struct LocalSlot {
    local: LocalMutexes,
    stream_id: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.guard = None;
        let Ok(mut local) = self.local.lock() else {
            return;
        };
        // Every slot takes its clone under this lock, and holds it until its own
        // drop: two references (the map's and ours) mean no other slot exists.
        if local
            .get(&self.stream_id)
            .is_some_and(|m| Arc::ptr_eq(m, &self.mutex) && Arc::strong_count(m) == 2)
        {
            local.remove(&self.stream_id);
        }
    }
}

type LocalMutexes = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

impl ConversationLeases {
    pub fn new(pool: MySqlPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl: ttl.max(Duration::from_secs(1)),
            local: Arc::default(),
        }
    }

    /// Waits until this caller holds the conversation's lease, or `stop` fires
    /// (`Ok(None)`). Database errors are returned for the caller to retry.
    pub async fn acquire(
        &self,
        stream_id: &str,
        stop: &CancellationToken,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let mut slot = self.local_slot(stream_id);
        let mutex = slot.mutex.clone();
        tokio::select! {
            guard = mutex.lock_owned() => slot.guard = Some(guard),
            _ = stop.cancelled() => return Ok(None),
        };
        let holder = uuid::Uuid::new_v4().simple().to_string();
        loop {
            if let Some(taken) = self.try_take(stream_id, &holder).await? {
                return Ok(Some(self.held(stream_id, holder, slot, taken)));
            }
            let pause = POLL.mul_f64(rand::thread_rng().gen_range(0.7..1.3));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
    }

    /// Takes the conversation's lease if nobody holds it (or its holder's time
    /// ran out); `None` at once otherwise. Never waits.
    pub async fn try_acquire(&self, stream_id: &str) -> Result<Option<Lease>, sqlx::Error> {
        let mut slot = self.local_slot(stream_id);
        match slot.mutex.clone().try_lock_owned() {
            Ok(guard) => slot.guard = Some(guard),
            Err(_) => return Ok(None),
        }
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let Some(taken) = self.try_take(stream_id, &holder).await? else {
            return Ok(None);
        };
        Ok(Some(self.held(stream_id, holder, slot, taken)))
    }

    /// The lease `holder` just took, renewed from now on.
    fn held(&self, stream_id: &str, holder: String, slot: LocalSlot, taken: Taken) -> Lease {
        let lease = Lease {
            leases: self.clone(),
            stream_id: stream_id.to_string(),
            holder,
            renewing: CancellationToken::new(),
            lost: CancellationToken::new(),
            failures: std::sync::atomic::AtomicI64::new(taken.failures),
            handoffs_when_taken: taken.handoffs,
            _local: slot,
        };
        lease.renew_in_background();
        lease
    }

    /// Hands the conversation's work to whoever holds its lease now: `true` if a
    /// live holder was told (it looks for unanswered messages again before it
    /// lets go), `false` if nobody holds it and the caller should take it.
    pub async fn hand_off(&self, stream_id: &str) -> Result<bool, sqlx::Error> {
        let told = sqlx::query(
            "UPDATE conversation_leases SET handoffs = handoffs + 1 \
             WHERE stream_id = ? AND expires_at >= NOW(6) AND takes_handoffs = 1",
        )
        .bind(stream_id)
        .execute(&self.pool)
        .await?;
        Ok(told.rows_affected() == 1)
    }

    /// Leaves the conversation's work for the sweep of expired leases, for a
    /// message whose user has their share of this worker's model calls: `true`
    /// if whoever answers the conversation next will see it, `false` if a holder
    /// that takes no hand-offs (an older worker, in a rolling deploy) has it and
    /// the caller should try again later.
    ///
    /// A conversation nobody holds gets an already expired row, which the sweep
    /// (on any worker) takes up; whoever takes it marks it as taking hand-offs
    /// (or not, if an older worker does). Counting the park as a hand-off covers the rest:
    /// a holder that just took the lease sees the message anyway, and one about
    /// to let go finds the count changed and looks again.
    pub async fn park(&self, stream_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query(
            "INSERT INTO conversation_leases (stream_id, holder, expires_at, takes_handoffs, handoffs) \
             VALUES (?, '', NOW(6) - INTERVAL 1 SECOND, 0, 1) \
             ON DUPLICATE KEY UPDATE handoffs = handoffs + 1",
        )
        .bind(stream_id)
        .execute(&self.pool)
        .await?;
        let deaf: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM conversation_leases \
             WHERE stream_id = ? AND expires_at >= NOW(6) AND takes_handoffs = 0",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(deaf.is_none())
    }

    /// Conversations (`chat-…` streams) whose lease ran out without a release:
    /// their holder died or stopped mid-work, or their messages were parked.
    /// Those of the `skipped` users (who have their share here) are left out.
    /// Memory leases that ran out long ago (a memory worker that died) are
    /// deleted on the way: nobody was handed anything through them.
    pub async fn expired_chats(
        &self,
        limit: u32,
        skipped: &[UserId],
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query(
            "DELETE FROM conversation_leases \
             WHERE stream_id LIKE 'memory-%' AND expires_at < NOW(6) - INTERVAL 1 MINUTE",
        )
        .execute(&self.pool)
        .await?;
        let mut select = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "SELECT stream_id FROM conversation_leases \
             WHERE expires_at < NOW(6) AND stream_id LIKE 'chat-%'",
        );
        for user_id in skipped {
            select
                .push(" AND stream_id NOT LIKE ")
                .push_bind(format!("chat-{user_id}-%"));
        }
        select.push(" ORDER BY expires_at LIMIT ").push_bind(limit);
        select.build_query_scalar().fetch_all(&self.pool).await
    }

    /// This conversation's in-process mutex, shared with every other caller for it.
    fn local_slot(&self, stream_id: &str) -> LocalSlot {
        let mutex = match self.local.lock() {
            Ok(mut local) => local.entry(stream_id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        LocalSlot {
            local: self.local.clone(),
            stream_id: stream_id.to_string(),
            mutex,
            guard: None,
        }
    }

    /// Conversations with an in-process mutex: held, awaited, or about to be.
    #[cfg(test)]
    fn local_len(&self) -> usize {
        self.local.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn ttl_micros(&self) -> u64 {
        u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes the lease if it is free, expired, or already ours: `Some` with the
    /// failures its earlier holders left on it and its hand-offs so far, `None`
    /// if another holds it.
    async fn try_take(&self, stream_id: &str, holder: &str) -> Result<Option<Taken>, sqlx::Error> {
        // Assignments apply left to right: `holder` is decided first, and the
        // expiry moves only if the row is now ours.
        sqlx::query(
            "INSERT INTO conversation_leases (stream_id, holder, expires_at, takes_handoffs) \
             VALUES (?, ?, NOW(6) + INTERVAL ? MICROSECOND, 1) \
             ON DUPLICATE KEY UPDATE \
             holder = IF(expires_at < NOW(6) OR holder = ?, ?, holder), \
             takes_handoffs = IF(holder = ?, 1, takes_handoffs), \
             expires_at = IF(holder = ?, NOW(6) + INTERVAL ? MICROSECOND, expires_at)",
        )
        .bind(stream_id)
        .bind(holder)
        .bind(self.ttl_micros())
        .bind(holder)
        .bind(holder)
        .bind(holder)
        .bind(holder)
        .bind(self.ttl_micros())
        .execute(&self.pool)
        .await?;
        let current: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT holder, CAST(failures AS SIGNED), handoffs \
             FROM conversation_leases WHERE stream_id = ?",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(current
            .filter(|(current, _, _)| current == holder)
            .map(|(_, failures, handoffs)| Taken { failures, handoffs }))
    }
}

impl Lease {
    fn renew_in_background(&self) {
        let (leases, stream_id, holder, stop, lost) = (
            self.leases.clone(),
            self.stream_id.clone(),
            self.holder.clone(),
            self.renewing.clone(),
            self.lost.clone(),
        );
        tokio::spawn(async move {
            let every = leases.ttl / 3;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                let renewed = sqlx::query(
                    "UPDATE conversation_leases SET expires_at = NOW(6) + INTERVAL ? MICROSECOND \
                     WHERE stream_id = ? AND holder = ?",
                )
                .bind(leases.ttl_micros())
                .bind(&stream_id)
                .bind(&holder)
                .execute(&leases.pool)
                .await;
                match renewed {
                    Ok(done) if done.rows_affected() == 0 => {
                        tracing::warn!(%stream_id, "conversation lease expired and was taken over");
                        lost.cancel();
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(%stream_id, error = %e, "could not renew the conversation lease")
                    }
                }
            }
        });
    }

    /// How many holders in a row abandoned this lease part-way before this one.
    pub fn failures(&self) -> i64 {
        self.failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A reply was recorded under this lease: the conversation is not stuck, so
    /// the count of holders that gave up starts over (once, and only if there
    /// was one: most leases never cost this query).
    pub async fn made_progress(&self) -> Result<(), sqlx::Error> {
        if self.failures.swap(0, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE conversation_leases SET failures = 0 WHERE stream_id = ? AND holder = ?",
        )
        .bind(&self.stream_id)
        .bind(&self.holder)
        .execute(&self.leases.pool)
        .await?;
        Ok(())
    }

    /// Whether another holder took the lease over (this one stalled past its
    /// expiry): stop answering, the new holder has the work.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// How many hand-offs the lease had when this holder took it: read with the
    /// take, so a holder's first look for work needs no read of its own (see
    /// [`Lease::release_if_quiet`]).
    pub fn handoffs_when_taken(&self) -> i64 {
        self.handoffs_when_taken
    }

    /// How many hand-offs the lease has had so far (see [`Lease::release_if_quiet`]).
    pub async fn handoffs(&self) -> Result<i64, sqlx::Error> {
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT handoffs FROM conversation_leases WHERE stream_id = ? AND holder = ?",
        )
        .bind(&self.stream_id)
        .bind(&self.holder)
        .fetch_optional(&self.leases.pool)
        .await?;
        Ok(count.unwrap_or(-1))
    }

    /// Lets go of the lease unless a hand-off came after `seen` was read (then
    /// there may be work the caller has not seen yet, and it keeps the lease).
    pub async fn release_if_quiet(self, seen: i64) -> Result<Release, (Self, sqlx::Error)> {
        let deleted = sqlx::query(
            "DELETE FROM conversation_leases WHERE stream_id = ? AND holder = ? AND handoffs = ?",
        )
        .bind(&self.stream_id)
        .bind(&self.holder)
        .bind(seen)
        .execute(&self.leases.pool)
        .await;
        match deleted {
            Ok(done) if done.rows_affected() == 1 => {
                self.renewing.cancel();
                Ok(Release::Released)
            }
            Ok(_) => match self.handoffs().await {
                Ok(-1) => Ok(Release::Lost),
                Ok(_) => Ok(Release::Busy(self)),
                Err(e) => Err((self, e)),
            },
            Err(e) => Err((self, e)),
        }
    }

    /// Stops holding the lease without letting go of its work: the row expires at
    /// once, so the sweep of expired leases (on any worker) takes the
    /// conversation over. For a holder that fails part-way; it counts as a
    /// failure (see [`Lease::failures`]).
    pub async fn abandon(self) {
        self.expire(1).await
    }

    /// Leaves the conversation's remaining work to the sweep, as
    /// [`Lease::abandon`] does, for a holder that gives way (to other users, see
    /// [`crate::share`]; after its time; or at shutdown): no failure.
    pub async fn give_way(self) {
        self.expire(0).await
    }

    async fn expire(self, failures: u32) {
        self.renewing.cancel();
        let expired = sqlx::query(
            "UPDATE conversation_leases SET expires_at = NOW(6) - INTERVAL 1 SECOND, \
             failures = failures + ? WHERE stream_id = ? AND holder = ?",
        )
        .bind(failures)
        .bind(&self.stream_id)
        .bind(&self.holder)
        .execute(&self.leases.pool)
        .await;
        if let Err(e) = expired {
            tracing::debug!(stream_id = %self.stream_id, error = %e, "lease not expired; it will run out");
        }
    }

    /// Gives the lease up at once, rather than leaving it to expire.
    pub async fn release(self) {
        self.renewing.cancel();
        let released =
            sqlx::query("DELETE FROM conversation_leases WHERE stream_id = ? AND holder = ?")
                .bind(&self.stream_id)
                .bind(&self.holder)
                .execute(&self.leases.pool)
                .await;
        if let Err(e) = released {
            tracing::debug!(stream_id = %self.stream_id, error = %e, "lease not released; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without `release` (cancelled at the end of a shutdown's grace):
        // stop renewing, and the row expires on its own.
        self.renewing.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool whose every query fails: nothing listens on port 1.
    fn unreachable() -> ConversationLeases {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("mysql://root@127.0.0.1:1/none")
            .unwrap();
        ConversationLeases::new(pool, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_failed_take_leaves_no_entry_behind() {
        let leases = unreachable();
        let stop = CancellationToken::new();
        for n in 0..10 {
            let taken = leases.acquire(&format!("chat-{n}"), &stop).await;
            assert!(taken.is_err());
        }
        assert_eq!(leases.local_len(), 0);
    }

    #[tokio::test]
    async fn a_stopped_or_cancelled_wait_leaves_no_entry_behind() {
        let leases = unreachable();
        // One caller holds the in-process mutex, as a lease holder would.
        let held = leases.local_slot("chat-1");
        let guard = held.mutex.clone().lock_owned().await;
        let stop = CancellationToken::new();
        let waiting = tokio::spawn({
            let (leases, stop) = (leases.clone(), stop.clone());
            async move { leases.acquire("chat-1", &stop).await.map(|l| l.is_some()) }
        });
        let cancelled = tokio::spawn({
            let leases = leases.clone();
            async move {
                leases
                    .acquire("chat-1", &CancellationToken::new())
                    .await
                    .is_ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancelled.abort();
        stop.cancel();
        assert!(!waiting.await.unwrap().unwrap());
        assert_eq!(leases.local_len(), 1, "the holder's entry stays");
        drop(guard);
        drop(held);
        assert_eq!(leases.local_len(), 0);
    }
}
