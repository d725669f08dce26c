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
