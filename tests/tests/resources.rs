//! What clients can make the api spend (review items 7 and 13): memory for the
//! queries they choose, and database round trips while they wait.

use std::time::Duration;

use serde_json::json;

use system_tests::{rss_mib, Stack, StackOptions};

#[tokio::test]
async fn distinct_history_queries_do_not_grow_the_api() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("curious").await?;
    // A conversation whose whole history is about 100 KB.
    let long = "x".repeat(1000);
    for _ in 0..50 {
        let reply = client
            .post_json(
                "/chat/new_chat",
                &json!({ "chatbot_id": bot, "input": long }),
                Some(&token),
            )
            .await?;
        anyhow::ensure!(reply.status == 200, "{reply:?}");
    }
    let pid = stack.apis[0].pid().unwrap_or_default();
    let before = rss_mib(pid)?;
    // 10,000 distinct queries: every page size, then other bots' ids.
    let queries: Vec<String> = (1..=9_000)
        .map(|limit| format!("/chat/history?chatbot_id={bot}&limit={limit}"))
        .chain((1..=1_000).map(|other| format!("/chat/history?chatbot_id={}", bot + other)))
        .collect();
    for chunk in queries.chunks(16) {
        let answers =
            futures::future::join_all(chunk.iter().map(|q| client.get(q, Some(&token)))).await;
        for answer in answers {
            anyhow::ensure!(answer?.status == 200);
        }
    }
    let after = rss_mib(pid)?;
    println!("api RSS: {before} MiB before, {after} MiB after 10,000 distinct history queries");
    assert!(after < before + 40, "RSS grew from {before} to {after} MiB");
    stack.teardown().await
}

#[tokio::test]
async fn idle_long_polls_wait_on_the_bus_not_on_the_database() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_database: true,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("waiting").await?;
    let first = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "hi" }),
            Some(&token),
        )
        .await?;
    assert_eq!(first.status, 200);
    let seq = 2;

    // 100 clients long-poll for anything after the reply.
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .get(
                        &format!("/chat/history?chatbot_id={bot}&after={seq}&wait=30"),
                        Some(&token),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let proxy = stack
        .database_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no database proxy"))?;
    let start = proxy.forwarded();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_bytes = proxy.forwarded() - start;
    println!("database traffic of 100 idle long-polls (and the processes' own upkeep) over 5 s: {idle_bytes} bytes");
    // Polling once a second each would be 500 queries: far over 50 KB.
    assert!(idle_bytes < 20_000, "{idle_bytes} bytes");

    // A new message still wakes every one of them at once.
    let next = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "wake up" }),
            Some(&token),
        )
        .await?;
    assert_eq!(next.status, 200);
    for waiter in waiters {
        let answer = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
        assert!(answer.body["data"]
            .as_array()
            .is_some_and(|rows| !rows.is_empty()));
    }
    stack.teardown().await
}

/// Posts `count` messages of about 45 words (so about 45 streamed deltas each),
/// from 16 clients at once, each waiting for its reply.
async fn streamed_replies(
    clients: &[(system_tests::Client, String, i64)],
    count: usize,
) -> anyhow::Result<()> {
    let words = (0..44)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let per_client = count.div_ceil(clients.len());
    let runs = clients.iter().map(|(client, token, bot)| {
        let words = words.clone();
        async move {
            for _ in 0..per_client {
                let reply = client
                    .post_json(
                        "/chat/new_chat",
                        &json!({ "chatbot_id": bot, "input": words }),
                        Some(token),
                    )
                    .await?;
                anyhow::ensure!(reply.status == 200, "{reply:?}");
            }
            Ok(())
        }
    });
    for run in futures::future::join_all(runs).await {
        run?;
    }
    Ok(())
}

/// The worker's memory stays flat however many replies it streams (issue 18,
/// item 1): deltas go out on a channel without publisher confirms, so nothing
/// is kept per delta. CI streams 3,000 replies; `WORKER_RSS_REPLIES=10000` runs
/// the full check. RSS is read after the first 1,000 and at the end.
#[tokio::test]
async fn the_workers_memory_stays_flat_over_thousands_of_streamed_replies() -> anyhow::Result<()> {
    let total: usize = std::env::var("WORKER_RSS_REPLIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
        .max(2_000);
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "1000000".into())],
        ..Default::default()
    })
    .await?;
    let mut clients = Vec::new();
    for i in 0..16 {
        let client = stack.client(0);
        let (_, token, bot) = client.user_with_bot(&format!("streamer{i}")).await?;
        clients.push((client, token, bot));
    }
    let pid = stack.workers[0].pid().unwrap_or_default();
    let start = rss_mib(pid)?;
    streamed_replies(&clients, 1_000).await?;
    let warmed = rss_mib(pid)?;
    let mut samples = vec![warmed];
    let mut done = 1_000;
    while done < total {
        let step = (total - done).min(1_000);
        streamed_replies(&clients, step).await?;
        done += step;
        samples.push(rss_mib(pid)?);
    }
    let end = rss_mib(pid)?;
    let deltas = stack.model.answered();
    println!(
        "worker RSS: {start} MiB at start, {warmed} MiB after 1,000 replies, {end} MiB after {done} \
         (every 1,000: {samples:?}); model answers: {deltas}"
    );
    assert!(
        end * 10 <= warmed * 11,
        "RSS grew from {warmed} to {end} MiB over {} more replies",
        done - 1_000
    );
    stack.teardown().await
}
