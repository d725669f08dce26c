//! The whole HTTP contract (API.md), end to end: the real `api` and `worker`
//! binaries, the real MariaDB and RabbitMQ, and a fake model, driven over HTTP the
//! way a client would. `AUTH_MODE=strict` (the default).

use serde_json::{json, Value};

use system_tests::fake_openai::turns;
use system_tests::{event_count, Stack, StackOptions};

const PASSWORD: &str = "correct horse";

#[tokio::test]
async fn users_bots_and_chat_walkthrough() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);

    // healthz / readyz
    assert_eq!(client.get("/healthz", None).await?.status, 200);
    let ready = client.get("/readyz/", None).await?;
    assert_eq!(
        (
            ready.status,
            ready.body["database"].as_str(),
            ready.body["broker"].as_str()
        ),
        (200, Some("up"), Some("up"))
    );

    // users/register/
    let registered = client
        .post_json(
            "/users/register/",
            &json!({ "username": "alice", "password": PASSWORD, "email": "alice@example.com" }),
            None,
        )
        .await?;
    assert_eq!(registered.status, 201);
    assert_eq!(
        registered.body,
        json!({ "code": 201, "msg": "OK", "data": { "username": "alice", "email": "alice@example.com" } })
    );
    let no_email = client
        .post_json(
            "/users/register",
            &json!({ "username": "bob", "password": PASSWORD }),
            None,
        )
        .await?;
    assert_eq!(
        (no_email.status, no_email.body["data"]["email"].as_str()),
        (201, Some(""))
    );
    let taken = client
        .post_json(
            "/users/register/",
            &json!({ "username": "alice", "password": "x" }),
            None,
        )
        .await?;
    assert_eq!(taken.status, 400);
    assert_eq!(
        taken.body,
        json!({ "username": ["A user with that username already exists."] })
    );
    let invalid = client
        .post_json(
            "/users/register/",
            &json!({ "username": "", "email": "nope" }),
            None,
        )
        .await?;
    assert_eq!(invalid.status, 400);
    assert_eq!(
        invalid.body["username"],
        json!(["This field may not be blank."])
    );
    assert_eq!(invalid.body["password"], json!(["This field is required."]));
    assert_eq!(
        invalid.body["email"],
        json!(["Enter a valid email address."])
    );
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'alice'")
            .fetch_one(&stack.pool()?)
            .await?;
    assert!(
        hash.starts_with("$argon2id$"),
        "passwords are stored as argon2id hashes"
    );

    // login/ by username and by email
    let login = client
        .post_json(
            "/login/",
            &json!({ "username": "alice", "password": PASSWORD }),
            None,
        )
        .await?;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(
        (login.body["code"].as_i64(), login.body["msg"].as_str()),
        (Some(200), Some("OK"))
    );
    assert_eq!(
        (
            login.body["username"].as_str(),
            login.body["email"].as_str()
        ),
        (Some("alice"), Some("alice@example.com"))
    );
    let alice = login.body["user_id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("user_id is an integer"))?;
    let access = login.body["access"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refresh = login.body["refresh"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let by_email = client
        .post_json(
            "/login",
            &json!({ "username": "alice@example.com", "password": PASSWORD }),
            None,
        )
        .await?;
    assert_eq!(
        (by_email.status, by_email.body["user_id"].as_i64()),
        (200, Some(alice))
    );
    let wrong = client
        .post_json(
            "/login/",
            &json!({ "username": "alice", "password": "wrong" }),
            None,
        )
        .await?;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body,
        json!({ "detail": "No active account found with the given credentials" })
    );

    // login/refresh/ rotates; an access token is no refresh token
    let refreshed = client
        .post_json("/login/refresh/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(refreshed.status, 200);
    assert!(refreshed.body["access"].is_string() && refreshed.body["refresh"].is_string());
    let access_as_refresh = client
        .post_json("/login/refresh/", &json!({ "refresh": access }), None)
        .await?;
    assert_eq!(access_as_refresh.status, 401);
    assert_eq!(
        access_as_refresh.body,
        json!({ "detail": "Token is invalid or expired", "code": "token_not_valid" })
    );

    // bots/create (type 0 and 1), detail, list
    let plain = client.create_bot(&access, "Helper", 0, "").await?;
    let cosplay = client.create_bot(&access, "Jay", 1, "Jay Chou").await?;
    let detail = client
        .post_json(
            "/bots/detail/",
            &json!({ "chatbot_id": cosplay }),
            Some(&access),
        )
        .await?;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.body["data"][0]["chatbot_persona"], "Jay Chou");
    assert_eq!(detail.body["data"][0]["chatbot_type"], 1);
    assert!(
        detail.body["data"][0]["create_at"]
            .as_str()
            .is_some_and(|t| t.len() == 19),
        "{detail:?}"
    );
    let list = client
        .post_json("/bots/list", &json!({ "user_id": alice }), Some(&access))
        .await?;
    let ids: Vec<i64> = list.body["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["chatbot_id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![plain, cosplay], "creation order");
    assert_eq!(
        list.body["data"][0]["chatbot_persona"], "",
        "a type-0 bot has no persona"
    );

    // chat/new_chat waits for the reply; history and list show it right away
    let first = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": cosplay, "input": "Who are you?" }),
            Some(&access),
        )
        .await?;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["msg"], "ok");
    let first_reply = first.body["data"].as_str().unwrap_or_default().to_string();
    assert!(
        first_reply.starts_with("fake-model reply") && first_reply.ends_with("to: Who are you?"),
        "{first_reply}"
    );
    let second = client
        .post_json(
            "/chat/new_chat/",
            &json!({ "user_id": alice, "chatbot_id": cosplay, "input": "Sing something" }),
            Some(&access),
        )
        .await?;
    assert_eq!(second.status, 200, "{second:?}");

    let history = client
        .get(
            &format!("/chat/history?chatbot_id={cosplay}"),
            Some(&access),
        )
        .await?;
    assert_eq!(
        (history.status, history.body["msg"].as_str()),
        (200, Some("ok"))
    );
    let rows = history.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 4, "{history:?}");
    assert_eq!(rows[0][0], "Who are you?");
    assert_eq!(rows[0][1], json!(1), "by_user is the integer 1");
    assert_eq!(rows[1][0].as_str(), Some(first_reply.as_str()));
    assert_eq!(rows[1][1], json!(0));
    assert!(rows.iter().all(|r| r[2]
        .as_str()
        .is_some_and(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").is_ok())));
    assert_eq!(
        rows.iter()
            .map(|r| r[3].as_i64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(rows.iter().all(|r| r[5] == "done"));

    // what the worker sent the model: persona prompt, the conversation so far, the model name
    let requests = stack.model.requests();
    assert_eq!(requests.len(), 2, "one model call per message");
    let last = &requests[1];
    assert_eq!(last["model"], "fake-model");
    let messages = last["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"]
        .as_str()
        .is_some_and(|s| s.contains("Jay Chou") && s.contains("character")));
    let turns = turns(last);
    assert_eq!(
        turns,
        vec![
            ("user".into(), "Who are you?".into()),
            ("assistant".into(), first_reply.clone()),
            ("user".into(), "Sing something".into()),
        ]
    );

    // paging, object rows, chat/list
    let paged = client
        .get(
            &format!("/chat/history/?chatbot_id={cosplay}&after=2&limit=1&format=object"),
            Some(&access),
        )
        .await?;
    assert_eq!(
        paged.body["data"],
        json!([{
            "content": "Sing something", "by_user": 1, "timestamp": rows[2][2], "seq": 3,
            "message_id": rows[2][4], "status": "done",
        }])
    );
    client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": plain, "input": "plain question" }),
            Some(&access),
        )
        .await?;
    let plain_prompt = stack
        .model
        .requests()
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    assert!(plain_prompt["messages"][0]["content"]
        .as_str()
        .is_some_and(|s| s.contains("helpful assistant") && !s.contains("Jay Chou")));
    let chats = client.get("/chat/list", Some(&access)).await?;
    let chat_rows = chats.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(chat_rows.len(), 2);
    assert_eq!(chat_rows[0][0], json!(plain), "newest conversation first");
    assert_eq!(chat_rows[0][1], "Helper");
    assert!(
        chat_rows[0][3]
            .as_str()
            .is_some_and(|c| c.ends_with("to: plain question")),
        "latest message is the reply"
    );
    assert_eq!(chat_rows[1][0], json!(cosplay));

    // PATCH users/users/<id>/
    let patched = client
        .patch_json(
            &format!("/users/users/{alice}/"),
            &json!({ "email": "new@example.com" }),
            Some(&access),
        )
        .await?;
    assert_eq!(
        patched.body,
        json!({ "code": 200, "msg": "OK", "data": { "username": "alice", "email": "new@example.com" } })
    );

    // bots/delete: gone from bots/list and chat/list, no longer chattable; events stay
    let deleted = client
        .post_json(
            "/bots/delete/",
            &json!({ "chatbot_id": plain.to_string() }),
            Some(&access),
        )
        .await?;
    assert_eq!(
        deleted.body,
        json!({ "code": 200, "msg": "OK", "data": [] })
    );
    let again = client
        .post_json(
            "/bots/delete/",
            &json!({ "chatbot_id": plain }),
            Some(&access),
        )
        .await?;
    assert_eq!(
        (
            again.status,
            again.body["code"].as_i64(),
            again.body["msg"].as_str()
        ),
        (200, Some(-1), Some("ChatbotNotFOund"))
    );
    let list = client
        .post_json("/bots/list", &json!({}), Some(&access))
        .await?;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
    let chats = client.get("/chat/list", Some(&access)).await?;
    assert_eq!(chats.body["data"].as_array().map(Vec::len), Some(1));
    let events_before = event_count(&stack.pool()?).await?;
    let to_deleted = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": plain, "input": "hello?" }),
            Some(&access),
        )
        .await?;
    assert_eq!(to_deleted.status, 404);
    assert_eq!(
        event_count(&stack.pool()?).await?,
        events_before,
        "a message to a deleted bot records nothing"
    );
    let log: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE stream_id = ?")
        .bind(format!("bot-{plain}"))
        .fetch_one(&stack.pool()?)
        .await?;
    assert_eq!(log, 2, "BotCreated and BotDeleted stay in the log");

    stack.teardown().await
}

#[tokio::test]
async fn tokens_are_required_checked_and_scoped_to_their_user() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (alice, access, refresh) = client.signup("alice", PASSWORD).await?;
    let (bob, bob_access, _) = client.signup("bob", PASSWORD).await?;
    let alices_bot = client.create_bot(&access, "Mine", 0, "").await?;

    // No token: 401 on every chat and bot route in strict mode.
    for reply in [
        client
            .post_json(
                "/bots/create",
                &json!({ "user_id": alice, "chatbot_name": "x", "chatbot_type": 0 }),
                None,
            )
            .await?,
        client
            .post_json("/bots/list", &json!({ "user_id": alice }), None)
            .await?,
        client
            .post_json(
                "/bots/detail",
                &json!({ "user_id": alice, "chatbot_id": alices_bot }),
                None,
            )
            .await?,
        client
            .post_json(
                "/bots/delete",
                &json!({ "user_id": alice, "chatbot_id": alices_bot }),
                None,
            )
            .await?,
        client
            .post_json(
                "/chat/new_chat",
                &json!({ "user_id": alice, "chatbot_id": alices_bot, "input": "hi" }),
                None,
            )
            .await?,
        client
            .get(
                &format!("/chat/history?user_id={alice}&chatbot_id={alices_bot}"),
                None,
            )
            .await?,
        client
            .get(&format!("/chat/list?user_id={alice}"), None)
            .await?,
    ] {
        assert_eq!(
            (reply.status, reply.body["code"].as_i64()),
            (401, Some(401)),
            "{reply:?}"
        );
    }

    // A refresh token is no access token; tampered and unsigned tokens fail.
    let refresh_as_access = client
        .post_json("/bots/list", &json!({}), Some(&refresh))
        .await?;
    assert_eq!(refresh_as_access.status, 401);
    let mut parts: Vec<&str> = access.split('.').collect();
    let bobs_payload = bob_access.split('.').nth(1).unwrap_or_default();
    parts[1] = bobs_payload;
    let tampered = parts.join(".");
    assert_eq!(
        client
            .post_json("/bots/list", &json!({}), Some(&tampered))
            .await?
            .status,
        401
    );
    // {"alg":"none","typ":"JWT"} with alice's claims and no signature
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        access.split('.').nth(1).unwrap_or_default()
    );
    assert_eq!(
        client
            .post_json("/bots/list", &json!({}), Some(&unsigned))
            .await?
            .status,
        401
    );
    assert_eq!(
        client
            .post_json("/bots/list", &json!({}), Some("garbage"))
            .await?
            .status,
        401
    );

    // Someone else's user_id: 403. Someone else's bot: not found.
    let as_alice = client
        .post_json(
            "/bots/list",
            &json!({ "user_id": alice }),
            Some(&bob_access),
        )
        .await?;
    assert_eq!(
        (as_alice.status, as_alice.body["code"].as_i64()),
        (403, Some(403))
    );
    let history = client
        .get(
            &format!("/chat/history?user_id={alice}&chatbot_id={alices_bot}"),
            Some(&bob_access),
        )
        .await?;
    assert_eq!(history.status, 403);
    let detail = client
        .post_json(
            "/bots/detail",
            &json!({ "chatbot_id": alices_bot }),
            Some(&bob_access),
        )
        .await?;
    assert_eq!(
        (
            detail.status,
            detail.body["code"].as_i64(),
            detail.body["msg"].as_str()
        ),
        (200, Some(-1), Some("DetailsNotFound"))
    );
    let delete = client
        .post_json(
            "/bots/delete",
            &json!({ "chatbot_id": alices_bot }),
            Some(&bob_access),
        )
        .await?;
    assert_eq!(delete.body["msg"], "ChatbotNotFOund");
    let chat = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": alices_bot, "input": "hi" }),
            Some(&bob_access),
        )
        .await?;
    assert_eq!(chat.status, 404);

    // PATCH: simplejwt's shapes, and 403 for another user's id.
    let none = client
        .patch_json(
            &format!("/users/users/{alice}/"),
            &json!({ "email": "a@b.co" }),
            None,
        )
        .await?;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.body["detail"],
        "Authentication credentials were not provided."
    );
    let bad = client
        .patch_json(
            &format!("/users/users/{alice}/"),
            &json!({ "email": "a@b.co" }),
            Some(&tampered),
        )
        .await?;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.body["code"], "token_not_valid");
    assert_eq!(bad.body["messages"][0]["token_type"], "access");
    let other = client
        .patch_json(
            &format!("/users/users/{bob}/"),
            &json!({ "email": "a@b.co" }),
            Some(&access),
        )
        .await?;
    assert_eq!(other.status, 403);
    let stolen = client
        .patch_json(
            &format!("/users/users/{alice}/"),
            &json!({ "username": "bob" }),
            Some(&access),
        )
        .await?;
    assert_eq!(
        stolen.body,
        json!({ "username": ["A user with that username already exists."] })
    );

    stack.teardown().await
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        // A small body limit, so the oversized body below fits in the socket buffers
        // and the early 413 cannot race the client's write into a broken pipe.
        env: vec![
            ("MAX_INPUT_CHARS".into(), "50".into()),
            ("MAX_BODY_BYTES".into(), "4096".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let pool = stack.pool()?;
    let (_, access, _) = client.signup("alice", PASSWORD).await?;
    let bot = client.create_bot(&access, "Bot", 0, "").await?;
    let token = Some(access.as_str());
    let before = event_count(&pool).await?;

    // Chat: true statuses.
    for (body, status) in [
        (r#"{"chatbot_id": 1, "input": "#, 400), // malformed JSON
        (r#"["not", "an", "object"]"#, 400),
        (r#"{"input": "no bot"}"#, 400), // missing chatbot_id
        (r#"{"chatbot_id": "abc", "input": "x"}"#, 400), // wrongly typed
        (r#"{"chatbot_id": 1, "input": 5}"#, 400),
        (r#"{"chatbot_id": 1}"#, 400),                 // missing input
        (r#"{"chatbot_id": 1, "input": "   "}"#, 400), // empty input
        (r#"{"chatbot_id": 999999, "input": "hi"}"#, 404), // unknown bot
    ] {
        let body = body.replace("\"chatbot_id\": 1", &format!("\"chatbot_id\": {bot}"));
        let reply = client
            .post_raw("/chat/new_chat", "application/json", &body, token)
            .await?;
        assert_eq!(reply.status, status, "{body} -> {reply:?}");
        assert_eq!(
            reply.body["code"].as_i64(),
            Some(status as i64),
            "{reply:?}"
        );
        assert!(
            reply.body["msg"].as_str().is_some_and(|m| m.len() > 5),
            "a message a person can act on: {reply:?}"
        );
    }
    let long = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "x".repeat(51) }),
            token,
        )
        .await?;
    assert_eq!(long.status, 413, "{long:?}");
    assert!(long.body["msg"].as_str().is_some_and(|m| m.contains("50")));
    let huge = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "x".repeat(8_000) }),
            token,
        )
        .await?;
    assert_eq!(huge.status, 413);
    let media = client
        .post_raw("/chat/new_chat", "text/csv", "a,b", token)
        .await?;
    assert_eq!(media.status, 415);
    let history = client.get("/chat/history?chatbot_id=abc", token).await?;
    assert_eq!(history.status, 400);

    // Bot module: HTTP 200 with code -1.
    for body in [
        json!({ "chatbot_name": "", "chatbot_type": 0 }),
        json!({ "chatbot_name": "x".repeat(101), "chatbot_type": 0 }),
        json!({ "chatbot_name": "a", "chatbot_type": 2 }),
        json!({ "chatbot_name": "a", "chatbot_type": "zero" }),
        json!({ "chatbot_name": "a", "chatbot_type": 1 }),
        json!({ "chatbot_type": 0 }),
    ] {
        let reply = client.post_json("/bots/create", &body, token).await?;
        assert_eq!(
            (reply.status, reply.body["code"].as_i64()),
            (200, Some(-1)),
            "{body} -> {reply:?}"
        );
        assert!(
            reply.body["msg"]
                .as_str()
                .is_some_and(|m| m.contains("chatbot_")),
            "{reply:?}"
        );
    }
    let malformed = client
        .post_raw("/bots/create", "application/json", "{oops", token)
        .await?;
    assert_eq!(
        (malformed.status, malformed.body["code"].as_i64()),
        (200, Some(-1))
    );
    let missing = client.post_json("/bots/detail", &json!({}), token).await?;
    assert_eq!(
        (missing.status, missing.body["code"].as_i64()),
        (200, Some(-1))
    );

    assert_eq!(
        event_count(&pool).await?,
        before,
        "no bad request reached the event log"
    );
    let bots = client.post_json("/bots/list", &json!({}), token).await?;
    assert_eq!(bots.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(stack.model.calls(), 0);
    stack.teardown().await
}

#[tokio::test]
async fn wait_false_answers_202_and_history_long_polls_the_reply() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    stack
        .model
        .set_latency(std::time::Duration::from_millis(400));
    let client = stack.client(0);
    let (_, access, _) = client.signup("alice", PASSWORD).await?;
    let token = Some(access.as_str());
    let bot = client.create_bot(&access, "Bot", 0, "").await?;

    let accepted = client
        .post_json(
            "/chat/new_chat?wait=false",
            &json!({ "chatbot_id": bot, "input": "later" }),
            token,
        )
        .await?;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    assert_eq!(accepted.body["data"]["status"], "pending");
    let message_id = accepted.body["data"]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let now = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=object"),
            token,
        )
        .await?;
    assert_eq!(now.body["data"][0]["message_id"], message_id.as_str());
    assert_eq!(now.body["data"][0]["status"], "pending");

    let polled = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&after=1&wait=10"),
            token,
        )
        .await?;
    let rows = polled.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        rows.len(),
        1,
        "the long-poll returns as soon as the reply exists: {polled:?}"
    );
    assert!(rows[0][0]
        .as_str()
        .is_some_and(|c| c.ends_with("to: later")));
    let nothing = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&after=2&wait=1"),
            token,
        )
        .await?;
    assert_eq!(
        nothing.body["data"],
        json!([]),
        "an empty list when the wait runs out"
    );

    // A retried POST with the same client_msg_id records one message and returns the same reply.
    let body = json!({ "chatbot_id": bot, "input": "once", "client_msg_id": "retry-1" });
    let first = client.post_json("/chat/new_chat", &body, token).await?;
    let second = client.post_json("/chat/new_chat", &body, token).await?;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, second.body);
    let history = client
        .get(&format!("/chat/history?chatbot_id={bot}"), token)
        .await?;
    assert_eq!(history.body["data"].as_array().map(Vec::len), Some(4));
    stack.teardown().await
}
