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
}

impl OutboxRelay {
    pub fn new(pool: MySqlPool, publisher: Arc<Publisher>) -> Self {
        Self {
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
        let mut sent = Vec::with_capacity(events.len());
        for event in events {
            match self.publisher.publish(event).await {
                Ok(()) => sent.push(event.global_position),
                Err(e) => {
                    tracing::warn!(position = event.global_position, error = %e,
                        "publish failed; the outbox relay will retry");
                    break;
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        let mut mark = QueryBuilder::new("UPDATE outbox SET sent_at = ");
        mark.push_bind(now_micros())
            .push(" WHERE sent_at IS NULL AND global_position IN ");
        mark.push_tuples(&sent, |mut b, p| {
            b.push_bind(p);
        });
        if let Err(e) = mark.build().execute(&self.pool).await {
            tracing::warn!(error = %e, "could not mark outbox rows sent; they may be published again");
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
