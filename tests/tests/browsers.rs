//! What a browser needs (issue 20): CORS for pages on other origins, and a
//! stream the browser's own `EventSource` can open (with a ticket, since it
//! cannot send `Authorization`) and resume.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::json;

use system_tests::sse::SseStream;
use system_tests::{Stack, StackOptions};

const DEV_SERVER: &str = "http://localhost:5173";

/// Sends a preflight for `POST path` from `origin`; returns its status and headers.
async fn preflight(base: &str, path: &str, origin: &str) -> anyhow::Result<(u16, HeaderMap)> {
    let answer = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,last-event-id,x-request-id",
        )
        .send()
        .await?;
    Ok((answer.status().as_u16(), answer.headers().clone()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_and_any_other_gets_none() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![("CORS_ALLOWED_ORIGINS".into(), DEV_SERVER.into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, _) = client.user_with_bot("webby").await?;

    // Preflights are answered on every route, legacy spellings included.
    for path in [
        "/chat/new_chat",
        "//chat/new_chat/",
        "/login/",
        "/chat/stream/ticket",
    ] {
        let (status, headers) = preflight(&client.base, path, DEV_SERVER).await?;
        assert!((200..300).contains(&status), "{path}: {status}");
        assert_eq!(header(&headers, "access-control-allow-origin"), DEV_SERVER);
        assert!(header(&headers, "access-control-allow-methods").contains("POST"));
        let allowed = header(&headers, "access-control-allow-headers").to_lowercase();
        for name in [
            "authorization",
            "content-type",
            "last-event-id",
            "x-request-id",
        ] {
            assert!(allowed.contains(name), "{path}: {name} not in {allowed}");
        }
    }
    // A real request: scripts may read the request id and Retry-After.
    let answer = reqwest::Client::new()
        .get(format!("{}/chat/list", client.base))
        .header("Origin", DEV_SERVER)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    let headers = answer.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), DEV_SERVER);
    let exposed = header(headers, "access-control-expose-headers").to_lowercase();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
    assert!(headers.get("access-control-allow-credentials").is_none());

    // Another origin learns nothing.
    let (_, headers) = preflight(&client.base, "/chat/new_chat", "http://evil.example").await?;
    assert_eq!(cors_headers(&headers), Vec::<String>::new());
    let answer = reqwest::Client::new()
        .get(format!("{}/chat/list", client.base))
        .header("Origin", "http://evil.example")
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(cors_headers(answer.headers()), Vec::<String>::new());
    stack.teardown().await
}

#[tokio::test]
async fn by_default_only_the_same_origin_and_star_allows_any() -> anyhow::Result<()> {
    let same_origin_only = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let base = same_origin_only.client(0).base;
    let (_, headers) = preflight(&base, "/chat/new_chat", DEV_SERVER).await?;
    assert_eq!(cors_headers(&headers), Vec::<String>::new());
    same_origin_only.teardown().await?;

    let any = Stack::start(StackOptions {
        workers: 0,
        env: vec![("CORS_ALLOWED_ORIGINS".into(), "*".into())],
        ..Default::default()
    })
    .await?;
    let base = any.client(0).base;
    let (status, headers) = preflight(&base, "/chat/new_chat", "http://anywhere.example").await?;
    assert!((200..300).contains(&status));
    assert_eq!(header(&headers, "access-control-allow-origin"), "*");
    any.teardown().await
}

#[tokio::test]
async fn a_malformed_origin_list_stops_the_api_with_an_example() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let mut api = stack.start_process(
        "api",
        "malformed-origins",
        &[("CORS_ALLOWED_ORIGINS", "localhost:5173")],
    )?;
    let succeeded = api.wait(Duration::from_secs(20)).await?;
    assert!(!succeeded, "the api stops, with a failure");
    let log = api.log_text();
    assert!(log.contains("scheme://host"), "{log}");
    stack.teardown().await
}

/// A ticket for `bot`'s stream.
async fn ticket(base: &str, token: &str, bot: i64) -> anyhow::Result<(u16, serde_json::Value)> {
    let client = system_tests::Client::new(base.to_string());
    let answer = client
        .post_json(
            "/chat/stream/ticket",
            &json!({ "chatbot_id": bot }),
            Some(token),
        )
        .await?;
    Ok((answer.status, answer.body))
}

#[tokio::test]
async fn a_ticket_opens_one_bots_stream_from_a_url_and_resumes_on_another_replica(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        apis: 2,
        ..Default::default()
    })
    .await?;
    let (one, two) = (stack.client(0), stack.client(1));
    let (_, token, bot) = one.user_with_bot("browser").await?;
    let (_, other_token, other_bot) = one.user_with_bot("neighbour").await?;

    let (status, body) = ticket(&one.base, &token, bot).await?;
    assert_eq!(status, 200, "{body}");
    let ticket_text = body["data"]["ticket"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(body["data"]["expires_in"]
        .as_i64()
        .is_some_and(|s| s > 0 && s <= 300));
    let url = body["data"]["url"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        url,
        format!("/chat/stream?chatbot_id={bot}&ticket={ticket_text}")
    );

    // EventSource sends no Authorization: the ticket in the URL is enough.
    let mut sse = SseStream::open(&one.base, &url, None, None).await?;
    assert_eq!(sse.status, 200);
    let posted = one
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "hello browser" }),
            Some(&token),
        )
        .await?;
    assert_eq!(posted.status, 200);
    let events = sse.until("reply", Duration::from_secs(10)).await?;
    let reply_id = events
        .last()
        .and_then(|e| e.id.clone())
        .ok_or_else(|| anyhow::anyhow!("no id on the reply"))?;
    drop(sse);

    // The connection drops; EventSource reconnects to the same URL with its
    // Last-Event-ID, here on the other replica: only what came after.
    one.post_json(
        "/chat/new_chat",
        &json!({ "chatbot_id": bot, "input": "while away" }),
        Some(&token),
    )
    .await?;
    let mut resumed = SseStream::open(&two.base, &url, None, Some(&reply_id)).await?;
    assert_eq!(resumed.status, 200);
    let events = resumed.until("reply", Duration::from_secs(10)).await?;
    let contents: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "message" || e.event == "reply")
        .filter_map(|e| e.data["content"].as_str())
        .collect();
    assert_eq!(contents.first(), Some(&"while away"), "{contents:?}");
    assert!(
        !contents.iter().any(|c| c.contains("hello browser")),
        "nothing doubled: {contents:?}"
    );

    // A ticket opens one bot's stream, and is no access token.
    let wrong_bot = format!("/chat/stream?chatbot_id={other_bot}&ticket={ticket_text}");
    assert_eq!(
        SseStream::open(&one.base, &wrong_bot, None, None)
            .await?
            .status,
        401
    );
    let as_token = one.get("/chat/list", Some(&ticket_text)).await?;
    assert_eq!(as_token.status, 401);
    let token_as_ticket = format!("/chat/stream?chatbot_id={bot}&ticket={token}");
    assert_eq!(
        SseStream::open(&one.base, &token_as_ticket, None, None)
            .await?
            .status,
        401
    );
    // Nobody gets a ticket for someone else's bot.
    let (status, _) = ticket(&one.base, &other_token, bot).await?;
    assert_eq!(status, 404);

    // Logout ends the stream, and the ticket with its session.
    let (_, access, refresh) = one.login("browser", "pass word").await?;
    let (_, body) = ticket(&one.base, &access, bot).await?;
    let url = body["data"]["url"].as_str().unwrap_or_default().to_string();
    let mut live = SseStream::open(&two.base, &url, None, None).await?;
    assert_eq!(live.status, 200);
    let out = one
        .post_json("/logout/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(out.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while live.next(Duration::from_secs(5)).await.is_ok() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its logout");
    assert_eq!(
        SseStream::open(&two.base, &url, None, None).await?.status,
        401
    );

    // Access logs keep the path, never the query that carries the ticket.
    for api in &stack.apis {
        assert!(
            !api.log_text().contains(&ticket_text),
            "a ticket was logged"
        );
    }
    stack.teardown().await
}

#[tokio::test]
async fn the_web_client_is_served_at_app_unless_turned_off() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let on = reqwest::get(format!("{}/app/", stack.client(0).base)).await?;
    assert_eq!(on.status(), 200);
    assert!(header(on.headers(), "content-type").starts_with("text/html"));
    assert!(on.text().await?.contains("/app/app.js"));
    let script = reqwest::get(format!("{}/app/app.js", stack.client(0).base)).await?;
    assert!(header(script.headers(), "content-type").contains("javascript"));

    let off = stack.spawn_api_with(&[("WEB_APP", "off")]).await?;
    let answer = stack.client(off).get("/app/", None).await?;
    assert_eq!(answer.status, 404, "{answer:?}");
    stack.teardown().await
}
