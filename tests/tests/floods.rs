//! Streams and long-polls under floods (issue 19, item 5): 200 users each holding
//! their full quota of `chat/stream`s, plus 1,000 waiting long-polls, leave other
//! users' `new_chat` within the head-of-line bound (model latency + 1 s), and the
//! api's memory grows by a bounded amount per connection.
//!
//! `FLOOD_USERS` changes the number of flooding users (default 200).

use std::time::Duration;

use system_tests::sse::SseStream;
use system_tests::{bystanders, rss_mib, Client, Stack, StackOptions};

const MODEL_LATENCY: Duration = Duration::from_millis(200);
/// `SSE_MAX_STREAMS_PER_USER`'s default.
const STREAMS_PER_USER: usize = 5;
const LONG_POLLS: usize = 1000;
/// What one open stream or waiting long-poll may cost the api, at most.
const KIB_PER_CONNECTION: u64 = 64;

/// Registers `n` users named `{prefix}{i}`, each with a bot, 16 at a time.
async fn users(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Vec<(i64, String, i64)>> {
    let mut all = Vec::new();
    let indexes: Vec<usize> = (0..n).collect();
    for chunk in indexes.chunks(16) {
        let made = futures::future::join_all(chunk.iter().map(|i| {
            let client = client.clone();
            let name = format!("{prefix}{i}");
            async move { client.user_with_bot(&name).await }
        }))
        .await;
        for user in made {
            all.push(user?);
        }
    }
    Ok(all)
}

#[tokio::test]
async fn full_stream_quotas_and_a_thousand_long_polls_leave_others_unhurt() -> anyhow::Result<()> {
    let flooders: usize = std::env::var("FLOOD_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let stack = Stack::start(StackOptions {
        workers: 2,
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(MODEL_LATENCY);
    let client = stack.client(0);
    let base = client.base.clone();
    let flooding = users(&client, "flooder", flooders).await?;
    let others = users(&client, "bystander", 10).await?;
    let pid = stack.apis[0]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no api pid"))?;
    let baseline = rss_mib(pid)?;

    // Every flooding user opens their full quota of streams; one more is refused.
    let mut streams = Vec::new();
    for (_, token, bot) in &flooding {
        let path = format!("/chat/stream?chatbot_id={bot}");
        for _ in 0..STREAMS_PER_USER {
            let sse = SseStream::open(&base, &path, Some(token), None).await?;
            anyhow::ensure!(
                sse.status == 200,
                "a stream within the quota: {}",
                sse.status
            );
            streams.push(sse);
        }
    }
    let (_, token, bot) = &flooding[0];
    let over = SseStream::open(
        &base,
        &format!("/chat/stream?chatbot_id={bot}"),
        Some(token),
        None,
    )
    .await?;
    assert_eq!(over.status, 429, "the quota holds");
    drop(over);

    // And 1,000 long-polls wait for news that does not come.
    let polls: Vec<_> = (0..LONG_POLLS)
        .map(|i| {
            let (_, token, bot) = flooding[i % flooding.len()].clone();
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get(
                        &format!("/chat/history?chatbot_id={bot}&after=1000000&wait=60"),
                        Some(&token),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flooded = rss_mib(pid)?;
    let connections = (streams.len() + LONG_POLLS) as u64;

    // Meanwhile, 20 messages from 10 other users, spread over 10 s.
    let waits = bystanders(&client, &others).await?;
    let slowest = waits.last().copied().unwrap_or_default();
    let after = rss_mib(pid)?;
    let waiting = polls.iter().filter(|p| !p.is_finished()).count();
    println!(
        "{} streams and {LONG_POLLS} long-polls open: api RSS {baseline} MiB before, {flooded} MiB \
         with them ({} KiB each), {after} MiB after 20 others' messages; their replies took {:?} \
         (median) to {slowest:?} (slowest); {waiting} long-polls still waiting",
        streams.len(),
        (flooded.saturating_sub(baseline)) * 1024 / connections,
        waits[waits.len() / 2],
    );
    assert_eq!(waiting, LONG_POLLS, "the long-polls wait, as asked");
    assert!(
        slowest <= MODEL_LATENCY + Duration::from_secs(1),
        "a bystander waited {slowest:?} among the floods"
    );
    assert!(
        flooded.max(after) <= baseline + connections * KIB_PER_CONNECTION / 1024,
        "the api went from {baseline} to {} MiB for {connections} connections",
        flooded.max(after)
    );
    for poll in polls {
        poll.abort();
    }
    drop(streams);
    stack.teardown().await
}
