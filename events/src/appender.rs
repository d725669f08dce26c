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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};

use crate::store::{
    now_micros, AppendError, ExpectedVersion, InlineProjector, NewEvent, RecordedEvent,
};

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
    pub(crate) fn spawn(pool: MySqlPool, projector: Arc<dyn InlineProjector>) -> Self {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(pool, projector, receiver));
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

async fn run(
    pool: MySqlPool,
    projector: Arc<dyn InlineProjector>,
    mut receiver: mpsc::Receiver<Append>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit(&pool, projector.as_ref(), &batch).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                for job in batch {
                    let failure = failure_for(&error, &job);
                    let _ = job.reply.send(Err(failure));
                }
            }
        }
    }
}

/// Commits what can be committed of `batch`; `Err` means nothing was.
async fn commit(
    pool: &MySqlPool,
    projector: &dyn InlineProjector,
    batch: &[Append],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The lock first: every read below then sees all appends committed before ours.
    let head: i64 =
        sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let mut versions = stream_versions(&mut tx, batch).await?;
    let mut taken = recorded_keys(&mut tx, batch).await?;

    let recorded_at = now_micros();
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

    let mut insert = QueryBuilder::new(
        "INSERT INTO events (global_position, event_id, stream_id, stream_version, \
         event_type, schema_version, payload, metadata, idempotency_key, recorded_at) ",
    );
    insert.push_values(&accepted, |mut row, (r, key)| {
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
    insert.build().execute(&mut *tx).await?;

    let mut outbox = QueryBuilder::new("INSERT INTO outbox (global_position, created_at) ");
    outbox.push_values(&accepted, |mut row, (r, _)| {
        row.push_bind(r.global_position).push_bind(recorded_at);
    });
    outbox.build().execute(&mut *tx).await?;

    let events: Vec<RecordedEvent> = accepted.into_iter().map(|(r, _)| r).collect();
    projector.apply(&mut tx, &events).await?;
    sqlx::query("UPDATE event_log_head SET position = ? WHERE id = 1")
        .bind(position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// The current version of every stream the batch appends to.
async fn stream_versions(
    tx: &mut sqlx::MySqlConnection,
    batch: &[Append],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let streams: HashSet<&str> = batch.iter().map(|j| j.stream_id.as_str()).collect();
    let mut query = QueryBuilder::new(
        "SELECT stream_id, CAST(MAX(stream_version) AS SIGNED) FROM events WHERE stream_id IN ",
    );
    query.push_tuples(&streams, |mut b, s| {
        b.push_bind(*s);
    });
    query.push(" GROUP BY stream_id");
    query
        .build()
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
    query.push_tuples(&keys, |mut b, k| {
        b.push_bind(*k);
    });
    query
        .build()
        .try_map(|row: MySqlRow| row.try_get::<String, _>(0))
        .fetch_all(tx)
        .await
        .map(|rows| rows.into_iter().collect())
}

/// The batch failed as a whole: give each caller an error of the same kind (an
/// outage stays an outage, a duplicate key stays a conflict), so it can retry.
fn failure_for(error: &sqlx::Error, job: &Append) -> AppendError {
    if crate::db::is_unavailable(error) {
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
