//! Prometheus metrics, through the `metrics` facade: each process installs a
//! recorder (`metrics-exporter-prometheus`) at start, the api serving it at
//! `/metrics` and the worker on `METRICS_ADDR`. Without a recorder (tests that
//! build the app in-process, `worker replay`), every call here is a no-op.
//!
//! The names live here, so that the two binaries and the Grafana dashboard
//! agree on them.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const EVENTS_APPENDED: &str = "events_appended_total";
pub const APPEND_BATCH: &str = "append_batch_size";
pub const APPEND_COMMIT: &str = "append_commit_seconds";
pub const OUTBOX_BACKLOG: &str = "outbox_backlog";
pub const OUTBOX_OLDEST: &str = "outbox_oldest_unsent_seconds";
pub const DB_CONNECTIONS: &str = "db_pool_connections";
pub const DELIVERIES_IN_FLIGHT: &str = "deliveries_in_flight";
pub const DEAD_LETTERED: &str = "dead_lettered_total";
pub const MODEL_CALLS: &str = "model_calls_total";
pub const MODEL_DURATION: &str = "model_call_seconds";
pub const MODEL_FIRST_TOKEN: &str = "model_first_token_seconds";
pub const MODEL_RETRIES: &str = "model_retries_total";
pub const SSE_STREAMS: &str = "sse_streams_open";
pub const LONG_POLLS: &str = "long_poll_waiters";
pub const READ_CACHE: &str = "read_cache_requests_total";
pub const READ_CACHE_BYTES: &str = "read_cache_bytes";
pub const MEMORY_REFRESHES: &str = "memory_refreshes_total";

/// Histogram buckets, in seconds (or, for batch sizes, in appends).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The exporter both binaries install, with the histograms' buckets.
pub fn prometheus() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(APPEND_BATCH.into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        )
}

/// A gauge raised while this lives (a waiter, say), however it ends.
pub struct Raised(metrics::Gauge);

impl Raised {
    pub fn new(name: &'static str) -> Self {
        let gauge = gauge!(name);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// One group commit of `batch` appends, which took `took`.
pub fn append_committed(batch: usize, took: Duration) {
    histogram!(APPEND_BATCH).record(batch as f64);
    histogram!(APPEND_COMMIT).record(took.as_secs_f64());
}

/// One event of `event_type` in the log.
pub fn event_appended(event_type: &str) {
    counter!(EVENTS_APPENDED, "type" => event_type.to_string()).increment(1);
}

/// Most unsent outbox rows the backlog gauge counts; a bigger backlog reads as
/// this.
pub const BACKLOG_COUNTED: i64 = 100_000;

/// The outbox's unsent rows, counted up to [`BACKLOG_COUNTED`], and the age in
/// seconds of the first of them (none when there are none).
///
/// Capped, and aged by the first unsent row in the index: a count and a MIN
/// over the whole backlog read every unsent row on each sample, in each
/// process, just when a broker outage had left a million of them for the
/// database to catch up on.
pub async fn outbox_backlog(pool: &MySqlPool) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT \
         (SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE sent_at IS NULL LIMIT ?) AS unsent), \
         (SELECT CAST(TIMESTAMPDIFF(SECOND, created_at, NOW(6)) AS SIGNED) \
           FROM outbox WHERE sent_at IS NULL ORDER BY sent_at, id LIMIT 1)",
    )
    .bind(BACKLOG_COUNTED)
    .fetch_one(pool)
    .await
}

/// Samples what only the database knows (the outbox's backlog and the age of its
/// oldest unsent row) and the pool's connections, every `every`, until `stop`.
pub async fn sample_until(pool: MySqlPool, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let idle = pool.num_idle();
        gauge!(DB_CONNECTIONS, "state" => "idle").set(idle as f64);
        gauge!(DB_CONNECTIONS, "state" => "in_use")
            .set((pool.size() as usize).saturating_sub(idle) as f64);
        match outbox_backlog(&pool).await {
            Ok((rows, oldest)) => {
                gauge!(OUTBOX_BACKLOG).set(rows as f64);
                gauge!(OUTBOX_OLDEST).set(oldest.unwrap_or(0) as f64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot sample the outbox backlog"),
        }
    }
}
