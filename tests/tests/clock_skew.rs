//! Processes whose clocks disagree still agree on what is overdue (review item 12):
//! the outbox's grace period is measured on the database's clock, so a relay whose
//! clock runs a minute behind still publishes another process's orphaned events
//! after the grace period, not a minute later. The skewed clock is real: the worker
//! runs under libfaketime.

use std::time::Duration;

use system_tests::{amqp_url, wait_until_answered, Stack, StackOptions};

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test]
async fn a_relay_with_a_slow_clock_sweeps_on_the_databases_clock() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install the `faketime` package (scripts/services.sh does)"
    );
    let stack = Stack::start(StackOptions {
        proxy_broker: true,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("skewed").await?;
    // The api cannot reach the broker: its events wait in the outbox.
    stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no broker proxy"))?
        .cut();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            client
                .post_later(&token, bot, &format!("orphan {i}"))
                .await?,
        );
    }
    // A worker whose wall clock is a minute behind, with a broker of its own.
    let direct = amqp_url();
    let worker = stack.start_process(
        "worker",
        "slow-clock-worker",
        &[
            ("AMQP_URL", &direct),
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME", "-60s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    // Its log's timestamps come from its own clock: they show the skew is real.
    let skew = system_tests::eventually(
        Duration::from_secs(10),
        "the worker's first log line",
        || {
            let log = worker.log_text();
            async move {
                Ok(log
                    .split_whitespace()
                    .next()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| chrono::Utc::now().signed_duration_since(t)))
            }
        },
    )
    .await?;
    assert!(
        skew.num_seconds() >= 50,
        "the worker's clock is behind by {skew}"
    );
    wait_until_answered(&stack.pool()?, &ids, Duration::from_secs(25))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; worker log:\n{}", worker.log_text()))?;
    drop(worker);
    stack.teardown().await
}

/// Every event's `recorded_at` comes from the database, inside the append's lock:
/// replies written by a worker whose clock is an hour behind are dated after
/// their messages, and the log's times never go back as positions go up
/// (issue 18, item 18).
#[tokio::test]
async fn a_worker_with_a_slow_clock_records_on_the_logs_clock() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install the `faketime` package (scripts/services.sh does)"
    );
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let worker = stack.start_process(
        "worker",
        "hour-behind-worker",
        &[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME", "-3600s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("dated").await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.post_later(&token, bot, &format!("when {i}")).await?);
    }
    let pool = stack.pool()?;
    wait_until_answered(&pool, &ids, Duration::from_secs(25))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; worker log:\n{}", worker.log_text()))?;
    let replies: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE event_type = 'BotReplyGenerated' \
         AND recorded_at > NOW(6) - INTERVAL 5 MINUTE",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(replies, 5, "every reply is dated by the database's clock");
    let backwards: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events a JOIN events b \
         ON b.global_position = a.global_position + 1 WHERE b.recorded_at < a.recorded_at",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(backwards, 0, "recorded_at never goes back along the log");
    drop(worker);
    stack.teardown().await
}
