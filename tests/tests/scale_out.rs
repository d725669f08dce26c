//! Scale-out: 2 api and 3 worker processes against one database and broker, 50
//! users posting 500 messages concurrently across 100 conversations, with a model
//! that takes 50–200 ms. Afterwards every message has exactly one reply, every
//! history is in order, the chat lists agree with the histories, and the read
//! models have applied the whole log. Prints throughput and post→visible latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use system_tests::{history_rows, Stack, StackOptions};

const USERS: usize = 50;
const MESSAGES_PER_USER: usize = 10;
const BOTS_PER_USER: usize = 2;

#[tokio::test]
async fn many_users_many_processes_one_reply_each_in_order() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 2,
        workers: 3,
        env: vec![("DB_MAX_CONNECTIONS".into(), "10".into())],
        ..Default::default()
    })
    .await?;
    stack
        .model
        .set_latency_range(Duration::from_millis(50), Duration::from_millis(200));

    // Sign everyone up and give each user two bots, spread over both apis.
    let mut users = Vec::new();
    for u in 0..USERS {
        let client = stack.client(u % 2);
        let (user_id, token, _) = client.signup(&format!("user{u}"), "pass word").await?;
        let mut bots = Vec::new();
        for b in 0..BOTS_PER_USER {
            bots.push(
                client
                    .create_bot(&token, &format!("bot{b}"), b as i64 % 2, "Li Bai")
                    .await?,
            );
        }
        users.push((user_id, token, bots));
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (u, (_, token, bots)) in users.iter().cloned().enumerate() {
        let stack_clients = [stack.client(0), stack.client(1)];
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for m in 0..MESSAGES_PER_USER {
                let client = &stack_clients[(u + m) % 2];
                let bot = bots[m % bots.len()];
                let sent = Instant::now();
                let reply = client
                    .post_json(
                        "/chat/new_chat",
                        &json!({ "chatbot_id": bot, "input": format!("u{u} m{m}") }),
                        Some(&token),
                    )
                    .await?;
                anyhow::ensure!(reply.status == 200, "u{u} m{m}: {reply:?}");
                anyhow::ensure!(
                    reply.body["data"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(&format!("to: u{u} m{m}"))),
                    "u{u} m{m} got someone else's reply: {reply:?}"
                );
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let total = USERS * MESSAGES_PER_USER;
    println!(
        "scale-out: {total} messages from {USERS} users via 2 apis and 3 workers in {:.2}s = {:.1} msg/s; post→visible reply p50 {} ms, p99 {} ms",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentile(0.50).as_millis(),
        percentile(0.99).as_millis(),
    );

    let pool = stack.pool()?;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE event_type = 'UserMessagePosted'").await?,
        total as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE event_type = 'BotReplyGenerated'").await?,
        total as i64
    );
    assert_eq!(
        count("SELECT COUNT(DISTINCT JSON_UNQUOTE(JSON_EXTRACT(payload, '$.reply_to'))) FROM events WHERE event_type = 'BotReplyGenerated'").await?,
        total as i64,
        "one reply per message"
    );

    // Every conversation in order: user, reply, user, reply... each reply right after its message.
    for (user_id, token, bots) in &users {
        let list = stack
            .client(0)
            .get("/chat/list?format=object", Some(token))
            .await?;
        let listed: HashMap<i64, serde_json::Value> = list.body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|row| (row["chatbot_id"].as_i64().unwrap_or_default(), row))
            .collect();
        for bot in bots {
            let rows = history_rows(&pool, *user_id, *bot).await?;
            assert_eq!(rows.len(), 2 * MESSAGES_PER_USER / BOTS_PER_USER);
            for (i, pair) in rows.chunks(2).enumerate() {
                assert_eq!(pair[0].seq, 2 * i as i64 + 1);
                assert_eq!((pair[0].by_user, pair[1].by_user), (1, 0));
                assert_eq!(
                    pair[1].reply_to.as_deref(),
                    Some(pair[0].message_id.as_str())
                );
                assert_eq!(
                    (pair[0].status.as_str(), pair[1].status.as_str()),
                    ("done", "done")
                );
            }
            let last = rows
                .last()
                .ok_or_else(|| anyhow::anyhow!("empty history"))?;
            let row = &listed[bot];
            assert_eq!(
                row["content"].as_str(),
                Some(last.content.as_str()),
                "chat/list shows the latest message"
            );
            assert_eq!(row["seq"].as_i64(), Some(last.seq));
        }
    }

    // The read models applied the whole log: no position was skipped.
    let head = count("SELECT position FROM event_log_head").await?;
    assert_eq!(
        count("SELECT COUNT(*) FROM events").await?,
        head,
        "positions are gapless"
    );
    assert_eq!(
        count("SELECT CAST(MAX(global_position) AS SIGNED) FROM events").await?,
        head
    );
    assert_eq!(
        count("SELECT position FROM projection_checkpoint").await?,
        head,
        "projections are at the head"
    );
    // A reply is visible as soon as its event commits; the relay marks its outbox row
    // sent a moment later, once the broker confirms it.
    system_tests::eventually(Duration::from_secs(10), "every event published", || {
        let unsent = count("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL");
        async move { Ok((unsent.await? == 0).then_some(())) }
    })
    .await?;
    stack.teardown().await
}

/// Two quick posts to one conversation: replies come in order, and the second reply
/// was generated with the first message and its reply in its context.
#[tokio::test]
async fn quick_successive_posts_are_answered_in_order_with_full_context() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 2,
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(300));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("quick").await?;
    for input in ["first", "second"] {
        client.post_later(&token, bot, input).await?;
    }
    let pool = stack.pool()?;
    let rows = system_tests::eventually(Duration::from_secs(30), "both replies", || {
        let pool = pool.clone();
        async move {
            let rows = history_rows(&pool, user, bot).await?;
            Ok((rows.iter().filter(|r| r.by_user == 0).count() == 2).then_some(rows))
        }
    })
    .await?;
    let replies: Vec<_> = rows.iter().filter(|r| r.by_user == 0).collect();
    let users: Vec<_> = rows.iter().filter(|r| r.by_user == 1).collect();
    assert_eq!(
        replies[0].reply_to.as_deref(),
        Some(users[0].message_id.as_str()),
        "the first message is answered first"
    );
    assert_eq!(
        replies[1].reply_to.as_deref(),
        Some(users[1].message_id.as_str())
    );

    let second = stack
        .model
        .requests()
        .into_iter()
        .rev()
        .find(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .is_some_and(|c| c.ends_with("] second"))
        })
        .ok_or_else(|| anyhow::anyhow!("no model call for the second message"))?;
    let turns = system_tests::fake_openai::turns(&second);
    assert_eq!(
        turns,
        vec![
            ("user".into(), "first".into()),
            ("assistant".into(), replies[0].content.clone()),
            ("user".into(), "second".into())
        ]
    );
    stack.teardown().await
}
