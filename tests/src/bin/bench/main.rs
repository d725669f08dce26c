//! Benchmarks against the real binaries, MariaDB and RabbitMQ, with the fake
//! model. Run it through `scripts/bench.sh`, which builds everything in release
//! mode first. Each scenario prints its own lines as it goes, and the run ends
//! with one Markdown table of them all (the README's benchmark table).
//!
//! `BENCH_SCENARIOS` picks scenarios by name, comma-separated; unset, the quick
//! ones run; `all` runs every one:
//! - `history`, `healthz`, `uncached`, `list`: `chat/history` of 50 messages (cached,
//!   and on an api with the cache off), against `/healthz` as the same process's
//!   ceiling, and `chat/list` of 100 conversations, 64 clients each;
//! - `chat`: `new_chat` with an instant model, 16 clients, with the CPU each
//!   message costs by process;
//! - `pipeline`: `new_chat` at a steady 100 messages/s, post → reply;
//! - `fanout`: 1,000 streams and 1,000 long-polls held on one api;
//! - `slow`: `new_chat` with a 500 ms model, 64 clients;
//! - `stop`: a stop on one api to the model's connection closing;
//! - `workers` (long): a 2 s model, one worker at `WORKER_PREFETCH=1000`, and 1, 2
//!   and 4 workers at the default;
//! - `growth` (long): history and `new_chat` with the log at 10,000 and 1,000,000
//!   events;
//! - `memory` (long): RSS after start, and the api's after 10,000 and 100,000
//!   messages.
//!
//! `BENCH_SECONDS` sets each timed scenario's length (10 by default).

mod cast;
mod fanout;
mod growth;
mod measure;
mod memory;
mod pipeline;
mod stop;
mod summary;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use system_tests::{Stack, StackOptions};

use cast::Cast;
use measure::{load, peak_rss, CpuUse, Figures};
use summary::{Row, Summary};

const QUICK: &[&str] = &[
    "history", "healthz", "uncached", "list", "chat", "pipeline", "fanout", "slow", "stop",
];
const LONG: &[&str] = &["workers", "growth", "memory"];

/// Warnings only, but the consumer's line that says a worker is consuming, which
/// the stack waits for before it counts a worker as started.
pub const LOGS: &str = "warn,events::bus::consumer=info";

fn report(name: &str, figures: &Figures, original: f64) {
    println!(
        "{name:<44} {:>9.0} req/s  p50 {:>6.1} ms  p99 {:>6.1} ms  errors {:>4}  (original ~{original:.0}/s: {:.1}x the original)",
        figures.per_second(),
        figures.percentile(0.5).as_secs_f64() * 1000.0,
        figures.percentile(0.99).as_secs_f64() * 1000.0,
        figures.errors,
        figures.per_second() / original,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let asked = std::env::var("BENCH_SCENARIOS").unwrap_or_default();
    let asked: Vec<&str> = match asked.trim() {
        "" => QUICK.to_vec(),
        "all" => QUICK.iter().chain(LONG).copied().collect(),
        names => names.split(',').map(str::trim).collect(),
    };
    if let Some(unknown) = asked
        .iter()
        .find(|n| !QUICK.contains(n) && !LONG.contains(n))
    {
        anyhow::bail!(
            "no scenario {unknown:?}; BENCH_SCENARIOS takes `all` or any of {}",
            QUICK
                .iter()
                .chain(LONG)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let wanted = |name: &str| asked.contains(&name);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let duration = Duration::from_secs(seconds);
    let mut summary = Summary::default();
    if QUICK.iter().any(|n| wanted(n)) {
        quick(&wanted, duration, &mut summary).await?;
    }
    if wanted("workers") {
        workers::workers(duration.max(Duration::from_secs(10)), &mut summary).await?;
    }
    if wanted("growth") {
        growth::growth(duration, &mut summary).await?;
    }
    if wanted("memory") {
        memory::memory(&mut summary).await?;
    }
    println!(
        "\n{} cores; {seconds} s per timed scenario; release build; MariaDB and RabbitMQ local",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    summary.print();
    Ok(())
}

/// The scenarios that share one stack: an api and a worker with a 50-message
/// conversation, a user with 100 conversations, and a writer with 64 bots.
async fn quick(
    wanted: &dyn Fn(&str) -> bool,
    duration: Duration,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![
            ("DB_MAX_CONNECTIONS".into(), "32".into()),
            ("WORKER_PREFETCH".into(), "256".into()),
            ("SSE_MAX_STREAMS_PER_USER".into(), "2000".into()),
            ("RUST_LOG".into(), LOGS.into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    println!("setting up: a 50-message conversation and a user with 100 conversations...");
    let Cast {
        reader,
        talk,
        writer,
        writer_bots,
    } = Cast::sign_up(&client).await?;
    let (_, lister, _) = client.signup("lister", "pass word").await?;
    for n in 0..100 {
        let b = client
            .create_bot(&lister, &format!("bot {n}"), 1, "Li Bai")
            .await?;
        client
            .post_json(
                "/chat/new_chat?wait=false",
                &json!({ "chatbot_id": b, "input": "hi" }),
                Some(&lister),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = client
        .get(&format!("/chat/history?chatbot_id={talk}"), Some(&reader))
        .await?;
    let list = client.get("/chat/list", Some(&lister)).await?;
    println!(
        "history rows: {}, chat/list rows: {}; {} s per scenario",
        history.body["data"].as_array().map_or(0, Vec::len),
        list.body["data"].as_array().map_or(0, Vec::len),
        duration.as_secs()
    );

    let http = measure::http_client()?;
    let base = client.base.clone();
    let get = |url: String, token: Option<String>| {
        let http = http.clone();
        move |_| {
            let request = http.get(&url);
            let request = match &token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        }
    };

    let history_url = format!("{base}/chat/history?chatbot_id={talk}");
    if wanted("history") {
        let figures = load(64, duration, get(history_url.clone(), Some(reader.clone()))).await;
        report("chat/history, 50 messages, 64 clients", &figures, 2000.0);
        summary.add(Row {
            rss: Some(peak_rss(&stack)),
            ..Row::timed(
                "`chat/history` of 50, cached",
                "64 clients",
                &figures,
                "req/s",
            )
        });
        if wanted("healthz") {
            // The same process's ceiling: a route that does nothing. A cached
            // history read (token verified, session and user checked in memory)
            // should come close to it.
            let ceiling = load(64, duration, get(format!("{base}/healthz"), None)).await;
            let share = figures.per_second() / ceiling.per_second().max(1.0);
            println!(
                "{:<44} {:>9.0} req/s  p50 {:>6.1} ms; cached history is {share:.2} of it",
                "/healthz, 64 clients (one process's ceiling)",
                ceiling.per_second(),
                ceiling.percentile(0.5).as_secs_f64() * 1000.0,
            );
            summary.add(Row {
                throughput: format!(
                    "{:.0} req/s (cached history: {share:.2} of it)",
                    ceiling.per_second()
                ),
                ..Row::timed("`/healthz` (the api's ceiling)", "64 clients", &ceiling, "")
            });
        }
    }
    if wanted("uncached") {
        // The same, on an api whose read cache is off: every request reads MySQL.
        let uncached = stack.spawn_api_with(&[("READ_CACHE_TTL_MS", "0")]).await?;
        let base = stack.client(uncached).base;
        let figures = load(
            64,
            duration,
            get(
                format!("{base}/chat/history?chatbot_id={talk}"),
                Some(reader.clone()),
            ),
        )
        .await;
        // Its own ceiling, measured right after, in the same conditions.
        let ceiling = load(64, duration, get(format!("{base}/healthz"), None)).await;
        let share = figures.per_second() / ceiling.per_second().max(1.0);
        report("chat/history, 50 messages, cache off", &figures, 2000.0);
        println!(
            "  cache off: {share:.3} of the same api's /healthz ({:.0} req/s)",
            ceiling.per_second()
        );
        summary.add(Row {
            throughput: format!(
                "{:.0} req/s ({:.1}% of its `/healthz`, {:.0} req/s)",
                figures.per_second(),
                share * 100.0,
                ceiling.per_second()
            ),
            ..Row::timed(
                "`chat/history` of 50, cache off",
                "64 clients",
                &figures,
                "",
            )
        });
    }
    if wanted("list") {
        let figures = load(
            64,
            duration,
            get(format!("{base}/chat/list"), Some(lister.clone())),
        )
        .await;
        report("chat/list, 100 conversations, 64 clients", &figures, 600.0);
        summary.add(Row::timed(
            "`chat/list` of 100",
            "64 clients",
            &figures,
            "req/s",
        ));
    }

    let post = {
        let (http, url, token, bots) = (
            http.clone(),
            format!("{base}/chat/new_chat"),
            writer.clone(),
            Arc::new(writer_bots.clone()),
        );
        move |i: usize| {
            let request = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "chatbot_id": bots[i % bots.len()], "input": "benchmark" }));
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        }
    };
    if wanted("chat") {
        let clients = std::env::var("BENCH_CHAT_CLIENTS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(16);
        let pool = stack.pool()?;
        let events_before = system_tests::event_count(&pool).await?;
        let statements_before = measure::statements(&pool).await?;
        let before = CpuUse::now(&stack);
        let figures = load(clients, duration, post.clone()).await;
        let cpu = CpuUse::now(&stack).per_message_since(&before, figures.requests);
        let statements =
            measure::statements_per_message(&pool, statements_before, figures.requests).await?;
        let cpu = format!("{cpu}; {statements}");
        report("new_chat, instant model, 16 clients", &figures, 40.0);
        println!(
            "  CPU per message: {cpu} over {} messages",
            figures.requests
        );
        // Every message answered is two events (more with memory refreshes):
        // nothing the clients were told of may be missing from the log.
        let recorded = system_tests::event_count(&pool).await? - events_before;
        println!(
            "  events recorded meanwhile: {recorded} for {} messages answered",
            figures.requests
        );
        anyhow::ensure!(
            recorded >= 2 * figures.requests as i64,
            "messages answered but missing from the log"
        );
        summary.add(Row {
            cpu,
            rss: Some(peak_rss(&stack)),
            ..Row::timed(
                "`new_chat`, instant model",
                &format!("{clients} clients"),
                &figures,
                "messages/s",
            )
        });
    }
    if wanted("pipeline") {
        let row = pipeline::pipeline(&stack, &http, &writer, &writer_bots, duration).await;
        summary.add(row);
    }
    if wanted("fanout") {
        for row in fanout::fanout(&stack).await? {
            summary.add(row);
        }
    }
    if wanted("slow") {
        stack.model.set_latency(Duration::from_millis(500));
        let figures = load(64, duration, post).await;
        report("new_chat, 500 ms model, 64 clients", &figures, 8.5);
        println!("  (the model's own limit at 64 clients and 500 ms is 128/s)");
        stack.model.set_latency(Duration::ZERO);
        summary.add(Row::timed(
            "`new_chat`, 500 ms model (limit 128/s)",
            "64 clients",
            &figures,
            "messages/s",
        ));
    }
    if wanted("stop") {
        summary.add(stop::stop_latency(&mut stack).await?);
    }
    stack.teardown().await
}
