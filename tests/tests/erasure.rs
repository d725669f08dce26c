//! Erasure that is real (issue 25), against the real binaries and services:
//! - a `forget` that forgets: what a bot remembers is sealed in the log under the
//!   conversation's memory key, and `chat/memory/forget` destroys that key, so
//!   the texts are in no dump of the database and no export (which shows
//!   `"[erased]"`), while later memory works under a new key, a rebuild and
//!   `verify` pass, and a tampered ciphertext is refused by event and field;
//! - account deletion: after `DELETE /users/users/<id>/`, a dump holds none of
//!   the texts the user sent or was answered, nor their memory or their bot's
//!   name and persona, while another user's are all there; the account cannot
//!   log in, its name can be registered again, the export shows `"[erased]"`,
//!   rebuild and verify pass with nothing of the user, and as-of history says
//!   the user was erased;
//! - rotating the key-encryption key: `rotate-kek` rewraps every data key, a
//!   second run finds nothing to do, and afterwards the new key alone opens
//!   what was sealed, the old one nothing.

use std::time::Duration;

use serde_json::{json, Value};
use system_tests::{eventually, Client, Stack, StackOptions};

/// The whole test database, as `mariadb-dump` writes it.
async fn dump(stack: &Stack) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("mariadb-dump")
        .args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "--hex-blob",
            &stack.isolation.bus.namespace,
        ])
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn replay(stack: &Stack, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let run = stack.replay(args).await?;
    Ok((run.ok, run.stdout, run.stderr))
}

/// The memory's texts once a refresh has covered the conversation's `seq`.
async fn memory(client: &Client, token: &str, bot: i64, seq: i64) -> anyhow::Result<Value> {
    eventually(Duration::from_secs(30), "a memory refresh", || {
        let (client, token) = (client.clone(), token.to_string());
        async move {
            let memory = client
                .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
                .await?;
            let data = memory.body["data"].clone();
            Ok(
                (data["up_to_seq"].as_i64() >= Some(seq) && data["profile"].is_string())
                    .then_some(data),
            )
        }
    })
    .await
}

#[tokio::test]
async fn forget_makes_what_was_remembered_unreadable_in_every_copy() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("forgetter").await?;
    client.chat(&token, bot, "I keep bees on the roof").await?;
    client
        .chat(&token, bot, "and my cat is called Miso")
        .await?;
    let before = memory(&client, &token, bot, 3).await?;
    let summary = before["summary"].as_str().unwrap_or_default().to_string();
    let profile = before["profile"].as_str().unwrap_or_default().to_string();
    assert!(
        summary.contains("bees"),
        "the memory is readable: {summary}"
    );
    // The fake's answers start with a call number, so this much of each text
    // is found nowhere else.
    let marks: Vec<String> = [&summary, &profile]
        .iter()
        .map(|t| t.chars().take(30).collect())
        .collect();
    // Sealed even before the forget: neither the log nor the read model holds
    // the texts in the clear.
    let sealed_dump = dump(&stack).await?;
    for mark in &marks {
        assert!(!sealed_dump.contains(mark.as_str()), "{mark} is sealed");
    }

    let forgot = client
        .post_json(
            "/chat/memory/forget",
            &json!({ "chatbot_id": bot }),
            Some(&token),
        )
        .await?;
    assert_eq!(forgot.status, 200, "{forgot:?}");
    let after = client
        .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
        .await?;
    assert_eq!(after.body["data"]["summary"], Value::Null);
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE scope = ?")
        .bind(format!("memory:{user}:{bot}"))
        .fetch_one(&stack.pool()?)
        .await?;
    assert_eq!(keys, 0, "the memory's key is destroyed");

    // The export shows the old texts as erased, and never their ciphertext.
    let (ok, exported, err) = replay(&stack, &["export", "--user", &user.to_string()]).await?;
    assert!(ok, "{err}");
    let memory_lines: Vec<Value> = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "ConversationSummarized" || l["type"] == "UserProfileUpdated")
        .collect();
    assert!(!memory_lines.is_empty());
    for line in &memory_lines {
        let text = line["payload"]["summary"]
            .as_str()
            .or(line["payload"]["profile"].as_str())
            .unwrap_or_default();
        assert_eq!(text, "[erased]", "{line}");
    }
    for mark in &marks {
        assert!(!exported.contains(mark.as_str()));
        assert!(!dump(&stack).await?.contains(mark.as_str()));
    }

    // Later memory works, under a new key.
    client.chat(&token, bot, "I moved to Lyon").await?;
    client.chat(&token, bot, "and I took up the cello").await?;
    // Covering the new messages (its seq depends on when the refresh ran).
    let later = eventually(
        Duration::from_secs(30),
        "memory made after the forget",
        || {
            let (client, token) = (client.clone(), token.clone());
            async move {
                let memory = client
                    .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
                    .await?;
                let data = memory.body["data"].clone();
                Ok(data["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("cello"))
                    .then_some(data))
            }
        },
    )
    .await?;
    // The log still rebuilds the same views, with no key needed.
    for args in [["rebuild"], ["verify"]] {
        let (ok, out, err) = replay(&stack, &args).await?;
        assert!(ok, "{args:?}: {out}{err}");
    }
    assert_eq!(
        client
            .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
            .await?
            .body["data"]["summary"],
        later["summary"]
    );

    // A ciphertext changed in place is refused, by event and field, not shown.
    let pool = stack.pool()?;
    let (event_id, sealed): (String, String) = sqlx::query_as(
        "SELECT CAST(event_id AS CHAR), CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.summary')) AS CHAR) \
         FROM events WHERE event_type = 'ConversationSummarized' \
         ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    let mut tampered = sealed.clone();
    let flip = tampered.len() - 6;
    let replaced = if &tampered[flip..=flip] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(flip..=flip, replaced);
    sqlx::query(
        "UPDATE events SET payload = JSON_SET(payload, '$.summary', ?) \
         WHERE event_type = 'ConversationSummarized' AND JSON_UNQUOTE(JSON_EXTRACT(payload, '$.summary')) = ?",
    )
    .bind(&tampered)
    .bind(&sealed)
    .execute(&pool)
    .await?;
    let (ok, _, err) = replay(&stack, &["export", "--user", &user.to_string()]).await?;
    assert!(!ok, "a tampered ciphertext is refused");
    assert!(
        err.contains(&event_id) && err.contains("summary") && err.contains("does not authenticate"),
        "{err}"
    );
    stack.teardown().await
}

#[tokio::test]
async fn deleting_an_account_erases_everything_its_user_wrote() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, _) = client.signup("erasable", "pass word").await?;
    let bot = client
        .create_bot(&token, "NAME-QX-42", 1, "PERSONA-QX-41")
        .await?;
    client.chat(&token, bot, "MARKER-QX-A1 my diary").await?;
    client.chat(&token, bot, "MARKER-QX-A2 my secrets").await?;
    memory(&client, &token, bot, 3).await?;
    let (_, other, other_bot) = client.user_with_bot("bystander").await?;
    client
        .chat(&other, other_bot, "MARKER-QX-B1 still mine")
        .await?;

    // Only the account's user, with its password.
    let path = format!("/users/users/{user}/");
    let wrong = client
        .delete_json(&path, &json!({ "password": "not it" }), Some(&token))
        .await?;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let foreign = client
        .delete_json(&path, &json!({ "password": "pass word" }), Some(&other))
        .await?;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let erased = client
        .delete_json(&path, &json!({ "password": "pass word" }), Some(&token))
        .await?;
    assert_eq!(erased.status, 200, "{erased:?}");
    assert_eq!(erased.body, json!({ "code": 200, "msg": "OK" }));

    let dumped = dump(&stack).await?;
    for gone in ["MARKER-QX-A", "PERSONA-QX-41", "NAME-QX-42"] {
        assert!(!dumped.contains(gone), "{gone} is in the dump");
    }
    assert!(dumped.contains("MARKER-QX-B1"), "another user's texts stay");

    // The account is gone: its token, its login; its name is free again.
    let stale = client.get("/chat/list", Some(&token)).await?;
    assert_eq!(stale.status, 401, "{stale:?}");
    assert!(client.login("erasable", "pass word").await.is_err());
    let (again, _, _) = client.signup("erasable", "pass word").await?;
    assert_ne!(again, user);

    // The log keeps the events, with nothing of the user's in them.
    let (ok, exported, err) = replay(&stack, &["export", "--user", &user.to_string()]).await?;
    assert!(ok, "{err}");
    assert!(exported.contains("UserErased"));
    for line in exported
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        for field in ["content", "summary", "profile", "name", "persona"] {
            if let Some(text) = line["payload"][field].as_str() {
                assert_eq!(text, "[erased]", "{line}");
            }
        }
    }
    for args in [["rebuild"], ["verify"]] {
        let (ok, out, err) = replay(&stack, &args).await?;
        assert!(ok, "{args:?}: {out}{err}");
    }
    let pool = stack.pool()?;
    for table in [
        "bots",
        "chat_history",
        "chat_list",
        "conversation_memory",
        "usage_daily",
    ] {
        let rows: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?"))
                .bind(user)
                .fetch_one(&pool)
                .await?;
        assert_eq!(
            rows, 0,
            "{table} holds nothing of the erased user after a rebuild"
        );
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (ok, _, err) = replay(
        &stack,
        &[
            "history",
            "--user",
            &user.to_string(),
            "--bot",
            &bot.to_string(),
            "--as-of",
            &at,
        ],
    )
    .await?;
    assert!(!ok && err.contains("erased"), "{err}");
    // The other user is untouched.
    let theirs = client
        .get(
            &format!("/chat/history?chatbot_id={other_bot}"),
            Some(&other),
        )
        .await?;
    assert_eq!(theirs.body["data"].as_array().map(Vec::len), Some(2));
    stack.teardown().await
}

#[tokio::test]
async fn rotating_the_key_encryption_key_keeps_every_text_readable() -> anyhow::Result<()> {
    // The stack's key (see `Stack::env`), and a new one.
    const OLD: &str = "c3lzdGVtLXRlc3Qta2V5LWVuY3J5cHRpb24ta2V5ISE=";
    const NEW: &str = "bmV3LWtleS1lbmNyeXB0aW9uLWtleS1mb3ItdGVzdHM=";
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "2".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("rotated").await?;
    client.chat(&token, bot, "I grow tomatoes").await?;
    client.chat(&token, bot, "and basil").await?;
    let remembered = memory(&client, &token, bot, 3).await?;
    // Its first line: the export escapes the rest's line breaks.
    let summary: String = remembered["summary"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(!summary.is_empty());

    let rotating = [
        ("DATA_KEY_ENCRYPTION_KEY", NEW),
        ("DATA_KEY_ENCRYPTION_KEY_PREVIOUS", OLD),
    ];
    let first = stack.replay_with(&["rotate-kek"], &rotating).await?;
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    assert!(
        first.stdout.contains("1 data keys rewrapped"),
        "{}",
        first.stdout
    );
    let again = stack.replay_with(&["rotate-kek"], &rotating).await?;
    assert!(
        again.stdout.contains("0 data keys rewrapped"),
        "{}",
        again.stdout
    );

    let export = |key: &'static str| {
        let stack = &stack;
        async move {
            stack
                .replay_with(
                    &["export", "--user", &user.to_string()],
                    &[("DATA_KEY_ENCRYPTION_KEY", key)],
                )
                .await
        }
    };
    let with_new = export(NEW).await?;
    assert!(with_new.ok, "{}", with_new.stderr);
    assert!(
        with_new.stdout.contains(&summary),
        "the new key opens the memory"
    );
    let with_old = export(OLD).await?;
    assert!(!with_old.ok, "the old key no longer opens anything");
    assert!(
        with_old.stderr.contains("cannot be unwrapped"),
        "{}",
        with_old.stderr
    );
    stack.teardown().await
}
