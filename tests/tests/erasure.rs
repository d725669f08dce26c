//! Erasure that is real (issue 25), against the real binaries and services:
//! - a `forget` that forgets: what a bot remembers is sealed in the log under the
//!   conversation's memory key, and `chat/memory/forget` destroys that key, so
//!   the texts are in no dump of the database and no export (which shows
//!   `"[erased]"`), while later memory works under a new key, a rebuild and
//!   `verify` pass, and a tampered ciphertext is refused by event and field;
//! - account deletion: every text is sealed at rest, so no dump holds one in the
//!   clear; after `DELETE /users/users/<id>/` the user's can be opened nowhere,
//!   while another user's still read as they were; the account cannot
//!   log in, its name can be registered again, the export shows `"[erased]"`,
//!   rebuild and verify pass with nothing of the user, and as-of history says
//!   the user was erased;
//! - rotating the key-encryption key: `rotate-kek` rewraps every data key, a
//!   second run finds nothing to do, and afterwards the new key alone opens
//!   what was sealed, the old one nothing;
//! - `encrypt-history` on a log an earlier release wrote in the clear leaves no
//!   text of it in the clear (in the log or a dump), every view reads as
//!   before, the run is recorded with its counts, and a rerun does nothing.

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
    // A text that only looks sealed is a user's text like any other: sealed,
    // and read back as written.
    let lookalike = "sealed:v1:MARKER-QX-A3:not:sealed";
    client.chat(&token, bot, lookalike).await?;
    memory(&client, &token, bot, 3).await?;
    // Texts an earlier release wrote in the clear (before `encrypt-history`):
    // erasure blanks them in place.
    system_tests::seed::seed_conversation(&stack.pool()?, (user, bot), 2, |i| {
        (
            format!("MARKER-QX-C{i} plain"),
            format!("MARKER-QX-D{i} plain"),
        )
    })
    .await?;
    let (other_user, other, other_bot) = client.user_with_bot("bystander").await?;
    client
        .chat(&other, other_bot, "MARKER-QX-B1 still mine")
        .await?;
    // At rest, every text is sealed: no dump holds a marker in the clear, even
    // before the erasure.
    let before = dump(&stack).await?;
    for sealed in ["MARKER-QX-A", "MARKER-QX-B1", "PERSONA-QX-41", "NAME-QX-42"] {
        assert!(
            !before.contains(sealed),
            "{sealed} is in the clear in the dump"
        );
    }
    assert!(before.contains("sealed:v1:"), "the texts are there, sealed");
    let mine = client
        .get(&format!("/chat/history?chatbot_id={bot}"), Some(&token))
        .await?;
    assert!(mine.body.to_string().contains("MARKER-QX-A1"), "{mine:?}");
    assert!(mine.body.to_string().contains(lookalike), "{mine:?}");

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
    for gone in [
        "MARKER-QX-A",
        "MARKER-QX-C",
        "MARKER-QX-D",
        "PERSONA-QX-41",
        "NAME-QX-42",
    ] {
        assert!(!dumped.contains(gone), "{gone} is in the dump");
    }
    // Another user's texts stay, readable where they are shown and exported.
    let theirs = client
        .get(
            &format!("/chat/history?chatbot_id={other_bot}"),
            Some(&other),
        )
        .await?;
    assert!(
        theirs.body.to_string().contains("MARKER-QX-B1"),
        "{theirs:?}"
    );
    let (ok, exported, err) =
        replay(&stack, &["export", "--user", &other_user.to_string()]).await?;
    assert!(ok && exported.contains("MARKER-QX-B1"), "{err}");

    // The account is gone: its token, its login; its name is free again.
    let stale = client.get("/chat/list", Some(&token)).await?;
    assert_eq!(stale.status, 401, "{stale:?}");
    assert!(client.login("erasable", "pass word").await.is_err());
    let (again, _, _) = client.signup("erasable", "pass word").await?;
    assert_ne!(again, user);
    // Nothing more is ever sealed for the erased user (a reply or a memory
    // written as the account went): no key is made for them again.
    let late = system_tests::test_keyring(&stack.pool()?)
        .seal(
            events::sealing::Scope::User(user),
            (uuid::Uuid::now_v7(), "content"),
            "written as the account went",
        )
        .await;
    assert!(
        matches!(late, Err(events::sealing::SealError::Erased(u)) if u == user),
        "{late:?}"
    );

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
        // The user's key and their conversation's memory key.
        first.stdout.contains("2 data keys rewrapped"),
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
        with_new.stdout.contains(&summary) && with_new.stdout.contains("I grow tomatoes"),
        "the new key opens the memory and the messages"
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

/// Every personal text of the log as stored: `(event type, field, text)`.
async fn stored_texts(pool: &sqlx::MySqlPool) -> anyhow::Result<Vec<(String, String, String)>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, CAST(payload AS CHAR) FROM events")
            .fetch_all(pool)
            .await?;
    let mut texts = Vec::new();
    for (event_type, payload) in rows {
        let payload: Value = serde_json::from_str(&payload)?;
        let fields: &[&str] = match event_type.as_str() {
            "BotCreated" | "BotUpdated" => &["name", "persona"],
            "UserMessagePosted" | "BotReplyGenerated" | "BotReplyStopped" => &["content"],
            "ConversationSummarized" => &["summary"],
            "UserProfileUpdated" => &["profile"],
            _ => &[],
        };
        for field in fields {
            if let Some(text) = payload[*field].as_str() {
                texts.push((event_type.clone(), field.to_string(), text.to_string()));
            }
        }
    }
    Ok(texts)
}

#[tokio::test]
async fn encrypt_history_seals_what_earlier_releases_wrote_in_the_clear() -> anyhow::Result<()> {
    use events::event::{BotKind, BotUpdated, ConversationSummarized, DomainEvent, EventMetadata};
    use events::store::{EventStore, ExpectedVersion};

    // No read cache: the views after the run are read afresh.
    let stack = Stack::start(StackOptions {
        env: vec![("READ_CACHE_TTL_MS".into(), "0".into())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let pool = stack.pool()?;
    let (user, token, bot) = client.user_with_bot("historic").await?;
    // What an earlier release wrote: a store that seals nothing, with the live
    // read models, as that release's api and worker did.
    system_tests::seed::seed_conversation(&pool, (user, bot), 30, |i| {
        (
            format!("OLD-MSG-{i:02} asked"),
            format!("OLD-REPLY-{i:02} said"),
        )
    })
    .await?;
    let earlier = EventStore::new(
        pool.clone(),
        std::sync::Arc::new(events::projections::ReadModels),
    );
    let edit = DomainEvent::BotUpdated(BotUpdated {
        bot_id: bot,
        user_id: user,
        name: Some("OLD-NAME-QZ".into()),
        kind: Some(BotKind::Cosplay),
        persona: Some("OLD-PERSONA-QZ".into()),
        ..Default::default()
    });
    earlier
        .append_to_stream(
            &events::event::stream::bot(bot),
            ExpectedVersion::Any,
            &[edit.to_new_event(EventMetadata::default())?],
        )
        .await?;
    let remembered = DomainEvent::ConversationSummarized(ConversationSummarized {
        user_id: user,
        bot_id: bot,
        summary: "OLD-SUMMARY-QZ".into(),
        covers_version: 60,
        usage: None,
    });
    earlier
        .append_to_stream(
            &events::event::stream::chat(user, bot),
            ExpectedVersion::Any,
            &[remembered.to_new_event(EventMetadata::default())?],
        )
        .await?;
    // And today's release on top of it.
    client
        .chat(&token, bot, "NEW-MSG sealed from the start")
        .await?;
    assert!(
        dump(&stack).await?.contains("OLD-MSG-07"),
        "written in the clear"
    );

    let views = |client: Client, token: String| async move {
        let mut seen = Vec::new();
        for path in [
            format!("/chat/history?chatbot_id={bot}&limit=100"),
            "/chat/list".to_string(),
            format!("/chat/memory?chatbot_id={bot}"),
        ] {
            seen.push(client.get(&path, Some(&token)).await?.body);
        }
        seen.push(
            client
                .post_json("/bots/list", &json!({}), Some(&token))
                .await?
                .body,
        );
        anyhow::Ok(seen)
    };
    let before = views(client.clone(), token.clone()).await?;
    assert!(
        before[0].to_string().contains("OLD-MSG-07"),
        "{}",
        before[0]
    );
    assert!(
        before[2].to_string().contains("OLD-SUMMARY-QZ"),
        "{}",
        before[2]
    );

    let run = stack.replay(&["encrypt-history", "--batch", "25"]).await?;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    // 30 messages, 30 replies, a name, a persona and a summary.
    assert!(
        run.stdout
            .contains("63 texts in 62 events sealed by this run"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("match the log"), "{}", run.stdout);
    assert!(
        run.stderr.contains("encrypt-history: "),
        "progress is shown: {}",
        run.stderr
    );

    // No text of the log is left in the clear, in the log or anywhere else.
    for (event_type, field, text) in stored_texts(&pool).await? {
        assert!(
            text.is_empty() || text.starts_with("sealed:v1:"),
            "{event_type}.{field} is in the clear: {text}"
        );
    }
    let dumped = dump(&stack).await?;
    for clear in [
        "OLD-MSG-",
        "OLD-REPLY-",
        "OLD-NAME-QZ",
        "OLD-PERSONA-QZ",
        "OLD-SUMMARY-QZ",
        "NEW-MSG",
    ] {
        assert!(!dumped.contains(clear), "{clear} is in the dump");
    }
    // Every view reads as before.
    assert_eq!(views(client.clone(), token.clone()).await?, before);
    // The run is in the log, with its counts; a rerun has nothing left to do.
    let recorded: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(payload AS CHAR) FROM events WHERE event_type = 'HistoryEncrypted'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(recorded.len(), 1);
    let recorded: Value = serde_json::from_str(&recorded[0])?;
    assert_eq!(recorded["fields_sealed"], 63, "{recorded}");
    assert_eq!(recorded["events_sealed"], 62, "{recorded}");
    let again = stack.replay(&["encrypt-history"]).await?;
    assert!(again.ok, "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stdout
            .contains("0 texts in 0 events sealed by this run (63 by every run)"),
        "{}",
        again.stdout
    );
    // The export opens them all.
    let exported = stack
        .replay(&["export", "--user", &user.to_string()])
        .await?;
    assert!(exported.ok, "{}", exported.stderr);
    for text in [
        "OLD-MSG-29 asked",
        "OLD-REPLY-00 said",
        "OLD-NAME-QZ",
        "OLD-SUMMARY-QZ",
    ] {
        assert!(exported.stdout.contains(text), "{text} in the export");
    }
    stack.teardown().await
}

/// Sealing looks a key up only for a text there is: an erased user's empty
/// text (a reply stopped before its first word) is still recorded, while any
/// word of theirs is refused rather than sealed under a new key.
#[tokio::test]
async fn an_erased_users_empty_text_is_recorded_and_their_words_are_refused() -> anyhow::Result<()>
{
    use events::event::{DomainEvent, EventMetadata, MessageSource, UserMessagePosted};
    use events::sealing::{Kek, Keyring, SealError};

    let isolation = system_tests::Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let keyring = Keyring::new(pool.clone(), Kek::from_bytes(&[7u8; 32]));
    keyring.erase_user(5).await?;
    let posted = |content: &str| {
        DomainEvent::UserMessagePosted(UserMessagePosted {
            message_id: uuid::Uuid::now_v7(),
            user_id: 5,
            bot_id: 9,
            content: content.into(),
            client_msg_id: None,
            source: MessageSource::Import,
        })
        .to_new_event(EventMetadata::default())
    };

    let mut empty = [posted("")?];
    keyring.seal_events(&mut empty).await?;
    assert_eq!(empty[0].payload["content"], "");

    let mut words = [posted("")?, posted("still here")?];
    assert!(matches!(
        keyring.seal_events(&mut words).await,
        Err(SealError::Erased(5))
    ));
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE wrapped <> ''")
        .fetch_one(&pool)
        .await?;
    assert_eq!(keys, 0, "no key was made for the erased user");
    Ok(())
}
