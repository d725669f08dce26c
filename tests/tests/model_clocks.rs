//! How long a streamed model answer may take, and when it counts as finished
//! (issue 18, items 12, 15 and 16), against the real binaries and a fake model:
//! - the first text must come within `MODEL_FIRST_TOKEN_SECS`;
//! - no pause between chunks may pass `MODEL_IDLE_SECS`, but a long answer that
//!   keeps streaming is not cut short;
//! - a connection that breaks mid-answer is retried, not failed for good;
//! - an answer is complete at `finish_reason`, with or without `[DONE]`;
//! - an answer over `MAX_REPLY_BYTES` fails at once, with no retry and no
//!   redelivery.

use std::time::{Duration, Instant};

use serde_json::Value;

use system_tests::{history_rows, Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(30);

async fn stack_with(env: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let mut all = vec![
        ("WORKER_ROLES".to_string(), "replies".to_string()),
        ("MODEL_MAX_ATTEMPTS".to_string(), "2".to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Stack::start(StackOptions {
        env: all,
        ..Default::default()
    })
    .await
}

/// Posts one message and waits until its outcome is in the history: the reply row.
async fn outcome(stack: &Stack, user: &str, input: &str) -> anyhow::Result<Value> {
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot(user).await?;
    client.post_later(&token, bot, input).await?;
    let path = format!("/chat/history?chatbot_id={bot}&format=object");
    system_tests::eventually(WAIT, "the message's outcome", || async {
        let rows = client.get(&path, Some(&token)).await?.body["data"].clone();
        Ok(rows
            .as_array()
            .and_then(|rows| rows.get(1).cloned())
            .filter(|row| row["status"] != "pending"))
    })
    .await
}

#[tokio::test]
async fn an_answer_that_keeps_streaming_is_not_cut_short_but_a_silent_one_is() -> anyhow::Result<()>
{
    let stack = stack_with(&[("MODEL_FIRST_TOKEN_SECS", "2"), ("MODEL_IDLE_SECS", "1")]).await?;
    // About 4 s of streaming, four times the idle limit, in chunks 250 ms apart.
    stack.model.set_chunk_delay(Duration::from_millis(250));
    let started = Instant::now();
    let row = outcome(&stack, "slow_writer", "tell me a long story please").await?;
    assert_eq!(row["status"], "done", "{row}");
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(stack.model.calls(), 1, "one call, no retry");

    // Now the model pauses 1.5 s between chunks: past the idle limit.
    stack.model.set_chunk_delay(Duration::from_millis(1500));
    let row = outcome(&stack, "stalled", "hello there").await?;
    assert_eq!(row["status"], "failed", "{row}");
    let reason = row["content"].as_str().unwrap_or_default();
    assert!(reason.contains("went quiet for 1s"), "{reason}");
    assert_eq!(stack.model.calls(), 3, "the stalled answer was tried twice");
    stack.teardown().await
}

#[tokio::test]
async fn the_first_text_must_come_in_time() -> anyhow::Result<()> {
    let stack = stack_with(&[("MODEL_FIRST_TOKEN_SECS", "1")]).await?;
    stack.model.set_latency(Duration::from_millis(2500));
    let row = outcome(&stack, "waiting", "anyone there?").await?;
    assert_eq!(row["status"], "failed", "{row}");
    let reason = row["content"].as_str().unwrap_or_default();
    assert!(reason.contains("sent nothing within 1s"), "{reason}");
    assert_eq!(stack.model.calls(), 2, "both attempts timed out");

    stack.model.set_latency(Duration::from_millis(200));
    let row = outcome(&stack, "in_time", "quick one").await?;
    assert_eq!(row["status"], "done", "{row}");
    stack.teardown().await
}

#[tokio::test]
async fn a_connection_broken_mid_answer_is_retried() -> anyhow::Result<()> {
    let stack = stack_with(&[]).await?;
    stack.model.break_next_stream_after(3);
    let row = outcome(&stack, "flaky_net", "say something").await?;
    assert_eq!(
        row["status"], "done",
        "a transport error mid-stream is transient: {row}"
    );
    assert_eq!(stack.model.calls(), 2, "the broken attempt, then one more");
    assert!(row["content"]
        .as_str()
        .unwrap_or_default()
        .contains("to: say something"));
    stack.teardown().await
}

#[tokio::test]
async fn an_answer_is_complete_when_the_model_says_it_finished() -> anyhow::Result<()> {
    let stack = stack_with(&[]).await?;
    // The last chunk has `finish_reason: "stop"`; no `[DONE]`, and the
    // connection stays open.
    stack.model.hold_open_after_finish(true);
    let started = Instant::now();
    let row = outcome(&stack, "no_done", "are you finished").await?;
    assert_eq!(row["status"], "done", "{row}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "taken as finished at once, not after a timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(stack.model.calls(), 1);
    stack.teardown().await
}

#[tokio::test]
async fn an_oversized_answer_fails_once_with_no_retry_and_no_redelivery() -> anyhow::Result<()> {
    let stack = stack_with(&[("MAX_REPLY_BYTES", "262144")]).await?;
    stack.model.pad_answers(1 << 20);
    let row = outcome(&stack, "too_much", "write a novel").await?;
    assert_eq!(row["status"], "failed", "{row}");
    let reason = row["content"].as_str().unwrap_or_default();
    assert!(
        reason.contains("longer than the limit of 262144 bytes"),
        "{reason}"
    );
    // Nothing tries again: not the worker, not the broker.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.model.calls(), 1, "one call for an oversized answer");
    let pool = stack.pool()?;
    let (user, bot): (i64, i64) =
        sqlx::query_as("SELECT user_id, chatbot_id FROM chat_history LIMIT 1")
            .fetch_one(&pool)
            .await?;
    assert_eq!(history_rows(&pool, user, bot).await?.len(), 2);
    let replies: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE event_type IN ('BotReplyGenerated', 'BotReplyFailed')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(replies, 1);
    pool.close().await;
    stack.teardown().await
}
