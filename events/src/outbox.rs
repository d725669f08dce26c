//! The outbox relay: every committed event reaches the broker, even if the process
//! that appended it dies before publishing.
//!
//! Two paths use the same rule, "mark sent only after the broker confirmed":
//! - [`OutboxRelay::publish_now`]: the appender publishes its own events right after
//!   commit, so the usual case costs no polling delay;
//! - [`OutboxRelay::run`]: a sweep in every api and worker process picks up rows that
//!   stayed unsent for longer than a grace period (the broker was down, the process
//!   crashed between commit and publish). Rows are claimed with
//!   `FOR UPDATE SKIP LOCKED`, so any number of relays share the work without
//!   publishing a row twice at the same time.
//!
//! Delivery is at least once: a crash after the confirm and before the mark means a
//! second publish, which consumers absorb (replies are idempotent per message).

use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{QueryBuilder, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Publisher};
use crate::store::{now_micros, recorded_from_row, RecordedEvent, SELECT_EVENTS};

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
}

impl OutboxRelay {
    pub fn new(pool: MySqlPool, publisher: Arc<Publisher>) -> Self {
        Self {
            marks: SentMarks::spawn(pool.clone()),
            pool,
            publisher,
            grace: Duration::from_secs(2),
            batch: 200,
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
                Ok(()) => self.marks.mark(event.global_position),
                Err(e) => {
                    tracing::warn!(position = event.global_position, error = %e,
                        "publish failed; the outbox relay will retry");
                    break;
                }
            }
        }
    }

    /// Publishes one batch of overdue rows. Returns how many were sent.
    pub async fn sweep(&self) -> Result<usize, RelayError> {
        let cutoff = now_micros()
            - chrono::TimeDelta::from_std(self.grace).unwrap_or(chrono::TimeDelta::zero());
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<(i64, i64)> = sqlx::query(
            "SELECT id, global_position FROM outbox WHERE sent_at IS NULL AND created_at < ? \
             ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(cutoff)
        .bind(self.batch)
        .try_map(|row: MySqlRow| Ok((row.try_get(0)?, row.try_get(1)?)))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }

        let mut select = QueryBuilder::new(SELECT_EVENTS);
        select.push(" WHERE global_position IN ");
        select.push_tuples(&claimed, |mut b, (_, position)| {
            b.push_bind(position);
        });
        select.push(" ORDER BY global_position");
        let events: Vec<RecordedEvent> = select
            .build()
            .try_map(|row: MySqlRow| recorded_from_row(&row))
            .fetch_all(&mut *tx)
            .await?;

        let mut sent = Vec::with_capacity(events.len());
        for event in &events {
            self.publisher.publish(event).await?;
            sent.push(event.global_position);
        }
        let mut mark = QueryBuilder::new("UPDATE outbox SET sent_at = ");
        mark.push_bind(now_micros())
            .push(" WHERE global_position IN ");
        mark.push_tuples(&sent, |mut b, p| {
            b.push_bind(p);
        });
        mark.build().execute(&mut *tx).await?;
        tx.commit().await?;
        tracing::info!(count = sent.len(), "outbox relay published overdue events");
        Ok(sent.len())
    }

    /// Sweeps every `interval` until `shutdown`.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            let mut batch_full = false;
            match self.sweep().await {
                Ok(n) => batch_full = n as u32 >= self.batch,
                Err(RelayError::Bus(e)) => {
                    tracing::debug!(error = %e, "outbox relay: broker unavailable")
                }
                Err(e) => tracing::warn!(error = %e, "outbox relay sweep failed"),
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
            let mut mark = QueryBuilder::new("UPDATE outbox SET sent_at = ");
            mark.push_bind(now_micros())
                .push(" WHERE sent_at IS NULL AND global_position IN ");
            mark.push_tuples(&batch, |mut b, p| {
                b.push_bind(p);
            });
            if let Err(e) = mark.build().execute(&pool).await {
                tracing::warn!(error = %e, count = batch.len(),
                    "could not mark outbox rows sent; the sweep may publish them again");
            }
            batch.clear();
        }
    }
}
