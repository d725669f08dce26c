//! What an operator sees (review items 18, 27, 28, 29, 30; issue 25): production
//! refuses a published secret and a missing key-encryption key (which it also
//! takes from a file), processes wait for a database that is not up yet, broker
//! blips reconnect fast every time, SIGTERM waits its grace period once, and
//! handled conditions are not logged as errors.

use std::time::{Duration, Instant};

use serde_json::json;

use system_tests::{eventually, free_port, wait_until_answered, Client, Stack, StackOptions};

#[tokio::test]
async fn production_refuses_a_short_or_published_jwt_secret_or_no_data_key() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        ..Default::default()
    })
    .await?;
    for (i, secret) in ["short", "change-me-in-production", "system-test-secret"]
        .into_iter()
        .enumerate()
    {
        let mut api = stack.start_process(
            "api",
            &format!("weak-{i}"),
            &[("APP_ENV", "production"), ("JWT_SECRET", secret)],
        )?;
        let ok = api.wait(Duration::from_secs(20)).await?;
        assert!(!ok, "{secret:?} is refused");
        assert!(api.log_text().contains("JWT_SECRET"), "{}", api.log_text());
    }
    let strong = "q3J8vR1xL0sT6yW2nB5mK9pD4fH7gZ1c-long-enough-and-random";
    // No key-encryption key: neither process starts, and both say which.
    for program in ["api", "worker"] {
        let mut process = stack.start_process(
            program,
            &format!("no-kek-{program}"),
            &[
                ("APP_ENV", "production"),
                ("JWT_SECRET", strong),
                ("DATA_KEY_ENCRYPTION_KEY", ""),
            ],
        )?;
        let ok = process.wait(Duration::from_secs(20)).await?;
        assert!(!ok, "{program} starts without a key-encryption key");
        let log = process.log_text();
        assert!(
            log.contains("DATA_KEY_ENCRYPTION_KEY") && log.contains("APP_ENV=production"),
            "{log}"
        );
    }
    // A key from a file (a mounted secret) is one.
    let kek_file = std::env::temp_dir().join(format!("kek-{}", uuid::Uuid::now_v7()));
    std::fs::write(&kek_file, "c3lzdGVtLXRlc3Qta2V5LWVuY3J5cHRpb24ta2V5ISE=\n")?;
    let kek_path = kek_file.to_string_lossy().into_owned();
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let mut api = stack.start_process(
        "api",
        "strong",
        &[
            ("APP_ENV", "production"),
            ("JWT_SECRET", strong),
            ("BIND_ADDR", &bind),
            ("DATA_KEY_ENCRYPTION_KEY", ""),
            ("DATA_KEY_ENCRYPTION_KEY_FILE", &kek_path),
        ],
    )?;
    Client::new(format!("http://{bind}"))
        .wait_for_ok("/readyz", None, Duration::from_secs(30))
        .await?;
    assert!(api.is_running());
    let _ = std::fs::remove_file(&kek_file);
    stack.teardown().await
}

#[tokio::test]
async fn processes_started_while_the_database_is_down_wait_for_it() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        proxy_database: true,
        ..Default::default()
    })
    .await?;
    let proxy = stack
        .database_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no database proxy"))?;
    proxy.cut();
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let mut api = stack.start_process("api", "early-api", &[("BIND_ADDR", &bind)])?;
    let mut worker = stack.start_process("worker", "early-worker", &[])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(api.is_running() && worker.is_running(), "neither exits");
    for process in [&api, &worker] {
        let log = process.log_text();
        assert!(
            log.matches("the database is not reachable yet").count() >= 2,
            "each attempt is logged: {log}"
        );
    }
    proxy.restore();
    let client = Client::new(format!("http://{bind}"));
    client
        .wait_for_ok("/readyz", None, Duration::from_secs(30))
        .await?;
    eventually(Duration::from_secs(30), "the worker to consume", || {
        let log = worker.log_text();
        async move { Ok(log.contains("consuming").then_some(())) }
    })
    .await?;
    let (_, token, bot) = client.user_with_bot("early").await?;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "hi" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200);
    drop((api, worker));
    stack.teardown().await
}

#[tokio::test]
async fn every_broker_blip_reconnects_from_the_shortest_delay() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_broker: true,
        ..Default::default()
    })
    .await?;
    let proxy = stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no broker proxy"))?;
    let consuming = |stack: &Stack| stack.workers[0].log_text().matches("consuming").count();
    for blip in 1..=5 {
        let before = consuming(&stack);
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        eventually(
            Duration::from_secs(20),
            "the worker to consume again",
            || {
                let now = consuming(&stack);
                async move { Ok((now > before).then_some(())) }
            },
        )
        .await?;
        println!("blip {blip}: reconnected");
    }
    // Each blip starts a new episode whose first retry is the shortest delay
    // (200 ms, jittered), however many blips came before.
    let log = stack.workers[0].log_text();
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("lost its broker session"))
        .filter_map(|l| l.split("retry in ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    println!("first retry delay of each episode, ms: {delays:?}");
    assert!(delays.len() >= 5, "{log}");
    assert!(delays.iter().all(|&d| d <= 250), "{delays:?}");
    stack.teardown().await
}

#[tokio::test]
async fn sigterm_waits_the_grace_period_once_then_cancels_the_model_call() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    stack
        .spawn_worker_with(&[("SHUTDOWN_GRACE_SECS", "3")])
        .await?;
    stack.model.set_latency(Duration::from_secs(30));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("patient").await?;
    let id = client.post_later(&token, bot, "take your time").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(10))
        .await?;
    let started = Instant::now();
    stack.workers[0].signal("TERM")?;
    let clean = stack.workers[0].wait(Duration::from_secs(20)).await?;
    let took = started.elapsed();
    println!("worker exited {took:?} after SIGTERM with a 3 s grace period");
    assert!(clean, "exit status 0");
    assert!(
        took >= Duration::from_secs(3),
        "it waited the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "and only once: {took:?}");
    // The cancelled message went back to the queue and is answered once.
    stack.model.set_latency(Duration::ZERO);
    stack.spawn_worker().await?;
    wait_until_answered(&stack.pool()?, &[id], Duration::from_secs(30)).await?;
    stack.teardown().await
}

#[tokio::test]
async fn handled_outages_are_not_logged_as_errors() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_broker: true,
        proxy_database: true,
        env: vec![("DB_ACQUIRE_TIMEOUT_MS".into(), "500".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("calm").await?;
    let broker = stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    let database = stack
        .database_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;

    broker.cut();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            client
                .post_later(&token, bot, &format!("while the broker is away {i}"))
                .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restore();
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(60)).await?;

    database.cut();
    for _ in 0..20 {
        let answer = client
            .get(
                &format!("/chat/history?chatbot_id={bot}&limit=5"),
                Some(&token),
            )
            .await?;
        assert_eq!(answer.status, 503);
    }
    database.restore();
    client
        .wait_for_ok(
            &format!("/chat/history?chatbot_id={bot}&limit=5"),
            Some(&token),
            Duration::from_secs(30),
        )
        .await?;

    for process in stack.apis.iter().chain(&stack.workers) {
        let log = process.log_text();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", process.name);
        let publish_warnings = log
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains("publishing to the broker fails"))
            .count();
        assert!(
            publish_warnings <= 2,
            "{}: {publish_warnings} publish warnings",
            process.name
        );
    }
    let api_log = stack.apis[0].log_text();
    let outage_warnings = api_log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("the database is unavailable"))
        .count();
    assert_eq!(outage_warnings, 1, "one warning for the whole outage");
    stack.teardown().await
}
