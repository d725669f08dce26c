//! Growth: the same reads and writes with the log at 10,000 events and at
//! 1,000,000 (`BENCH_GROWTH_EVENTS`), seeded in bulk through the event store and
//! rebuilt into the views before the api starts. History is read with the cache
//! off, so every read meets the tables the log has grown.

use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::seed::{seed_log, SeedPlan};
use system_tests::{Stack, StackOptions};

use crate::cast::Cast;
use crate::measure::{self, load, peak_rss, CpuUse};
use crate::summary::{Row, Summary};

pub async fn growth(duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::var("BENCH_GROWTH_EVENTS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let mut figures = Vec::new();
    for events in sizes {
        let (history, writes) = at_size(events, duration, summary).await?;
        figures.push((events, history, writes));
    }
    if let (Some(small), Some(big)) = (figures.first(), figures.last()) {
        println!(
            "growth: from {} to {} events, history p50 grew {:.2}x (target under 1.5), \
             new_chat throughput fell {:.2}x (target under 1.2)",
            small.0,
            big.0,
            big.1.as_secs_f64() / small.1.as_secs_f64().max(1e-9),
            small.2 / big.2.max(1e-9),
        );
    }
    Ok(())
}

/// History p50 and `new_chat` messages/s with the log at `events`.
async fn at_size(
    events: u64,
    duration: Duration,
    summary: &mut Summary,
) -> anyhow::Result<(Duration, f64)> {
    let mut stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        env: vec![
            ("RUST_LOG".into(), crate::LOGS.into()),
            ("DB_MAX_CONNECTIONS".into(), "32".into()),
            ("READ_CACHE_TTL_MS".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await?;
    let pool = stack.isolation.migrated_pool().await?;
    let started = Instant::now();
    let plan = SeedPlan {
        users: 100,
        bots_per_user: 10,
        events,
        sealed: true,
    };
    let written = seed_log(&pool, plan, |_| {}).await?;
    // A log this size was published as it was written, and the relay's
    // retention pruned its outbox rows long ago. Left unsent, the seeded rows
    // would be published during the measurement: a million-event backlog the
    // relays drain, and the outbox gauge counts, on every message.
    sqlx::query("DELETE FROM outbox").execute(&pool).await?;
    // The seeded users and bots took the first ids; the api's own come after.
    sqlx::query("ALTER TABLE users AUTO_INCREMENT = 1000000")
        .execute(&pool)
        .await?;
    sqlx::query("ALTER TABLE bot_id_sequence AUTO_INCREMENT = 1000000")
        .execute(&pool)
        .await?;
    let rebuilt = stack.replay(&["rebuild"]).await?;
    anyhow::ensure!(rebuilt.ok, "the rebuild failed: {}", rebuilt.stderr);
    println!(
        "growth: {written} events seeded and rebuilt into the views in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    stack.spawn_api().await?;
    stack.spawn_worker().await?;

    let client = stack.client(0);
    let Cast {
        reader,
        talk,
        writer,
        writer_bots: bots,
    } = Cast::sign_up(&client).await?;
    let http = measure::http_client()?;

    let url = format!("{}/chat/history?chatbot_id={talk}", client.base);
    let history = load(64, duration, {
        let (http, token) = (http.clone(), reader.clone());
        move |_| {
            let request = http.get(&url).bearer_auth(&token);
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        }
    })
    .await;
    let size = format!("log at {written} events");
    summary.add(Row {
        rss: Some(peak_rss(&stack)),
        ..Row::timed(
            &format!("growth: `chat/history` of 50, cache off, {size}"),
            "64 clients",
            &history,
            "req/s",
        )
    });

    let url = format!("{}/chat/new_chat", client.base);
    let statements_before = measure::statements(&pool).await?;
    let before = CpuUse::now(&stack);
    let writes = load(16, duration, {
        let (http, token, bots) = (http.clone(), writer.clone(), std::sync::Arc::new(bots));
        move |i| {
            let request = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "chatbot_id": bots[i % bots.len()], "input": "growth" }));
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        }
    })
    .await;
    let cpu = CpuUse::now(&stack).per_message_since(&before, writes.requests);
    let statements =
        measure::statements_per_message(&pool, statements_before, writes.requests).await?;
    summary.add(Row {
        cpu: format!("{cpu}; {statements}"),
        rss: Some(peak_rss(&stack)),
        ..Row::timed(
            &format!("growth: `new_chat`, instant model, {size}"),
            "16 clients",
            &writes,
            "messages/s",
        )
    });
    stack.teardown().await?;
    Ok((history.percentile(0.5), writes.per_second()))
}
