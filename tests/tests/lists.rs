//! What one user can make the api hold (issue 19, item 6, in part): a cap on a
//! user's bots (`USER_MAX_BOTS`), and paging for `bots/list` and `chat/list`
//! (`after`, `limit`), additive: without them a list answers as the original
//! did.

use serde_json::{json, Value};

use system_tests::{event_count, Client, Stack, StackOptions};

async fn bots_list(client: &Client, token: &str, extra: Value) -> anyhow::Result<Vec<i64>> {
    let mut body = json!({});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let answer = client.post_json("/bots/list", &body, Some(token)).await?;
    anyhow::ensure!(answer.body["code"] == 200, "{answer:?}");
    Ok(answer.body["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["chatbot_id"].as_i64())
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn a_users_bots_are_capped_and_lists_page() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("USER_MAX_BOTS".into(), "4".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, first) = client.user_with_bot("collector").await?;
    let mut bots = vec![first];
    for n in 1..4 {
        bots.push(
            client
                .create_bot(&token, &format!("Bot {n}"), 0, "")
                .await?,
        );
    }
    let pool = stack.pool()?;
    let before = event_count(&pool).await?;
    let refused = client
        .post_json(
            "/bots/create",
            &json!({ "chatbot_name": "One too many", "chatbot_type": 0 }),
            Some(&token),
        )
        .await?;
    assert_eq!(refused.body["code"], -1, "{refused:?}");
    assert!(
        refused.body["msg"]
            .as_str()
            .is_some_and(|m| m.contains("delete one")),
        "{refused:?}"
    );
    assert_eq!(event_count(&pool).await?, before, "nothing stored");

    // bots/list: plain, as the original; then in pages.
    assert_eq!(bots_list(&client, &token, json!({})).await?, bots);
    let page = bots_list(&client, &token, json!({ "limit": 3 })).await?;
    assert_eq!(page, bots[..3]);
    let rest = bots_list(&client, &token, json!({ "limit": 3, "after": page[2] })).await?;
    assert_eq!(rest, bots[3..]);

    // chat/list: newest first, in pages.
    for bot in &bots {
        let said = client
            .post_json(
                "/chat/new_chat",
                &json!({ "chatbot_id": bot, "input": format!("hello {bot}") }),
                Some(&token),
            )
            .await?;
        anyhow::ensure!(said.status == 200, "{said:?}");
    }
    let ids = |answer: &system_tests::Reply| -> Vec<i64> {
        answer.body["data"]
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r[0].as_i64()).collect())
            .unwrap_or_default()
    };
    let newest_first: Vec<i64> = bots.iter().rev().copied().collect();
    let plain = client.get("/chat/list", Some(&token)).await?;
    assert_eq!(ids(&plain), newest_first);
    let first_page = client.get("/chat/list?limit=2", Some(&token)).await?;
    assert_eq!(ids(&first_page), newest_first[..2]);
    let second_page = client
        .get(
            &format!("/chat/list?limit=2&after={}", newest_first[1]),
            Some(&token),
        )
        .await?;
    assert_eq!(ids(&second_page), newest_first[2..]);
    let bad = client.get("/chat/list?limit=0", Some(&token)).await?;
    assert_eq!(bad.status, 400, "{bad:?}");

    // Deleting a bot makes room for another.
    let deleted = client
        .post_json(
            "/bots/delete",
            &json!({ "chatbot_id": bots[0] }),
            Some(&token),
        )
        .await?;
    assert_eq!(deleted.body["code"], 200, "{deleted:?}");
    client.create_bot(&token, "Replacement", 0, "").await?;
    stack.teardown().await
}
