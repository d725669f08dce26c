//! Conversation controls (issue 22): stop a reply, regenerate it, clear a
//! conversation, against the real binaries, a fake model and the real services.
//!
//! - a stop mid-stream, sent to another api than the one that took the message,
//!   cancels the model call (the fake model sees the caller hang up), records the
//!   text written so far as `stopped`, and the message queued behind it is still
//!   answered, with the stopped turn and its cut-off note in the prompt;
//! - a stop before any worker started records it with no model call at all;
//! - a stop after the reply finished changes nothing, and a second stop is the
//!   first;
//! - regenerate once and twice: one model call each, the reply replaced in
//!   history with the next `attempt` and a new `seq`, the old ones kept in the
//!   log and in as-of history; refused with 409 while a reply is being written;
//! - clear, without and with `forget_memory`: history and the list empty, the
//!   next prompt without the earlier turns (and without the memory, when
//!   forgotten), as-of history from before still whole; `verify` and `export`
//!   cover every new event.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use system_tests::fake_openai::turns;
use system_tests::sse::SseStream;
use system_tests::{eventually, Client, Stack, StackOptions};

/// What the worker tells the model after a reply the user stopped.
const CUT_OFF_NOTE: &str = "[The user stopped this reply here; it was cut off.]";

async fn post(client: &Client, path: &str, body: Value, token: &str) -> anyhow::Result<Value> {
    let reply = client.post_json(path, &body, Some(token)).await?;
    anyhow::ensure!(reply.status == 200, "{path}: {reply:?}");
    Ok(reply.body)
}

async fn history(client: &Client, token: &str, bot: i64) -> anyhow::Result<Vec<Value>> {
    let reply = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=object"),
            Some(token),
        )
        .await?;
    Ok(reply.body["data"].as_array().cloned().unwrap_or_default())
}

async fn count_events(stack: &Stack, event_type: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = ?")
            .bind(event_type)
            .fetch_one(&stack.pool()?)
            .await?,
    )
}

/// `worker replay <args>`; its stdout, once it succeeded.
async fn replay(stack: &Stack, args: &[&str]) -> anyhow::Result<String> {
    let run = stack.replay(args).await?;
    anyhow::ensure!(run.ok, "replay {args:?}: {}{}", run.stdout, run.stderr);
    Ok(run.stdout)
}

/// The conversation as `history --as-of` shows it at `at`.
async fn as_of(
    stack: &Stack,
    (user, bot): (i64, i64),
    at: chrono::DateTime<Utc>,
) -> anyhow::Result<Vec<Value>> {
    let at = at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (user, bot) = (user.to_string(), bot.to_string());
    let args = [
        "history", "--user", &user, "--bot", &bot, "--as-of", &at, "--format", "object",
    ];
    let rows: Value = serde_json::from_str(&replay(stack, &args).await?)?;
    Ok(rows.as_array().cloned().unwrap_or_default())
}

/// The fake model's requests whose last message contains `input`.
fn calls_for(stack: &Stack, input: &str) -> Vec<Value> {
    stack
        .model
        .requests()
        .into_iter()
        .filter(|request| {
            request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["content"].as_str().is_some_and(|c| c.contains(input)))
        })
        .collect()
}

#[tokio::test]
async fn a_stop_on_another_api_cancels_the_model_call_mid_stream_and_the_queue_goes_on(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 2,
        workers: 2,
        ..Default::default()
    })
    .await?;
    // A long answer, written slowly: about 40 words, 150 ms apart.
    stack.model.pad_answers(32 * 1024);
    stack.model.set_chunk_delay(Duration::from_millis(150));
    let (taker, stopper) = (stack.client(0), stack.client(1));
    let (user, token, bot) = taker.user_with_bot("stopper").await?;

    let mut stream = SseStream::open(
        &taker.base,
        &format!("/chat/stream?chatbot_id={bot}"),
        Some(&token),
        None,
    )
    .await?;
    let first = taker
        .post_later(&token, bot, "tell me a long story")
        .await?;
    let queued = taker.post_later(&token, bot, "and then?").await?;
    // A few words in, on the api that took the message.
    let mut written = String::new();
    let mut deltas = 0;
    while deltas < 3 {
        let event = stream.next(Duration::from_secs(30)).await?;
        if event.event == "delta" && event.data["message_id"] == first.as_str() {
            written.push_str(event.data["text"].as_str().unwrap_or_default());
            deltas += 1;
        }
    }

    let sent = Instant::now();
    let stopped = post(&stopper, "/chat/stop", json!({ "chatbot_id": bot }), &token).await?;
    let row = &stopped["data"];
    assert_eq!(row["status"], "stopped", "{stopped}");
    assert_eq!(row["by_user"], 0);
    assert_eq!(row["reply_to"], first.as_str());
    assert_eq!(row["attempt"], 1);
    let partial = row["content"].as_str().unwrap_or_default().to_string();
    assert!(
        partial.starts_with(&written) || written.starts_with(&partial),
        "the stop keeps the text written so far: {partial:?} vs {written:?}"
    );
    assert!(!partial.is_empty());

    // The worker cancels the model call: the fake model sees the caller hang up,
    // and no answer to it was ever completed.
    let hung_up = stack
        .model
        .wait_for_hang_up("tell me a long story", Duration::from_secs(10))
        .await?;
    assert!(hung_up > sent, "the call ended after the stop");
    assert_eq!(stack.model.answered_containing("tell me a long story"), 0);

    // The stream tells its client, with the same row.
    let events = stream.until("stopped", Duration::from_secs(10)).await?;
    let shown = events.last().map(|e| e.data.clone()).unwrap_or_default();
    assert_eq!(shown["message_id"], row["message_id"]);
    assert_eq!(shown["content"], row["content"]);

    // The message behind it is answered, and its prompt carries the stopped
    // turn with its text and a note that it was cut off.
    eventually(
        Duration::from_secs(30),
        "the queued message's reply",
        || {
            let (client, token, queued) = (stack.client(0), token.clone(), queued.clone());
            async move {
                let rows = history(&client, &token, bot).await?;
                Ok(rows
                    .iter()
                    .any(|r| r["reply_to"] == queued.as_str() && r["status"] == "done")
                    .then_some(()))
            }
        },
    )
    .await?;
    let next = calls_for(&stack, "and then?");
    assert_eq!(next.len(), 1, "one call for the queued message");
    let conversation = turns(&next[0]);
    assert_eq!(
        conversation[0],
        ("user".into(), "tell me a long story".into())
    );
    assert_eq!(conversation[1].0, "assistant");
    assert_eq!(conversation[1].1, format!("{partial}\n{CUT_OFF_NOTE}"));
    assert_eq!(conversation[2], ("user".into(), "and then?".into()));

    let rows = history(&stack.client(1), &token, bot).await?;
    let statuses: Vec<(i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["by_user"].as_i64().unwrap_or(-1),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [(1, "stopped"), (1, "done"), (0, "stopped"), (0, "done")]
            .map(|(b, s)| (b, s.to_string()))
            .to_vec(),
        "{rows:?}"
    );

    // Stopping again (nothing is being written) changes nothing: the answer is
    // the conversation's last reply row.
    let again = post(&stopper, "/chat/stop", json!({ "chatbot_id": bot }), &token).await?;
    assert_eq!(again["data"]["reply_to"], queued.as_str());
    assert_eq!(again["data"]["status"], "done");
    assert_eq!(count_events(&stack, "BotReplyStopped").await?, 1);

    // Exactly two model calls: the stopped one and the queued one.
    assert_eq!(stack.model.calls(), 2);
    let _ = user;
    replay(&stack, &["verify"]).await?;
    stack.teardown().await
}

#[tokio::test]
async fn a_stop_before_any_worker_started_records_it_with_no_model_call() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("early").await?;
    let waiting = client.post_later(&token, bot, "never mind").await?;
    let stopped = post(&client, "/chat/stop", json!({ "chatbot_id": bot }), &token).await?;
    assert_eq!(stopped["data"]["status"], "stopped");
    assert_eq!(stopped["data"]["content"], "");
    assert_eq!(stopped["data"]["reply_to"], waiting.as_str());
    // Stopping twice is stopping once.
    let again = post(&client, "/chat/stop", json!({ "chatbot_id": bot }), &token).await?;
    assert_eq!(again["data"], stopped["data"]);

    // A worker comes, finds the message already stopped, and calls nothing for it.
    stack.spawn_worker().await?;
    let reply = client.chat(&token, bot, "hello again").await?;
    assert!(reply.body["data"]
        .as_str()
        .is_some_and(|r| r.contains("hello again")));
    assert_eq!(stack.model.calls(), 1, "only the second message was sent");
    let request = &stack.model.requests()[0];
    assert_eq!(
        turns(request),
        vec![
            ("user".to_string(), "never mind".to_string()),
            ("assistant".to_string(), CUT_OFF_NOTE.to_string()),
            ("user".to_string(), "hello again".to_string()),
        ]
    );
    // As-of history shows the stopped turn as it stood.
    let now = as_of(&stack, (user, bot), Utc::now()).await?;
    assert_eq!(now, history(&client, &token, bot).await?);
    assert_eq!(now[1]["status"], "stopped");
    // The list shows the conversation's latest words, not an empty stop.
    let list = client.get("/chat/list?format=object", Some(&token)).await?;
    assert_eq!(list.body["data"][0]["content"], reply.body["data"]);
    assert_eq!(count_events(&stack, "BotReplyStopped").await?, 1);
    stack.teardown().await
}

#[tokio::test]
async fn a_stop_after_the_reply_finished_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        auth_mode: "legacy",
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("late").await?;
    let empty = post(&client, "/chat/stop", json!({ "chatbot_id": bot }), &token).await?;
    assert_eq!(empty["data"], Value::Null, "no reply yet: {empty}");
    let reply = client.chat(&token, bot, "hi").await?;
    let before = history(&client, &token, bot).await?;
    let events_before = system_tests::event_count(&stack.pool()?).await?;
    // Legacy mode: the app's way, with the user in the body and no token.
    let stop = client
        .post_form(
            "/chat/stop",
            &[
                ("user_id", user.to_string().as_str()),
                ("chatbot_id", bot.to_string().as_str()),
            ],
            None,
        )
        .await?;
    assert_eq!(stop.status, 200, "{stop:?}");
    assert_eq!(stop.body["data"], before[1], "the final row, unchanged");
    assert_eq!(stop.body["data"]["content"], reply.body["data"]);
    assert_eq!(history(&client, &token, bot).await?, before);
    assert_eq!(
        system_tests::event_count(&stack.pool()?).await?,
        events_before,
        "nothing recorded"
    );
    // Another user's bot is an unknown one.
    let (_, stranger, _) = client.user_with_bot("stranger").await?;
    let refused = client
        .post_json("/chat/stop", &json!({ "chatbot_id": bot }), Some(&stranger))
        .await?;
    assert_eq!(refused.status, 404, "{refused:?}");
    stack.teardown().await
}

#[tokio::test]
async fn regenerating_replaces_the_reply_with_one_model_call_and_keeps_the_old_in_the_log(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("again").await?;
    let nothing = client
        .post_json(
            "/chat/regenerate",
            &json!({ "chatbot_id": bot }),
            Some(&token),
        )
        .await?;
    assert_eq!(
        nothing.status, 400,
        "nothing to regenerate yet: {nothing:?}"
    );

    let first = client.chat(&token, bot, "tell me a joke").await?;
    let first_rows = history(&client, &token, bot).await?;
    let before_regenerating = Utc::now();
    let mut replies = vec![first.body["data"].clone()];
    for attempt in [2, 3] {
        let calls = stack.model.calls();
        let again = post(
            &client,
            "/chat/regenerate",
            json!({ "chatbot_id": bot }),
            &token,
        )
        .await?;
        assert_eq!(stack.model.calls(), calls + 1, "exactly one model call");
        assert!(!replies.contains(&again["data"]), "a new reply: {again}");
        replies.push(again["data"].clone());
        let rows = history(&client, &token, bot).await?;
        assert_eq!(rows.len(), 2, "the reply is replaced, not added: {rows:?}");
        assert_eq!(rows[0]["message_id"], first_rows[0]["message_id"]);
        assert_eq!(rows[0]["status"], "done");
        assert_eq!(rows[1]["content"], again["data"]);
        assert_eq!(rows[1]["attempt"], attempt);
        assert_eq!(rows[1]["reply_to"], first_rows[0]["message_id"]);
        assert!(
            rows[1]["seq"].as_i64() > first_rows[1]["seq"].as_i64(),
            "the new reply comes after the cursor of a client that saw the old one"
        );
    }
    // Every attempt's reply stays in the log, the same prompt each time.
    assert_eq!(count_events(&stack, "BotReplyGenerated").await?, 3);
    assert_eq!(count_events(&stack, "ReplyRegenerationRequested").await?, 2);
    let prompts: Vec<_> = calls_for(&stack, "tell me a joke")
        .iter()
        .map(turns)
        .collect();
    assert_eq!(prompts.len(), 3);
    assert!(prompts.iter().all(|p| p == &prompts[0]), "{prompts:?}");
    // As-of history shows the reply as it stood before the regenerations.
    let then = as_of(&stack, (user, bot), before_regenerating).await?;
    assert_eq!(then.len(), 2);
    assert_eq!(then[1]["content"], first.body["data"]);
    assert_eq!(then[1]["attempt"], 1);
    let now = as_of(&stack, (user, bot), Utc::now()).await?;
    assert_eq!(now, history(&client, &token, bot).await?);

    // While a reply is being written, a regeneration is refused.
    stack.model.set_latency(Duration::from_secs(3));
    client.post_later(&token, bot, "slowly now").await?;
    let busy = client
        .post_json(
            "/chat/regenerate",
            &json!({ "chatbot_id": bot }),
            Some(&token),
        )
        .await?;
    assert_eq!(busy.status, 409, "{busy:?}");
    assert_eq!(count_events(&stack, "ReplyRegenerationRequested").await?, 2);
    replay(&stack, &["verify"]).await?;
    stack.teardown().await
}

#[tokio::test]
async fn clearing_empties_history_and_prompts_and_forgets_memory_when_asked() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("clearer").await?;
    client.chat(&token, bot, "I live in Lyon").await?;
    client.chat(&token, bot, "I have a cat").await?;
    let remembered = eventually(Duration::from_secs(30), "a memory", || {
        let client = client.clone();
        let token = token.clone();
        async move {
            let memory = client
                .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
                .await?;
            Ok(memory.body["data"]["summary"].as_str().map(str::to_string))
        }
    })
    .await?;
    let before_clearing = Utc::now();
    let shown = history(&client, &token, bot).await?;
    assert_eq!(shown.len(), 4);

    // Cleared, keeping the memory.
    let cleared = post(&client, "/chat/clear", json!({ "chatbot_id": bot }), &token).await?;
    assert_eq!(cleared["data"], json!([]));
    assert!(history(&client, &token, bot).await?.is_empty());
    let list = client.get("/chat/list", Some(&token)).await?;
    assert_eq!(list.body["data"], json!([]), "{list:?}");
    client.chat(&token, bot, "who am I?").await?;
    let asked = calls_for(&stack, "who am I?");
    assert_eq!(
        turns(&asked[0]),
        vec![("user".to_string(), "who am I?".to_string())],
        "no earlier turn in the prompt"
    );
    let system = asked[0]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(system.contains(&remembered), "the memory stays: {system}");
    let rows = history(&client, &token, bot).await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["content"], "who am I?");

    // Cleared again, forgetting: the memory goes too (form body, as the app sends).
    let forgot = client
        .post_form(
            "/chat/clear",
            &[
                ("chatbot_id", bot.to_string().as_str()),
                ("forget_memory", "true"),
            ],
            Some(&token),
        )
        .await?;
    assert_eq!(forgot.status, 200, "{forgot:?}");
    let memory = client
        .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
        .await?;
    assert_eq!(memory.body["data"]["summary"], Value::Null, "{memory:?}");
    client.chat(&token, bot, "and now?").await?;
    let asked = calls_for(&stack, "and now?");
    assert_eq!(turns(&asked[0]).len(), 1);
    let system = asked[0]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!system.contains(&remembered), "forgotten: {system}");

    // A bad flag is refused, and changes nothing.
    let bad = client
        .post_json(
            "/chat/clear",
            &json!({ "chatbot_id": bot, "forget_memory": "perhaps" }),
            Some(&token),
        )
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(history(&client, &token, bot).await?.len(), 2);

    // The log keeps everything: as-of history from before the first clear.
    let then = as_of(&stack, (user, bot), before_clearing).await?;
    assert_eq!(then, shown);
    assert_eq!(count_events(&stack, "ConversationCleared").await?, 2);
    // Every new event replays: verify, and an export that holds them.
    replay(&stack, &["verify"]).await?;
    let exported = replay(&stack, &["export", "--user", &user.to_string()]).await?;
    assert!(exported.contains("ConversationCleared"), "{exported}");
    stack.teardown().await
}

#[tokio::test]
async fn clearing_while_a_reply_is_written_stops_it_first() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    stack.model.set_latency(Duration::from_secs(2));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("impatient").await?;
    let first = client.post_later(&token, bot, "first").await?;
    let second = client.post_later(&token, bot, "second").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(10))
        .await?;
    post(&client, "/chat/clear", json!({ "chatbot_id": bot }), &token).await?;
    stack
        .model
        .wait_for_hang_up("first", Duration::from_secs(10))
        .await?;
    // Nothing is left waiting, and neither message gets a reply later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(history(&client, &token, bot).await?.is_empty());
    assert_eq!(count_events(&stack, "BotReplyStopped").await?, 2);
    assert_eq!(count_events(&stack, "BotReplyGenerated").await?, 0);
    assert_eq!(stack.model.calls(), 1, "the queued message was never sent");
    let _ = (first, second);
    stack.model.set_latency(Duration::ZERO);
    client.chat(&token, bot, "a fresh start").await?;
    assert_eq!(history(&client, &token, bot).await?.len(), 2);

    // Every new event in one log: verify rebuilds the same read models, and
    // the export holds them all.
    post(
        &client,
        "/chat/regenerate",
        json!({ "chatbot_id": bot }),
        &token,
    )
    .await?;
    post(
        &client,
        "/bots/update",
        json!({ "chatbot_id": bot, "chatbot_name": "Renamed" }),
        &token,
    )
    .await?;
    replay(&stack, &["verify"]).await?;
    let exported = replay(&stack, &["export"]).await?;
    for event_type in [
        "BotUpdated",
        "BotReplyStopped",
        "ReplyRegenerationRequested",
        "ConversationCleared",
    ] {
        assert!(exported.contains(event_type), "{event_type} is exported");
    }
    stack.teardown().await
}

#[tokio::test]
async fn a_regeneration_after_forgetting_memory_still_asks_the_message() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("forgetful").await?;
    client.chat(&token, bot, "remember the blue door").await?;
    post(
        &client,
        "/chat/memory/forget",
        json!({ "chatbot_id": bot }),
        &token,
    )
    .await?;
    let again = post(
        &client,
        "/chat/regenerate",
        json!({ "chatbot_id": bot }),
        &token,
    )
    .await?;
    assert!(again["data"]
        .as_str()
        .is_some_and(|r| r.contains("remember the blue door")));
    let asked = calls_for(&stack, "remember the blue door");
    assert_eq!(asked.len(), 2);
    assert_eq!(
        turns(&asked[1]),
        vec![("user".to_string(), "remember the blue door".to_string())],
        "the message older than the erasure is still the turn answered"
    );
    let rows = history(&client, &token, bot).await?;
    let id = rows[1]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let explained = replay(&stack, &["explain", "--message", &id]).await?;
    assert!(explained.contains("matches"), "{explained}");
    stack.teardown().await
}
