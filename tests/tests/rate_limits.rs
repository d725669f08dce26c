//! Rate limits against the real api (issue 19, item 4): past a limit a request
//! gets 429 with `Retry-After` in the contract's envelope, and nothing is stored;
//! `X-Forwarded-For` names the client only when a trusted proxy sends it.

use serde_json::json;

use system_tests::{event_count, Client, Stack, StackOptions};

fn limits(extra: &[(&str, &str)]) -> StackOptions {
    StackOptions {
        workers: 0,
        env: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn assert_limited(reply: &system_tests::client::Reply) {
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.body["code"], 429, "{reply:?}");
    let retry_after = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{reply:?}"
    );
}

/// A login from `address` (sent as `X-Forwarded-For`).
async fn login(
    client: &Client,
    username: &str,
    password: &str,
    address: &str,
) -> anyhow::Result<system_tests::client::Reply> {
    client
        .post_json_with_header(
            "/login/",
            &json!({ "username": username, "password": password }),
            None,
            ("x-forwarded-for", address),
        )
        .await
}

#[tokio::test]
async fn new_chat_past_its_rate_is_refused_and_stores_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(limits(&[("NEW_CHAT_PER_MINUTE", "3")])).await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("hasty").await?;
    for n in 0..3 {
        client
            .post_later(&token, bot, &format!("quick {n}"))
            .await?;
    }
    let pool = stack.pool()?;
    let before = event_count(&pool).await?;
    let refused = client
        .post_json(
            "/chat/new_chat?wait=false",
            &json!({ "chatbot_id": bot, "input": "one too many" }),
            Some(&token),
        )
        .await?;
    assert_limited(&refused);
    assert_eq!(event_count(&pool).await?, before, "nothing stored");
    // Another user has an allowance of their own.
    let (_, other, other_bot) = client.user_with_bot("patient").await?;
    client.post_later(&other, other_bot, "hello").await?;
    stack.teardown().await
}

#[tokio::test]
async fn login_attempts_are_limited_per_address_and_per_username() -> anyhow::Result<()> {
    let stack = Stack::start(limits(&[
        ("LOGIN_FAILURES_PER_MINUTE", "3"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ]))
    .await?;
    let client = stack.client(0);
    let registered = client
        .post_json(
            "/users/register/",
            &json!({ "username": "target", "password": "right password" }),
            None,
        )
        .await?;
    assert_eq!(registered.status, 201);
    // Successful logins do not count.
    for _ in 0..5 {
        assert_eq!(
            login(&client, "target", "right password", "10.0.0.1")
                .await?
                .status,
            200
        );
    }
    // Wrong guesses at one username, from a new address each time: past the
    // allowance (3), the username is blocked, and then even the right password
    // is refused before it is checked.
    for n in 1..=4 {
        let guess = login(&client, "target", "wrong", &format!("10.0.0.{n}")).await?;
        assert_eq!(guess.status, 401, "{guess:?}");
    }
    assert_limited(&login(&client, "target", "right password", "10.0.0.5").await?);
    // One address guessing at many usernames is blocked the same way.
    for n in 0..4 {
        let guess = login(&client, &format!("nobody{n}"), "wrong", "10.0.9.9").await?;
        assert_eq!(guess.status, 401, "{guess:?}");
    }
    assert_limited(&login(&client, "someone else", "wrong", "10.0.9.9").await?);
    // Another address, another username: not blocked.
    let fresh = login(&client, "someone else", "wrong", "10.0.7.7").await?;
    assert_eq!(fresh.status, 401, "{fresh:?}");
    stack.teardown().await
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    // No TRUSTED_PROXIES: every request is from 127.0.0.1, whatever it claims.
    let stack = Stack::start(limits(&[("LOGIN_FAILURES_PER_MINUTE", "3")])).await?;
    let client = stack.client(0);
    for n in 1..=4 {
        let guess = login(&client, &format!("u{n}"), "wrong", &format!("10.1.0.{n}")).await?;
        assert_eq!(guess.status, 401, "{guess:?}");
    }
    assert_limited(&login(&client, "u5", "wrong", "10.1.0.5").await?);
    stack.teardown().await
}

#[tokio::test]
async fn registrations_are_limited_per_address_and_refused_ones_create_nobody() -> anyhow::Result<()>
{
    let stack = Stack::start(limits(&[("REGISTER_PER_MINUTE", "2")])).await?;
    let client = stack.client(0);
    let register = |name: &'static str| {
        let client = client.clone();
        async move {
            client
                .post_json(
                    "/users/register/",
                    &json!({ "username": name, "password": "pass word" }),
                    None,
                )
                .await
        }
    };
    assert_eq!(register("first").await?.status, 201);
    assert_eq!(register("second").await?.status, 201);
    assert_limited(&register("third").await?);
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&stack.pool()?)
        .await?;
    assert_eq!(users, 2, "the refused registration created nobody");
    stack.teardown().await
}
