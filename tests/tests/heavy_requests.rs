//! No single request, and no single user, can take the api's memory (issue 19,
//! item 6): the largest answers there are (a user's full `bots/list` and
//! `chat/list`, history pages of long messages), asked for many at a time, some
//! by clients that never read them, keep the api under its documented bound, and
//! it comes back near its baseline afterwards.
//!
//! The bound (README, "What one user can do to others"): at most
//! `HEAVY_READS_AT_ONCE` (8) such answers are in memory at once, each at most
//! about 4 MiB of text, so the api's peak stays within [`BOUND_MIB`] of its
//! baseline.

use std::time::Duration;

use serde_json::json;
use sqlx::MySqlPool;
use tokio::io::AsyncWriteExt;

use system_tests::seed::seed_conversation;
use system_tests::{rss_mib, Stack, StackOptions};

/// What the heavy reads may add to the api's RSS at their peak.
const BOUND_MIB: u64 = 160;
/// How near its baseline the api must come back.
const SETTLED_MIB: u64 = 40;
const BOTS: usize = 1000;
/// Conversations with a long latest message, for `chat/list`.
const LISTED: usize = 300;

/// `exchanges` message-and-reply pairs of `chars` characters each.
async fn seed(
    pool: &MySqlPool,
    user: i64,
    bot: i64,
    exchanges: usize,
    chars: usize,
) -> anyhow::Result<()> {
    let text = "y".repeat(chars);
    seed_conversation(pool, (user, bot), exchanges, |_| {
        (text.clone(), text.clone())
    })
    .await
}

/// Asks for `path` on a raw connection and never reads the answer: it holds a
/// turn until the answer is in the kernel's buffers, or `SEND_STALL_SECS` cuts
/// the connection off.
async fn never_read(port: u16, path: &str, token: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    Ok(socket)
}

#[tokio::test]
async fn the_largest_answers_at_once_stay_under_the_bound_and_the_api_comes_back_down(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![("SEND_STALL_SECS".into(), "3".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, first_bot) = client.user_with_bot("hoarder").await?;

    // As many bots as a user may have, each with the longest persona.
    let persona = "p".repeat(2000);
    let mut bots = vec![first_bot];
    let names: Vec<usize> = (1..BOTS).collect();
    for chunk in names.chunks(16) {
        let created = futures::future::join_all(chunk.iter().map(|i| {
            let (client, token, persona) = (&client, &token, &persona);
            async move {
                let name = format!("Hoard {i}");
                client.create_bot(token, &name, 1, persona).await
            }
        }))
        .await;
        for bot in created {
            bots.push(bot?);
        }
    }
    let over = client
        .post_json(
            "/bots/create",
            &json!({ "chatbot_name": "one too many", "chatbot_type": 0 }),
            Some(&token),
        )
        .await?;
    assert_ne!(over.body["code"], 200, "the cap holds: {:?}", over.body);

    // A conversation of about 10 MB of long messages, and many conversations
    // whose latest message is long.
    let pool = stack.pool()?;
    seed(&pool, user, first_bot, 1_200, 4_000).await?;
    for bot in &bots[1..=LISTED] {
        seed(&pool, user, *bot, 1, 16_000).await?;
    }

    let pid = stack.apis[0]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no api pid"))?;
    let port = stack.apis[0]
        .port
        .ok_or_else(|| anyhow::anyhow!("no api port"))?;
    let baseline = rss_mib(pid)?;
    let peak_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = peak_so_far.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(rss) = rss_mib(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Clients that ask for the largest pages and never read them.
    let mut stalled = Vec::new();
    for i in 0..10 {
        let path = format!("/chat/history?chatbot_id={first_bot}&after={i}&limit=2000");
        stalled.push(never_read(port, &path, &token).await?);
    }
    // Three rounds of 16 bots/lists, 16 chat/lists and 48 uncached history
    // pages, all at once.
    let mut sizes = (0usize, 0usize, 0usize);
    for round in 0..3 {
        let lists = (0..16).map(|_| {
            let (client, token) = (&client, &token);
            async move {
                client
                    .post_json("/bots/list", &json!({}), Some(token))
                    .await
            }
        });
        let chats = (0..16).map(|i| {
            // Half of them plain (cached after the first), half in pages.
            let path = if i % 2 == 0 {
                "/chat/list".to_string()
            } else {
                format!("/chat/list?limit={}", 900 + i)
            };
            let client = client.clone();
            let token = token.clone();
            async move { client.get(&path, Some(&token)).await }
        });
        let pages = (0..48).map(|i| {
            let path = format!(
                "/chat/history?chatbot_id={first_bot}&after={}&limit=2000",
                round * 48 + i
            );
            let client = client.clone();
            let token = token.clone();
            async move { client.get(&path, Some(&token)).await }
        });
        let (lists, chats, pages) = tokio::join!(
            futures::future::join_all(lists),
            futures::future::join_all(chats),
            futures::future::join_all(pages)
        );
        for answer in lists {
            let answer = answer?;
            assert_eq!(answer.body["code"], 200, "bots/list");
            sizes.0 = answer.body["data"].as_array().map_or(0, |a| a.len());
        }
        for answer in chats {
            let answer = answer?;
            assert_eq!(answer.status, 200, "chat/list");
            sizes.1 = answer.body["data"].as_array().map_or(0, |a| a.len());
        }
        for answer in pages {
            let answer = answer?;
            assert_eq!(answer.status, 200, "history");
            sizes.2 = answer.body["data"].as_array().map_or(0, |a| a.len());
        }
    }
    let peak = peak_so_far.load(std::sync::atomic::Ordering::SeqCst);
    watcher.abort();
    assert_eq!(sizes.0, BOTS, "bots/list holds every bot");
    assert!(
        sizes.1 > 0 && sizes.1 < LISTED + 1,
        "chat/list stops at its byte budget: {} rows",
        sizes.1
    );
    assert!(
        sizes.2 > 0 && sizes.2 < 2000,
        "a history page of long messages stops at its byte budget: {} rows",
        sizes.2
    );

    drop(stalled);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_mib(pid)?;
    println!(
        "api RSS: {baseline} MiB at rest; peak {peak} MiB (+{}) under {BOTS}-bot lists, \
         {}-row chat lists and 2 MiB history pages, 80 at a time with 10 clients not reading; \
         {settled} MiB 5 s later",
        peak.saturating_sub(baseline),
        sizes.1,
    );
    assert!(
        peak <= baseline + BOUND_MIB,
        "peak {peak} MiB is over the bound ({baseline} + {BOUND_MIB})"
    );
    assert!(
        settled <= baseline + SETTLED_MIB,
        "the api stayed at {settled} MiB (baseline {baseline})"
    );
    pool.close().await;
    stack.teardown().await
}
