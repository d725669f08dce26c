//! What a conversation costs in model calls, and the order its replies come in,
//! with two workers racing on it (review items 1, 25 and 26).
//!
//! The workers here only answer (`WORKER_ROLES=replies`): memory refreshes, which
//! share the model, are counted in `memory.rs`.
//!
//! Every delivery used to answer its conversation's oldest unanswered message, with
//! nothing claiming that work: a burst of N messages cost N(N+1)/2 calls, a backlog
//! longer than the worker's window was answered out of order, and model failures
//! were retried once per racing delivery. Now one delivery at a time answers a
//! conversation (a lease), and finds the next message in the read model.

use std::time::Duration;

use serde_json::json;

use system_tests::{
    answered_in_order, user_message_ids, wait_until_answered, Client, Stack, StackOptions,
};

/// Workers that only answer; backlogs longer than the admission caps allow.
fn replies_only() -> Vec<(String, String)> {
    vec![
        ("WORKER_ROLES".into(), "replies".into()),
        ("CONVERSATION_MAX_UNANSWERED".into(), "0".into()),
        ("USER_MAX_UNANSWERED".into(), "0".into()),
    ]
}

/// Posts `n` messages at once; with `wait`, each request waits for its reply.
async fn burst(client: &Client, token: &str, bot: i64, n: usize, wait: bool) -> anyhow::Result<()> {
    let path = if wait {
        "/chat/new_chat"
    } else {
        "/chat/new_chat?wait=false"
    };
    let posts = (0..n).map(|i| {
        let client = client.clone();
        let token = token.to_string();
        async move {
            client
                .post_json(
                    path,
                    &json!({ "chatbot_id": bot, "input": format!("burst message {i}") }),
                    Some(&token),
                )
                .await
        }
    });
    for reply in futures::future::join_all(posts).await {
        let reply = reply?;
        let expected = if wait { 200 } else { 202 };
        anyhow::ensure!(reply.status == expected, "unexpected answer {reply:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_burst_costs_one_model_call_per_message() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 2,
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(300));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("bursty").await?;

    burst(&client, &token, bot, 10, true).await?;
    let after_10 = stack.model.calls();
    println!("model calls for a burst of 10 messages: {after_10}");
    assert_eq!(after_10, 10, "a burst of 10 costs 10 model calls");

    burst(&client, &token, bot, 40, true).await?;
    let for_40 = stack.model.calls() - after_10;
    println!("model calls for a burst of 40 messages: {for_40}");
    assert_eq!(for_40, 40, "a burst of 40 costs 40 model calls");

    burst(&client, &token, bot, 8, false).await?;
    let ids = user_message_ids(&stack.pool()?, user, bot).await?;
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(60)).await?;
    assert_eq!(
        stack.model.calls() - after_10 - for_40,
        8,
        "8 posts without waiting cost 8 calls"
    );
    assert_eq!(answered_in_order(&stack.pool()?, user, bot).await?, 58);
    stack.teardown().await
}

#[tokio::test]
async fn a_backlog_longer_than_any_window_is_answered_in_order() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("backlogged").await?;
    let mut ids = Vec::new();
    for i in 0..130 {
        ids.push(
            client
                .post_later(&token, bot, &format!("backlog {i}"))
                .await?,
        );
    }
    stack
        .model
        .set_latency_range(Duration::from_millis(5), Duration::from_millis(30));
    stack.spawn_worker().await?;
    stack.spawn_worker().await?;
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(120)).await?;
    assert_eq!(answered_in_order(&stack.pool()?, user, bot).await?, 130);
    assert_eq!(stack.model.calls(), 130, "one model call per message");
    // Each reply was generated with every earlier reply in its context.
    let last = stack.model.requests().pop().unwrap_or_default();
    let turns = system_tests::fake_openai::turns(&last);
    assert!(
        turns.iter().filter(|(role, _)| role == "assistant").count() >= 50,
        "the last prompt carries the earlier replies"
    );
    stack.teardown().await
}

#[tokio::test]
async fn model_failures_are_retried_per_message_not_per_delivery() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 2,
        env: [
            replies_only(),
            vec![("MODEL_MAX_ATTEMPTS".into(), "8".into())],
        ]
        .concat(),
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(50));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("flaky").await?;
    // A burst of failures, fewer than MODEL_MAX_ATTEMPTS, so that every message ends
    // answered and the count below is exact. Five deliveries race on the
    // conversation while the first message is retried.
    let injected = 7;
    for _ in 0..injected {
        stack.model.fail_next(500, "server_error", None);
    }
    burst(&client, &token, bot, 5, false).await?;
    let ids = user_message_ids(&stack.pool()?, user, bot).await?;
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(60)).await?;
    answered_in_order(&stack.pool()?, user, bot).await?;
    assert_eq!(
        stack.model.calls(),
        5 + injected,
        "model calls are the messages plus the injected failures"
    );
    stack.teardown().await
}
