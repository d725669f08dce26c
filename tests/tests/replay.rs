//! `worker replay`: rebuilding the read models from the log while the system keeps
//! serving, and exporting streams for audit, with the real binaries.

use std::time::Duration;

use serde_json::json;
use sqlx::MySqlPool;
use tokio::process::Command;

use system_tests::stack::binary;
use system_tests::{Stack, StackOptions};

/// Every row of every read model, in a fixed order.
async fn snapshot(pool: &MySqlPool) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT CONCAT_WS('|', chatbot_id, user_id, chatbot_name, chatbot_type, chatbot_persona, \
         created_at, IFNULL(deleted_at, '-')) FROM bots ORDER BY chatbot_id",
        "SELECT CONCAT_WS('|', user_id, chatbot_id, seq, message_id, IFNULL(reply_to, '-'), by_user, \
         content, status, created_at) FROM chat_history ORDER BY user_id, chatbot_id, seq",
        "SELECT CONCAT_WS('|', user_id, chatbot_id, chatbot_name, last_content, last_at, last_seq, \
         last_position) FROM chat_list ORDER BY user_id, chatbot_id",
    ] {
        rows.extend(sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await?);
    }
    Ok(rows)
}

async fn replay(stack: &Stack, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new(binary("worker")?)
        .arg("replay")
        .args(args)
        .envs(stack.env())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "worker replay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

#[tokio::test]
async fn a_rebuild_under_load_matches_a_quiet_replay_and_exports_are_complete() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("replayer").await?;
    let persona_bot = client.create_bot(&token, "Li", 1, "Li Bai").await?;
    let gone = client.create_bot(&token, "Gone", 0, "").await?;
    for (target, input) in [
        (bot, "one"),
        (persona_bot, "two"),
        (gone, "three"),
        (bot, "four"),
    ] {
        let reply = client
            .post_json(
                "/chat/new_chat",
                &json!({ "chatbot_id": target, "input": input }),
                Some(&token),
            )
            .await?;
        assert_eq!(reply.status, 200);
    }
    stack.model.fail_next(400, "invalid_request_error", None);
    let failed = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "fails" }),
            Some(&token),
        )
        .await?;
    assert_eq!(failed.status, 502);
    client
        .post_json("/bots/delete", &json!({ "chatbot_id": gone }), Some(&token))
        .await?;
    let pool = stack.pool()?;
    let before = snapshot(&pool).await?;

    // A quiet rebuild reproduces the live read models exactly.
    let output = replay(&stack, &["rebuild", "--batch", "3"]).await?;
    assert!(String::from_utf8_lossy(&output.stderr).contains("read models rebuilt"));
    assert_eq!(snapshot(&pool).await?, before);

    // A rebuild while users keep chatting: nothing is lost or reordered.
    let load = tokio::spawn({
        let client = client.clone();
        let token = token.clone();
        async move {
            let mut sent = 0;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let reply = client
                    .post_json(
                        "/chat/new_chat",
                        &json!({ "chatbot_id": persona_bot, "input": format!("during {sent}") }),
                        Some(&token),
                    )
                    .await?;
                anyhow::ensure!(reply.status == 200, "{reply:?}");
                sent += 1;
            }
            Ok::<_, anyhow::Error>(sent)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    replay(&stack, &["rebuild", "--batch", "2"]).await?;
    let sent = load.await??;
    assert!(sent > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_concurrent = snapshot(&pool).await?;
    replay(&stack, &["rebuild"]).await?;
    assert_eq!(
        snapshot(&pool).await?,
        after_concurrent,
        "the tables rebuilt under load equal a quiet replay"
    );
    let history = client
        .get(
            &format!("/chat/history?chatbot_id={persona_bot}"),
            Some(&token),
        )
        .await?;
    assert_eq!(
        history.body["data"].as_array().map(Vec::len),
        Some(2 + 2 * sent)
    );

    // Export: a stream as JSON lines, oldest first, and the whole log.
    let stream = format!("chat-{user}-{bot}");
    let output = replay(&stack, &["export", "--stream", &stream]).await?;
    let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 6, "three messages, two replies, one failure");
    assert!(events.iter().all(|e| e["stream"] == json!(stream)));
    assert!(events
        .windows(2)
        .all(|w| w[0]["version"].as_i64().map(|v| v + 1) == w[1]["version"].as_i64()));
    let all = replay(&stack, &["export", "--after", "0"]).await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await?;
    assert_eq!(String::from_utf8(all.stdout)?.lines().count() as i64, total);
    stack.teardown().await
}
