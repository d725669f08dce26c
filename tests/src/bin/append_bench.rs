//! The append ceiling (issue 24, item 9): how many events a second the event
//! store appends with 1, 2 and 4 appending processes against one database. Each
//! process runs its own store (its own group-commit appender and connections)
//! with 16 tasks appending one small event each to streams of their own, for
//! `APPEND_BENCH_SECONDS` (default 10), and the read models off (the store
//! alone: what the one `event_log_head` lock allows). Run it through
//! `scripts/bench.sh append`, or `target/release/append_bench`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::config::ExposeSecret;
use events::event::{DomainEvent, EventMetadata, MessageSource, UserMessagePosted};
use events::store::{EventStore, ExpectedVersion};
use system_tests::{Isolation, NoProjection};

/// Appending tasks per process.
const TASKS: usize = 16;

/// One appending process: appends until `seconds` pass, prints how many.
async fn child(database_url: &str, seconds: u64, process: usize) -> anyhow::Result<()> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    let store = EventStore::new(pool, Arc::new(NoProjection));
    let appended = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, appended) = (store.clone(), appended.clone());
        tasks.push(tokio::spawn(async move {
            let user = (process * TASKS + task) as i64 + 1;
            let stream = events::event::stream::chat(user, 1);
            while Instant::now() < until {
                let event = DomainEvent::UserMessagePosted(UserMessagePosted {
                    message_id: uuid::Uuid::now_v7(),
                    user_id: user,
                    bot_id: 1,
                    content: "benchmark".into(),
                    client_msg_id: None,
                    source: MessageSource::Import,
                });
                let Ok(new) = event.to_new_event(EventMetadata::default()) else {
                    return;
                };
                if store
                    .append_to_stream(&stream, ExpectedVersion::Any, &[new])
                    .await
                    .is_ok()
                {
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    println!("{}", appended.load(Ordering::Relaxed));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, url, seconds, process] = args.as_slice() {
        if mode == "--child" {
            return child(url, seconds.parse()?, process.parse()?).await;
        }
    }
    let seconds: u64 = std::env::var("APPEND_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let me = std::env::current_exe()?;
    println!("| appending processes | appends/s | per process |");
    println!("|---|---|---|");
    for processes in [1usize, 2, 4] {
        let isolation = Isolation::new();
        isolation.migrated_pool().await?;
        let url = isolation.database.url.expose_secret().to_string();
        let children: Vec<_> = (0..processes)
            .map(|process| {
                tokio::process::Command::new(&me)
                    .args(["--child", &url, &seconds.to_string(), &process.to_string()])
                    .output()
            })
            .collect();
        let mut total = 0u64;
        for output in futures::future::join_all(children).await {
            let output = output?;
            anyhow::ensure!(
                output.status.success(),
                "an appending process failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            total += String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<u64>()?;
        }
        let rate = total as f64 / seconds as f64;
        println!(
            "| {processes} | {rate:.0} | {:.0} |",
            rate / processes as f64
        );
        isolation.teardown().await?;
    }
    Ok(())
}
