//! The outbox relay: every committed event reaches the broker, even if the process
//! that appended it dies before publishing.
//!
//! Two paths use the same rule, "mark sent only after the broker confirmed":
//! - [`OutboxRelay::publish_now`]: the appender publishes its own events right after
//!   commit, so the usual case costs no polling delay;
//! - [`OutboxRelay::run`]: a sweep in every api and worker process picks up rows that
//!   stayed unsent for longer than a grace period (the broker was down, the process
//!   crashed between commit and publish).
//!
//! The sweep claims rows in one short `UPDATE` (a token and an expiry), then
//! publishes with no transaction open, then marks what the broker confirmed and
//! releases the rest. Holding row locks across `publish()` instead would block every
//! append's `INSERT INTO outbox` for as long as a hung broker takes to not confirm.
//! Claims let any number of relays share the work without publishing a row twice at
//! the same time, and a relay that dies mid-claim only delays its rows until the
//! claim expires. Every time here (grace, expiry) is the database's clock, so
//! processes whose clocks disagree still agree on what is overdue.
//!
//! Delivery is at least once: a crash after the confirm and before the mark means a
//! second publish, which consumers absorb (replies are idempotent per message).
//!
//! One row the broker will never take (one larger than its frame, say) must not
//! hold back the rows behind it. A failed publish counts against its row only
//! when the broker is still reachable right after (a broker outage fails every
//! row and blames none), and the sweep then goes on with the next row. After
//! `MAX_PUBLISH_ATTEMPTS` the row is parked: an ERROR is logged, `/readyz` shows
//! the count, and `worker outbox parked` / `worker outbox retry` let an operator
//! look and try again.
//!
//! Sent rows are pruned after `OUTBOX_RETENTION_SECS`: the event log is the
//! record; the outbox only carries events to the broker.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::QueryBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::publisher::LONGEST_PUBLISH;
use crate::bus::{BusError, Publisher};
use crate::episode::Episode;
use crate::store::{recorded_from_row, RecordedEvent, SELECT_EVENTS};

/// How long a sweep's claim keeps other relays off its rows. This is also how long
/// the rows of a relay that dies mid-sweep wait, so it is kept short: a sweep stops
/// starting publishes once one might not finish inside its claim.
const CLAIM: Duration = Duration::from_secs(25);
/// Failed publishes (with the broker reachable) before a row is parked.
pub const MAX_PUBLISH_ATTEMPTS: i32 = 5;
/// How often a relay prunes sent rows, and how many it deletes per statement.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: u32 = 5_000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub sent: usize,
    /// The claim's time ran out before the batch did; the rest is released.
    pub cut_short: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Clone)]
pub struct OutboxRelay {
    pool: MySqlPool,
    publisher: Arc<Publisher>,
    /// Rows younger than this are left to the process that appended them.
    grace: Duration,
    batch: u32,
    marks: SentMarks,
    /// The broker refusing or not confirming publishes: one WARN per episode.
    unpublished: Arc<Episode>,
    /// Sweeps failing on the database.
    sweep_failures: Arc<Episode>,
    /// Sent rows older than this are deleted.
    retention: Duration,
}

/// A row the relay gave up on, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedRow {
    pub global_position: i64,
    pub attempts: i32,
    pub parked_at: chrono::NaiveDateTime,
    pub last_error: Option<String>,
}

impl OutboxRelay {
    pub fn new(pool: MySqlPool, publisher: Arc<Publisher>) -> Self {
        Self {
            marks: SentMarks::spawn(pool.clone()),
            pool,
            publisher,
            grace: Duration::from_secs(2),
            batch: 200,
            unpublished: Arc::new(Episode::new(
                "publishing to the broker fails; events wait in the outbox",
            )),
            sweep_failures: Arc::new(Episode::new("the outbox sweep fails on the database")),
            retention: Duration::from_secs(24 * 3600),
        }
    }

    /// Keeps sent rows for `retention` (`OUTBOX_RETENTION_SECS`), then prunes them.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Rows parked after `MAX_PUBLISH_ATTEMPTS`, oldest first.
    pub async fn parked(pool: &MySqlPool) -> Result<Vec<ParkedRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT global_position, attempts, parked_at, last_error FROM outbox \
             WHERE parked_at IS NOT NULL AND sent_at IS NULL ORDER BY id",
        )
        .fetch_all(pool)
        .await
    }

    /// How many rows are parked now.
    pub async fn parked_count(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL",
        )
        .fetch_one(pool)
        .await
    }

    /// Gives parked rows (one, or all) a fresh set of attempts; the next sweep
    /// publishes them. Returns how many were released.
    pub async fn retry_parked(pool: &MySqlPool, position: Option<i64>) -> Result<u64, sqlx::Error> {
        let released = sqlx::query(
            "UPDATE outbox SET parked_at = NULL, attempts = 0, claim_token = NULL, \
             claimed_until = NULL WHERE parked_at IS NOT NULL AND sent_at IS NULL \
             AND (? IS NULL OR global_position = ?)",
        )
        .bind(position)
        .bind(position)
        .execute(pool)
        .await?;
        Ok(released.rows_affected())
    }

    /// Deletes sent rows older than the retention, a batch at a time.
    pub async fn prune_sent(&self) -> Result<u64, sqlx::Error> {
        let mut pruned = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL \
                 AND sent_at < NOW(6) - INTERVAL ? SECOND LIMIT ?",
            )
            .bind(self.retention.as_secs())
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            pruned += deleted;
            if deleted < u64::from(PRUNE_BATCH) {
                return Ok(pruned);
            }
        }
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    /// Publishes events this process just committed. A failure is only logged: the
    /// rows stay unsent and the sweep retries them.
    pub async fn publish_now(&self, events: &[RecordedEvent]) {
        for event in events {
            match self.publisher.publish(event).await {
                Ok(()) => {
                    self.unpublished.recovered();
                    self.marks.mark(event.global_position);
                }
                Err(e) => {
                    self.unpublished.failed(&e);
                    break;
                }
            }
        }
    }

    /// Publishes one batch of overdue rows. Returns how many were sent, and whether
    /// the batch was cut short by the claim's time budget (so more may be waiting).
    pub async fn sweep(&self) -> Result<Sweep, RelayError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let claimed = sqlx::query(
            "UPDATE outbox SET claim_token = ?, claimed_until = NOW(6) + INTERVAL ? SECOND \
             WHERE sent_at IS NULL AND parked_at IS NULL \
             AND created_at < NOW(6) - INTERVAL ? MICROSECOND \
             AND (claimed_until IS NULL OR claimed_until < NOW(6)) ORDER BY id LIMIT ?",
        )
        .bind(&token)
        .bind(CLAIM.as_secs())
        .bind(u64::try_from(self.grace.as_micros()).unwrap_or(u64::MAX))
        .bind(self.batch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(Sweep::default());
        }
        let claimed_at = Instant::now();
        let outcome = self.publish_claimed(&token, claimed_at).await;
        // Whatever was not sent is free for the next sweep at once. This runs on
        // every path, so a database blip mid-sweep does not park the rows until
        // the claim expires; if the database is gone, expiry is the fallback.
        let released = sqlx::query(
            "UPDATE outbox SET claim_token = NULL, claimed_until = NULL \
             WHERE claim_token = ? AND sent_at IS NULL",
        )
        .bind(&token)
        .execute(&self.pool)
        .await;
        let sweep = outcome?;
        released?;
        Ok(sweep)
    }

    async fn publish_claimed(&self, token: &str, claimed_at: Instant) -> Result<Sweep, RelayError> {
        let events: Vec<RecordedEvent> = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE global_position IN \
             (SELECT global_position FROM outbox WHERE claim_token = ?) ORDER BY global_position"
        ))
        .bind(token)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(&self.pool)
        .await?;

        let mut sweep = Sweep::default();
        let mut sent = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in &events {
            // A publish started later than this could outlive the claim, and race
            // another relay's publish of the same row.
            if claimed_at.elapsed() + LONGEST_PUBLISH >= CLAIM {
                sweep.cut_short = true;
                break;
            }
            match self.publisher.publish(event).await {
                Ok(()) => sent.push(event.global_position),
                Err(e) => {
                    // Reachable right after: the row is at fault, not the broker.
                    if self.publisher.channel().await.is_ok() {
                        self.count_failure(event.global_position, &e).await?;
                        continue;
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        if !sent.is_empty() {
            let mut mark =
                QueryBuilder::new("UPDATE outbox SET sent_at = NOW(6) WHERE claim_token = ");
            mark.push_bind(token).push(" AND global_position IN ");
            mark.push_tuples(&sent, |mut b, p| {
                b.push_bind(p);
            });
            mark.build().persistent(false).execute(&self.pool).await?;
            tracing::info!(count = sent.len(), "outbox relay published overdue events");
        }
        sweep.sent = sent.len();
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(sweep),
        }
    }

    /// Counts a failed publish against its row, and parks the row once it has
    /// failed `MAX_PUBLISH_ATTEMPTS` times.
    async fn count_failure(&self, position: i64, error: &BusError) -> Result<(), sqlx::Error> {
        let reason: String = error.to_string().chars().take(500).collect();
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, \
             parked_at = IF(attempts >= ?, NOW(6), NULL) WHERE global_position = ?",
        )
        .bind(&reason)
        .bind(MAX_PUBLISH_ATTEMPTS)
        .bind(position)
        .execute(&self.pool)
        .await?;
        let parked: Option<i32> = sqlx::query_scalar(
            "SELECT attempts FROM outbox WHERE global_position = ? AND parked_at IS NOT NULL",
        )
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        match parked {
            Some(attempts) => tracing::error!(
                global_position = position, attempts, error = %reason,
                "the broker keeps refusing this event; parked it (see `worker outbox parked`)"
            ),
            None => tracing::warn!(global_position = position, error = %reason,
                "the broker refused this event; the rows behind it go on"),
        }
        Ok(())
    }

    /// Sweeps every `interval` until `shutdown`, and prunes sent rows every
    /// `PRUNE_EVERY`.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        let mut pruned_at = Instant::now();
        loop {
            if pruned_at.elapsed() >= PRUNE_EVERY {
                pruned_at = Instant::now();
                match self.prune_sent().await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "pruned sent outbox rows"),
                    Err(e) => tracing::debug!(error = %e, "could not prune the outbox"),
                }
            }
            let mut batch_full = false;
            match self.sweep().await {
                Ok(sweep) => {
                    self.sweep_failures.recovered();
                    if sweep.sent > 0 {
                        self.unpublished.recovered();
                    }
                    batch_full = sweep.cut_short || sweep.sent as u32 >= self.batch;
                }
                Err(RelayError::Bus(e)) => self.unpublished.failed(&e),
                Err(RelayError::Database(e)) => self.sweep_failures.failed(&e),
            }
            if batch_full {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Marks confirmed rows sent, many per `UPDATE`: while one update runs, the next
/// confirms queue up and go together, so the database sees one write per batch
/// rather than one per event. A mark lost in a crash only means a second publish.
#[derive(Clone)]
struct SentMarks {
    sender: mpsc::UnboundedSender<i64>,
}

impl SentMarks {
    const MAX_BATCH: usize = 500;

    fn spawn(pool: MySqlPool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(Self::run(pool, receiver));
        Self { sender }
    }

    fn mark(&self, position: i64) {
        // Fails only when the process is shutting down; the sweep covers that.
        let _ = self.sender.send(position);
    }

    async fn run(pool: MySqlPool, mut receiver: mpsc::UnboundedReceiver<i64>) {
        let mut batch = Vec::with_capacity(Self::MAX_BATCH);
        while let Some(first) = receiver.recv().await {
            batch.push(first);
            while batch.len() < Self::MAX_BATCH {
                match receiver.try_recv() {
                    Ok(position) => batch.push(position),
                    Err(_) => break,
                }
            }
            let mut mark = QueryBuilder::new(
                "UPDATE outbox SET sent_at = NOW(6) WHERE sent_at IS NULL AND global_position IN ",
            );
            mark.push_tuples(&batch, |mut b, p| {
                b.push_bind(p);
            });
            // A panic loses this batch's marks (the sweep covers them), not the
            // task that every later mark needs.
            let marked = AssertUnwindSafe(mark.build().persistent(false).execute(&pool))
                .catch_unwind()
                .await;
            match marked {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, count = batch.len(),
                    "could not mark outbox rows sent; the sweep may publish them again"),
                Err(_) => tracing::error!(
                    count = batch.len(),
                    "marking outbox rows sent panicked; the sweep may publish them again"
                ),
            }
            batch.clear();
        }
    }
}
