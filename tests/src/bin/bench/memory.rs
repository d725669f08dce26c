//! Memory: the api's and the worker's RSS right after start, and the api's as
//! messages go through it under a history load: after the first 10,000 and after
//! `BENCH_MEMORY_MESSAGES` (100,000 by default). A server that keeps something
//! per message, per request or per conversation it has seen grows between the two.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::{Stack, StackOptions};

use crate::cast::Cast;
use crate::measure::{self, peak_rss, rss_mib};
use crate::summary::{Row, Summary};

const FIRST: usize = 10_000;

pub async fn memory(summary: &mut Summary) -> anyhow::Result<()> {
    let messages: usize = std::env::var("BENCH_MEMORY_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let stack = Stack::start(StackOptions {
        env: vec![("RUST_LOG".into(), crate::LOGS.into())],
        ..Default::default()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |pid: Option<u32>| pid.map_or(0, |pid| rss_mib(pid).0);
    let api_pid = stack.apis[0].pid();
    let (api_at_start, worker_at_start) = (rss(api_pid), rss(stack.workers[0].pid()));
    println!(
        "memory: RSS after start: api {api_at_start} MiB, worker {worker_at_start} MiB \
         (target under 30 each)"
    );

    let client = stack.client(0);
    let Cast {
        reader,
        talk,
        writer,
        writer_bots: bots,
    } = Cast::sign_up(&client).await?;
    let bots = Arc::new(bots);
    let http = measure::http_client()?;
    let (sent, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (writing, sent, stop, bots) = (http.clone(), sent.clone(), done.clone(), bots.clone());
        let (url, token) = (format!("{}/chat/new_chat", client.base), writer.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let posted = writing
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "chatbot_id": bots[n % bots.len()], "input": "memory" }))
                    .send()
                    .await;
                if posted.is_ok_and(|r| r.status() == 200) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                n += 16;
            }
        }));
        let (http, done) = (http.clone(), done.clone());
        let (url, token) = (
            format!("{}/chat/history?chatbot_id={talk}", client.base),
            reader.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let _ = http.get(&url).bearer_auth(&token).send().await;
            }
        }));
    }
    // A short run (`BENCH_MEMORY_MESSAGES` under 10,000) compares with its middle.
    let first = FIRST.min(messages / 2);
    let started = Instant::now();
    let mut after_first = None;
    while sent.load(Ordering::Relaxed) < messages {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if after_first.is_none() && sent.load(Ordering::Relaxed) >= first {
            after_first = Some(rss(api_pid));
        }
    }
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let after_all = rss(api_pid);
    let after_first = after_first.unwrap_or(after_all);
    println!(
        "memory: api RSS after {first} messages {after_first} MiB, after {messages} {after_all} \
         MiB: {:+.1}% (target within 20%)",
        (after_all as f64 / after_first.max(1) as f64 - 1.0) * 100.0
    );
    summary.add(Row {
        scenario: format!(
            "memory: api RSS at start / after {first} / after {messages} messages, with history \
             read alongside"
        ),
        load: "16 writers + 16 readers".into(),
        throughput: format!(
            "{:.0} messages/s; api {api_at_start} / {after_first} / {after_all} MiB, worker at \
             start {worker_at_start} MiB",
            messages as f64 / elapsed.as_secs_f64()
        ),
        rss: Some(peak_rss(&stack)),
        ..Row::default()
    });
    stack.teardown().await
}
