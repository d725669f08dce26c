//! The api's OpenAPI description (issue 21, item 3): served at `/openapi.json`
//! and read at `/docs`, valid by an OpenAPI validator, naming only routes the
//! api answers, and true of the api's answers under schemathesis, which must
//! find no 5xx and no answer that differs from the description.
//!
//! The Python tools come from `scripts/test-tools.sh` (run by `scripts/test.sh`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use system_tests::stack::{Stack, StackOptions};

/// The virtualenv `scripts/test-tools.sh` makes.
fn python_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/py/bin")
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/test-tools.sh (scripts/test.sh does)",
        path.display()
    );
    Ok(path)
}

async fn description(stack: &Stack) -> anyhow::Result<Value> {
    let answer = stack.client(0).get("/openapi.json", None).await?;
    anyhow::ensure!(answer.status == 200, "{answer:?}");
    Ok(answer.body)
}

#[tokio::test]
async fn the_description_is_valid_and_every_operation_in_it_is_served() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let spec = description(&stack).await?;
    assert_eq!(spec["openapi"], "3.1.0");

    let file = std::env::temp_dir().join(system_tests::unique_name("openapi") + ".json");
    std::fs::write(&file, serde_json::to_vec(&spec)?)?;
    let validated = tokio::process::Command::new(python_tool("openapi-spec-validator")?)
        .arg(&file)
        .output()
        .await?;
    let _ = std::fs::remove_file(&file);
    let said = String::from_utf8_lossy(&validated.stdout).to_string()
        + &String::from_utf8_lossy(&validated.stderr);
    println!("openapi-spec-validator: {}", said.trim());
    assert!(
        validated.status.success(),
        "the description is invalid: {said}"
    );

    // Each operation it names reaches its handler: neither the unknown-route
    // answer nor the wrong-method one.
    let http = reqwest::Client::new();
    let base = stack.client(0).base.clone();
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            if path == "/chat/stream" {
                // Answered below, with a timeout: a stream does not end by itself.
                continue;
            }
            let url = format!("{base}{}", path.replace("{id}", "1"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
            let answer = http.request(method.clone(), &url).send().await?;
            let status = answer.status().as_u16();
            let text = answer.text().await?;
            assert!(
                status != 405 && !text.contains("No route for"),
                "{method} {path} is described but not served: {status} {text}"
            );
            operations += 1;
        }
    }
    let stream = http
        .get(format!("{base}/chat/stream?chatbot_id=1"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(stream.status(), 401, "a stream without a token is refused");
    println!("{operations} operations answered by their handlers, and the stream");
    assert!(operations >= 19);

    let docs = http.get(format!("{base}/docs")).send().await?;
    assert_eq!(docs.status(), 200);
    assert!(docs
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    let page = docs.text().await?;
    assert!(
        page.contains("/chat/new_chat"),
        "the reader carries the description"
    );
    stack.teardown().await
}

/// Runs schemathesis against the api, printing its summary.
async fn schemathesis(
    base: &str,
    token: &str,
    operations: &[&str],
    examples: u32,
) -> anyhow::Result<bool> {
    let mut command = tokio::process::Command::new(python_tool("schemathesis")?);
    command
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--request-timeout", "15", "--workers", "2"])
        .args(["--seed", &std::process::id().to_string()])
        .args(operations)
        // Its cache goes where it runs: not into the checkout.
        .current_dir(std::env::temp_dir())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "chatbot_hooks")
        .env(
            "PYTHONPATH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = command.output().await?;
    let text = String::from_utf8_lossy(&run.stdout);
    // The failures in full, and the summary (operations, phases, case counts).
    let summary = text
        .split("=================================== SUMMARY")
        .nth(1)
        .unwrap_or(&text);
    if !run.status.success() {
        println!("{text}\n{}", String::from_utf8_lossy(&run.stderr));
    }
    println!("schemathesis {operations:?}:{summary}");
    Ok(run.status.success())
}

#[tokio::test]
async fn schemathesis_finds_every_answer_true_to_the_description_and_no_server_error(
) -> anyhow::Result<()> {
    let examples: u32 = std::env::var("SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let base = client.base.clone();
    // A user with a bot and a conversation, so that ids the fuzzer tries can
    // reach the handlers' real work, not only "not found".
    let (_, token, bot) = client.user_with_bot("fuzzed").await?;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &serde_json::json!({ "chatbot_id": bot, "input": "hello" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");

    // A stream never ends by itself, so its answers are checked by the
    // streaming tests; and a password change (PATCH) ends the session the
    // fuzzer holds, so it runs apart, with a session of its own.
    let everything_else = schemathesis(
        &base,
        &token,
        &[
            "--exclude-path",
            "/chat/stream",
            "--exclude-operation-id",
            "update_user",
        ],
        examples,
    )
    .await?;
    let (_, other_token, _) = client.user_with_bot("fuzzed-account").await?;
    let account = schemathesis(
        &base,
        &other_token,
        &["--include-operation-id", "update_user"],
        examples,
    )
    .await?;
    assert!(everything_else, "schemathesis found failures (above)");
    assert!(account, "schemathesis found failures on PATCH (above)");

    let healthz = client.get("/healthz", None).await?;
    assert_eq!(healthz.status, 200, "the api is still up");
    let log = stack.apis[0].log_text();
    assert!(
        !log.contains("panicked"),
        "the api panicked under the fuzzer"
    );
    stack.teardown().await
}
