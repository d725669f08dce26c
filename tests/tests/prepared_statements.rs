//! Statements whose text varies (the appender's `IN (...)` lists of every length)
//! must not be prepared persistently: each distinct text would stay cached on every
//! connection, and enough processes exceed the server's `max_prepared_stmt_count`
//! (review item 11). Alone in its file, because it reads a server-wide counter.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use events::event::EventMetadata;
use events::store::{EventStore, ExpectedVersion, NewEvent};
use system_tests::{Isolation, NoProjection};

async fn prepared_statements(pool: &sqlx::MySqlPool) -> anyhow::Result<i64> {
    let (_, value): (String, String) =
        sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")
            .fetch_one(pool)
            .await?;
    Ok(value.parse()?)
}

#[tokio::test]
async fn appends_of_every_batch_size_leave_few_prepared_statements() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let observer = isolation.pool()?;
    let before = prepared_statements(&observer).await?;
    let store = EventStore::new(pool.clone(), Arc::new(NoProjection));
    // Bursts of 1..=40 concurrent appends to distinct streams, with keys: batches of
    // many sizes, so IN lists of many lengths.
    for burst in 1..=40usize {
        let appends = (0..burst).map(|i| {
            let store = store.clone();
            async move {
                let event = NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "TestHappened".into(),
                    schema_version: 1,
                    payload: json!({}),
                    metadata: EventMetadata::default(),
                    idempotency_key: Some(Uuid::new_v4().to_string()),
                };
                store
                    .append_to_stream(&format!("s-{burst}-{i}"), ExpectedVersion::Any, &[event])
                    .await
            }
        });
        for outcome in futures::future::join_all(appends).await {
            outcome?;
        }
    }
    let grown = prepared_statements(&observer).await? - before;
    println!("prepared statements left after 820 appends in bursts of 1..=40: {grown}");
    // A handful of fixed statements per connection; persisted IN lists would add
    // one per distinct length per connection (well over a hundred here).
    assert!(grown < 40, "{grown} statements stayed prepared");
    pool.close().await;
    isolation.teardown().await
}
