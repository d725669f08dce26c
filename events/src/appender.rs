//! Group commit: appends from concurrent callers of one process share a transaction.
//!
//! Every append takes the `event_log_head` lock, and holds it until commit, so that
//! positions become visible in order (see [`crate::store`]). Taken once per event,
//! that lock would make the database's round trips the system's limit. So appends
//! go to one task per process, which takes every append waiting at that moment and
//! commits them together: one lock, one version check, one insert of events and of
//! outbox rows, the read-model updates, one commit. Each caller still gets its own
//! answer: a conflict or a duplicate fails that append alone, and the others in the
//! batch go on.
//!
//! Two failures must stay contained:
//! - a batch the database refuses as a whole (a key the checks above missed, a
//!   deadlock) is retried one job at a time, so one bad append fails alone instead
//!   of failing every other caller of the batch;
//! - a connection that hangs without erroring would block every append of the
//!   process behind this one task, so each commit is bounded: on a timeout the
//!   connection is dropped (never returned to the pool) and the batch fails as
//!   unavailable. Its outcome is then unknown to the callers, which is why every
//!   append a client may retry carries an idempotency key.
//!
//! The statements with a variable number of rows or `IN (...)` terms take one of
//! a few shapes ([`crate::statement_shape`]), so that the small ones of a quiet
//! commit stay prepared without a prepared statement for every length.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlRow};
use sqlx::types::Json;
use sqlx::{Acquire, QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};

use crate::record::{NewEvent, RecordedEvent};
use crate::statement_shape;

/// What the appender believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append after whatever is there; conflicts are retried inside the store.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id} moved past the expected version {expected:?}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
    },
    /// An event with this idempotency key was recorded before; nothing was written.
    #[error("an event with idempotency key {0} is already recorded")]
    Duplicate(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A personal field could not be sealed; nothing was written.
    #[error(transparent)]
    Sealing(crate::sealing::SealError),
}

impl AppendError {
    /// The events are about a user whose account was erased meanwhile: there
    /// is nothing to record, now or later.
    pub fn is_user_erased(&self) -> bool {
        matches!(
            self,
            AppendError::Sealing(crate::sealing::SealError::Erased(_))
        )
    }
}

impl From<crate::sealing::SealError> for AppendError {
    /// A database failure while sealing is a database failure of the append
    /// (an outage is waited out the same way).
    fn from(e: crate::sealing::SealError) -> Self {
        match e {
            crate::sealing::SealError::Database(e) => AppendError::Database(e),
            other => AppendError::Sealing(other),
        }
    }
}

/// Updates read models from freshly appended events, inside the append's transaction.
pub trait InlineProjector: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// Most appends committed together.
const MAX_BATCH: usize = 64;

type Outcome = Result<Vec<RecordedEvent>, AppendError>;

struct Append {
    stream_id: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
pub(crate) struct Appender {
    queue: mpsc::Sender<Append>,
}

impl Appender {
    pub(crate) fn spawn(
        pool: MySqlPool,
        projector: Arc<dyn InlineProjector>,
        commit_timeout: Duration,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        let committer = Committer {
            pool,
            projector,
            commit_timeout,
        };
        tokio::spawn(run(committer, receiver));
        Self { queue }
    }

    pub(crate) async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let job = Append {
            stream_id: stream_id.to_string(),
            expected,
            events: events.to_vec(),
            reply,
        };
        let stopped = || AppendError::Database(sqlx::Error::PoolClosed);
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(committer: Committer, mut receiver: mpsc::Receiver<Append>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A panic inside a commit fails one job (see `commit_bounded`); this is
        // the last guard, for one anywhere else: this task is the only way in to
        // the log, and must outlive any batch.
        let outcomes = match AssertUnwindSafe(committer.commit_all(&batch))
            .catch_unwind()
            .await
        {
            Ok(outcomes) => outcomes,
            Err(_) => {
                tracing::error!(
                    jobs = batch.len(),
                    "an append batch panicked; its appends fail and the appender goes on"
                );
                batch
                    .iter()
                    .map(|_| {
                        Err(AppendError::Database(sqlx::Error::Protocol(
                            "the append failed unexpectedly (it panicked)".into(),
                        )))
                    })
                    .collect()
            }
        };
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// Deadlocks and lock-wait timeouts are retried this often before a batch fails.
const LOCK_ATTEMPTS: u32 = 3;

struct Committer {
    pool: MySqlPool,
    projector: Arc<dyn InlineProjector>,
    commit_timeout: Duration,
}

impl Committer {
    /// One outcome per job, in order.
    async fn commit_all(&self, batch: &[Append]) -> Vec<Outcome> {
        let started = std::time::Instant::now();
        let outcomes = self.commit_all_untimed(batch).await;
        crate::metrics::append_committed(batch.len(), started.elapsed());
        for event in outcomes.iter().flatten().flatten() {
            crate::metrics::event_appended(&event.event_type);
        }
        outcomes
    }

    async fn commit_all_untimed(&self, batch: &[Append]) -> Vec<Outcome> {
        match self.commit_retrying(batch).await {
            Ok(outcomes) => outcomes,
            // An outage fails every job alike: one at a time would fail the same way.
            Err(error) if batch.len() == 1 || crate::db::is_unavailable(&error) => batch
                .iter()
                .map(|job| Err(failure_for(&error, job)))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, jobs = batch.len(),
                    "an append batch failed as a whole; committing its jobs one by one");
                let mut outcomes = Vec::with_capacity(batch.len());
                for job in batch {
                    let one = std::slice::from_ref(job);
                    outcomes.push(match self.commit_retrying(one).await {
                        Ok(mut outcome) => outcome.pop().unwrap_or_else(|| {
                            Err(AppendError::Database(sqlx::Error::Protocol(
                                "append produced no outcome".into(),
                            )))
                        }),
                        Err(error) => Err(failure_for(&error, job)),
                    });
                }
                outcomes
            }
        }
    }

    async fn commit_retrying(&self, batch: &[Append]) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut attempt = 1;
        loop {
            match self.commit_bounded(batch).await {
                Err(e) if crate::db::is_lock_contention(&e) && attempt < LOCK_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// [`commit`] within `commit_timeout`, on a connection that is thrown away if the
    /// time runs out (it may be hung mid-statement; the server rolls back on close).
    async fn commit_bounded(&self, batch: &[Append]) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut conn = tokio::time::timeout(self.commit_timeout, self.pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        // A panic (a projector's bug) fails this commit like a refused statement,
        // so that `commit_all` retries the jobs one by one and only the one that
        // panics fails.
        let committed = tokio::time::timeout(
            self.commit_timeout,
            AssertUnwindSafe(commit(&mut conn, self.projector.as_ref(), batch)).catch_unwind(),
        )
        .await;
        match committed {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                // Its transaction state is unknown: never reuse the connection.
                drop(conn.detach());
                tracing::error!(
                    jobs = batch.len(),
                    "an append panicked; nothing of it was committed"
                );
                Err(sqlx::Error::Protocol(
                    "the append failed unexpectedly (it panicked)".into(),
                ))
            }
            Err(_) => {
                // Dropping the raw connection closes its socket without a goodbye
                // that a hung peer would never answer; the pool opens a new one.
                drop(conn.detach());
                tracing::warn!(
                    timeout_ms = self.commit_timeout.as_millis() as u64,
                    jobs = batch.len(),
                    "an append did not commit in time; its connection was dropped"
                );
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the database did not commit in time",
                )))
            }
        }
    }
}

/// Commits what can be committed of `batch`; `Err` means nothing was.
async fn commit(
    conn: &mut sqlx::pool::PoolConnection<sqlx::MySql>,
    projector: &dyn InlineProjector,
    batch: &[Append],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The lock first: every read below then sees all appends committed before ours.
    // The time is read with it, from the database (the statement's start, which may
    // be a little before the lock was granted) and never before the last append's,
    // so `recorded_at` rises with the position whatever this process's clock says.
    let (head, recorded_at): (i64, NaiveDateTime) = sqlx::query_as(
        "SELECT position, CAST(GREATEST(NOW(6), COALESCE(recorded_at, NOW(6))) AS DATETIME(6)) \
         FROM event_log_head WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut versions = stream_versions(&mut tx, batch).await?;
    let mut taken = recorded_keys(&mut tx, batch).await?;

    let mut position = head;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut accepted: Vec<(RecordedEvent, Option<String>)> = Vec::new();
    for job in batch {
        let current = versions.get(&job.stream_id).copied().unwrap_or(0);
        let conflict = match job.expected {
            ExpectedVersion::Any => false,
            ExpectedVersion::NoStream => current != 0,
            ExpectedVersion::Exact(v) => current != v,
        };
        if conflict {
            outcomes.push(Err(AppendError::Conflict {
                stream_id: job.stream_id.clone(),
                expected: job.expected,
            }));
            continue;
        }
        let mut keys = HashSet::new();
        let duplicate = job
            .events
            .iter()
            .filter_map(|e| e.idempotency_key.as_ref())
            .find(|key| taken.contains(*key) || !keys.insert(*key));
        if let Some(key) = duplicate {
            outcomes.push(Err(AppendError::Duplicate(key.clone())));
            continue;
        }
        let recorded: Vec<RecordedEvent> = job
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| RecordedEvent {
                global_position: position + 1 + i as i64,
                event_id: e.event_id,
                stream_id: job.stream_id.clone(),
                stream_version: current + 1 + i as i64,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at,
            })
            .collect();
        position += recorded.len() as i64;
        versions.insert(job.stream_id.clone(), current + recorded.len() as i64);
        taken.extend(keys.into_iter().cloned());
        accepted.extend(
            recorded
                .iter()
                .cloned()
                .zip(job.events.iter().map(|e| e.idempotency_key.clone())),
        );
        outcomes.push(Ok(recorded));
    }
    if accepted.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }

    let mut rest = accepted.as_slice();
    while !rest.is_empty() {
        let (count, kept) = statement_shape::next_chunk(rest.len());
        let (rows, after) = rest.split_at(count);
        insert_events(&mut tx, rows, kept).await?;
        rest = after;
    }

    let events: Vec<RecordedEvent> = accepted.into_iter().map(|(r, _)| r).collect();
    projector.apply(&mut tx, &events).await?;
    sqlx::query("UPDATE event_log_head SET position = ?, recorded_at = ? WHERE id = 1")
        .bind(position)
        .bind(recorded_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// The events and their outbox rows.
async fn insert_events(
    tx: &mut sqlx::MySqlConnection,
    rows: &[(RecordedEvent, Option<String>)],
    kept: bool,
) -> Result<(), sqlx::Error> {
    let mut insert = QueryBuilder::new(
        "INSERT INTO events (global_position, event_id, stream_id, stream_version, \
         event_type, schema_version, payload, metadata, idempotency_key, recorded_at) ",
    );
    insert.push_values(rows, |mut row, (r, key)| {
        row.push_bind(r.global_position)
            .push_bind(r.event_id.to_string())
            .push_bind(&r.stream_id)
            .push_bind(r.stream_version)
            .push_bind(&r.event_type)
            .push_bind(r.schema_version)
            .push_bind(Json(&r.payload))
            .push_bind(Json(&r.metadata))
            .push_bind(key)
            .push_bind(r.recorded_at);
    });
    insert.build().persistent(kept).execute(&mut *tx).await?;

    // `created_at` is the database's clock, which the relay's grace period uses too.
    let mut outbox = QueryBuilder::new("INSERT INTO outbox (global_position, created_at) ");
    outbox.push_values(rows, |mut row, (r, _)| {
        row.push_bind(r.global_position).push("NOW(6)");
    });
    outbox.build().persistent(kept).execute(tx).await?;
    Ok(())
}

/// The current version of every stream the batch appends to.
///
/// One index dive per stream: a `MAX(...) ... WHERE stream_id IN (...) GROUP BY`
/// would read every version of each stream (MariaDB scans the range), which grows
/// with the conversation.
async fn stream_versions(
    tx: &mut sqlx::MySqlConnection,
    batch: &[Append],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let streams: HashSet<&str> = batch.iter().map(|j| j.stream_id.as_str()).collect();
    let (streams, kept) = statement_shape::padded(streams);
    let mut query = QueryBuilder::new("");
    for (i, stream) in streams.into_iter().enumerate() {
        if i > 0 {
            query.push(" UNION ALL ");
        }
        query
            .push("(SELECT stream_id, stream_version FROM events WHERE stream_id = ")
            .push_bind(stream)
            .push(" ORDER BY stream_version DESC LIMIT 1)");
    }
    query
        .build()
        .persistent(kept)
        .try_map(|row: MySqlRow| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
        .fetch_all(tx)
        .await
        .map(|rows| rows.into_iter().collect())
}

/// Which of the batch's idempotency keys are already recorded.
async fn recorded_keys(
    tx: &mut sqlx::MySqlConnection,
    batch: &[Append],
) -> Result<HashSet<String>, sqlx::Error> {
    let keys: Vec<&String> = batch
        .iter()
        .flat_map(|j| j.events.iter().filter_map(|e| e.idempotency_key.as_ref()))
        .collect();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let mut query =
        QueryBuilder::new("SELECT idempotency_key FROM events WHERE idempotency_key IN ");
    let (keys, kept) = statement_shape::padded(keys);
    query.push_tuples(keys, |mut b, k| {
        b.push_bind(k);
    });
    query
        .build()
        .persistent(kept)
        // A binary collation reads back as bytes; keys were written as UTF-8.
        .try_map(|row: MySqlRow| {
            String::from_utf8(row.try_get::<Vec<u8>, _>(0)?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .fetch_all(tx)
        .await
        .map(|rows| rows.into_iter().collect())
}

/// The batch failed as a whole: give each caller an error of the same kind (an
/// outage stays an outage, a duplicate key stays a conflict), so it can retry.
fn failure_for(error: &sqlx::Error, job: &Append) -> AppendError {
    if crate::db::is_unavailable(error) || crate::db::is_lock_contention(error) {
        return AppendError::Database(sqlx::Error::Io(std::io::Error::other(error.to_string())));
    }
    let duplicate_key = error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|db| db.number() == 1062);
    if duplicate_key {
        // Another writer got past the position lock (or a key raced in): treat it as
        // a version conflict, which callers reload and retry.
        return AppendError::Conflict {
            stream_id: job.stream_id.clone(),
            expected: job.expected,
        };
    }
    AppendError::Database(sqlx::Error::Protocol(format!(
        "append batch failed: {error}"
    )))
}
