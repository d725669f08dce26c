//! Stop latency: with 2 apis and 2 workers, from a `POST /chat/stop` (sent to the
//! other api than the one that took the message) to the model's connection
//! closing; the target is 300 ms at p99.

use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::Stack;

use crate::measure::percentile;
use crate::summary::Row;

/// Stops, one at a time, each sent to the second api while the first api's
/// message is being answered (by either worker): from the stop's request to the
/// fake model seeing its caller hang up.
pub async fn stop_latency(stack: &mut Stack) -> anyhow::Result<Row> {
    const STOPS: usize = 200;
    stack.spawn_api().await?;
    stack.spawn_worker().await?;
    let (taker, stopper) = (stack.client(0), stack.client(stack.apis.len() - 1));
    let (_, token, _) = taker.signup("stopper", "pass word").await?;
    let mut bots = Vec::new();
    for n in 0..20 {
        bots.push(taker.create_bot(&token, &format!("s{n}"), 0, "").await?);
    }
    // Long answers, written steadily: ~300 words, 10 ms apart.
    stack.model.pad_answers(300 * 1024);
    stack.model.set_chunk_delay(Duration::from_millis(10));
    let mut latencies = Vec::with_capacity(STOPS);
    for i in 0..STOPS {
        let bot = bots[i % bots.len()];
        let marker = format!("stop bench {i}");
        taker.post_later(&token, bot, &marker).await?;
        system_tests::eventually(Duration::from_secs(10), "the model call", || {
            let started = stack
                .model
                .requests()
                .iter()
                .any(|r| r.to_string().contains(&marker));
            async move { Ok(started.then_some(())) }
        })
        .await?;
        // A few words in, the way a person stops a reply.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Instant::now();
        let stopped = stopper
            .post_json("/chat/stop", &json!({ "chatbot_id": bot }), Some(&token))
            .await?;
        anyhow::ensure!(
            stopped.body["data"]["status"] == "stopped",
            "the stop landed: {stopped:?}"
        );
        let hung_up = stack
            .model
            .wait_for_hang_up(&marker, Duration::from_secs(10))
            .await?;
        latencies.push(hung_up.saturating_duration_since(sent));
    }
    stack.model.pad_answers(0);
    stack.model.set_chunk_delay(Duration::ZERO);
    latencies.sort();
    println!(
        "stop, 2 apis and 2 workers: {STOPS} stops, request → model connection closed: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target: p99 under 300 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    Ok(Row {
        scenario: "stop: `chat/stop` on the other api → the model's connection closed".into(),
        load: format!("{STOPS} stops, one at a time, 2 apis and 2 workers"),
        throughput: "–".into(),
        latency: Some([0.5, 0.9, 0.99, 1.0].map(|p| percentile(&latencies, p))),
        ..Row::default()
    })
}
