//! Long-lived responses end when what authorized them does (issue 18, items 5,
//! 11, 17 and 21), against the real binaries:
//! - a stream and a waiting long-poll end at logout, at the revocation of a
//!   session by a reused refresh token, when the access token expires, and when
//!   the bot is deleted; the client is then refused, or resumes with a new token;
//! - SIGTERM ends open streams and long-polls, and the api exits promptly;
//! - deltas carry their attempt and index: after a retry the text a client
//!   assembles restarts, and a client that joins mid-reply never gets a piece
//!   twice;
//! - cursors at the edge of `i64` are refused or served, never overflowed.

use std::time::{Duration, Instant};

use serde_json::json;

use system_tests::sse::{SseEvent, SseStream};
use system_tests::{Client, Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(20);

fn stream_path(bot: i64) -> String {
    format!("/chat/stream?chatbot_id={bot}")
}

/// Reads events until the server ends the stream; returns them, and how long
/// that took.
async fn until_ended(sse: &mut SseStream, timeout: Duration) -> (Vec<SseEvent>, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    while let Ok(event) = sse.next(timeout.saturating_sub(started.elapsed())).await {
        seen.push(event);
    }
    (seen, started.elapsed())
}

async fn ended_within(
    sse: &mut SseStream,
    limit: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let (seen, took) = until_ended(sse, limit + Duration::from_secs(5)).await;
    anyhow::ensure!(
        took < limit,
        "{what}: the stream went on for {took:?} (events: {seen:?})"
    );
    Ok(took)
}

#[tokio::test]
async fn a_stream_and_a_long_poll_end_at_logout() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, access, refresh) = client.signup("leaver", "pass word").await?;
    let bot = client.create_bot(&access, "Bot", 0, "").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&access), None).await?;
    assert_eq!(sse.status, 200);
    let poll = {
        let (client, access) = (client.clone(), access.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = client
                .get(
                    &format!("/chat/history?chatbot_id={bot}&after=0&wait=30"),
                    Some(&access),
                )
                .await;
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logout = client
        .post_json("/logout/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(logout.status, 200, "{logout:?}");
    let took = ended_within(&mut sse, Duration::from_secs(2), "after logout").await?;
    println!("logout to the stream's end: {took:?}");
    let (reply, waited) = poll.await?;
    let reply = reply?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"], json!([]), "answered without data");
    assert!(
        waited < Duration::from_secs(5),
        "the long-poll waited {waited:?}"
    );

    // A message posted afterwards from another login reaches no stream of the
    // old session, which is refused from now on.
    let (_, other, _) = client.login("leaver", "pass word").await?;
    client.post_later(&other, bot, "after logout").await?;
    let again = SseStream::open(&client.base, &stream_path(bot), Some(&access), None).await?;
    assert_eq!(again.status, 401);
    let fresh = SseStream::open(&client.base, &stream_path(bot), Some(&other), None).await?;
    assert_eq!(fresh.status, 200, "a fresh token resumes");
    stack.teardown().await
}

#[tokio::test]
async fn a_stream_ends_when_its_session_is_revoked_on_another_api() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 2,
        ..Default::default()
    })
    .await?;
    let (first, second) = (stack.client(0), stack.client(1));
    let (_, access, refresh) = first.signup("robbed", "pass word").await?;
    let bot = first.create_bot(&access, "Bot", 0, "").await?;
    let mut sse = SseStream::open(&first.base, &stream_path(bot), Some(&access), None).await?;
    assert_eq!(sse.status, 200);
    // The owner refreshes on the second api; a thief then replays the spent
    // refresh token there, which revokes the whole session.
    let rotated = second
        .post_json("/login/refresh/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(rotated.status, 200);
    let reused = second
        .post_json("/login/refresh/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(reused.status, 401);
    let took = ended_within(&mut sse, Duration::from_secs(3), "after the reuse").await?;
    println!("revocation on another api to the stream's end: {took:?}");
    stack.teardown().await
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_when_its_bot_is_deleted() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("ACCESS_TOKEN_TTL_SECS".into(), "3".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, access, refresh) = client.signup("expiring", "pass word").await?;
    let bot = client.create_bot(&access, "Bot", 0, "").await?;
    let opened = Instant::now();
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&access), None).await?;
    assert_eq!(sse.status, 200);
    let (_, _) = until_ended(&mut sse, Duration::from_secs(15)).await;
    let lived = opened.elapsed();
    assert!(
        lived < Duration::from_secs(6),
        "the stream outlived its 3 s token: {lived:?}"
    );

    let fresh = client
        .post_json("/login/refresh/", &json!({ "refresh": refresh }), None)
        .await?;
    let access = fresh.body["access"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&access), None).await?;
    assert_eq!(sse.status, 200);
    let deleted = client
        .post_json("/bots/delete", &json!({ "chatbot_id": bot }), Some(&access))
        .await?;
    assert_eq!(deleted.body["code"], 200, "{deleted:?}");
    ended_within(&mut sse, Duration::from_secs(2), "after the bot's deletion").await?;
    stack.teardown().await
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_long_polls_and_the_api_exits() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![("SSE_MAX_STREAMS_PER_USER".into(), "200".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, access, bot) = client.user_with_bot("deployed").await?;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let sse = SseStream::open(&client.base, &stream_path(bot), Some(&access), None).await?;
        assert_eq!(sse.status, 200);
        streams.push(sse);
    }
    let poll = {
        let (client, access) = (client.clone(), access.clone());
        tokio::spawn(async move {
            client
                .get(
                    &format!("/chat/history?chatbot_id={bot}&after=0&wait=60"),
                    Some(&access),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    stack.apis[0].signal("TERM")?;
    let clean = stack.apis[0].wait(Duration::from_secs(15)).await?;
    let took = signalled.elapsed();
    println!("SIGTERM to exit with 100 open streams and a long-poll: {took:?}");
    assert!(clean, "the api exits cleanly");
    for sse in &mut streams {
        assert!(sse.next(Duration::from_secs(2)).await.is_err(), "ended");
    }
    let polled = poll.await??;
    assert_eq!(polled.status, 200);
    assert_eq!(polled.body["data"], json!([]));
    stack.teardown().await
}

/// The text a client shows, applying `reset` as the contract says.
fn assembled(events: &[SseEvent], message_id: &str) -> String {
    let mut text = String::new();
    for event in events {
        if event.data["message_id"] != json!(message_id) {
            continue;
        }
        match event.event.as_str() {
            "reset" => text.clear(),
            "delta" => text.push_str(event.data["text"].as_str().unwrap_or_default()),
            _ => {}
        }
    }
    text
}

#[tokio::test]
async fn after_a_retry_and_a_join_mid_reply_clients_assemble_the_final_text() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions {
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(60));
    stack.model.cut_next_stream_after(6);
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("retried").await?;
    let mut early = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    let id = client
        .post_later(
            &token,
            bot,
            "one two three four five six seven eight nine ten",
        )
        .await?;
    // Join while the second attempt is being written.
    let mut seen = early.until("reset", WAIT).await?;
    seen.extend(early.until("delta", WAIT).await?);
    seen.push(early.next(WAIT).await?);
    let mut late = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    seen.extend(early.until("reply", WAIT).await?);
    let joined = late.until("reply", WAIT).await?;
    for events in [&seen, &joined] {
        let content = events
            .last()
            .and_then(|e| e.data["content"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(content.contains("to: one two"), "{events:?}");
        // From the last reset on (the attempt that wrote the reply), what the
        // client shows at every step is a start of the final reply.
        let last_reset = events.iter().rposition(|e| e.event == "reset").unwrap_or(0);
        for upto in last_reset + 1..=events.len() {
            let so_far = assembled(&events[..upto], &id);
            assert!(
                content.starts_with(&so_far),
                "after {upto} events the client shows {so_far:?}, not a start of {content:?}"
            );
        }
        assert_eq!(assembled(events, &id), content, "{events:?}");
        assert!(events
            .iter()
            .filter(|e| e.event == "delta")
            .all(|e| e.data["attempt"].is_string() && e.data["index"].is_u64()));
    }
    assert!(seen.iter().any(|e| e.event == "reset"));
    stack.teardown().await
}

#[tokio::test]
async fn cursors_at_the_edge_of_i64_do_not_overflow() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client: Client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("edgy").await?;
    let max = i64::MAX;
    let polled = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&after={max}&wait=1"),
            Some(&token),
        )
        .await?;
    assert_eq!(polled.status, 200, "{polled:?}");
    assert_eq!(polled.body["data"], json!([]));
    let mut sse = SseStream::open(
        &client.base,
        &stream_path(bot),
        Some(&token),
        Some(&max.to_string()),
    )
    .await?;
    assert_eq!(sse.status, 200);
    client.post_later(&token, bot, "hello").await?;
    // No row comes after the largest seq (live deltas may), and the api lives on.
    let (seen, _) = until_ended(&mut sse, Duration::from_secs(3)).await;
    assert!(seen.iter().all(|e| e.id.is_none()), "{seen:?}");
    assert_eq!(client.get("/healthz", None).await?.status, 200);
    stack.teardown().await
}
