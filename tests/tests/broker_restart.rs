//! A real RabbitMQ restart (`rabbitmqctl stop_app` / `start_app`) under a running api
//! and worker. Cargo runs test binaries one after another, and this binary holds
//! this one test, so the restart disturbs no other test.

use std::time::Duration;

use serde_json::json;

use system_tests::{wait_until_answered, Stack, StackOptions};

fn rabbitmqctl(command: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", command])
        .status()
        .map_err(|e| anyhow::anyhow!("rabbitmqctl is needed for this test: {e}"))?;
    anyhow::ensure!(status.success(), "rabbitmqctl {command} failed");
    Ok(())
}

#[tokio::test]
async fn consumers_and_publishers_survive_a_real_broker_restart() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("restart").await?;
    let chat = |input: &'static str, wait: bool| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let path = if wait {
                "/chat/new_chat"
            } else {
                "/chat/new_chat?wait=false"
            };
            client
                .post_json(
                    path,
                    &json!({ "chatbot_id": bot, "input": input }),
                    Some(&token),
                )
                .await
        }
    };
    assert_eq!(chat("before", true).await?.status, 200);

    rabbitmqctl("stop_app")?;
    let during = chat("during", false).await;
    let restarted = rabbitmqctl("start_app");
    let during = during?;
    restarted?;
    assert_eq!(
        during.status, 202,
        "writes are accepted while the broker is down: {during:?}"
    );
    let id = during.body["data"]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let pool = stack.pool()?;
    // The message sent during the restart is answered after it.
    wait_until_answered(&pool, std::slice::from_ref(&id), Duration::from_secs(90)).await?;
    let after = chat("after", true).await?;
    assert_eq!(after.status, 200, "{after:?}");
    assert!(
        stack.apis[0].is_running() && stack.workers[0].is_running(),
        "nothing was restarted"
    );
    assert!(stack.workers[0].log_text().contains("reconnecting"));
    stack.teardown().await
}
