//! A hostile client against the real api (review items 3, 9, 16, 19, 20, 21, 22,
//! 23 and 24): every bad request gets a clear answer in the envelope, and nothing
//! is stored for it.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use system_tests::{event_count, eventually, history_rows, Stack, StackOptions};

/// Sends `request` raw and returns what the server answered, or `None` if it closed
/// the connection without an answer. Fails if nothing happens within `limit`.
async fn raw(port: u16, request: &[u8], limit: Duration) -> anyhow::Result<Option<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        // Headers are in; the body of an error is small.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
                                .await
                        {
                            answer.extend_from_slice(&buf[..n]);
                        }
                        break;
                    }
                }
            }
        }
    })
    .await;
    anyhow::ensure!(read.is_ok(), "no answer and no close within {limit:?}");
    Ok((!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).into_owned()))
}

#[tokio::test]
async fn slow_and_oversized_requests_are_cut_off() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![
            ("HEADER_READ_TIMEOUT_SECS".into(), "2".into()),
            ("BODY_READ_TIMEOUT_SECS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await?;
    let port = stack.apis[0].port.unwrap_or_default();

    // Headers that never finish: the connection is closed after the header timeout.
    let started = Instant::now();
    raw(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(8),
    )
    .await?;
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A declared length far over the limit: 413 at once, without waiting for it.
    let started = Instant::now();
    let answer = raw(
        port,
        b"POST /login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
        Duration::from_secs(3),
    )
    .await?
    .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":413"), "in the envelope: {answer}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A body that stops coming: 408 after the body timeout.
    let answer = raw(
        port,
        b"POST /login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"us",
        Duration::from_secs(8),
    )
    .await?
    .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Unknown routes and methods answer in the envelope.
    let client = stack.client(0);
    let unknown = client.get("/no/such/route", None).await?;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_i64()),
        (404, Some(404))
    );
    assert!(unknown.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("/no/such/route")));
    let wrong = client.get("/chat/new_chat", None).await?;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_i64()),
        (405, Some(405))
    );
    stack.teardown().await
}

#[tokio::test]
async fn malformed_and_invisible_input_is_refused_and_stores_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        auth_mode: "legacy",
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let pool = stack.pool()?;
    let (user, token, bot) = client.user_with_bot("careful").await?;
    let events_before = event_count(&pool).await?;
    let form = "application/x-www-form-urlencoded";

    // Percent-encoded bytes that are not UTF-8, in a message, a bot name, a password.
    let bad = client
        .post_raw(
            "/chat/new_chat?wait=false",
            form,
            &format!("user_id={user}&chatbot_id={bot}&input=bad%FF%FE"),
            None,
        )
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("UTF-8")));
    let bad_name = client
        .post_raw(
            "/bots/create",
            form,
            &format!("user_id={user}&chatbot_name=bot%FF&chatbot_type=0"),
            None,
        )
        .await?;
    assert_eq!(bad_name.body["code"], -1, "{bad_name:?}");
    let bad_password = client
        .post_raw(
            "/users/register/",
            form,
            "username=someone&password=pw%C3%28",
            None,
        )
        .await?;
    assert_eq!(bad_password.status, 400, "{bad_password:?}");
    let bad_query = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=%FF"),
            Some(&token),
        )
        .await?;
    assert_eq!(bad_query.status, 400, "{bad_query:?}");

    // Input made of invisible characters is blank.
    for invisible in ["\u{200b}\u{200b}", "\u{feff}", " \u{2060}\u{200d} "] {
        let blank = client
            .post_json(
                "/chat/new_chat?wait=false",
                &json!({ "chatbot_id": bot, "input": invisible }),
                Some(&token),
            )
            .await?;
        assert_eq!(blank.status, 400, "{invisible:?} is blank: {blank:?}");
    }
    let blank_bot = client
        .post_json(
            "/bots/create",
            &json!({ "chatbot_name": "\u{200b}", "chatbot_type": 0 }),
            Some(&token),
        )
        .await?;
    assert_eq!(blank_bot.body["code"], -1);

    // Loose parameters are refused, naming what is allowed.
    let xml = client
        .get(
            &format!("/chat/history?chatbot_id={bot}&format=xml"),
            Some(&token),
        )
        .await?;
    assert_eq!(xml.status, 400);
    assert!(xml.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("object")));
    let list_xml = client.get("/chat/list?format=xml", Some(&token)).await?;
    assert_eq!(list_xml.status, 400);
    let maybe = client
        .post_json(
            "/chat/new_chat?wait=maybe",
            &json!({ "chatbot_id": bot, "input": "hi" }),
            Some(&token),
        )
        .await?;
    assert_eq!(maybe.status, 400);
    assert!(maybe.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("true or false")));

    // Users that do not exist: nothing is stored for nobody.
    for nobody in ["987654", "0", "-5"] {
        let create = client
            .post_form(
                "/bots/create",
                &[
                    ("user_id", nobody),
                    ("chatbot_name", "ghost"),
                    ("chatbot_type", "0"),
                ],
                None,
            )
            .await?;
        assert_eq!(create.body["code"], -1, "{nobody}: {create:?}");
        let chat = client
            .post_form(
                "/chat/new_chat",
                &[
                    ("user_id", nobody),
                    ("chatbot_id", &bot.to_string()),
                    ("input", "hi"),
                ],
                None,
            )
            .await?;
        assert_eq!(chat.status, 404, "{nobody}: {chat:?}");
        let history = client
            .get(
                &format!("/chat/history?user_id={nobody}&chatbot_id={bot}"),
                None,
            )
            .await?;
        assert_eq!(history.status, 404);
        let detail = client
            .post_form(
                "/bots/detail",
                &[("user_id", nobody), ("chatbot_id", &bot.to_string())],
                None,
            )
            .await?;
        assert_eq!(detail.body["msg"], "DetailsNotFound");
    }
    assert_eq!(
        event_count(&pool).await?,
        events_before,
        "nothing was stored"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_validly_signed_token_of_nobody_is_refused() -> anyhow::Result<()> {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let pool = stack.pool()?;
    let now = chrono::Utc::now().timestamp();
    let forged = encode(
        &Header::default(),
        &json!({ "token_type": "access", "user_id": 999_999, "iat": now, "exp": now + 600,
                 "jti": "x", "sid": uuid::Uuid::now_v7().to_string() }),
        &EncodingKey::from_secret(b"system-test-secret"),
    )?;
    let before = event_count(&pool).await?;
    let create = client
        .post_json(
            "/bots/create",
            &json!({ "chatbot_name": "ghost", "chatbot_type": 0 }),
            Some(&forged),
        )
        .await?;
    assert_eq!(create.status, 401, "{create:?}");
    let list = client.get("/chat/list", Some(&forged)).await?;
    assert_eq!(list.status, 401);
    assert_eq!(event_count(&pool).await?, before);
    stack.teardown().await
}

#[tokio::test]
async fn a_reused_client_msg_id_with_other_content_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("retrier").await?;
    let post = |input: &'static str, key: &'static str| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .post_json(
                    "/chat/new_chat",
                    &json!({ "chatbot_id": bot, "input": input, "client_msg_id": key }),
                    Some(&token),
                )
                .await
        }
    };
    let first = post("hello", "key-1").await?;
    assert_eq!(first.status, 200);
    let retried = post("hello", "key-1").await?;
    assert_eq!(
        (retried.status, &retried.body),
        (200, &first.body),
        "a retry gets the same reply"
    );
    let reused = post("something else", "key-1").await?;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert!(reused.body["msg"]
        .as_str()
        .is_some_and(|m| m.contains("client_msg_id")));
    // Keys are compared exactly: another case is another key.
    let other_case = post("something else", "KEY-1").await?;
    assert_eq!(other_case.status, 200, "{other_case:?}");
    let rows = history_rows(&stack.pool()?, user, bot).await?;
    assert_eq!(rows.iter().filter(|r| r.by_user == 1).count(), 2);
    stack.teardown().await
}

#[tokio::test]
async fn provider_error_text_never_reaches_clients_or_history() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("leaky").await?;
    stack.model.fail_next_with(
        401,
        "Incorrect API key provided: sk-live-SECRET123. You can find your API key at ...",
        "invalid_request_error",
    );
    let answer = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "hi" }),
            Some(&token),
        )
        .await?;
    assert_eq!(answer.status, 502);
    let msg = answer.body["msg"].as_str().unwrap_or_default();
    assert!(!msg.contains("sk-live"), "{msg}");
    assert!(msg.contains("401"), "the status is named: {msg}");
    let rows = history_rows(&stack.pool()?, user, bot).await?;
    assert!(rows.iter().all(|r| !r.content.contains("sk-live")));
    assert!(
        stack.workers[0].log_text().contains("sk-live-SECRET123"),
        "the provider's text stays in the log"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_message_to_a_bot_deleted_meanwhile_fails_without_a_model_call() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("hasty").await?;
    let id = client.post_later(&token, bot, "are you there?").await?;
    let deleted = client
        .post_json("/bots/delete", &json!({ "chatbot_id": bot }), Some(&token))
        .await?;
    assert_eq!(deleted.body["code"], 200);
    let mut stack = stack;
    stack.spawn_worker().await?;
    let pool = stack.pool()?;
    let row = eventually(Duration::from_secs(20), "the failure", || async {
        Ok(history_rows(&pool, user, bot)
            .await?
            .into_iter()
            .find(|r| r.reply_to.as_deref() == Some(id.as_str())))
    })
    .await?;
    assert_eq!(row.status, "failed");
    assert!(row.content.contains("deleted"), "{}", row.content);
    assert_eq!(stack.model.calls(), 0, "the model was not called");
    stack.teardown().await
}

/// Issue 18, item 7: a client-chosen request id goes into the log and into AMQP
/// headers, so only a short, plain one is kept; any other is replaced by one the
/// api makes, and the message still goes through for everyone.
#[tokio::test]
async fn an_oversized_or_odd_request_id_is_replaced_and_nothing_stalls() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("long_id").await?;
    let http = reqwest::Client::new();
    let post = |id: String, input: &'static str| {
        http.post(format!("{}/chat/new_chat", client.base))
            .bearer_auth(&token)
            .header("x-request-id", id)
            .json(&json!({ "chatbot_id": bot, "input": input }))
            .send()
    };
    let huge = "a".repeat(300_000);
    let answered = post(huge.clone(), "first").await?;
    assert_eq!(answered.status(), 200);
    let echoed = answered
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        echoed.len() <= 128 && !echoed.is_empty() && echoed != huge,
        "{echoed:?}"
    );
    let odd = post("spaces and ünïcode".into(), "second").await?;
    assert_eq!(odd.status(), 200);
    let kept = post("trace-42.a_b".into(), "third").await?;
    assert_eq!(kept.status(), 200);
    assert_eq!(
        kept.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-42.a_b")
    );
    // A login with a huge id too (it records `SessionStarted`).
    let login = http
        .post(format!("{}/login/", client.base))
        .header("x-request-id", "b".repeat(140_000))
        .json(&json!({ "username": "long_id", "password": "pass word" }))
        .send()
        .await?;
    assert_eq!(login.status(), 200);

    let pool = stack.pool()?;
    let longest: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(CHAR_LENGTH(JSON_UNQUOTE(JSON_EXTRACT(metadata, '$.correlation_id')))) \
         FROM events",
    )
    .fetch_one(&pool)
    .await?;
    assert!(
        longest.unwrap_or(0) <= 128,
        "a correlation id of {longest:?} chars"
    );
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events \
         WHERE JSON_UNQUOTE(JSON_EXTRACT(metadata, '$.correlation_id')) = 'trace-42.a_b'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(kept >= 2, "the acceptable id is carried: {kept} events");
    eventually(Duration::from_secs(10), "an empty outbox", || async {
        let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await?;
        Ok((unsent == 0).then_some(()))
    })
    .await?;
    pool.close().await;
    stack.teardown().await
}
