//! One user's backlog cannot stall everyone else (issue 19): a delivery whose
//! conversation is being answered hands its message to the lease's holder and
//! is acknowledged at once, so waiting in line costs a worker no delivery slot,
//! and other users' messages are answered while the backlog drains.
//!
//! CI drains a backlog of 200; `HOL_BACKLOG=1000` runs the full check.

use std::time::{Duration, Instant};

use serde_json::json;

use system_tests::{
    answered_in_order, user_message_ids, wait_until_answered, Client, Stack, StackOptions,
};

const MODEL_LATENCY: Duration = Duration::from_millis(200);

/// Posts `n` messages without waiting for their replies, 16 at a time.
async fn backlog(client: &Client, token: &str, bot: i64, n: usize) -> anyhow::Result<()> {
    let indexes: Vec<usize> = (0..n).collect();
    for chunk in indexes.chunks(16) {
        let posts = chunk.iter().map(|i| async move {
            let body = json!({ "chatbot_id": bot, "input": format!("backlog {i}") });
            client
                .post_json("/chat/new_chat?wait=false", &body, Some(token))
                .await
        });
        for posted in futures::future::join_all(posts).await {
            let posted = posted?;
            anyhow::ensure!(posted.status == 202, "{posted:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn other_users_are_answered_while_one_users_backlog_drains() -> anyhow::Result<()> {
    let size: usize = std::env::var("HOL_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        // The admission caps off: the backlog is what is under test here.
        env: vec![
            ("WORKER_ROLES".into(), "replies".into()),
            ("CONVERSATION_MAX_UNANSWERED".into(), "0".into()),
            ("USER_MAX_UNANSWERED".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(MODEL_LATENCY);
    let client = stack.client(0);
    let (a, a_token, a_bot) = client.user_with_bot("backlogged").await?;
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(client.user_with_bot(&format!("bystander{i}")).await?);
    }
    backlog(&client, &a_token, a_bot, size).await?;
    stack.spawn_worker().await?;
    stack.spawn_worker().await?;
    let started = Instant::now();

    // 20 messages from 10 other users, spread over 10 s, each waiting for its reply.
    let mut waits = Vec::new();
    for round in 0..2 {
        for (i, (_, token, bot)) in others.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sent = Instant::now();
            let reply = client
                .post_json(
                    "/chat/new_chat",
                    &json!({ "chatbot_id": bot, "input": format!("hello {round} {i}") }),
                    Some(token),
                )
                .await?;
            anyhow::ensure!(reply.status == 200, "{reply:?}");
            waits.push(sent.elapsed());
        }
    }
    let drained_so_far = stack.model.calls();
    waits.sort();
    let slowest = waits.last().copied().unwrap_or_default();
    println!(
        "backlog of {size}: the other users' 20 replies took {:?} (median) to {slowest:?} (slowest), \
         {drained_so_far} model calls {:?} after the workers started",
        waits[waits.len() / 2],
        started.elapsed()
    );
    assert!(
        drained_so_far < (size + 20) as u64,
        "the backlog was still draining while the others were answered"
    );
    assert!(
        slowest <= MODEL_LATENCY + Duration::from_secs(1),
        "a bystander waited {slowest:?} behind another user's backlog"
    );

    let pool = stack.pool()?;
    let ids = user_message_ids(&pool, a, a_bot).await?;
    let drain = MODEL_LATENCY * size as u32 + Duration::from_secs(60);
    wait_until_answered(&pool, &ids, drain).await?;
    assert_eq!(answered_in_order(&pool, a, a_bot).await?, size);
    assert_eq!(
        stack.model.calls(),
        (size + 20) as u64,
        "one model call per message"
    );
    stack.teardown().await
}
