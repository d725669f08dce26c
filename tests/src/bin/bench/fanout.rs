//! Fan-out: 1,000 long-polls and 1,000 streams held open on one api, then replies
//! streaming into 10 other conversations, then a reply to each waiting
//! conversation: the api's memory, its CPU while they wait and while others
//! stream, and the delay from each reply's commit to its clients.

use std::time::Duration;

use system_tests::Stack;

use crate::measure::{cpu_time, percentile, rss_mib};
use crate::summary::Row;

/// The api's resident memory now and at its peak, in MiB, and its CPU time so far.
fn api_figures(pid: u32) -> anyhow::Result<(u64, u64, Duration)> {
    let (now, peak) = rss_mib(pid);
    Ok((now, peak, cpu_time(pid)))
}

/// 1,000 long-polls and 1,000 streams held open on one api, one of each per
/// conversation; then a reply to each conversation. Prints the api's memory, its
/// CPU while they all wait, and the delay from each reply's commit to its clients.
pub async fn fanout(stack: &Stack) -> anyhow::Result<Vec<Row>> {
    use system_tests::sse::SseStream;
    const CONVERSATIONS: usize = 1000;
    let client = stack.client(0);
    let (user, token, _) = client.signup("fanout", "pass word").await?;
    let mut bots = Vec::with_capacity(CONVERSATIONS);
    let names: Vec<String> = (0..CONVERSATIONS).map(|n| format!("f{n}")).collect();
    for chunk in names.chunks(32) {
        let created = futures::future::join_all(
            chunk
                .iter()
                .map(|name| client.create_bot(&token, name, 0, "")),
        )
        .await;
        for bot in created {
            bots.push(bot?);
        }
    }
    let pid = stack.apis[0].pid().unwrap_or_default();
    let (rss_before, _, _) = api_figures(pid)?;

    let (received, mut arrivals) =
        tokio::sync::mpsc::unbounded_channel::<(&str, i64, chrono::DateTime<chrono::Utc>)>();
    let mut clients = Vec::new();
    for &bot in &bots {
        let (base, sse_token, sse_sent) = (client.base.clone(), token.clone(), received.clone());
        clients.push(tokio::spawn(async move {
            let path = format!("/chat/stream?chatbot_id={bot}");
            if let Ok(mut sse) = SseStream::open(&base, &path, Some(&sse_token), None).await {
                if sse.until("reply", Duration::from_secs(120)).await.is_ok() {
                    let _ = sse_sent.send(("stream", bot, chrono::Utc::now()));
                }
            }
        }));
        let (poller, poll_token, poll_sent) = (client.clone(), token.clone(), received.clone());
        clients.push(tokio::spawn(async move {
            // After the user's message (seq 1): returns with the reply.
            let path = format!("/chat/history?chatbot_id={bot}&after=1&wait=60");
            if let Ok(answer) = poller.get(&path, Some(&poll_token)).await {
                if answer.body["data"]
                    .as_array()
                    .is_some_and(|rows| !rows.is_empty())
                {
                    let _ = poll_sent.send(("long-poll", bot, chrono::Utc::now()));
                }
            }
        }));
    }
    drop(received);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, _, cpu_before) = api_figures(pid)?;
    let idle_window = Duration::from_secs(10);
    tokio::time::sleep(idle_window).await;
    let (rss_waiting, _, cpu_after) = api_figures(pid)?;
    let idle_cpu = (cpu_after - cpu_before).as_secs_f64() / idle_window.as_secs_f64() * 100.0;

    // Replies streaming into 10 other conversations (each followed by a stream)
    // while all of those wait: a notice should wake its own conversation's
    // waiters, not the 2,000 others.
    let (_, hot_token, _) = client.signup("fanout-hot", "pass word").await?;
    let mut hot = Vec::new();
    for n in 0..10 {
        hot.push(
            client
                .create_bot(&hot_token, &format!("hot{n}"), 0, "")
                .await?,
        );
    }
    let streaming_window = Duration::from_secs(10);
    for &bot in &hot {
        let (base, sse_token) = (client.base.clone(), hot_token.clone());
        tokio::spawn(async move {
            let path = format!("/chat/stream?chatbot_id={bot}");
            if let Ok(mut sse) = SseStream::open(&base, &path, Some(&sse_token), None).await {
                let _ = sse.until("none", Duration::from_secs(15)).await;
            }
        });
    }
    stack.model.set_chunk_delay(Duration::from_millis(10));
    let long_input = "word ".repeat(100);
    let (_, _, cpu_before) = api_figures(pid)?;
    let started = std::time::Instant::now();
    let mut streamed = 0;
    while started.elapsed() < streaming_window {
        let posts = hot
            .iter()
            .map(|&bot| client.chat(&hot_token, bot, &long_input));
        for posted in futures::future::join_all(posts).await {
            posted?;
            streamed += 1;
        }
    }
    let (_, _, cpu_after) = api_figures(pid)?;
    let streaming_cpu =
        (cpu_after - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64() * 100.0;
    stack.model.set_chunk_delay(Duration::ZERO);

    // Replies at a steady 100 a second (10 every 100 ms), so the figure is the
    // delivery's latency rather than the queueing of one burst.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for chunk in bots.chunks(10) {
        pace.tick().await;
        let posts = chunk
            .iter()
            .map(|&bot| client.post_later(&token, bot, "hello"));
        for posted in futures::future::join_all(posts).await {
            posted?;
        }
    }
    let mut delays: std::collections::HashMap<&str, Vec<Duration>> = Default::default();
    let pool = stack.pool()?;
    let committed: Vec<(String, chrono::NaiveDateTime)> = {
        let mut arrived = Vec::new();
        while let Ok(Some(arrival)) =
            tokio::time::timeout(Duration::from_secs(60), arrivals.recv()).await
        {
            arrived.push(arrival);
            if arrived.len() == 2 * CONVERSATIONS {
                break;
            }
        }
        let rows = sqlx::query_as(
            "SELECT stream_id, recorded_at FROM events WHERE event_type = 'BotReplyGenerated'",
        )
        .fetch_all(&pool)
        .await?;
        for (kind, bot, at) in &arrived {
            let stream = events::event::stream::chat(user, *bot);
            let commit = rows
                .iter()
                .find(|(s, _): &&(String, chrono::NaiveDateTime)| *s == stream)
                .map(|(_, t)| t.and_utc());
            if let Some(commit) = commit {
                let delay = (*at - commit).to_std().unwrap_or_default();
                delays.entry(kind).or_default().push(delay);
            }
        }
        rows
    };
    let _ = committed;
    let (_, rss_peak, _) = api_figures(pid)?;
    println!(
        "fanout: {CONVERSATIONS} SSE streams + {CONVERSATIONS} long-polls on one api: RSS {rss_before} MiB \
         before, {rss_waiting} MiB while they wait, peak {rss_peak} MiB; api CPU while they wait \
         idle: {idle_cpu:.2}% of one core"
    );
    println!(
        "fanout: {streamed} replies of about 100 words streamed into 10 other conversations \
         meanwhile: api CPU {streaming_cpu:.1}% of one core"
    );
    let mut rows = vec![Row {
        scenario: format!(
            "fanout: {CONVERSATIONS} SSE streams + {CONVERSATIONS} long-polls held on one api, \
             replies streaming into 10 other conversations"
        ),
        load: format!("{streamed} replies of ~100 words in 10 s"),
        throughput: format!("api CPU {streaming_cpu:.1}% of a core (idle waiting: {idle_cpu:.2}%)"),
        rss: Some((rss_peak, 0)),
        ..Row::default()
    }];
    for (kind, mut times) in delays {
        times.sort();
        println!(
            "fanout: reply commit → {kind} client: {} received, p50 {:.1} ms, p99 {:.1} ms",
            times.len(),
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0,
        );
        rows.push(Row {
            scenario: format!("fanout: reply commit → {kind} client"),
            load: format!("{CONVERSATIONS} waiting, replies at 100/s"),
            throughput: format!("{} received", times.len()),
            latency: Some([0.5, 0.9, 0.99, 1.0].map(|p| percentile(&times, p))),
            ..Row::default()
        });
    }
    for task in clients {
        task.abort();
    }
    Ok(rows)
}
