//! The broker topology, against the real RabbitMQ: a message that keeps failing is
//! dead-lettered after the delivery limit instead of looping forever, and a new
//! limit rolls out without a redeclare failure.

use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::options::{BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use events::bus::consumer::Subscription;
use events::bus::{connect, ConsumerSupervisor, Topology};
use events::event::DomainEvent;
use system_tests::Isolation;

/// How many messages `queue` holds.
async fn depth(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let declared = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Publishes one (empty) user message.
async fn publish_message(channel: &lapin::Channel, topology: &Topology) -> anyhow::Result<()> {
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
    Ok(())
}

/// A consumer of the work queue whose handler requeues every delivery, counting
/// them; it reports each (re)subscription.
fn requeuing_consumer(
    settings: &events::config::BusSettings,
    name: &str,
    handled: Arc<AtomicUsize>,
    subscribed: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let supervisor = ConsumerSupervisor::new(
        settings.clone(),
        Subscription::UserMessages,
        4,
        name.to_string(),
    );
    tokio::spawn(async move {
        supervisor
            .run(
                stop,
                move |delivery: lapin::message::Delivery| {
                    let handled = handled.clone();
                    async move {
                        handled.fetch_add(1, Ordering::SeqCst);
                        let _ = delivery
                            .acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await;
                    }
                },
                move |up| {
                    if up {
                        subscribed.fetch_add(1, Ordering::SeqCst);
                    }
                },
            )
            .await
    })
}

/// Waits until the dead letters hold one message; returns how many deliveries
/// were handled by then.
async fn dead_lettered(
    channel: &lapin::Channel,
    topology: &Topology,
    handled: &AtomicUsize,
) -> anyhow::Result<usize> {
    system_tests::eventually(Duration::from_secs(15), "the dead letter", || async {
        anyhow::ensure!(
            handled.load(Ordering::SeqCst) < 20,
            "the message loops instead of being dead-lettered"
        );
        Ok((depth(channel, &topology.dead_letter_queue).await? == 1).then_some(()))
    })
    .await?;
    Ok(handled.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_message_requeued_past_the_delivery_limit_is_dead_lettered() -> anyhow::Result<()> {
    let mut isolation = Isolation::new();
    isolation.bus.delivery_limit = 2;
    let connection = connect(&isolation.bus, "delivery-limit-test").await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(&isolation.bus);
    topology.declare(&connection, &channel).await?;
    let (handled, subscribed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        CancellationToken::new(),
    );
    let consumer = requeuing_consumer(
        &isolation.bus,
        "requeuer",
        handled.clone(),
        subscribed,
        stop.clone(),
    );
    publish_message(&channel, &topology).await?;
    let deliveries = dead_lettered(&channel, &topology, &handled).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries, 3, "the first delivery and two redeliveries");
    assert_eq!(handled.load(Ordering::SeqCst), 3, "and no more after");
    stop.cancel();
    consumer.await?;
    let _ = connection.close(200, "done").await;
    isolation.teardown().await
}

/// Changing `DELIVERY_LIMIT` mid-deploy (issue 18, item 19): processes with the old
/// and the new limit stay on the broker together, even on a queue an earlier
/// release declared with an `x-delivery-limit` argument, and the new limit holds.
#[tokio::test]
async fn a_new_delivery_limit_rolls_out_without_taking_anyone_off_the_broker() -> anyhow::Result<()>
{
    use lapin::types::AMQPValue;
    let isolation = Isolation::new();
    let topology = Topology::new(&isolation.bus);
    let connection = connect(&isolation.bus, "earlier-release").await?;
    let channel = connection.create_channel().await?;
    // The work queue as an earlier release declared it: the limit an argument.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter_exchange.as_str().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&topology.user_messages_queue, durable, args)
        .await?;
    topology.declare(&connection, &channel).await?;

    let mut old = isolation.bus.clone();
    old.delivery_limit = 5;
    let mut new = isolation.bus.clone();
    new.delivery_limit = 2;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let (old_stop, new_stop) = (CancellationToken::new(), CancellationToken::new());
    let old_consumer = requeuing_consumer(
        &old,
        "old-limit",
        Arc::new(AtomicUsize::new(0)),
        subscribed.clone(),
        old_stop.clone(),
    );
    let handled = Arc::new(AtomicUsize::new(0));
    let new_consumer = requeuing_consumer(
        &new,
        "new-limit",
        handled.clone(),
        subscribed.clone(),
        new_stop.clone(),
    );
    // A publisher of the new release declares too.
    let publisher = events::bus::Publisher::new(new.clone(), "new-publisher");
    publisher.channel().await?;
    system_tests::eventually(Duration::from_secs(10), "both subscribed", || async {
        Ok((subscribed.load(Ordering::SeqCst) >= 2).then_some(()))
    })
    .await?;
    // The old processes go; the new limit is the one that holds.
    old_stop.cancel();
    old_consumer.await?;
    publish_message(&channel, &topology).await?;
    let deliveries = dead_lettered(&channel, &topology, &handled).await?;
    assert_eq!(
        deliveries, 3,
        "DELIVERY_LIMIT=2: the first delivery and two more"
    );
    assert_eq!(
        subscribed.load(Ordering::SeqCst),
        2,
        "nobody was taken off the broker and resubscribed"
    );
    new_stop.cancel();
    new_consumer.await?;
    publisher.close().await;
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
    settings.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port).into();
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

/// A broker that stops reading (a memory alarm blocks publishers so) cannot hold
/// a delta publish, or anything behind it, for long (issue 18, item 13): once the
/// TCP buffers are full, each publish gives up within its bound (the worker's
/// reply is then recorded without its deltas; the responder never waits on them).
#[tokio::test]
async fn a_broker_that_stops_reading_holds_no_delta_publish_for_long() -> anyhow::Result<()> {
    use events::bus::deltas::ReplyDelta;
    use events::bus::Publisher;
    use system_tests::TcpProxy;

    let isolation = Isolation::new();
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let mut settings = isolation.bus.clone();
    settings.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port).into();
    // Heartbeats far apart: only the publish's own bound can end a wait.
    settings.heartbeat_secs = 300;
    let publisher = Publisher::new(settings, "stalled-deltas-test");
    let delta = |index: u32| ReplyDelta {
        reply_to: uuid::Uuid::now_v7(),
        user_id: 1,
        bot_id: 1,
        attempt: uuid::Uuid::now_v7(),
        index,
        text: "x".repeat(64 * 1024),
    };
    publisher.publish_delta(&delta(0)).await?;

    proxy.stall();
    let mut slowest = Duration::ZERO;
    let mut refused = 0;
    let started = std::time::Instant::now();
    // Up to 256 MiB: far more than any TCP buffers hold.
    for index in 1..=4096 {
        let one = std::time::Instant::now();
        let published = publisher.publish_delta(&delta(index)).await;
        slowest = slowest.max(one.elapsed());
        if published.is_err() {
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    println!(
        "stalled broker: slowest delta publish {slowest:?}, {refused} refused, {:?} in all",
        started.elapsed()
    );
    assert!(refused >= 1, "the stall was never felt");
    assert!(
        slowest < Duration::from_secs(4),
        "a publish waited {slowest:?}"
    );
    drop(proxy);
    isolation.teardown().await
}
