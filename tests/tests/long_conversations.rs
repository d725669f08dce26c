//! Conversations far longer than a page (issue 18, items 2 and 20), against the
//! real api:
//! - a stream over a 20,000-message conversation sends its first row at once and
//!   holds one page per stream, not the conversation, however many are open;
//! - a plain `GET /chat/history` of a conversation over the cap ends at the newest
//!   row (so a new message shows), and `before=` pages back to the first.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::MySqlPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use system_tests::seed::seed_conversation;
use system_tests::{rss_mib, Stack, StackOptions};

use events::config::ExposeSecret;

/// Writes `rows` answered messages straight into the conversation's history
/// read model (what the GET routes and the stream read), in one statement.
async fn seed_history(pool: &MySqlPool, user: i64, bot: i64, rows: i64) -> anyhow::Result<()> {
    // MySQL and MariaDB name their recursion limits differently.
    let mut conn = pool.acquire().await?;
    for limit in [
        "SET SESSION cte_max_recursion_depth = 1000000",
        "SET SESSION max_recursive_iterations = 1000000",
    ] {
        sqlx::query(limit).execute(&mut *conn).await.ok();
    }
    sqlx::query(
        "INSERT INTO chat_history \
         (user_id, chatbot_id, seq, message_id, reply_to, by_user, content, status, created_at) \
         WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         SELECT ?, ?, i, UUID(), NULL, i % 2, CONCAT('row ', i, ' ', REPEAT('y', 200)), \
                'done', NOW(6) FROM n",
    )
    .bind(rows)
    .bind(user)
    .bind(bot)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Opens a stream and reads only its first bytes, then stops reading, as a slow
/// or stalled client does; the connection stays open.
async fn stalled_stream(port: u16, bot: i64, token: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "GET /chat/stream?chatbot_id={bot} HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await?;
    let mut first = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut first)).await??;
    let head = String::from_utf8_lossy(&first[..read]);
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(socket)
}

#[tokio::test]
async fn a_stream_over_a_long_conversation_holds_a_page_not_the_conversation() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions {
        env: vec![("SSE_MAX_STREAMS_PER_USER".into(), "50".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("chatty").await?;
    let pool = stack.pool()?;
    seed_history(&pool, user, bot, 20_000).await?;
    let port = stack.apis[0].port.unwrap_or_default();
    let pid = stack.apis[0].pid().unwrap_or_default();

    let started = Instant::now();
    let mut sse = system_tests::sse::SseStream::open(
        &client.base,
        &format!("/chat/stream?chatbot_id={bot}"),
        Some(&token),
        None,
    )
    .await?;
    let first = sse.next(Duration::from_secs(10)).await?;
    let to_first = started.elapsed();
    println!("first row of a 20,000-message stream after {to_first:?}");
    assert_eq!(first.id.as_deref(), Some("1"));
    let mut last = 1;
    for _ in 1..20_000 {
        let event = sse.next(Duration::from_secs(10)).await?;
        last = event
            .id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or(last);
    }
    assert_eq!(last, 20_000, "every row, in order");
    drop(sse);

    let before = rss_mib(pid)?;
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(stalled_stream(port, bot, &token).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(pid)?;
    println!("api RSS with 40 stalled streams over 20,000 messages: {before} -> {after} MiB");
    // The whole conversation is about 4.5 MB of rows; 40 copies would be 180 MB.
    assert!(
        after < before + 40,
        "the streams hold the conversation: RSS {before} -> {after} MiB"
    );
    drop(stalled);
    pool.close().await;
    stack.teardown().await
}

fn seqs(body: &Value) -> Vec<i64> {
    body["data"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r[3].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn plain_history_over_the_cap_ends_at_the_newest_row_and_pages_back() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("veteran").await?;
    let pool = stack.pool()?;
    seed_conversation(&pool, (user, bot), 5_100, |i| {
        (format!("message {i}"), format!("reply {i}"))
    })
    .await?;
    let posted = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "still there?" }),
            Some(&token),
        )
        .await?;
    assert_eq!(posted.status, 200, "{posted:?}");

    let plain = client
        .get(&format!("/chat/history?chatbot_id={bot}"), Some(&token))
        .await?;
    let page = seqs(&plain.body);
    assert_eq!(page.len(), 2_000, "capped");
    assert_eq!(page.first(), Some(&8_203), "oldest first within the page");
    assert_eq!(
        page.last(),
        Some(&10_202),
        "ends at the newest row: the reply"
    );
    assert_eq!(plain.body["data"][1_998][0], "still there?");

    let back = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&before=8203&limit=500"),
            Some(&token),
        )
        .await?;
    assert_eq!(seqs(&back.body), (7_703..=8_202).collect::<Vec<_>>());
    let forward = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&after=10200&limit=5"),
            Some(&token),
        )
        .await?;
    assert_eq!(seqs(&forward.body), vec![10_201, 10_202]);
    let both = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&after=1&before=5"),
            Some(&token),
        )
        .await?;
    assert_eq!(both.status, 400, "{both:?}");
    pool.close().await;
    stack.teardown().await
}

/// Rows the server read through its handlers for one call of `activity_after`
/// on a single-connection pool.
async fn rows_read_for_activity(pool: &MySqlPool, user: i64, bot: i64) -> anyhow::Result<i64> {
    let reads = || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SHOW SESSION STATUS WHERE Variable_name IN \
             ('Handler_read_next', 'Handler_read_prev', 'Handler_read_rnd_next', 'Handler_read_key')",
        )
        .fetch_all(pool)
        .await?;
        Ok::<i64, anyhow::Error>(rows.iter().filter_map(|(_, v)| v.parse::<i64>().ok()).sum())
    };
    // What reading the counters costs by itself, measured twice over.
    let (a, b) = (reads().await?, reads().await?);
    let before = reads().await?;
    let (count, idle) =
        events::projections::ChatHistoryProjection::activity_after(pool, user, bot, 100, 6).await?;
    let after = reads().await?;
    anyhow::ensure!(count == 6, "six unsummarized messages counted, not {count}");
    anyhow::ensure!(idle.is_some(), "the conversation's last row is dated");
    Ok(after - before - (b - a))
}

/// A memory job's check of a conversation (how many messages memory has not
/// covered, and how long it has been idle) reads a handful of rows, whether the
/// conversation holds 200 rows or 20,000 (issue 18, item 4).
#[tokio::test]
async fn a_memory_jobs_check_costs_the_same_on_a_long_conversation() -> anyhow::Result<()> {
    let isolation = system_tests::Isolation::new();
    isolation.migrated_pool().await?.close().await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(isolation.database.url.expose_secret())
        .await?;
    seed_history(&pool, 1, 1, 200).await?;
    seed_history(&pool, 2, 1, 20_000).await?;
    let short = rows_read_for_activity(&pool, 1, 1).await?;
    let long = rows_read_for_activity(&pool, 2, 1).await?;
    println!("rows read by the memory check: {short} on 200 rows, {long} on 20,000 rows");
    assert!(
        long <= 60,
        "the check read {long} rows of a 20,000-row conversation"
    );
    assert!(long <= short + 10, "{long} rows read against {short}");
    pool.close().await;
    isolation.teardown().await
}
