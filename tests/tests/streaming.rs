//! `GET /chat/stream` against the real binaries (issue 14): replies appear as they
//! are written, on any api, resumable by `seq`, ending cleanly when a worker dies.

use std::time::Duration;

use serde_json::json;

use system_tests::sse::{SseEvent, SseStream};
use system_tests::{Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(20);

fn stream_path(bot: i64) -> String {
    format!("/chat/stream?chatbot_id={bot}")
}

/// The text the deltas in `events` add up to.
fn deltas_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| e.data["text"].as_str())
        .collect()
}

fn replies_only() -> Vec<(String, String)> {
    vec![("WORKER_ROLES".into(), "replies".into())]
}

#[tokio::test]
async fn deltas_arrive_in_order_then_the_final_reply() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(30));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("streamed").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    assert_eq!(sse.status, 200);
    let id = client.post_later(&token, bot, "tell me a story").await?;
    let events = sse.until("reply", WAIT).await?;
    assert_eq!(
        events[0].event, "message",
        "the user's own message first: {events:?}"
    );
    assert_eq!(events[0].data["message_id"], json!(id));
    assert_eq!(events[0].id.as_deref(), Some("1"));
    let reply = events.last().map(|e| e.data.clone()).unwrap_or_default();
    let content = reply["content"].as_str().unwrap_or_default();
    assert!(
        events.iter().filter(|e| e.event == "delta").count() >= 3,
        "{events:?}"
    );
    assert!(events
        .iter()
        .filter(|e| e.event == "delta")
        .all(|e| e.id.is_none()));
    assert_eq!(
        deltas_text(&events),
        content,
        "the deltas, in order, are the reply"
    );
    assert_eq!(
        events.last().and_then(|e| e.id.clone()).as_deref(),
        Some("2")
    );
    assert_eq!(reply["status"], "done");
    stack.teardown().await
}

/// Issue 24: a reply written all at once goes out as a handful of deltas, not
/// one per token: text that follows a publish within 50 ms waits to go with it.
#[tokio::test]
async fn a_fast_reply_is_a_handful_of_deltas_not_one_per_token() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("coalesced").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    let words = "one two three four five six seven eight nine ten eleven twelve";
    client.post_later(&token, bot, words).await?;
    let events = sse.until("reply", WAIT).await?;
    let reply = events.last().map(|e| e.data.clone()).unwrap_or_default();
    let content = reply["content"].as_str().unwrap_or_default();
    let tokens = content.split_inclusive(' ').count();
    let deltas = events.iter().filter(|e| e.event == "delta").count();
    assert!(tokens >= 15, "{content}");
    assert!(
        (1..=tokens / 3).contains(&deltas),
        "{deltas} deltas for {tokens} tokens: {events:?}"
    );
    assert!(content.starts_with(&deltas_text(&events)), "{events:?}");
    stack.teardown().await
}

#[tokio::test]
async fn a_client_joining_mid_reply_gets_the_text_so_far_then_the_rest() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(150));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("late").await?;
    let mut early = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    client
        .post_later(&token, bot, "a long answer please")
        .await?;
    // Wait until the reply is being written, then join.
    early.until("delta", WAIT).await?;
    early.next(WAIT).await?;
    let mut late = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    let events = late.until("reply", WAIT).await?;
    assert_eq!(events[0].event, "message");
    assert_eq!(
        events[1].event, "delta",
        "the text so far comes next: {events:?}"
    );
    let so_far = events[1].data["text"].as_str().unwrap_or_default();
    assert!(
        so_far.split(' ').count() >= 2,
        "more than one word so far: {so_far:?}"
    );
    let content = events
        .last()
        .and_then(|e| e.data["content"].as_str())
        .unwrap_or_default();
    assert_eq!(
        deltas_text(&events),
        content,
        "the text so far, then the rest"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_resumed_stream_misses_nothing_and_repeats_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("resumer").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    client.post_later(&token, bot, "first").await?;
    let first = sse.until("reply", WAIT).await?;
    let last_id = first.last().and_then(|e| e.id.clone()).unwrap_or_default();
    drop(sse); // the connection drops
    let answered = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "second" }),
            Some(&token),
        )
        .await?;
    assert_eq!(answered.status, 200);
    let mut resumed = SseStream::open(
        &client.base,
        &stream_path(bot),
        Some(&token),
        Some(&last_id),
    )
    .await?;
    let events = resumed.until("reply", WAIT).await?;
    let rows: Vec<(String, Option<String>)> = events
        .iter()
        .filter(|e| e.event != "delta")
        .map(|e| (e.event.clone(), e.id.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("message".into(), Some("3".into())),
            ("reply".into(), Some("4".into()))
        ]
    );
    assert_eq!(events[0].data["content"], "second");
    // `after` is the same cursor.
    let mut by_after = SseStream::open(
        &client.base,
        &format!("{}&after=2", stream_path(bot)),
        Some(&token),
        None,
    )
    .await?;
    assert_eq!(by_after.next(WAIT).await?.id.as_deref(), Some("3"));
    stack.teardown().await
}

#[tokio::test]
async fn a_reply_cut_off_mid_stream_is_retried_or_ends_as_failed() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("cutoff").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;

    // Cut after two words: the attempt fails, the next one finishes, and the
    // final reply is the whole answer, not the two words.
    stack.model.cut_next_stream_after(2);
    client.post_later(&token, bot, "first try").await?;
    let events = sse.until("reply", WAIT).await?;
    let reply = events.last().map(|e| e.data.clone()).unwrap_or_default();
    assert!(
        reply["content"]
            .as_str()
            .is_some_and(|c| c.ends_with("to: first try")),
        "{reply}"
    );
    assert_eq!(stack.model.calls(), 2, "the cut attempt was retried");

    // Cut off, then refused (no attempt can finish): a failed event ends the reply
    // whose text had begun to stream.
    stack.model.cut_next_stream_after(2);
    stack.model.set_chunk_delay(Duration::from_millis(100));
    client.post_later(&token, bot, "second try").await?;
    // Once the cut attempt is under way, the retry will be refused.
    stack.model.wait_for_calls(3, WAIT).await?;
    stack.model.fail_next(400, "invalid_request_error", None);
    let events = sse.until("failed", WAIT).await?;
    assert!(
        events.iter().any(|e| e.event == "delta"),
        "text was streamed before the failure: {events:?}"
    );
    let failed = events.last().map(|e| e.data.clone()).unwrap_or_default();
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["content"]
            .as_str()
            .is_some_and(|c| c.contains("400")),
        "{failed}"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_stream_on_one_api_shows_a_message_posted_to_another() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 2,
        env: replies_only(),
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(20));
    let (a, b) = (stack.client(0), stack.client(1));
    let (_, token, bot) = a.user_with_bot("replicated").await?;
    let mut on_b = SseStream::open(&b.base, &stream_path(bot), Some(&token), None).await?;
    a.post_later(&token, bot, "posted to A").await?;
    let events = on_b.until("reply", WAIT).await?;
    assert_eq!(events[0].data["content"], "posted to A");
    let content = events
        .last()
        .and_then(|e| e.data["content"].as_str())
        .unwrap_or_default();
    assert_eq!(deltas_text(&events), content, "B forwarded every delta");
    stack.teardown().await
}

#[tokio::test]
async fn a_worker_killed_mid_stream_ends_in_one_final_reply() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: [
            replies_only(),
            vec![("CONVERSATION_LEASE_SECS".into(), "2".into())],
        ]
        .concat(),
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(200));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("crashy").await?;
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    client
        .post_later(&token, bot, "are you still there?")
        .await?;
    sse.until("delta", WAIT).await?;
    stack.workers[0].signal("KILL")?;
    stack.workers[0].wait(Duration::from_secs(10)).await?;
    stack.model.set_chunk_delay(Duration::from_millis(20));
    stack.spawn_worker().await?;
    let events = sse.until("reply", Duration::from_secs(40)).await?;
    let replies = events.iter().filter(|e| e.event == "reply").count();
    assert_eq!(replies, 1, "one final reply: {events:?}");
    // Nothing else arrives for it.
    assert!(sse.next(Duration::from_secs(2)).await.is_err());
    stack.teardown().await
}

#[tokio::test]
async fn streams_are_capped_per_user_and_freed_when_clients_leave() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![
            ("SSE_MAX_STREAMS_PER_USER".into(), "2".into()),
            ("SSE_KEEPALIVE_SECS".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("capped").await?;
    let first = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    let second = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    assert_eq!((first.status, second.status), (200, 200));
    let third = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    assert_eq!(third.status, 429);
    // Other users are not affected.
    let (_, other, other_bot) = client.user_with_bot("neighbour").await?;
    let theirs = SseStream::open(&client.base, &stream_path(other_bot), Some(&other), None).await?;
    assert_eq!(theirs.status, 200);
    // Clients that go away free their slots (the keep-alive notices a dead peer).
    drop((first, second, third));
    let reopened =
        system_tests::eventually(Duration::from_secs(10), "the slots to be freed", || {
            let (base, token) = (client.base.clone(), token.clone());
            async move {
                let a = SseStream::open(&base, &stream_path(bot), Some(&token), None).await?;
                let b = SseStream::open(&base, &stream_path(bot), Some(&token), None).await?;
                Ok((a.status == 200 && b.status == 200).then_some((a, b)))
            }
        })
        .await?;
    drop(reopened);
    // Strict auth, as on every chat route.
    let anonymous = SseStream::open(&client.base, &stream_path(bot), None, None).await?;
    assert_eq!(anonymous.status, 401);
    let foreign = SseStream::open(&client.base, &stream_path(bot), Some(&other), None).await?;
    assert_eq!(foreign.status, 404);
    stack.teardown().await
}

#[tokio::test]
async fn a_stream_carries_on_across_a_broker_reconnect_and_keeps_idle_connections_alive(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_broker: true,
        env: [
            replies_only(),
            vec![("SSE_KEEPALIVE_SECS".into(), "1".into())],
        ]
        .concat(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("reconnected").await?;

    // An idle stream gets `: keep-alive` comments, so proxies do not cut it.
    let response = reqwest::Client::new()
        .get(format!("{}{}", client.base, stream_path(bot)))
        .bearer_auth(&token)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(3), futures::StreamExt::next(&mut body))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
    assert!(
        String::from_utf8_lossy(&first).contains(": keep-alive"),
        "{first:?}"
    );
    drop(body);

    // The broker goes away and comes back while a client streams; a message sent
    // meanwhile (it waits in the outbox) still reaches the stream, with its reply.
    let mut sse = SseStream::open(&client.base, &stream_path(bot), Some(&token), None).await?;
    let proxy = stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    proxy.cut();
    client
        .post_later(&token, bot, "sent while the broker was away")
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let events = sse.until("reply", Duration::from_secs(40)).await?;
    assert_eq!(events[0].data["content"], "sent while the broker was away");
    let rows = events.iter().filter(|e| e.event != "delta").count();
    assert_eq!(rows, 2, "the message and its reply, once each: {events:?}");
    stack.teardown().await
}
