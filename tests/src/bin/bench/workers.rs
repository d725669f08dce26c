//! Model calls in flight: with a model that takes 2 s to answer, how many replies a
//! second one worker process gives at `WORKER_PREFETCH=1000`, and how that grows
//! with 1, 2 and 4 worker processes at the default prefetch. Each run has its own
//! stack: 100 users with 10 bots each, and messages posted (without waiting) at
//! 500 a second, which is what 1,000 conversations answered 2 s at a time allow.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use system_tests::{Stack, StackOptions};

use crate::measure::{paced, rss_mib, CpuUse};
use crate::summary::{Row, Summary};

const MODEL_LATENCY: Duration = Duration::from_secs(2);
const USERS: usize = 100;
const BOTS_PER_USER: usize = 10;
const OFFERED: u32 = 500;

pub async fn workers(duration: Duration, summary: &mut Summary) -> anyhow::Result<()> {
    summary.add(run(1, Some(1000), duration).await?);
    for workers in [1, 2, 4] {
        summary.add(run(workers, None, duration).await?);
    }
    Ok(())
}

async fn run(workers: usize, prefetch: Option<u32>, duration: Duration) -> anyhow::Result<Row> {
    let mut env = vec![("RUST_LOG".to_string(), crate::LOGS.to_string())];
    if let Some(prefetch) = prefetch {
        env.push(("WORKER_PREFETCH".into(), prefetch.to_string()));
    }
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env,
        ..Default::default()
    })
    .await?;
    for _ in 0..workers {
        stack.spawn_worker().await?;
    }
    let client = stack.client(0);
    let users: Vec<String> = futures::stream::iter(0..USERS)
        .map(|u| {
            let client = client.clone();
            async move {
                let (_, token, _) = client.signup(&format!("load{u}"), "pass word").await?;
                anyhow::Ok(token)
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut conversations = Vec::new();
    for token in &users {
        for b in 0..BOTS_PER_USER {
            conversations.push((
                token.clone(),
                client.create_bot(token, &format!("b{b}"), 0, "").await?,
            ));
        }
    }
    stack.model.set_latency(MODEL_LATENCY);
    let pool = stack.pool()?;
    // Counted once the first calls have come back, until the posting stops.
    let counting = tokio::spawn({
        let pool = pool.clone();
        async move {
            tokio::time::sleep(MODEL_LATENCY + Duration::from_secs(1)).await;
            let (from, started) = (replies_recorded(&pool).await?, Instant::now());
            tokio::time::sleep(duration.saturating_sub(MODEL_LATENCY + Duration::from_secs(1)))
                .await;
            let to = replies_recorded(&pool).await?;
            anyhow::Ok((to - from) as f64 / started.elapsed().as_secs_f64())
        }
    });
    let before = CpuUse::now(&stack);
    let posts = paced(OFFERED, duration, |n| {
        let (token, bot) = conversations[n % conversations.len()].clone();
        let client = client.clone();
        async move { client.post_later(&token, bot, "slow model").await.is_ok() }
    })
    .await;
    let per_second = counting.await??;
    let answered = replies_recorded(&pool).await?;
    let cpu = CpuUse::now(&stack).per_message_since(&before, answered as usize);
    let worker_peak = stack
        .workers
        .iter()
        .filter_map(|w| w.pid())
        .map(|pid| rss_mib(pid).1)
        .max()
        .unwrap_or(0);
    let api_peak = stack
        .apis
        .first()
        .and_then(|a| a.pid())
        .map_or(0, |pid| rss_mib(pid).1);
    let prefetch = prefetch.map_or("default".to_string(), |p| p.to_string());
    println!(
        "model calls in flight: {workers} worker(s), WORKER_PREFETCH={prefetch}: {per_second:.0} \
         replies/s ({} posts accepted, {} refused), worker peak RSS {worker_peak} MiB",
        posts.requests, posts.errors
    );
    stack.teardown().await?;
    Ok(Row {
        scenario: format!(
            "model calls in flight, {} s model: {workers} worker(s), `WORKER_PREFETCH` {prefetch}",
            MODEL_LATENCY.as_secs()
        ),
        load: format!(
            "{OFFERED} messages/s posted, {} conversations",
            USERS * BOTS_PER_USER
        ),
        throughput: format!("{per_second:.0} replies/s"),
        latency: None,
        errors: posts.errors,
        cpu,
        rss: Some((api_peak, worker_peak)),
    })
}

async fn replies_recorded(pool: &sqlx::MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'BotReplyGenerated'")
        .fetch_one(pool)
        .await
}
