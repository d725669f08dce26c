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
