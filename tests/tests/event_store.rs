//! The event store against the real MariaDB/MySQL: optimistic concurrency,
//! idempotency, and a global order that concurrent appenders can never make a
//! reader skip or repeat.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use events::event::EventMetadata;
use events::store::{AppendError, EventStore, ExpectedVersion, NewEvent};
use system_tests::{event_count, Isolation, NoProjection};

fn event(n: usize, key: Option<String>) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: json!({ "n": n }),
        metadata: EventMetadata::default(),
        idempotency_key: key,
    }
}

async fn store(isolation: &Isolation) -> anyhow::Result<EventStore> {
    Ok(EventStore::new(
        isolation.migrated_pool().await?,
        Arc::new(NoProjection),
    ))
}

#[tokio::test]
async fn expected_versions_are_enforced() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let store = store(&isolation).await?;

    let first = store
        .append_to_stream(
            "s-1",
            ExpectedVersion::NoStream,
            &[event(1, None), event(2, None)],
        )
        .await?;
    assert_eq!(
        first.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2]
    );

    let again = store
        .append_to_stream("s-1", ExpectedVersion::NoStream, &[event(3, None)])
        .await;
    assert!(
        matches!(again, Err(AppendError::Conflict { .. })),
        "{again:?}"
    );
    let stale = store
        .append_to_stream("s-1", ExpectedVersion::Exact(1), &[event(3, None)])
        .await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { .. })),
        "{stale:?}"
    );
    let ok = store
        .append_to_stream("s-1", ExpectedVersion::Exact(2), &[event(3, None)])
        .await?;
    assert_eq!(ok[0].stream_version, 3);

    let stream = store.read_stream("s-1").await?;
    assert_eq!(stream.len(), 3);
    assert_eq!(
        stream[2], ok[0],
        "what append returned is what a read returns"
    );
    isolation.teardown().await
}

#[tokio::test]
async fn an_idempotency_key_records_once_and_a_rejected_append_writes_nothing() -> anyhow::Result<()>
{
    let isolation = Isolation::new();
    let store = store(&isolation).await?;
    store
        .append_to_stream("s-1", ExpectedVersion::Any, &[event(1, Some("k-1".into()))])
        .await?;
    let before = event_count(store.pool()).await?;
    let outbox_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(store.pool())
        .await?;

    let duplicate = store
        .append_to_stream(
            "s-2",
            ExpectedVersion::Any,
            &[event(2, None), event(3, Some("k-1".into()))],
        )
        .await;
    assert!(
        matches!(duplicate, Err(AppendError::Duplicate(ref k)) if k == "k-1"),
        "{duplicate:?}"
    );

    assert_eq!(
        event_count(store.pool()).await?,
        before,
        "no event of the failed batch is kept"
    );
    let outbox_after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(outbox_after, outbox_before, "nor any outbox row");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(
        head, before,
        "a rolled-back append gives its positions back"
    );
    let found = store
        .find_by_idempotency_key("k-1")
        .await?
        .map(|e| e.payload);
    assert_eq!(found, Some(json!({ "n": 1 })));
    isolation.teardown().await
}

/// 16 tasks append 200 events each (some to shared streams, so they conflict and
/// retry) while a reader follows the global order from its last position, exactly
/// as a projector or the relay would. It must see every event once, in order.
#[tokio::test]
async fn concurrent_appenders_never_make_a_global_reader_skip_or_repeat() -> anyhow::Result<()> {
    const TASKS: usize = 16;
    const PER_TASK: usize = 200;
    let isolation = Isolation::new();
    let store = store(&isolation).await?;

    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(TASKS * PER_TASK);
            let mut last = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
            while seen.len() < TASKS * PER_TASK && tokio::time::Instant::now() < deadline {
                let batch = store.read_all(last, 500).await?;
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                for e in batch {
                    anyhow::ensure!(
                        e.global_position == last + 1,
                        "position {} follows {last}",
                        e.global_position
                    );
                    last = e.global_position;
                    seen.push(e.event_id);
                }
            }
            Ok::<_, anyhow::Error>(seen)
        })
    };

    let mut writers = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                // Half of the tasks share four streams, so they race on versions.
                let stream = if task % 2 == 0 {
                    format!("shared-{}", i % 4)
                } else {
                    format!("own-{task}")
                };
                store
                    .append_to_stream(
                        &stream,
                        ExpectedVersion::Any,
                        &[event(task * PER_TASK + i, None)],
                    )
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let seen = reader.await??;

    assert_eq!(seen.len(), TASKS * PER_TASK, "the reader saw every event");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "and none twice");
    let versions_ok: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT stream_id, MAX(stream_version) AS v, COUNT(*) AS c \
         FROM events GROUP BY stream_id HAVING v = c) AS dense",
    )
    .fetch_one(store.pool())
    .await?;
    let streams: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT stream_id) FROM events")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(
        versions_ok, streams,
        "every stream's versions are 1..n without holes"
    );
    isolation.teardown().await
}
