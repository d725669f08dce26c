//! What each reply cost, and why it said what it said (issue 23), against the
//! real binaries and services, with the fake model reporting usage (and, in a
//! second mode, reporting none):
//! - usage on replies, stopped calls, memory refreshes and retried attempts,
//!   summed by `GET /chat/usage` and by `worker replay usage` alike, and a
//!   rebuild and `verify` of its read model;
//! - the caps on every call;
//! - a daily budget spent by concurrent messages overshoots by at most one cap,
//!   a message queued past it fails with no model call, and `new_chat` is then
//!   refused with 429, storing nothing;
//! - `explain` rebuilds the prompt of 100 replies (with memory refreshes, a bot
//!   edit, a stop and a regeneration among them) and finds each a match, names
//!   what an event changed after the fact, and says what an older reply left
//!   unrecorded.

use std::time::Duration;

use serde_json::{json, Value};
use system_tests::sse::SseStream;
use system_tests::{eventually, FakeOpenAi, Stack, StackOptions};

/// `worker replay <args>`: its exit status and output.
async fn replay(stack: &Stack, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let run = stack.replay(args).await?;
    Ok((run.ok, format!("{}{}", run.stdout, run.stderr)))
}

/// The payloads of every event of `event_type`, oldest first.
async fn payloads(stack: &Stack, event_type: &str) -> anyhow::Result<Vec<Value>> {
    system_tests::event_payloads(&stack.pool()?, event_type).await
}

fn billed(usage: &Value) -> (i64, i64) {
    let n = |field: &str| usage[field].as_i64().unwrap_or(0);
    (
        n("prompt_tokens") + n("failed_prompt_tokens"),
        n("completion_tokens") + n("failed_completion_tokens"),
    )
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

#[tokio::test]
async fn usage_is_recorded_for_every_call_and_summed_alike_by_the_route_and_the_log(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("MEMORY_EVERY_MESSAGES".into(), "2".into()),
            ("MAX_REPLY_TOKENS".into(), "300".into()),
            ("MEMORY_MAX_TOKENS".into(), "120".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("metered").await?;

    // A plain reply: the provider's count, and the caps on the request.
    client.chat(&token, bot, "how are you").await?;
    let request = stack.model.requests()[0].clone();
    assert_eq!(request["max_completion_tokens"], 300);
    assert_eq!(request["stream_options"]["include_usage"], true);
    let replies = payloads(&stack, "BotReplyGenerated").await?;
    let usage = &replies[0]["usage"];
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        Some(FakeOpenAi::prompt_tokens(&request))
    );
    let words = replies[0]["content"]
        .as_str()
        .map_or(0, |c| c.split_inclusive(' ').count());
    assert_eq!(usage["completion_tokens"].as_u64(), Some(words as u64));
    assert_eq!(usage["model"], "fake-model");
    assert_eq!(usage["attempts"], 1);
    assert!(usage.get("estimated").is_none_or(|e| e == false));
    assert!(usage["latency_ms"].as_u64().is_some());
    assert!(usage["first_token_ms"].as_u64().is_some());

    // A retried reply: the attempt that broke off mid-answer is counted too.
    stack.model.break_next_stream_after(3);
    // Words apart, so the broken attempt's text arrives before its error.
    stack.model.set_chunk_delay(Duration::from_millis(30));
    client.chat(&token, bot, "tell me more").await?;
    stack.model.set_chunk_delay(Duration::ZERO);
    let replies = payloads(&stack, "BotReplyGenerated").await?;
    let retried = &replies[1]["usage"];
    assert_eq!(retried["attempts"], 2, "{retried}");
    assert!(
        retried["failed_prompt_tokens"].as_u64() > Some(0),
        "{retried}"
    );
    assert!(retried["failed_completion_tokens"].as_u64() > Some(0));

    // Memory refreshes: both of their calls, capped at MEMORY_MAX_TOKENS.
    let summaries = eventually(Duration::from_secs(30), "a memory refresh", || {
        let stack = &stack;
        async move {
            let recorded = payloads(stack, "UserProfileUpdated").await?;
            Ok((!recorded.is_empty()).then_some(()))
        }
    })
    .await;
    summaries?;
    for event_type in ["ConversationSummarized", "UserProfileUpdated"] {
        let memory = payloads(&stack, event_type).await?;
        assert!(
            memory[0]["usage"]["prompt_tokens"].as_u64() > Some(0),
            "{event_type}"
        );
    }
    let memory_request = stack
        .model
        .requests()
        .into_iter()
        .find(|r| r.to_string().contains("long-term memory of a chatbot"))
        .unwrap_or_default();
    assert_eq!(memory_request["max_completion_tokens"], 120);

    // A stopped call: its partial cost, counted here (no usage chunk came).
    stack.model.pad_answers(40 * 1024);
    stack.model.set_chunk_delay(Duration::from_millis(100));
    let mut stream = SseStream::open(
        &client.base,
        &format!("/chat/stream?chatbot_id={bot}"),
        Some(&token),
        None,
    )
    .await?;
    client
        .post_later(&token, bot, "a long story please")
        .await?;
    let mut deltas = 0;
    while deltas < 3 {
        if stream.next(Duration::from_secs(30)).await?.event == "delta" {
            deltas += 1;
        }
    }
    let stopped = client
        .post_json("/chat/stop", &json!({ "chatbot_id": bot }), Some(&token))
        .await?;
    assert_eq!(stopped.body["data"]["status"], "stopped");
    let cut = eventually(Duration::from_secs(10), "the stopped call's usage", || {
        let stack = &stack;
        async move { Ok(payloads(stack, "ModelCallStopped").await?.pop()) }
    })
    .await?;
    assert!(
        cut["usage"]["completion_tokens"].as_u64() > Some(0),
        "{cut}"
    );
    assert!(cut["usage"]["prompt_tokens"].as_u64() > Some(0));
    assert_eq!(cut["usage"]["estimated"], true);
    stack.model.pad_answers(0);
    stack.model.set_chunk_delay(Duration::ZERO);

    // A provider that reports no usage: estimated with the tokenizer.
    stack.model.report_usage(false);
    client.chat(&token, bot, "and without a count?").await?;
    let last = payloads(&stack, "BotReplyGenerated")
        .await?
        .pop()
        .unwrap_or_default();
    assert_eq!(last["usage"]["estimated"], true, "{last}");
    assert!(last["usage"]["prompt_tokens"].as_u64() > Some(10));
    stack.model.report_usage(true);

    // GET /chat/usage sums what the events record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut expected = (0, 0);
    for event_type in ["BotReplyGenerated", "BotReplyFailed", "ModelCallStopped"] {
        for event in payloads(&stack, event_type).await? {
            let (p, c) = billed(&event["usage"]);
            expected = (expected.0 + p, expected.1 + c);
        }
    }
    let mut memory_expected = (0, 0);
    for event_type in ["ConversationSummarized", "UserProfileUpdated"] {
        for event in payloads(&stack, event_type).await? {
            let (p, c) = billed(&event["usage"]);
            memory_expected = (memory_expected.0 + p, memory_expected.1 + c);
        }
    }
    let generated = payloads(&stack, "BotReplyGenerated").await?.len() as i64;
    let refreshes = payloads(&stack, "ConversationSummarized").await?.len() as i64;
    let report = client.get("/chat/usage", Some(&token)).await?;
    let data = &report.body["data"];
    assert_eq!(data["replies"], generated, "{report:?}");
    assert_eq!(data["prompt_tokens"], expected.0);
    assert_eq!(data["completion_tokens"], expected.1);
    assert_eq!(data["memory"]["refreshes"], refreshes);
    assert_eq!(data["memory"]["prompt_tokens"], memory_expected.0);
    assert_eq!(data["memory"]["completion_tokens"], memory_expected.1);
    assert_eq!(data["by_bot"][0]["chatbot_id"], bot);
    assert_eq!(data["by_bot"][0]["prompt_tokens"], expected.0);
    let one_day = client
        .get(
            &format!(
                "/chat/usage?chatbot_id={bot}&from={}&to={}",
                today(),
                today()
            ),
            Some(&token),
        )
        .await?;
    assert_eq!(one_day.body["data"]["prompt_tokens"], expected.0);
    let earlier = client
        .get("/chat/usage?from=2020-01-01&to=2020-01-31", Some(&token))
        .await?;
    assert_eq!(earlier.body["data"]["replies"], 0);
    let bad = client
        .get("/chat/usage?from=yesterday", Some(&token))
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    let edge = client
        .get("/chat/usage?to=-262144-01-10", Some(&token))
        .await?;
    assert_eq!(
        edge.status, 400,
        "the earliest day is refused, not a panic: {edge:?}"
    );

    // The operator's bill, from the log alone, agrees.
    let (ok, csv) = replay(
        &stack,
        &[
            "usage",
            "--from",
            &today(),
            "--to",
            &today(),
            "--format",
            "csv",
        ],
    )
    .await?;
    assert!(ok, "{csv}");
    println!("usage CSV:\n{csv}");
    let line = csv
        .lines()
        .find(|l| l.starts_with(&format!("{user},")) && l.contains(",fake-model,"))
        .unwrap_or_default()
        .to_string();
    let fields: Vec<i64> = line
        .split(',')
        .skip(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(
        fields,
        vec![
            generated,
            refreshes,
            expected.0 + memory_expected.0,
            expected.1 + memory_expected.1
        ],
        "{csv}"
    );

    // The read model is rebuilt from the log, and verified.
    for args in [["rebuild"], ["verify"]] {
        let (ok, output) = replay(&stack, &args).await?;
        assert!(ok, "{args:?}: {output}");
    }
    let again = client.get("/chat/usage", Some(&token)).await?;
    assert_eq!(again.body["data"], report.body["data"]);
    stack.teardown().await
}

#[tokio::test]
async fn a_daily_budget_holds_against_concurrent_messages_and_refuses_the_next(
) -> anyhow::Result<()> {
    const BUDGET: i64 = 600;
    const CAP: i64 = 20;
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![
            ("USER_DAILY_TOKEN_BUDGET".into(), BUDGET.to_string()),
            ("MAX_REPLY_TOKENS".into(), CAP.to_string()),
            ("MEMORY_EVERY_MESSAGES".into(), "1000".into()),
        ],
        ..Default::default()
    })
    .await?;
    // Long answers, cut at the cap: every reply costs its whole cap.
    stack.model.pad_answers(64 * 1024);
    stack.model.set_latency(Duration::from_millis(300));
    let client = stack.client(0);
    let (user, token, _) = client.signup("spender", "pass word").await?;
    let mut bots = Vec::new();
    for n in 0..12 {
        bots.push(client.create_bot(&token, &format!("b{n}"), 0, "").await?);
    }
    // Accepted while nothing is spent; then one worker answers them at once.
    for &bot in &bots {
        client.post_later(&token, bot, "hello").await?;
    }
    stack.spawn_worker().await?;
    let pool = stack.pool()?;
    eventually(Duration::from_secs(60), "every message to end", || {
        let pool = pool.clone();
        async move {
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM chat_history WHERE status = 'pending'")
                    .fetch_one(&pool)
                    .await?;
            Ok((pending == 0).then_some(()))
        }
    })
    .await?;
    let used: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(prompt_tokens + completion_tokens) AS SIGNED) FROM usage_daily \
         WHERE user_id = ?",
    )
    .bind(user)
    .fetch_one(&pool)
    .await?;
    let generated = payloads(&stack, "BotReplyGenerated").await?.len() as u64;
    let refused: Vec<Value> = payloads(&stack, "BotReplyFailed").await?;
    println!(
        "budget {BUDGET}, cap {CAP}: {generated} replies, {} refused, {used} tokens used",
        refused.len()
    );
    assert!(
        generated >= 1 && !refused.is_empty(),
        "the budget ran out part-way"
    );
    assert!(
        used <= BUDGET + CAP,
        "{used} tokens used: the overshoot stays within one cap ({CAP})"
    );
    // The messages past the budget failed with no model call.
    assert_eq!(stack.model.calls(), generated);
    for failure in &refused {
        let reason = failure["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("daily token budget") && reason.contains("resets at"),
            "{reason}"
        );
        assert!(failure["usage"].is_null());
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM token_reservations")
            .fetch_one(&pool)
            .await?,
        0,
        "every reservation was given back"
    );

    // Now new_chat is refused before anything is stored, naming the budget and
    // when it resets.
    let before = system_tests::event_count(&pool).await?;
    let refused = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bots[0], "input": "one more" }),
            Some(&token),
        )
        .await?;
    assert_eq!(refused.status, 429, "{}", refused.body["msg"]);
    let message = refused.body["msg"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{BUDGET} tokens")) && message.contains("resets at"),
        "{message}"
    );
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        system_tests::event_count(&pool).await?,
        before,
        "nothing stored"
    );
    let again = client
        .post_json(
            "/chat/regenerate",
            &json!({ "chatbot_id": bots[0] }),
            Some(&token),
        )
        .await?;
    assert_eq!(again.status, 429, "{again:?}");
    // Another user is not affected.
    let (_, other, other_bot) = client.user_with_bot("frugal").await?;
    stack.model.set_latency(Duration::ZERO);
    client.chat(&other, other_bot, "hi").await?;
    stack.teardown().await
}

#[tokio::test]
async fn explain_rebuilds_every_reply_and_names_what_was_tampered_with() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("MEMORY_EVERY_MESSAGES".into(), "10".into()),
            // Small enough that the oldest turns are trimmed.
            ("CONTEXT_BUDGET_CHARS".into(), "1500".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, _) = client.signup("explained", "pass word").await?;
    let bot = client.create_bot(&token, "Jay", 1, "Jay Chou").await?;
    for n in 0..100 {
        if n == 40 {
            let edited = client
                .post_json(
                    "/bots/update",
                    &json!({ "chatbot_id": bot, "chatbot_persona": "Li Bai", "temperature": 0.4 }),
                    Some(&token),
                )
                .await?;
            assert_eq!(edited.body["code"], 200);
        }
        if n == 60 {
            // A stop: a slow reply, stopped before it is written.
            stack.model.set_latency(Duration::from_secs(2));
            client
                .post_later(&token, bot, "never mind this one")
                .await?;
            stack
                .model
                .wait_for_calls(stack.model.calls() + 1, Duration::from_secs(10))
                .await?;
            let stopped = client
                .post_json("/chat/stop", &json!({ "chatbot_id": bot }), Some(&token))
                .await?;
            assert_eq!(stopped.body["data"]["status"], "stopped");
            stack.model.set_latency(Duration::ZERO);
        }
        client
            .chat(
                &token,
                bot,
                &format!("message number {n}, with some words in it"),
            )
            .await?;
        if n == 80 {
            let again = client
                .post_json(
                    "/chat/regenerate",
                    &json!({ "chatbot_id": bot }),
                    Some(&token),
                )
                .await?;
            assert_eq!(again.status, 200, "{again:?}");
        }
    }
    let replies = payloads(&stack, "BotReplyGenerated").await?;
    assert!(replies.len() >= 100, "{} replies", replies.len());
    assert!(!payloads(&stack, "ConversationSummarized").await?.is_empty());
    let mut trimmed = 0;
    for reply in &replies {
        let id = reply["message_id"].as_str().unwrap_or_default();
        let (ok, output) = replay(&stack, &["explain", "--message", id]).await?;
        assert!(ok && output.contains("matches"), "reply {id}:\n{output}");
        if !output.contains(" 0 trimmed") {
            trimmed += 1;
        }
    }
    assert!(trimmed > 0, "some prompts were trimmed by the budget");
    // By the message's id: the latest attempt's reply.
    let rows = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=object"),
            Some(&token),
        )
        .await?;
    let last_message = rows.body["data"]
        .as_array()
        .and_then(|rows| rows.iter().rev().find(|r| r["by_user"] == 1))
        .map(|r| r["message_id"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let (ok, output) = replay(&stack, &["explain", "--message", &last_message]).await?;
    assert!(ok, "{output}");
    println!("explain, one reply:\n{output}");
    assert!(output.contains("[0] system: You are Li Bai"), "{output}");

    // Tampering with a message after the fact: a later reply's prompt no
    // longer rebuilds, and explain says which part differs.
    let pool = stack.pool()?;
    let tampered = payloads(&stack, "UserMessagePosted")
        .await?
        .into_iter()
        .find(|m| m["content"] == "message number 98, with some words in it")
        .and_then(|m| m["message_id"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no message number 98"))?;
    sqlx::query(
        "UPDATE events SET payload = JSON_SET(payload, '$.content', 'I never said that') \
         WHERE event_type = 'UserMessagePosted' AND stream_id = ? \
         AND JSON_UNQUOTE(JSON_EXTRACT(payload, '$.message_id')) = ?",
    )
    .bind(events::event::stream::chat(user, bot))
    .bind(&tampered)
    .execute(&pool)
    .await?;
    let (ok, output) = replay(&stack, &["explain", "--message", &last_message]).await?;
    assert!(!ok, "{output}");
    assert!(
        output.contains("DIFFERS") && output.contains("turns"),
        "{output}"
    );

    // A reply written before snapshots: explain says what is unrecorded.
    let store = events::store::EventStore::new(
        pool.clone(),
        std::sync::Arc::new(events::projections::ReadModels),
    );
    let message_id = uuid::Uuid::now_v7();
    let old = [
        events::event::DomainEvent::UserMessagePosted(events::event::UserMessagePosted {
            message_id,
            user_id: user,
            bot_id: bot,
            content: "from an older release".into(),
            client_msg_id: None,
            source: events::event::MessageSource::Import,
        }),
        events::event::DomainEvent::BotReplyGenerated(events::event::BotReplyGenerated {
            message_id: uuid::Uuid::now_v7(),
            reply_to: message_id,
            user_id: user,
            bot_id: bot,
            content: "an old reply".into(),
            model: "old-model".into(),
            attempt: 1,
            usage: None,
            prompt: None,
        }),
    ]
    .iter()
    .map(|e| e.to_new_event(Default::default()))
    .collect::<Result<Vec<_>, _>>()?;
    store
        .append_to_stream(
            &events::event::stream::chat(user, bot),
            events::store::ExpectedVersion::Any,
            &old,
        )
        .await?;
    let (ok, output) = replay(&stack, &["explain", "--message", &message_id.to_string()]).await?;
    assert!(ok, "{output}");
    assert!(
        output.contains("prompt: unrecorded") && output.contains("usage: unrecorded"),
        "{output}"
    );
    stack.teardown().await
}
