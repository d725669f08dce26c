//! Admission caps on unanswered messages (issue 19, item 2), against the real
//! api: past `CONVERSATION_MAX_UNANSWERED` in one conversation, or
//! `USER_MAX_UNANSWERED` across a user's bots, `new_chat` answers 429 with
//! `Retry-After` and stores nothing; a retried `client_msg_id` of an accepted
//! message is answered as before; once the bot catches up, messages are accepted
//! again.

use std::time::Duration;

use serde_json::json;

use system_tests::{event_count, user_message_ids, wait_until_answered, Stack, StackOptions};

#[tokio::test]
async fn past_a_cap_new_chat_answers_429_and_stores_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![
            ("CONVERSATION_MAX_UNANSWERED".into(), "3".into()),
            ("USER_MAX_UNANSWERED".into(), "5".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, first) = client.user_with_bot("eager").await?;
    let second = client.create_bot(&token, "Second", 0, "").await?;
    let third = client.create_bot(&token, "Third", 0, "").await?;
    let post = |bot: i64, key: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            client
                .post_json(
                    "/chat/new_chat?wait=false",
                    &json!({ "chatbot_id": bot, "input": format!("hello {key}"), "client_msg_id": key }),
                    Some(&token),
                )
                .await
        }
    };
    for n in 0..3 {
        assert_eq!(post(first, format!("a{n}")).await?.status, 202);
    }
    let pool = stack.pool()?;
    let before = event_count(&pool).await?;

    // The conversation's cap.
    let refused = post(first, "a3".into()).await?;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["code"], 429);
    let msg = refused.body["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("wait for the bot to answer"), "{msg}");
    let retry_after = refused
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s > 0), "{:?}", refused.headers);
    assert_eq!(event_count(&pool).await?, before, "nothing stored");

    // A retry of an accepted message is answered as before, not refused.
    let retried = post(first, "a1".into()).await?;
    assert_eq!(retried.status, 202, "{retried:?}");
    assert_eq!(event_count(&pool).await?, before);

    // The user's cap, across bots: 3 + 2 = 5.
    for n in 0..2 {
        assert_eq!(post(second, format!("b{n}")).await?.status, 202);
    }
    let over = post(third, "c0".into()).await?;
    assert_eq!(over.status, 429, "{over:?}");
    assert!(over.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("across your bots")));
    let stored = event_count(&pool).await?;

    // The bot catches up: accepted again.
    stack.spawn_worker().await?;
    let mut ids = user_message_ids(&pool, user, first).await?;
    ids.extend(user_message_ids(&pool, user, second).await?);
    wait_until_answered(&pool, &ids, Duration::from_secs(30)).await?;
    assert_eq!(post(third, "c0".into()).await?.status, 202);
    assert!(event_count(&pool).await? > stored);
    stack.teardown().await
}
