//! Prometheus metrics from both binaries (issue 21, item 2): after a short
//! conversation, the api's `/metrics` and the worker's (`METRICS_ADDR`) show the
//! counters moved, HTTP requests are labelled by route template, never by a raw
//! path.

use std::time::Duration;

use serde_json::json;

use system_tests::{free_port, Stack, StackOptions};

/// The value of the first sample of `name` whose labels contain every one of
/// `labels` (`key="value"`), if any.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn both_binaries_serve_metrics_that_move_with_a_conversation() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let worker_port = free_port()?;
    let worker_metrics = format!("127.0.0.1:{worker_port}");
    stack
        .spawn_worker_with(&[("METRICS_ADDR", worker_metrics.as_str())])
        .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("measured").await?;
    for input in ["one", "two"] {
        let reply = client
            .post_json(
                "/chat/new_chat",
                &json!({ "chatbot_id": bot, "input": input }),
                Some(&token),
            )
            .await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    for _ in 0..3 {
        client
            .get(&format!("/chat/history?chatbot_id={bot}"), Some(&token))
            .await?;
    }
    let renamed = client
        .patch_json(
            &format!("/users/users/{user}/"),
            &json!({ "email": "measured@example.com" }),
            Some(&token),
        )
        .await?;
    assert_eq!(renamed.status, 200, "{renamed:?}");

    let api = reqwest::get(format!("{}/metrics", client.base)).await?;
    assert_eq!(api.status(), 200);
    let api = api.text().await?;
    let worker = reqwest::get(format!("http://{worker_metrics}/metrics"))
        .await?
        .text()
        .await?;

    let posted = sample(
        &api,
        "http_requests_total",
        &[
            "route=\"/chat/new_chat\"",
            "method=\"POST\"",
            "status=\"200\"",
        ],
    );
    assert_eq!(posted, Some(2.0), "{api}");
    assert!(sample(
        &api,
        "http_request_duration_seconds_count",
        &["route=\"/chat/history\""]
    )
    .is_some_and(|n| n >= 3.0));
    assert!(
        sample(
            &api,
            "http_requests_total",
            &["route=\"/users/users/{id}\""]
        ) == Some(1.0),
        "a route template, not a raw path"
    );
    assert!(
        !api.contains(&format!("/users/users/{user}")),
        "no raw path in a label"
    );
    assert!(
        sample(
            &api,
            "events_appended_total",
            &["type=\"UserMessagePosted\""]
        ) == Some(2.0)
    );
    assert!(
        sample(&api, "read_cache_requests_total", &["result=\"hit\""]).is_some_and(|n| n >= 1.0)
    );
    assert!(sample(&api, "append_batch_size_count", &[]).is_some_and(|n| n >= 1.0));

    assert_eq!(
        sample(&worker, "model_calls_total", &["outcome=\"answered\""]),
        Some(2.0),
        "{worker}"
    );
    assert_eq!(
        sample(
            &worker,
            "events_appended_total",
            &["type=\"BotReplyGenerated\""]
        ),
        Some(2.0)
    );
    assert!(sample(&worker, "model_call_seconds_count", &[]) == Some(2.0));
    assert!(sample(&worker, "model_first_token_seconds_count", &[]) == Some(2.0));
    assert_eq!(sample(&worker, "deliveries_in_flight", &[]), Some(0.0));

    // The database's side is sampled every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let api = reqwest::get(format!("{}/metrics", client.base))
        .await?
        .text()
        .await?;
    assert!(sample(&api, "outbox_backlog", &[]).is_some());
    assert!(sample(&api, "db_pool_connections", &["state=\"idle\""]).is_some());
    // Two history pages were cached, and the gauge is set at each purge.
    assert!(sample(&api, "read_cache_bytes", &[]).is_some(), "{api}");

    let show = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!("api /metrics (a sample):\n{}\n", show(&api));
    println!("worker /metrics (a sample):\n{}", show(&worker));
    stack.teardown().await
}

#[tokio::test]
async fn a_memory_refresh_is_counted() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let worker_metrics = format!("127.0.0.1:{}", free_port()?);
    stack
        .spawn_worker_with(&[
            ("METRICS_ADDR", worker_metrics.as_str()),
            ("MEMORY_EVERY_MESSAGES", "1"),
        ])
        .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("remembered").await?;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "remember me" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let refreshes = system_tests::eventually(Duration::from_secs(20), "a memory refresh", || {
        let url = format!("http://{worker_metrics}/metrics");
        async move {
            let text = reqwest::get(url).await?.text().await?;
            Ok(sample(
                &text,
                "memory_refreshes_total",
                &["outcome=\"done\""],
            ))
        }
    })
    .await?;
    assert_eq!(refreshes, 1.0);
    stack.teardown().await
}
