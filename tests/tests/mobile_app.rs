//! The original Flutter app's whole journey, with the exact requests it sends:
//! `//` URLs built from a base ending in `/`, form bodies with every value a string,
//! no token on chat and bot routes (`AUTH_MODE=legacy`), positional rows read by
//! index. Then the same tokenless requests against a strict api: 401.

use serde_json::{json, Value};

use system_tests::{Client, Stack, StackOptions};

#[tokio::test]
async fn the_original_app_works_unchanged_in_legacy_mode() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        auth_mode: "legacy",
        ..Default::default()
    })
    .await?;
    // The app keeps a base URL with a trailing slash and appends paths to it.
    let base = stack.app_base();
    let app = Client::new(base.trim_end_matches('/'));
    let url = |path: &str| format!("/{path}"); // base + path: "http://host/" + "bots/create"

    // Register and log in through the `//` URLs, with JSON bodies.
    let registered = app
        .post_json(
            "//users/register/",
            &json!({ "username": "mei", "password": "first pass", "email": "mei@example.com" }),
            None,
        )
        .await?;
    assert_eq!(registered.status, 201, "{registered:?}");
    assert!(
        registered.body["data"].get("password").is_none(),
        "the password is never echoed"
    );
    let login = app
        .post_json(
            "//login/",
            &json!({ "username": "mei", "password": "first pass" }),
            None,
        )
        .await?;
    assert_eq!(login.status, 200);
    let user_id = login.body["user_id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("user_id must be an integer"))?;
    assert_eq!(login.body["email"], "mei@example.com");
    let access = login.body["access"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uid = user_id.to_string();

    // The persona presets for the cosplay screen.
    let personas = app.get(&url("bots/get_persona"), None).await?;
    assert_eq!(
        personas.body["data"],
        json!(["Jay Chou", "Jackie Chan", "Defined by me"])
    );

    // Create a cosplay and a plain bot by form, every value a string.
    let cosplay = app
        .post_form(
            &url("bots/create"),
            &[
                ("user_id", &uid),
                ("chatbot_name", "Jackie"),
                ("chatbot_type", "1"),
                ("chatbot_persona", "Jackie Chan"),
            ],
            None,
        )
        .await?;
    assert_eq!(cosplay.body["code"], 200, "{cosplay:?}");
    let cosplay_id = cosplay.body["data"][0]["chatbot_id"]
        .as_i64()
        .unwrap_or_default();
    let plain = app
        .post_form(
            &url("bots/create"),
            &[
                ("user_id", &uid),
                ("chatbot_name", "Plain"),
                ("chatbot_type", "0"),
            ],
            None,
        )
        .await?;
    let plain_id = plain.body["data"][0]["chatbot_id"]
        .as_i64()
        .unwrap_or_default();
    assert!(cosplay_id > 0 && plain_id > cosplay_id);

    // List and detail by form; a form-labelled body holding JSON is read as JSON.
    let list = app
        .post_form(&url("bots/list"), &[("user_id", &uid)], None)
        .await?;
    assert_eq!(list.body["data"][0]["chatbot_name"], "Jackie");
    assert_eq!(list.body["data"][1]["chatbot_type"], 0);
    let detail = app
        .post_form(
            &url("bots/detail"),
            &[("user_id", &uid), ("chatbot_id", &cosplay_id.to_string())],
            None,
        )
        .await?;
    assert_eq!(detail.body["data"][0]["chatbot_persona"], "Jackie Chan");
    let json_in_form = app
        .post_raw(
            &url("bots/detail"),
            "application/x-www-form-urlencoded",
            &json!({ "user_id": user_id, "chatbot_id": plain_id }).to_string(),
            None,
        )
        .await?;
    assert_eq!(
        json_in_form.body["data"][0]["chatbot_name"], "Plain",
        "{json_in_form:?}"
    );

    // Send a message by form, with `&` and non-ASCII text in it.
    let text = "Tom & Jerry — 你好, ça va?";
    let sent = app
        .post_form(
            &url("chat/new_chat"),
            &[
                ("user_id", &uid),
                ("chatbot_id", &cosplay_id.to_string()),
                ("input", text),
            ],
            None,
        )
        .await?;
    assert_eq!(
        (sent.status, sent.body["code"].as_i64()),
        (200, Some(200)),
        "{sent:?}"
    );
    let reply = sent.body["data"].as_str().unwrap_or_default().to_string();
    assert!(reply.ends_with(&format!("to: {text}")), "{reply}");
    let seen_by_model = stack.model.requests();
    assert!(seen_by_model[0]["messages"][0]["content"]
        .as_str()
        .is_some_and(|s| s.contains("Jackie Chan")));

    // History and chat list, read by index as the app does.
    let history = app
        .get(
            &format!(
                "{}?user_id={uid}&chatbot_id={cosplay_id}",
                url("chat/history")
            ),
            None,
        )
        .await?;
    let rows = history.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2);
    let item: &Value = &rows[0];
    assert_eq!(item[0], text);
    assert!(item[1].as_i64() == Some(1), "item[1] is compared with 1");
    assert!(chrono::NaiveDateTime::parse_from_str(
        item[2].as_str().unwrap_or(""),
        "%Y-%m-%dT%H:%M:%S"
    )
    .is_ok());
    assert_eq!(rows[1][0].as_str(), Some(reply.as_str()));
    assert_eq!(rows[1][1].as_i64(), Some(0));
    let chats = app
        .get(&format!("{}?user_id={uid}", url("chat/list")), None)
        .await?;
    let first = &chats.body["data"][0];
    assert_eq!(
        first[0].as_i64(),
        Some(cosplay_id),
        "chatbot_id is an integer at [0]"
    );
    assert_eq!(first[1], "Jackie");
    assert!(first[2].is_string());
    assert_eq!(first[3].as_str(), Some(reply.as_str()));

    // Change the password by PATCH (the one route where the app sends a token) and log in again by email.
    let patched = app
        .patch_json(
            &format!("//users/users/{uid}/"),
            &json!({ "password": "second pass" }),
            Some(&access),
        )
        .await?;
    assert_eq!(patched.status, 200, "{patched:?}");
    let old = app
        .post_json(
            "//login/",
            &json!({ "username": "mei@example.com", "password": "first pass" }),
            None,
        )
        .await?;
    assert_eq!(old.status, 401);
    let again = app
        .post_json(
            "//login/",
            &json!({ "username": "mei@example.com", "password": "second pass" }),
            None,
        )
        .await?;
    assert_eq!(
        (again.status, again.body["user_id"].as_i64()),
        (200, Some(user_id))
    );

    // Delete a bot with a JSON body on `bots/delete/`; it leaves the chat list.
    let deleted = app
        .post_json(
            &url("bots/delete/"),
            &json!({ "user_id": user_id, "chatbot_id": cosplay_id.to_string() }),
            None,
        )
        .await?;
    assert_eq!(
        deleted.body,
        json!({ "code": 200, "msg": "OK", "data": [] })
    );
    let chats = app
        .get(&format!("{}?user_id={uid}", url("chat/list")), None)
        .await?;
    assert_eq!(chats.body["data"], json!([]));
    let list = app
        .post_form(&url("bots/list"), &[("user_id", &uid)], None)
        .await?;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));

    // A user with no bots gets code 200 and [].
    let (other, other_access, _) = app.signup("nobots", "pass word").await?;
    let empty = app
        .post_form(&url("bots/list"), &[("user_id", &other.to_string())], None)
        .await?;
    assert_eq!(empty.body, json!({ "code": 200, "msg": "OK", "data": [] }));
    // A request that carries a token is checked as in strict mode.
    let spoof = app
        .post_form(&url("bots/list"), &[("user_id", &uid)], Some(&other_access))
        .await?;
    assert_eq!(spoof.status, 403);
    // Each tokenless request was counted in the log.
    assert!(stack.apis[0].log_text().contains("legacy_request=true"));

    // The same tokenless requests against a strict api: 401 everywhere.
    let strict = stack.spawn_api_with(&[("AUTH_MODE", "strict")]).await?;
    let strict = stack.client(strict);
    for reply in [
        strict
            .post_form("/bots/list", &[("user_id", &uid)], None)
            .await?,
        strict
            .post_form(
                "/bots/create",
                &[
                    ("user_id", &uid),
                    ("chatbot_name", "x"),
                    ("chatbot_type", "0"),
                ],
                None,
            )
            .await?,
        strict
            .post_form(
                "/bots/detail",
                &[("user_id", &uid), ("chatbot_id", &plain_id.to_string())],
                None,
            )
            .await?,
        strict
            .post_form(
                "/chat/new_chat",
                &[
                    ("user_id", &uid),
                    ("chatbot_id", &plain_id.to_string()),
                    ("input", "hi"),
                ],
                None,
            )
            .await?,
        strict
            .get(
                &format!("/chat/history?user_id={uid}&chatbot_id={plain_id}"),
                None,
            )
            .await?,
        strict
            .get(&format!("/chat/list?user_id={uid}"), None)
            .await?,
        strict
            .post_json(
                "/bots/delete/",
                &json!({ "user_id": user_id, "chatbot_id": plain_id }),
                None,
            )
            .await?,
    ] {
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    // get_persona and the user routes behave the same in both modes.
    assert_eq!(strict.get("/bots/get_persona", None).await?.status, 200);

    stack.teardown().await
}

#[tokio::test]
async fn persona_presets_are_configurable() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("PERSONA_PRESETS".into(), "Li Bai, Confucius".into())],
        workers: 0,
        ..Default::default()
    })
    .await?;
    let personas = stack.client(0).get("//bots/get_persona/", None).await?;
    assert_eq!(
        personas.body,
        json!({ "code": 200, "msg": "OK", "data": ["Li Bai", "Confucius"] })
    );
    stack.teardown().await
}
