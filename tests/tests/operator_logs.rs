//! Logs an operator can trust (issue 21, items 5 and 6), with `LOG_FORMAT=json`:
//! every line is one JSON object; each binary logs its settings once, secrets
//! redacted, and the api its address as an address; a client's request id is the
//! correlation id in both binaries' lines for its message and in the event's
//! metadata; and a normal SIGTERM logs no WARN or ERROR.

use std::time::Duration;

use serde_json::{json, Value};

use system_tests::{Stack, StackOptions};

/// Every line of `log` as JSON; an error names a line that is not.
fn json_lines(log: &str) -> anyhow::Result<Vec<Value>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON ({e}): {l}")))
        .collect()
}

fn level(line: &Value) -> &str {
    line["level"].as_str().unwrap_or("")
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn json_logs_carry_settings_request_ids_and_a_quiet_shutdown() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![("LOG_FORMAT".into(), "json".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("watched").await?;
    let request_id = "ops-check-42";
    let reply = client
        .post_json_with_request_id(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "trace me" }),
            Some(&token),
            request_id,
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id),
        "the client's id comes back"
    );
    let carried: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events \
         WHERE JSON_UNQUOTE(JSON_EXTRACT(metadata, '$.correlation_id')) = ?",
    )
    .bind(request_id)
    .fetch_one(&stack.pool()?)
    .await?;
    assert!(
        carried >= 2,
        "the message and its reply carry it: {carried}"
    );

    for process in stack.workers.iter().chain(stack.apis.iter()) {
        process.signal("TERM")?;
    }
    for process in stack.workers.iter_mut().chain(stack.apis.iter_mut()) {
        assert!(process.wait(Duration::from_secs(20)).await?, "a clean exit");
    }

    for (name, log) in [
        ("api", stack.apis[0].log_text()),
        ("worker", stack.workers[0].log_text()),
    ] {
        let lines = json_lines(&log)?;
        let settings: Vec<&Value> = lines.iter().filter(|l| message(l) == "settings").collect();
        assert_eq!(settings.len(), 1, "{name} logs its settings once");
        let settings = settings[0]["fields"]["settings"].as_str().unwrap_or("");
        assert!(settings.contains("REDACTED"), "{name}: {settings}");
        for secret in ["system-test-secret", "test-key"] {
            assert!(!log.contains(secret), "{name} logged a secret");
        }
        assert!(
            lines.iter().any(|l| log_mentions(l, request_id)),
            "{name} logs the request id for the message"
        );
        let loud: Vec<&Value> = lines
            .iter()
            .filter(|l| matches!(level(l), "WARN" | "ERROR"))
            .collect();
        assert!(
            loud.is_empty(),
            "{name} warned on a normal run and stop: {loud:?}"
        );
    }
    let api = json_lines(&stack.apis[0].log_text())?;
    let listening = api
        .iter()
        .find(|l| message(l) == "api listening")
        .ok_or_else(|| anyhow::anyhow!("no listening line"))?;
    let addr = listening["fields"]["addr"].as_str().unwrap_or("");
    assert!(
        addr.parse::<std::net::SocketAddr>().is_ok(),
        "the address is an address: {addr:?}"
    );
    stack.teardown().await
}

/// Whether `line` (its fields or its spans) names `id`.
fn log_mentions(line: &Value, id: &str) -> bool {
    line.to_string().contains(id)
}
