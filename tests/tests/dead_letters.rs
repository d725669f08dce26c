//! Messages that cannot be answered end as `failed`, never `pending` forever, and
//! one event a worker cannot read does not stop the rest of its conversation
//! (review item 4).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::json;

use events::event::DomainEvent;
use events::store::RecordedEvent;
use system_tests::{eventually, history_rows, Stack, StackOptions};

/// Publishes `event` as the outbox would, to `exchange`.
async fn publish(stack: &Stack, exchange: &str, event: &RecordedEvent) -> anyhow::Result<()> {
    let connection = events::bus::connect(&stack.isolation.bus, "test-publisher").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            exchange,
            &event.event_type,
            BasicPublishOptions::default(),
            &serde_json::to_vec(event)?,
            BasicProperties::default(),
        )
        .await?
        .await?;
    let _ = connection.close(200, "done").await;
    Ok(())
}

async fn recorded(stack: &Stack, message_id: &str) -> anyhow::Result<RecordedEvent> {
    let pool = stack.pool()?;
    let position: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE JSON_UNQUOTE(JSON_EXTRACT(payload, '$.message_id')) = ?",
    )
    .bind(message_id)
    .fetch_one(&pool)
    .await?;
    let events = events::store::read_all(&pool, position - 1, 1).await?;
    events
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no event at {position}"))
}

#[tokio::test]
async fn a_dead_letter_without_a_delivery_settles_the_message() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("dead").await?;
    let id = client
        .post_later(&token, bot, "nobody answers this")
        .await?;
    let event = recorded(&stack, &id).await?;
    // Drain the work queue so no worker can answer it normally.
    let topology = events::bus::Topology::new(&stack.isolation.bus);
    {
        let connection = events::bus::connect(&stack.isolation.bus, "drain").await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_purge(&topology.user_messages_queue, Default::default())
            .await?;
        let _ = connection.close(200, "done").await;
    }
    let mut stack = stack;
    stack.spawn_worker().await?;
    publish(&stack, &topology.dead_letter_exchange, &event).await?;
    let pool = stack.pool()?;
    let failure = eventually(Duration::from_secs(20), "the recorded failure", || async {
        Ok(history_rows(&pool, user, bot)
            .await?
            .into_iter()
            .find(|r| r.reply_to.as_deref() == Some(id.as_str())))
    })
    .await?;
    assert_eq!(failure.status, "failed");
    assert!(
        failure.content.contains("could not be processed"),
        "{}",
        failure.content
    );
    let message = history_rows(&pool, user, bot)
        .await?
        .into_iter()
        .find(|r| r.message_id == id)
        .map(|r| r.status);
    assert_eq!(message.as_deref(), Some("failed"));
    assert_eq!(stack.model.calls(), 0);
    stack.teardown().await
}

#[tokio::test]
async fn an_event_of_a_newer_schema_does_not_stop_the_conversation() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("rolling").await?;
    let first = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "hello" }),
            Some(&token),
        )
        .await?;
    assert_eq!(first.status, 200);

    // A newer release (mid rolling deploy) records a message in a schema this
    // worker does not know, with its read-model row, as that release would.
    let pool = stack.pool()?;
    let mut tx = pool.begin().await?;
    let head: i64 =
        sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let stream = events::event::stream::chat(user, bot);
    let version: i64 =
        sqlx::query_scalar("SELECT MAX(stream_version) FROM events WHERE stream_id = ?")
            .bind(&stream)
            .fetch_one(&mut *tx)
            .await?;
    let message_id = uuid::Uuid::now_v7();
    let payload = json!({ "message_id": message_id, "user_id": user, "bot_id": bot,
        "content": "from the future", "attachments": [{ "kind": "image" }] });
    let now = events::store::now_micros();
    sqlx::query(
        "INSERT INTO events (global_position, event_id, stream_id, stream_version, event_type, \
         schema_version, payload, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, 9, ?, '{}', ?)",
    )
    .bind(head + 1)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&stream)
    .bind(version + 1)
    .bind(DomainEvent::USER_MESSAGE_POSTED)
    .bind(payload.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_history (user_id, chatbot_id, seq, message_id, by_user, content, status, \
         created_at) VALUES (?, ?, ?, ?, 1, 'from the future', 'pending', ?)",
    )
    .bind(user)
    .bind(bot)
    .bind(version + 1)
    .bind(message_id.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE event_log_head SET position = ? WHERE id = 1")
        .bind(head + 1)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projection_checkpoint SET position = ?")
        .bind(head + 1)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // The next message of the conversation is answered, and so is the newer one
    // (the worker needs only its ids; the rest comes from the read model).
    let next = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "still there?" }),
            Some(&token),
        )
        .await?;
    assert_eq!(next.status, 200, "{next:?}");
    let rows = history_rows(&pool, user, bot).await?;
    assert!(rows.iter().any(
        |r| r.reply_to.as_deref() == Some(message_id.to_string().as_str()) && r.status == "done"
    ));
    stack.teardown().await
}
