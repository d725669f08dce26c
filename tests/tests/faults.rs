//! Faults injected for real against the real binaries, MariaDB and RabbitMQ: the
//! broker or the database going away (through a proxy the test cuts), processes
//! killed mid-call, duplicate deliveries, failing models, shutdowns.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use events::bus::Publisher;
use events::config::ExposeSecret;
use events::event::DomainEvent;
use system_tests::{
    eventually, history_rows, outcomes_for, wait_until_answered, Stack, StackOptions,
};

/// Waits until every message in `ids` has exactly one outcome in the log.
async fn answered(stack: &Stack, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    wait_until_answered(&stack.pool()?, ids, timeout).await
}

/// Fault 1 and 2: the broker goes away under running publishers and consumers. The
/// api keeps accepting (202), and once the broker is back every waiting message is
/// delivered and answered, with no process restarted.
#[tokio::test]
async fn broker_outage_accepts_writes_and_delivers_them_when_it_returns() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        proxy_broker: true,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("faulty").await?;
    let before = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "before" }),
            Some(&token),
        )
        .await?;
    assert_eq!(before.status, 200);

    let proxy = stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    proxy.cut();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            client
                .post_later(&token, bot, &format!("during outage {n}"))
                .await?,
        );
    }
    let ready = client.get("/readyz", None).await?;
    assert_eq!(
        (ready.status, ready.body["broker"].as_str()),
        (503, Some("down"))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&stack.pool()?)
        .await?;
    assert!(
        unsent >= 3,
        "the messages wait in the outbox ({unsent} unsent)"
    );
    assert_eq!(stack.model.calls(), 1, "nothing reached a worker");

    proxy.restore();
    answered(&stack, &ids, Duration::from_secs(60)).await?;
    let history = client
        .get(&format!("/chat/history?chatbot_id={bot}"), Some(&token))
        .await?;
    assert_eq!(history.body["data"].as_array().map(Vec::len), Some(8));
    assert!(
        stack.apis[0].is_running() && stack.workers[0].is_running(),
        "no process was restarted"
    );
    assert!(stack.workers[0].log_text().contains("reconnecting"));
    stack.teardown().await
}

/// Fault 2: connections that hang silently (no FIN, no data) are noticed through
/// heartbeats and replaced, instead of a consumer waiting forever.
#[tokio::test]
async fn silently_dead_broker_connections_are_detected_and_replaced() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        proxy_broker: true,
        env: vec![("AMQP_HEARTBEAT_SECS".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("faulty").await?;
    stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?
        .freeze();
    let ids = vec![client.post_later(&token, bot, "into the void?").await?];
    answered(&stack, &ids, Duration::from_secs(60)).await?;
    assert!(stack.workers[0].is_running());
    assert!(
        stack.workers[0].log_text().contains("reconnecting"),
        "the worker noticed and reconnected"
    );
    stack.teardown().await
}

/// Fault 3: SIGKILL while the model call is in flight. The broker redelivers to the
/// next worker; the conversation ends with exactly one reply.
#[tokio::test]
async fn a_worker_killed_mid_call_leaves_exactly_one_reply() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    stack.model.set_latency(Duration::from_millis(1500));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;
    let id = client.post_later(&token, bot, "are you there?").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(20))
        .await?;
    stack.workers[0].signal("KILL")?;
    stack.workers[0].wait(Duration::from_secs(5)).await?;
    stack.spawn_worker().await?;
    answered(&stack, std::slice::from_ref(&id), Duration::from_secs(30)).await?;
    let rows = history_rows(&stack.pool()?, user, bot).await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].status, "done");
    assert_eq!(
        stack.model.calls(),
        2,
        "the interrupted call was made again, once"
    );
    stack.teardown().await
}

/// Fault 4: the same message delivered several times, to two workers racing on it.
#[tokio::test]
async fn duplicate_deliveries_to_racing_workers_record_one_reply() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(300));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;
    let id = client.post_later(&token, bot, "say it once").await?;

    let pool = stack.pool()?;
    let store =
        events::store::EventStore::new(pool.clone(), Arc::new(events::projections::ReadModels));
    let event = store
        .read_stream(&events::event::stream::chat(user, bot))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no event"))?;
    let publisher = Publisher::new(stack.isolation.bus.clone(), "duplicator");
    for _ in 0..4 {
        publisher.publish(&event).await?;
    }
    answered(&stack, std::slice::from_ref(&id), Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        outcomes_for(&pool, &id).await?,
        1,
        "still exactly one after every delivery settled"
    );
    assert_eq!(history_rows(&pool, user, bot).await?.len(), 2);
    stack.teardown().await
}

/// Fault 5: rate limits and server errors are retried with backoff; the reply
/// arrives and the model was called once per attempt.
#[tokio::test]
async fn transient_model_errors_are_retried() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("faulty").await?;
    stack
        .model
        .fail_next(429, "requests", Some("rate_limit_exceeded"));
    stack.model.fail_next(500, "server_error", None);
    let reply = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "eventually" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body["data"]
        .as_str()
        .is_some_and(|r| r.ends_with("to: eventually")));
    assert_eq!(
        stack.model.calls(),
        3,
        "two failures and one success, no more"
    );
    stack.teardown().await
}

/// Fault 5: a permanent error (400, insufficient_quota, retries exhausted) fails
/// the message promptly, with a 502 that says why, a failed status in history, and
/// no further model calls for it.
#[tokio::test]
async fn permanent_model_errors_fail_promptly_and_are_not_retried() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MODEL_MAX_ATTEMPTS".into(), "3".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;
    let chat = |input: &'static str| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .post_json(
                    "/chat/new_chat",
                    &json!({ "chatbot_id": bot, "input": input }),
                    Some(&token),
                )
                .await
        }
    };

    stack.model.fail_next(400, "invalid_request_error", None);
    let started = std::time::Instant::now();
    let rejected = chat("bad request").await?;
    assert_eq!(
        (rejected.status, rejected.body["code"].as_i64()),
        (502, Some(502)),
        "{rejected:?}"
    );
    assert!(rejected.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("could not answer") && m.contains("400")));
    assert!(started.elapsed() < Duration::from_secs(5), "promptly");
    assert_eq!(stack.model.calls(), 1);

    stack
        .model
        .fail_next(429, "insufficient_quota", Some("insufficient_quota"));
    let quota = chat("no money").await?;
    assert_eq!(quota.status, 502);
    assert!(quota.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("quota")));
    assert_eq!(stack.model.calls(), 2);

    for _ in 0..5 {
        stack.model.fail_next(503, "server_error", None);
    }
    let exhausted = chat("still down").await?;
    assert_eq!(exhausted.status, 502);
    assert!(
        exhausted.body["msg"]
            .as_str()
            .is_some_and(|m| m.contains("tried 3 times")),
        "{exhausted:?}"
    );
    assert_eq!(stack.model.calls(), 5);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.model.calls(),
        5,
        "failed messages are not retried by redelivery"
    );
    let rows = history_rows(&stack.pool()?, user, bot).await?;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.status == "failed"), "{rows:?}");
    let history = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=object"),
            Some(&token),
        )
        .await?;
    assert_eq!(history.body["data"][0]["status"], "failed");
    // The conversation goes on afterwards.
    assert_eq!(chat("fine now?").await?.status, 200);
    stack.teardown().await
}

/// Fault 5: a poison message goes to the dead-letter queue instead of looping, and
/// the worker carries on.
#[tokio::test]
async fn poison_messages_are_dead_lettered() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("faulty").await?;
    let connection = events::bus::connect(&stack.isolation.bus, "poisoner").await?;
    let channel = connection.create_channel().await?;
    let topology = events::bus::Topology::new(&stack.isolation.bus);
    for body in [&b"not json at all"[..], br#"{"global_position": 1}"#] {
        channel
            .basic_publish(
                &topology.events_exchange,
                DomainEvent::USER_MESSAGE_POSTED,
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default(),
            )
            .await?
            .await?;
    }
    // Unreadable messages are requeued (a newer worker may read them) until the
    // delivery limit dead-letters them; the dead-letter consumer then drops each
    // with one ERROR, since they name no message whose failure could be recorded.
    eventually(Duration::from_secs(30), "two dropped dead letters", || {
        let log = stack.workers[0].log_text();
        async move {
            Ok((log.matches("a dead letter names no message").count() >= 2).then_some(()))
        }
    })
    .await?;
    let work = channel
        .queue_declare(
            &topology.user_messages_queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    assert_eq!(work.message_count(), 0, "nothing loops on the work queue");
    let _ = connection.close(200, "done").await;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "still alive?" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200);
    stack.teardown().await
}

/// Fault 6: the database goes away. Requests get 503 meanwhile, succeed again once
/// it is back, with no process restarted, and a message accepted before the outage
/// is answered after it.
#[tokio::test]
async fn database_outage_gives_503_and_loses_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_database: true,
        env: vec![("DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(1500));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;
    let id = client.post_later(&token, bot, "remember me").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(20))
        .await?;

    let proxy = stack
        .database_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    proxy.cut();
    let list = client.get("/chat/list", Some(&token)).await?;
    assert_eq!(
        (list.status, list.body["code"].as_i64()),
        (503, Some(503)),
        "{list:?}"
    );
    let post = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "x" }),
            Some(&token),
        )
        .await?;
    assert_eq!(post.status, 503);
    assert_eq!(client.get("/readyz", None).await?.status, 503);
    tokio::time::sleep(Duration::from_secs(3)).await; // the reply is ready and cannot be written

    proxy.restore();
    let recovered = client
        .wait_for_ok("/chat/list", Some(&token), Duration::from_secs(30))
        .await?;
    assert_eq!(recovered.status, 200);
    answered(&stack, std::slice::from_ref(&id), Duration::from_secs(30)).await?;
    assert_eq!(
        stack.model.calls(),
        1,
        "the reply made before the outage was kept, not regenerated"
    );
    let rows = history_rows(&stack.isolation.pool()?, user, bot).await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        client
            .post_json(
                "/chat/new_chat",
                &json!({ "chatbot_id": bot, "input": "and now" }),
                Some(&token)
            )
            .await?
            .status,
        200
    );
    stack.teardown().await
}

/// Fault 7: the api dies after committing a message and before publishing it. The
/// outbox relay of another process publishes it, and it is answered.
#[tokio::test]
async fn an_api_crash_between_commit_and_publish_is_covered_by_the_outbox() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        proxy_broker: true,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;
    stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?
        .cut();
    let id = client.post_later(&token, bot, "orphan").await?;
    stack.apis[0].signal("KILL")?;
    stack.apis[0].wait(Duration::from_secs(5)).await?;
    let pool = stack.pool()?;
    let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await?;
    assert!(unsent >= 1, "committed but never published");

    let direct = stack.isolation.bus.url.expose_secret().to_string();
    stack
        .spawn_worker_with(&[("AMQP_URL", direct.as_str())])
        .await?;
    answered(&stack, std::slice::from_ref(&id), Duration::from_secs(30)).await?;
    let rows = history_rows(&pool, user, bot).await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, "done");
    stack.teardown().await
}

/// Fault 8: SIGTERM on a worker finishes the message in flight, takes no new ones,
/// and exits cleanly; SIGTERM on the api drains the request in flight.
#[tokio::test]
async fn sigterm_drains_workers_and_apis() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    stack.model.set_latency(Duration::from_millis(1500));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("faulty").await?;

    let first = client.post_later(&token, bot, "finish me").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(20))
        .await?;
    stack.workers[0].signal("TERM")?;
    assert!(
        stack.workers[0].wait(Duration::from_secs(20)).await?,
        "the worker exits successfully"
    );
    assert_eq!(
        outcomes_for(&stack.pool()?, &first).await?,
        1,
        "the in-flight message was finished"
    );

    let second = client
        .post_later(&token, bot, "wait for the next worker")
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        outcomes_for(&stack.pool()?, &second).await?,
        0,
        "a stopped worker takes nothing"
    );
    stack.spawn_worker().await?;
    answered(
        &stack,
        std::slice::from_ref(&second),
        Duration::from_secs(30),
    )
    .await?;

    // The api: a request waiting for its reply survives the api's SIGTERM.
    let in_flight = tokio::spawn({
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .post_json(
                    "/chat/new_chat",
                    &json!({ "chatbot_id": bot, "input": "drain me" }),
                    Some(&token),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.apis[0].signal("TERM")?;
    let reply = in_flight.await??;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body["data"]
        .as_str()
        .is_some_and(|r| r.ends_with("to: drain me")));
    assert!(
        stack.apis[0].wait(Duration::from_secs(10)).await?,
        "the api exits successfully"
    );
    assert_eq!(history_rows(&stack.pool()?, user, bot).await?.len(), 6);
    stack.teardown().await
}
