//! Pipeline overhead: messages at a steady 100 a second with an instant model,
//! each timed from its post to the answer of the request waiting for its reply
//! (the event, the queue, the worker, the reply's event, the read model, the
//! notice that wakes the request).

use std::time::Duration;

use serde_json::json;
use system_tests::Stack;

use crate::measure::{paced, peak_rss, CpuUse};
use crate::summary::Row;

pub const RATE: u32 = 100;

pub async fn pipeline(
    stack: &Stack,
    http: &reqwest::Client,
    token: &str,
    bots: &[i64],
    duration: Duration,
) -> Row {
    let url = format!("{}/chat/new_chat", stack.client(0).base);
    let before = CpuUse::now(stack);
    let figures = paced(RATE, duration, |n| {
        let request = http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({ "chatbot_id": bots[n % bots.len()], "input": "steady" }));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let cpu = CpuUse::now(stack).per_message_since(&before, figures.requests);
    println!(
        "pipeline, {RATE} messages/s steady: post → reply p50 {:.1} ms, p99 {:.1} ms \
         (targets 10 and 30), {} answered, {} errors; CPU per message {cpu}",
        figures.percentile(0.5).as_secs_f64() * 1000.0,
        figures.percentile(0.99).as_secs_f64() * 1000.0,
        figures.requests,
        figures.errors
    );
    Row {
        cpu,
        rss: Some(peak_rss(stack)),
        ..Row::timed(
            "pipeline: `new_chat` post → its reply, instant model",
            &format!("{RATE} messages/s, steady"),
            &figures,
            "messages/s",
        )
    }
}
