//! The outbox relay against the real broker: rows are marked sent only after the
//! broker confirmed them, and wait in the table while the broker is unreachable.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

use events::bus::{Publisher, Topology};
use events::event::{DomainEvent, EventMetadata, MessageSource, UserMessagePosted};
use events::outbox::OutboxRelay;
use events::projections::ReadModels;
use events::store::{EventStore, ExpectedVersion};
use system_tests::{eventually, Isolation, TcpProxy};

fn message(n: i64) -> DomainEvent {
    DomainEvent::UserMessagePosted(UserMessagePosted {
        message_id: Uuid::now_v7(),
        user_id: 1,
        bot_id: n,
        content: format!("hello {n}"),
        client_msg_id: None,
        source: MessageSource::Import,
    })
}

async fn unsent(pool: &sqlx::MySqlPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn rows_wait_while_the_broker_is_unreachable_and_are_sent_after_its_confirm(
) -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let store = EventStore::new(pool.clone(), Arc::new(ReadModels));
    let metadata = EventMetadata {
        correlation_id: Some("corr-1".into()),
        ..Default::default()
    };
    for n in 1..=3 {
        let event = message(n).to_new_event(metadata.clone())?;
        store
            .append_to_stream(&format!("chat-1-{n}"), ExpectedVersion::Any, &[event])
            .await?;
    }
    assert_eq!(
        unsent(&pool).await?,
        3,
        "the outbox row is written with the event"
    );

    // A relay pointed at a port where no broker listens publishes nothing.
    let mut nowhere = isolation.bus.clone();
    nowhere.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let dead_relay = OutboxRelay::new(pool.clone(), Arc::new(Publisher::new(nowhere, "dead")));
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the relay's grace period
    assert!(dead_relay.sweep().await.is_err());
    assert_eq!(
        unsent(&pool).await?,
        3,
        "nothing is marked sent without a confirm"
    );

    // Listen on the real broker, then relay for real.
    let connection = events::bus::connect(&isolation.bus, "test-listener").await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(&isolation.bus);
    topology.declare(&connection, &channel).await?;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str(),
            &topology.events_exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().as_str(),
            "listener",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let relay = OutboxRelay::new(
        pool.clone(),
        Arc::new(Publisher::new(isolation.bus.clone(), "live")),
    );
    assert_eq!(relay.sweep().await?.sent, 3);
    assert_eq!(unsent(&pool).await?, 0);

    let mut received = Vec::new();
    while received.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        assert_eq!(
            events::bus::correlation_id(&delivery).as_deref(),
            Some("corr-1"),
            "the correlation id travels in the headers"
        );
        let event: events::store::RecordedEvent = serde_json::from_slice(&delivery.data)?;
        received.push(event.global_position);
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    assert_eq!(received, vec![1, 2, 3], "published in log order");
    let _ = connection.close(200, "done").await;
    isolation.teardown().await
}

/// The soak once found rows still unsent 30 s after its faults ended: an api was
/// killed in the middle of a sweep, and its claim kept every other relay off the
/// rows for a minute. A dead relay's rows must go out once its (short) claim ends.
#[tokio::test]
async fn rows_claimed_by_a_relay_that_dies_mid_sweep_go_out_within_the_claim() -> anyhow::Result<()>
{
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let store = EventStore::new(pool.clone(), Arc::new(ReadModels));
    let append = |n: i64| {
        let store = store.clone();
        async move {
            let event = message(n).to_new_event(EventMetadata::default())?;
            store
                .append_to_stream(&format!("chat-1-{n}"), ExpectedVersion::Any, &[event])
                .await?;
            anyhow::Ok(())
        }
    };

    // The doomed relay talks to the broker through a proxy. Its first sweep goes
    // through, so it holds an open connection; then the proxy freezes that
    // connection, and the second sweep is caught holding its claim, waiting for
    // a confirm that never comes.
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let mut through_proxy = isolation.bus.clone();
    through_proxy.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port).into();
    let doomed = OutboxRelay::new(
        pool.clone(),
        Arc::new(Publisher::new(through_proxy, "doomed")),
    );
    append(1).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the grace period
    assert_eq!(doomed.sweep().await?.sent, 1);
    append(2).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    proxy.freeze();
    let sweep = tokio::spawn(async move { doomed.sweep().await });
    // Row 1 keeps the token of the sweep that sent it: look for the unsent row's.
    eventually(Duration::from_secs(5), "the doomed relay to claim", || {
        let pool = pool.clone();
        async move {
            let claimed: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE claim_token IS NOT NULL AND sent_at IS NULL",
            )
            .fetch_one(&pool)
            .await?;
            Ok((claimed == 1).then_some(()))
        }
    })
    .await?;
    sweep.abort(); // the process dies: nothing releases the claim

    let relay = OutboxRelay::new(
        pool.clone(),
        Arc::new(Publisher::new(isolation.bus.clone(), "survivor")),
    );
    let started = std::time::Instant::now();
    assert_eq!(
        relay.sweep().await?.sent,
        0,
        "a live claim keeps other relays off the row"
    );
    let mut waited = None;
    while started.elapsed() < Duration::from_secs(40) {
        if relay.sweep().await?.sent == 1 {
            waited = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited = waited.ok_or_else(|| anyhow::anyhow!("the dead relay's row never went out"))?;
    println!("a dead relay's row went out after {waited:?}");
    assert!(
        waited <= Duration::from_secs(30),
        "the row waited {waited:?} for a dead relay's claim"
    );
    assert_eq!(unsent(&pool).await?, 0);
    isolation.teardown().await
}

/// Issue 18, item 10: a row the broker refuses (here, one larger than its frame,
/// which makes it close the connection) must not hold back the overdue rows
/// behind it. It is counted, parked after a few tries, listed, and can be retried.
#[tokio::test]
async fn a_row_the_broker_refuses_is_parked_and_the_rows_behind_it_go_out() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let store = EventStore::new(pool.clone(), Arc::new(ReadModels));
    let poison = EventMetadata {
        correlation_id: Some("p".repeat(300_000)),
        ..Default::default()
    };
    store
        .append_to_stream(
            "chat-1-1",
            ExpectedVersion::Any,
            &[message(1).to_new_event(poison)?],
        )
        .await?;
    for n in 2..=4 {
        let event = message(n).to_new_event(EventMetadata::default())?;
        store
            .append_to_stream(&format!("chat-1-{n}"), ExpectedVersion::Any, &[event])
            .await?;
    }
    // Past the sweep's grace: all four are overdue, the poisoned one first.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let relay = OutboxRelay::new(
        pool.clone(),
        Arc::new(Publisher::new(isolation.bus.clone(), "sweeper")),
    );
    let first = relay.sweep().await?;
    assert_eq!(first.sent, 3, "the rows behind the refused one went out");
    assert_eq!(unsent(&pool).await?, 1);
    for _ in 1..events::outbox::MAX_PUBLISH_ATTEMPTS {
        relay.sweep().await?;
    }
    let parked = OutboxRelay::parked(&pool).await?;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].global_position, 1);
    assert_eq!(parked[0].attempts, events::outbox::MAX_PUBLISH_ATTEMPTS);
    assert!(parked[0].last_error.is_some());
    // A parked row is no longer tried.
    let attempts_before = parked[0].attempts;
    relay.sweep().await?;
    assert_eq!(
        OutboxRelay::parked(&pool).await?[0].attempts,
        attempts_before
    );
    // New rows still go out.
    let later = message(5).to_new_event(EventMetadata::default())?;
    store
        .append_to_stream("chat-1-5", ExpectedVersion::Any, &[later])
        .await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(relay.sweep().await?.sent, 1);
    // The operator's retry gives it fresh attempts (it fails again, being poison).
    assert_eq!(OutboxRelay::retry_parked(&pool, Some(1)).await?, 1);
    assert_eq!(OutboxRelay::parked_count(&pool).await?, 0);
    relay.sweep().await?;
    let (attempts,): (i32,) =
        sqlx::query_as("SELECT attempts FROM outbox WHERE global_position = 1")
            .fetch_one(&pool)
            .await?;
    assert_eq!(attempts, 1);
    pool.close().await;
    isolation.teardown().await
}

/// Issue 18, item 3: sent rows are pruned after the retention; unsent and parked
/// rows are kept.
#[tokio::test]
async fn sent_rows_are_pruned_after_the_retention() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let store = EventStore::new(pool.clone(), Arc::new(ReadModels));
    for n in 1..=3 {
        let event = message(n).to_new_event(EventMetadata::default())?;
        store
            .append_to_stream(&format!("chat-1-{n}"), ExpectedVersion::Any, &[event])
            .await?;
    }
    sqlx::query("UPDATE outbox SET sent_at = NOW(6) - INTERVAL 2 HOUR WHERE global_position <= 2")
        .execute(&pool)
        .await?;
    let relay = OutboxRelay::new(
        pool.clone(),
        Arc::new(Publisher::new(isolation.bus.clone(), "pruner")),
    )
    .with_retention(Duration::from_secs(3600));
    assert_eq!(relay.prune_sent().await?, 2);
    let left: Vec<i64> = sqlx::query_scalar("SELECT global_position FROM outbox")
        .fetch_all(&pool)
        .await?;
    assert_eq!(left, vec![3], "the unsent row stays");
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await?;
    assert_eq!(events, 3, "the log keeps every event");
    pool.close().await;
    isolation.teardown().await
}

#[tokio::test]
async fn the_backlog_gauge_reads_the_oldest_row_and_stops_counting_at_its_cap() -> anyhow::Result<()>
{
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    assert_eq!(events::metrics::outbox_backlog(&pool).await?, (0, None));

    // The oldest unsent row (by insertion) gives the age; sent rows do not count.
    sqlx::query(
        "INSERT INTO outbox (global_position, created_at, sent_at) VALUES \
         (1, NOW(6) - INTERVAL 300 SECOND, NOW(6)), \
         (2, NOW(6) - INTERVAL 90 SECOND, NULL), \
         (3, NOW(6), NULL)",
    )
    .execute(&pool)
    .await?;
    let (rows, oldest) = events::metrics::outbox_backlog(&pool).await?;
    assert_eq!(rows, 2);
    assert!(
        oldest.is_some_and(|age| (90..120).contains(&age)),
        "{oldest:?}"
    );

    // Past the cap the gauge reads the cap, however long the backlog: here
    // 100,000 more rows (five tables of ten digits, joined).
    let digits = "(SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 \
                  UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    sqlx::query(&format!(
        "INSERT INTO outbox (global_position, created_at) \
         SELECT 10 + a.n + 10 * b.n + 100 * c.n + 1000 * d.n + 10000 * e.n, NOW(6) \
         FROM {digits} AS a, {digits} AS b, {digits} AS c, {digits} AS d, {digits} AS e"
    ))
    .execute(&pool)
    .await?;
    assert_eq!(unsent(&pool).await?, 100_002);
    let (rows, oldest) = events::metrics::outbox_backlog(&pool).await?;
    assert_eq!(rows, events::metrics::BACKLOG_COUNTED);
    assert!(oldest.is_some_and(|age| age >= 90), "{oldest:?}");
    Ok(())
}
