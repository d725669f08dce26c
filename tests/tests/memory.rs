//! Long-term memory against the real binaries, MariaDB, RabbitMQ and the fake model
//! (issue 13): refreshed on its own queue, bounded in cost, raced safely, shown
//! and erasable by the user, and rebuilt exactly from the log.

use std::time::Duration;

use serde_json::{json, Value};

use system_tests::{
    eventually, user_message_ids, wait_until_answered, Client, Stack, StackOptions,
};

/// The memory prompts' opening words (see `worker/src/memory_prompt.rs`).
const MEMORY_MARKER: &str = "long-term memory of a chatbot";

fn memory_calls(stack: &Stack) -> usize {
    stack
        .model
        .requests()
        .iter()
        .filter(|r| r.to_string().contains(MEMORY_MARKER))
        .count()
}

fn reply_requests(stack: &Stack) -> Vec<Value> {
    stack
        .model
        .requests()
        .into_iter()
        .filter(|r| !r.to_string().contains(MEMORY_MARKER))
        .collect()
}

async fn memory(client: &Client, token: &str, bot: i64) -> anyhow::Result<Value> {
    let answer = client
        .get(&format!("/chat/memory?chatbot_id={bot}"), Some(token))
        .await?;
    anyhow::ensure!(answer.status == 200, "{answer:?}");
    Ok(answer.body["data"].clone())
}

/// Waits until the memory covers at least `seq`, and returns it.
async fn memory_covering(
    client: &Client,
    token: &str,
    bot: i64,
    seq: i64,
) -> anyhow::Result<Value> {
    eventually(
        Duration::from_secs(30),
        "the memory to be refreshed",
        || async {
            let remembered = memory(client, token, bot).await?;
            Ok((remembered["up_to_seq"].as_i64().unwrap_or(0) >= seq).then_some(remembered))
        },
    )
    .await
}

/// Sends `n` messages one after another; returns the p50 and p90 of their latency.
async fn timed_chats(
    client: &Client,
    token: &str,
    bot: i64,
    n: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = std::time::Instant::now();
        client
            .chat(token, bot, &format!("steady message {i}"))
            .await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[n / 2], times[n * 9 / 10]))
}

/// Waits until the model has had no memory call for `quiet`.
async fn memory_settles(stack: &Stack, quiet: Duration) -> anyhow::Result<usize> {
    let mut last = memory_calls(stack);
    loop {
        tokio::time::sleep(quiet).await;
        let now = memory_calls(stack);
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

async fn memory_table(stack: &Stack) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT CONCAT_WS('|', user_id, chatbot_id, IFNULL(summary, '-'), IFNULL(summary_covers, '-'), \
         IFNULL(profile, '-'), IFNULL(profile_covers, '-'), erased_through, IFNULL(updated_at, '-')) \
         FROM conversation_memory ORDER BY user_id, chatbot_id",
    )
    .fetch_all(&stack.pool()?)
    .await?)
}

#[tokio::test]
async fn memory_reaches_later_prompts_with_the_times_and_a_rebuild_reproduces_it(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "3".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("remembered").await?;
    let empty = memory(&client, &token, bot).await?;
    assert_eq!(
        empty,
        json!({ "summary": null, "profile": null, "up_to_seq": null, "updated_at": null })
    );
    for input in [
        "I live in Lyon",
        "I have a cat called Miso",
        "I love green tea",
    ] {
        client.chat(&token, bot, input).await?;
    }
    // Covers the last message (seq 5); its reply may land before or after.
    let remembered = memory_covering(&client, &token, bot, 5).await?;
    let summary = remembered["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let profile = remembered["profile"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        summary.contains("I love green tea"),
        "the summary was made from the messages: {summary}"
    );
    assert!(!profile.is_empty() && profile != summary);
    assert!(remembered["updated_at"].as_str().is_some());
    // The memory prompt asked for stated facts only, with newer ones winning.
    let memory_request = stack
        .model
        .requests()
        .into_iter()
        .find(|r| r.to_string().contains(MEMORY_MARKER))
        .unwrap_or_default();
    assert!(memory_request.to_string().contains("never invent"));

    client
        .chat(&token, bot, "What do you know about me?")
        .await?;
    let last = reply_requests(&stack).pop().unwrap_or_default();
    let system = last["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        system.contains(&summary),
        "the summary is in the prompt: {system}"
    );
    assert!(system.contains(&profile), "the profile is in the prompt");
    assert!(
        system.contains("The current time is"),
        "now is in the prompt"
    );
    let user_turns: Vec<&str> = last["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        user_turns
            .iter()
            .all(|t| t.starts_with('[') && t.contains(" UTC] ")),
        "every user turn carries its time: {user_turns:?}"
    );

    // Another user cannot read it: the same answer as an unknown bot.
    let (_, other, _) = client.signup("nosy", "pass word").await?;
    let foreign = client
        .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&other))
        .await?;
    let unknown = client
        .get("/chat/memory?chatbot_id=987654", Some(&other))
        .await?;
    assert_eq!((foreign.status, unknown.status), (404, 404));
    assert_eq!(foreign.body["msg"], unknown.body["msg"]);

    // A rebuild from the log reproduces the memory view exactly, without the model.
    memory_settles(&stack, Duration::from_millis(800)).await?;
    let before = memory_table(&stack).await?;
    let calls = stack.model.calls();
    let env = stack.env();
    let rebuilt = tokio::process::Command::new(system_tests::stack::binary("worker")?)
        .args(["replay", "rebuild"])
        .envs(env)
        .output()
        .await?;
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(memory_table(&stack).await?, before);
    assert!(!before.is_empty());
    assert_eq!(stack.model.calls(), calls, "the rebuild called no model");
    stack.teardown().await
}

#[tokio::test]
async fn memory_costs_a_bounded_number_of_model_calls() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("chatty").await?;
    // A burst of 50 messages at once.
    let posts = (0..50).map(|i| {
        let (client, token) = (client.clone(), token.clone());
        async move { client.post_later(&token, bot, &format!("burst {i}")).await }
    });
    for posted in futures::future::join_all(posts).await {
        posted?;
    }
    let ids = user_message_ids(&stack.pool()?, user, bot).await?;
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(60)).await?;
    let burst = memory_settles(&stack, Duration::from_secs(1)).await?;
    println!("memory model calls for a burst of 50 messages: {burst}");
    // Due every 6 messages (MEMORY_EVERY_MESSAGES), two calls per refresh.
    assert!(burst <= 2 * (50 / 6 + 1), "{burst} memory calls");
    assert!(burst >= 2, "the memory was refreshed");

    // A steady conversation: 100 messages, one after another, memory on.
    let (_, token2, bot2) = client.user_with_bot("steady").await?;
    let before = memory_calls(&stack);
    timed_chats(&client, &token2, bot2, 100).await?;
    let steady = memory_settles(&stack, Duration::from_secs(1)).await? - before;
    println!("memory model calls per 100 messages in a steady conversation: {steady}");
    assert!(steady <= 2 * (100 / 6 + 1), "{steady} memory calls");

    // Reply latency with a model that takes 100 ms: memory on, then off (a worker
    // that only answers).
    stack.model.set_latency(Duration::from_millis(100));
    let (_, token4, bot4) = client.user_with_bot("timed").await?;
    let with_memory = timed_chats(&client, &token4, bot4, 30).await?;
    let mut stack = stack;
    stack.workers[0].signal("TERM")?;
    stack.workers[0].wait(Duration::from_secs(30)).await?;
    stack
        .spawn_worker_with(&[("WORKER_ROLES", "replies")])
        .await?;
    let (_, token3, bot3) = client.user_with_bot("unremembered").await?;
    let before = memory_calls(&stack);
    let without_memory = timed_chats(&client, &token3, bot3, 30).await?;
    assert_eq!(
        memory_calls(&stack),
        before,
        "no memory work without the role"
    );
    println!(
        "new_chat latency, 30 sequential messages, 100 ms model (debug build): memory on p50 {:?} p90 {:?}; \
         memory off p50 {:?} p90 {:?}",
        with_memory.0, with_memory.1, without_memory.0, without_memory.1
    );
    stack.teardown().await
}

#[tokio::test]
async fn racing_memory_workers_end_with_the_newest_memory() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "1".into())],
        ..Default::default()
    })
    .await?;
    stack
        .spawn_worker_with(&[("WORKER_ROLES", "replies")])
        .await?;
    stack
        .spawn_worker_with(&[("WORKER_ROLES", "memory")])
        .await?;
    stack
        .spawn_worker_with(&[("WORKER_ROLES", "memory")])
        .await?;
    stack
        .model
        .set_latency_range(Duration::from_millis(20), Duration::from_millis(300));
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("raced").await?;
    for i in 0..12 {
        client
            .chat(&token, bot, &format!("fact number {i}"))
            .await?;
    }
    // The newest memory covers the last thing the user said (a refresh may run
    // before or after that message's reply lands).
    let last_seq: i64 = sqlx::query_scalar(
        "SELECT MAX(seq) FROM chat_history WHERE user_id = ? AND chatbot_id = ? AND by_user = 1",
    )
    .bind(user)
    .bind(bot)
    .fetch_one(&stack.pool()?)
    .await?;
    let remembered = memory_covering(&client, &token, bot, last_seq).await?;
    assert!(remembered["summary"]
        .as_str()
        .is_some_and(|s| s.contains("fact number 11")));
    memory_settles(&stack, Duration::from_secs(1)).await?;
    // In the log, each summary covers more than the one before: no stale refresh
    // was ever recorded after a newer one.
    let covers: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(JSON_EXTRACT(payload, '$.covers_version') AS SIGNED) FROM events \
         WHERE event_type = 'ConversationSummarized' ORDER BY global_position",
    )
    .fetch_all(&stack.pool()?)
    .await?;
    assert!(covers.windows(2).all(|w| w[0] < w[1]), "{covers:?}");
    assert!(covers.last().is_some_and(|&c| c >= last_seq), "{covers:?}");
    let up_to = memory(&client, &token, bot).await?["up_to_seq"].as_i64();
    assert_eq!(
        up_to,
        covers.last().copied(),
        "the view shows the newest summary"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_stale_memory_event_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("stale").await?;
    for input in ["one", "two", "three", "four"] {
        client.chat(&token, bot, input).await?;
    }
    memory_covering(&client, &token, bot, 4).await?;
    memory_settles(&stack, Duration::from_millis(800)).await?;
    let current = memory(&client, &token, bot).await?;
    // A refresh that covered less, recorded late (as a job that stalled past its
    // lease would record it).
    let store = events::store::EventStore::new(
        stack.pool()?,
        std::sync::Arc::new(events::projections::ReadModels),
    );
    let stale =
        events::event::DomainEvent::ConversationSummarized(events::event::ConversationSummarized {
            user_id: user,
            bot_id: bot,
            summary: "stale summary".into(),
            covers_version: 2,
            usage: None,
        });
    store
        .append_to_stream(
            &events::event::stream::chat(user, bot),
            events::store::ExpectedVersion::Any,
            &[stale.to_new_event(Default::default())?],
        )
        .await?;
    assert_eq!(
        memory(&client, &token, bot).await?,
        current,
        "nothing changed"
    );
    stack.teardown().await
}

#[tokio::test]
async fn forget_empties_the_memory_and_the_prompts_even_with_a_refresh_in_flight(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        auth_mode: "legacy",
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("forgetful").await?;
    client.chat(&token, bot, "my secret is 1234").await?;
    stack.model.set_latency(Duration::from_millis(1500));
    client.chat(&token, bot, "and I live at 5 Rue Foo").await?;
    // The refresh that these two messages made due is now calling the model.
    eventually(Duration::from_secs(10), "a memory call in flight", || {
        let calls = memory_calls(&stack);
        async move { Ok((calls >= 1).then_some(())) }
    })
    .await?;
    // Forget, in legacy mode with a form body as the app would send it.
    let forgot = client
        .post_form(
            "/chat/memory/forget",
            &[
                ("user_id", &user.to_string()),
                ("chatbot_id", &bot.to_string()),
            ],
            None,
        )
        .await?;
    assert_eq!((forgot.status, &forgot.body["data"]), (200, &json!([])));
    // The refresh finishes after the erasure: it must not bring anything back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let empty = json!({ "summary": null, "profile": null, "up_to_seq": null, "updated_at": null });
    assert_eq!(memory(&client, &token, bot).await?, empty);
    stack.model.set_latency(Duration::ZERO);
    client.chat(&token, bot, "what do you remember?").await?;
    let last = reply_requests(&stack).pop().unwrap_or_default();
    let prompt = last.to_string();
    assert!(
        !prompt.contains("1234") && !prompt.contains("Rue Foo"),
        "{prompt}"
    );
    assert_eq!(memory(&client, &token, bot).await?, empty);
    stack.teardown().await
}

#[tokio::test]
async fn a_failing_memory_model_leaves_replies_untouched() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("MEMORY_EVERY_MESSAGES".into(), "2".into()),
            ("MODEL_MAX_ATTEMPTS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("unlucky").await?;
    stack.model.fail_requests_containing(Some(MEMORY_MARKER));
    for i in 0..4 {
        client.chat(&token, bot, &format!("message {i}")).await?;
    }
    eventually(
        Duration::from_secs(20),
        "a memory job dead-lettered",
        || {
            let log = stack.workers[0].log_text();
            async move { Ok(log.contains("memory job failed for good").then_some(())) }
        },
    )
    .await?;
    assert!(memory(&client, &token, bot).await?["summary"].is_null());
    // Replies went on all along, and still do.
    stack.model.fail_requests_containing(None);
    client.chat(&token, bot, "still there?").await?;
    stack.teardown().await
}

#[tokio::test]
async fn an_idle_conversation_gets_its_memory_refreshed() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("MEMORY_EVERY_MESSAGES".into(), "100".into()),
            ("MEMORY_IDLE_SECS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("quiet").await?;
    client
        .chat(&token, bot, "I am off to Kyoto tomorrow")
        .await?;
    assert!(
        memory(&client, &token, bot).await?["summary"].is_null(),
        "not due at once"
    );
    let remembered = memory_covering(&client, &token, bot, 2).await?;
    assert!(remembered["summary"]
        .as_str()
        .is_some_and(|s| s.contains("Kyoto")));
    // Idle checks that find nothing new cost nothing.
    let calls = memory_settles(&stack, Duration::from_secs(3)).await?;
    assert_eq!(calls, 2, "one refresh: a summary and a profile");
    stack.teardown().await
}

#[tokio::test]
async fn deleting_a_bot_ends_its_memory_jobs() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("MEMORY_EVERY_MESSAGES".into(), "100".into()),
            ("MEMORY_IDLE_SECS".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("deleted").await?;
    client.chat(&token, bot, "remember this").await?;
    let deleted = client
        .post_json("/bots/delete", &json!({ "chatbot_id": bot }), Some(&token))
        .await?;
    assert_eq!(deleted.body["code"], 200);
    // The idle check comes back after a second and finds the bot gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(memory_calls(&stack), 0, "no memory work for a deleted bot");
    let gone = client
        .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
        .await?;
    assert_eq!(gone.status, 404);
    stack.teardown().await
}

/// How many messages `queue` holds, or `None` when there is no such queue.
async fn queue_depth(stack: &Stack, queue: &str) -> anyhow::Result<Option<u32>> {
    let connection = events::bus::connect(&stack.isolation.bus, "probe").await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    let _ = connection.close(200, "done").await;
    Ok(declared.ok().map(|q| q.message_count()))
}

/// Changing `MEMORY_IDLE_SECS` across a rolling deploy leaves one idle check per
/// reply: the worker that handled a reply's job schedules its idle check, and no
/// idle queue is bound to the events any more, not even the one an earlier
/// release bound (issue 18, item 3).
#[tokio::test]
async fn a_new_idle_time_leaves_one_idle_check_per_reply() -> anyhow::Result<()> {
    use lapin::types::{AMQPValue, FieldTable};
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "100".into())],
        ..Default::default()
    })
    .await?;
    let ns = stack.isolation.bus.namespace.clone();
    // The idle queue an earlier release declared for MEMORY_IDLE_SECS=5.
    let legacy = format!("{ns}.memory.idle.5s");
    {
        let connection = events::bus::connect(&stack.isolation.bus, "old-release").await?;
        let channel = connection.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongUInt(5000));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(format!("{ns}.memory.jobs").into()),
        );
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel.queue_declare(&legacy, durable, args).await?;
        channel
            .queue_bind(
                &legacy,
                &format!("{ns}.events"),
                "BotReplyGenerated",
                Default::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "done").await;
    }
    // Mid-deploy: one worker on the old idle time, one on the new.
    stack
        .spawn_worker_with(&[("MEMORY_IDLE_SECS", "5")])
        .await?;
    stack
        .spawn_worker_with(&[("MEMORY_IDLE_SECS", "8")])
        .await?;
    let newer = format!("{ns}.memory.idle.8s");
    // Both consume memory jobs (each unbinds the idle queue of its own value).
    eventually(Duration::from_secs(10), "both memory consumers", || async {
        let consuming = stack
            .workers
            .iter()
            .filter(|w| w.log_text().contains(".memory.jobs"))
            .count();
        Ok((consuming == 2).then_some(()))
    })
    .await?;
    assert_eq!(queue_depth(&stack, &newer).await?, Some(0), "declared");

    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("rolling-idle").await?;
    client.chat(&token, bot, "I keep bees in Lisbon").await?;
    let idle_checks = || async {
        Ok::<u32, anyhow::Error>(
            queue_depth(&stack, &legacy).await?.unwrap_or(0)
                + queue_depth(&stack, &newer).await?.unwrap_or(0),
        )
    };
    let waiting = eventually(Duration::from_secs(4), "the idle check", || async {
        Ok(Some(idle_checks().await?).filter(|n| *n > 0))
    })
    .await?;
    // Had the earlier release's queue stayed bound, it would hold a second one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (waiting, idle_checks().await?),
        (1, 1),
        "one idle check for one reply"
    );
    let remembered = memory_covering(&client, &token, bot, 2).await?;
    assert!(remembered["summary"]
        .as_str()
        .is_some_and(|s| s.contains("Lisbon")));
    let calls = memory_settles(&stack, Duration::from_secs(3)).await?;
    assert_eq!(calls, 2, "one refresh: a summary and a profile");
    stack.teardown().await
}
