//! The broker topology, against the real RabbitMQ: a message that keeps failing is
//! dead-lettered after the delivery limit instead of looping forever.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

use events::bus::{connect, Topology};
use events::event::DomainEvent;
use system_tests::Isolation;

#[tokio::test]
async fn a_message_nacked_past_the_delivery_limit_is_dead_lettered() -> anyhow::Result<()> {
    let mut isolation = Isolation::new();
    isolation.bus.delivery_limit = 2;
    let connection = connect(&isolation.bus, "delivery-limit-test").await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(&isolation.bus);
    topology.declare(&channel).await?;
    channel
        .basic_publish(
            &topology.events_exchange,
            DomainEvent::USER_MESSAGE_POSTED,
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await?
        .await?;

    let mut consumer = channel
        .basic_consume(
            &topology.user_messages_queue,
            "nacker",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = 0;
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
    {
        deliveries += 1;
        delivery?
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        anyhow::ensure!(
            deliveries < 20,
            "the message loops instead of being dead-lettered"
        );
    }
    assert_eq!(deliveries, 3, "the first delivery and two redeliveries");
    let dead = channel
        .queue_declare(
            &topology.dead_letter_queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    assert_eq!(dead.message_count(), 1);
    let _ = connection.close(200, "done").await;
    isolation.teardown().await
}

/// Review item 6: a publish that fails late, on a connection that was already
/// replaced, must not tear down its replacement (which would cost every caller
/// another reconnect, and under load a reconnect storm).
#[tokio::test]
async fn a_late_failure_on_an_old_connection_leaves_the_new_one_alone() -> anyhow::Result<()> {
    use events::bus::Publisher;
    use system_tests::TcpProxy;

    let isolation = Isolation::new();
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let mut settings = isolation.bus.clone();
    settings.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    // Heartbeats far apart, so that only the confirm timeout notices the hang.
    settings.heartbeat_secs = 120;
    let publisher = std::sync::Arc::new(Publisher::new(settings, "late-failure-test"));
    let event = |n: i64| events::store::RecordedEvent {
        global_position: n,
        event_id: uuid::Uuid::now_v7(),
        stream_id: "s".into(),
        stream_version: n,
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: serde_json::json!({}),
        metadata: Default::default(),
        recorded_at: events::store::now_micros(),
    };
    publisher.publish(&event(1)).await?;
    assert_eq!(proxy.connections(), 1);

    // The connection hangs: two publishes wait on it, the second a little later.
    proxy.freeze();
    let first = tokio::spawn({
        let (publisher, e) = (publisher.clone(), event(2));
        async move { publisher.publish(&e).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = tokio::spawn({
        let (publisher, e) = (publisher.clone(), event(3));
        async move { publisher.publish(&e).await }
    });
    // The first times out; the next publish opens a new connection and succeeds,
    // at once: nobody waits on the hung connection's close.
    assert!(first.await?.is_err());
    let started = std::time::Instant::now();
    publisher.publish(&event(4)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.connections(), 2);
    // The second fails late, on the old connection...
    assert!(second.await?.is_err());
    // ... and the new one is still in use: no reconnect.
    publisher.publish(&event(5)).await?;
    assert_eq!(proxy.connections(), 2, "the new connection was torn down");
    publisher.close().await;
    drop(proxy);
    isolation.teardown().await
}
