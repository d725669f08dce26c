//! Editing a bot (issue 22, item 4): `POST /bots/update` records `BotUpdated`;
//! the next reply uses the new persona and model settings (seen in the fake
//! model's requests), `bots/detail` and `chat/list` show them, bad settings are
//! refused the bot module's way with nothing stored, and a rebuild and
//! `verify` reproduce the read models from the log.

use serde_json::{json, Value};
use system_tests::{binary, Stack, StackOptions};

/// The fake model's request whose last message is `input`.
fn request_for(stack: &Stack, input: &str) -> Option<Value> {
    stack.model.requests().into_iter().find(|request| {
        request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["content"].as_str().is_some_and(|c| c.contains(input)))
    })
}

fn system_prompt(request: &Value) -> String {
    request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_edit_between_two_messages_changes_the_next_reply_and_replays() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            (
                "ALLOWED_MODELS".into(),
                "fake-model,fake-model-large".into(),
            ),
            ("BOT_MAX_REPLY_TOKENS".into(), "500".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, _) = client.signup("editor", "pass word").await?;
    let bot = client.create_bot(&token, "Jay", 1, "Jay Chou").await?;
    client.chat(&token, bot, "before the edit").await?;

    let edited = client
        .post_form(
            "/bots/update",
            &[
                ("chatbot_id", bot.to_string().as_str()),
                ("chatbot_name", "Moon"),
                ("chatbot_persona", "Li Bai"),
                ("model", "fake-model-large"),
                ("temperature", "0.3"),
                ("max_reply_tokens", "200"),
            ],
            Some(&token),
        )
        .await?;
    assert_eq!(edited.body["code"], 200, "{edited:?}");
    let shown = &edited.body["data"][0];
    assert_eq!(shown["chatbot_id"], bot);
    assert_eq!(shown["chatbot_name"], "Moon");
    assert_eq!(shown["chatbot_persona"], "Li Bai");
    assert_eq!(shown["model"], "fake-model-large");
    assert_eq!(shown["temperature"], 0.3);
    assert_eq!(shown["max_reply_tokens"], 200);

    client.chat(&token, bot, "after the edit").await?;
    let before = request_for(&stack, "before the edit").expect("the first call");
    let after = request_for(&stack, "after the edit").expect("the second call");
    assert!(system_prompt(&before).contains("Jay Chou"));
    assert!(!system_prompt(&before).contains("Li Bai"));
    assert_eq!(before["model"], "fake-model");
    assert!(before.get("temperature").is_none_or(Value::is_null));
    assert!(system_prompt(&after).contains("Li Bai"), "{after}");
    assert!(!system_prompt(&after).contains("Jay Chou"));
    assert_eq!(after["model"], "fake-model-large");
    assert_eq!(after["temperature"], 0.3);
    assert_eq!(after["max_completion_tokens"], 200);

    let detail = client
        .post_json("/bots/detail", &json!({ "chatbot_id": bot }), Some(&token))
        .await?;
    assert_eq!(detail.body["data"][0]["chatbot_name"], "Moon");
    assert_eq!(detail.body["data"][0]["model"], "fake-model-large");
    let list = client.get("/chat/list?format=object", Some(&token)).await?;
    assert_eq!(list.body["data"][0]["chatbot_name"], "Moon", "{list:?}");

    // The log is the record: a rebuild and verify reproduce every read model,
    // one event a batch, so the rename reaches rows of earlier batches.
    for args in [["rebuild", "--batch", "1"], ["verify", "--batch", "1"]] {
        let output = tokio::process::Command::new(binary("worker")?)
            .arg("replay")
            .args(args)
            .envs(stack.env())
            .output()
            .await?;
        assert!(
            output.status.success(),
            "replay {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listed = client.get("/chat/list?format=object", Some(&token)).await?;
    assert_eq!(listed.body["data"][0]["chatbot_name"], "Moon");

    // A bot that was changed can still be deleted, once: of two deletes at
    // once, one succeeds; a change after it finds no bot.
    let which = json!({ "chatbot_id": bot });
    let delete = || client.post_json("/bots/delete", &which, Some(&token));
    let (first, second) = tokio::join!(delete(), delete());
    let codes = [first?.body["code"].clone(), second?.body["code"].clone()];
    assert_eq!(
        codes.iter().filter(|c| **c == 200).count(),
        1,
        "exactly one delete succeeds: {codes:?}"
    );
    let late = client
        .post_json(
            "/bots/update",
            &json!({ "chatbot_id": bot, "chatbot_name": "Ghost" }),
            Some(&token),
        )
        .await?;
    assert_eq!(late.body["msg"], "ChatbotNotFOund", "{late:?}");
    stack.teardown().await
}

#[tokio::test]
async fn bad_settings_are_refused_and_store_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![("BOT_MAX_REPLY_TOKENS".into(), "500".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("careful").await?;
    let (_, other_token, _) = client.user_with_bot("other").await?;
    let pool = stack.pool()?;
    let events = system_tests::event_count(&pool).await?;
    let refusals = [
        (json!({ "chatbot_id": bot, "model": "gpt-5" }), "fake-model"),
        (
            json!({ "chatbot_id": bot, "temperature": 2.5 }),
            "between 0 and 2",
        ),
        (
            json!({ "chatbot_id": bot, "temperature": "warm" }),
            "temperature",
        ),
        (
            json!({ "chatbot_id": bot, "max_reply_tokens": 0 }),
            "between 1 and 500",
        ),
        (
            json!({ "chatbot_id": bot, "max_reply_tokens": 501 }),
            "between 1 and 500",
        ),
        (json!({ "chatbot_id": bot }), "nothing to change"),
        (
            json!({ "chatbot_id": bot, "chatbot_name": "  " }),
            "must not be empty",
        ),
        (
            json!({ "chatbot_id": bot, "chatbot_type": 1 }),
            "chatbot_persona is required",
        ),
        (
            json!({ "chatbot_id": bot, "chatbot_type": 7 }),
            "chatbot_type",
        ),
        (
            json!({ "chatbot_id": bot, "chatbot_type": 0, "chatbot_persona": "Li Bai" }),
            "has no persona",
        ),
        (json!({ "chatbot_name": "x" }), "chatbot_id"),
    ];
    for (body, reason) in refusals {
        let answer = client
            .post_json("/bots/update", &body, Some(&token))
            .await?;
        assert_eq!(answer.status, 200, "{body}: {answer:?}");
        assert_eq!(answer.body["code"], -1, "{body}: {answer:?}");
        let msg = answer.body["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(reason),
            "{body}: {msg:?} should name {reason:?}"
        );
    }
    // Another user's bot is not found, as an unknown one is.
    let theirs = client
        .post_json(
            "/bots/update",
            &json!({ "chatbot_id": bot, "chatbot_name": "Mine now" }),
            Some(&other_token),
        )
        .await?;
    assert_eq!(theirs.body["code"], -1);
    assert_eq!(theirs.body["msg"], "ChatbotNotFOund");
    assert_eq!(
        system_tests::event_count(&pool).await?,
        events,
        "nothing stored"
    );
    let unchanged = client
        .post_json("/bots/detail", &json!({ "chatbot_id": bot }), Some(&token))
        .await?;
    assert_eq!(unchanged.body["data"][0]["chatbot_name"], "Bot");
    assert!(unchanged.body["data"][0]["model"].is_null());
    stack.teardown().await
}
