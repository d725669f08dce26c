//! Audit and replay against the real binaries and MariaDB: `worker replay verify`
//! proves the live views match the log (and names the rows that don't), `export`
//! round-trips every field under every filter, `history --as-of` shows a
//! conversation as it stood, old-schema events replay everywhere, and an interrupted
//! rebuild leaves the live views alone.

use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};
use sqlx::MySqlPool;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use events::config::ExposeSecret;
use events::store::read_all;
use system_tests::seed::{seed_log, SeedPlan};
use system_tests::{binary, eventually, Isolation, Stack, StackOptions};

/// `worker replay <args>` against `env`, whatever its outcome.
async fn replay(env: &[(String, String)], args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(binary("worker")?)
        .arg("replay")
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn verify(env: &[(String, String)]) -> anyhow::Result<(bool, String)> {
    let output = replay(env, &["verify"]).await?;
    Ok((output.status.success(), text(&output.stdout)))
}

/// A bit of everything the read models hold: messages, replies, a failure, memory
/// and its erasure, a deleted bot, sessions refreshed, logged out and revoked.
async fn lived_in(stack: &Stack) -> anyhow::Result<(i64, String, i64)> {
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("auditee").await?;
    let gone = client.create_bot(&token, "Gone", 1, "Li Bai").await?;
    for n in 1..=6 {
        client.chat(&token, bot, &format!("message {n}")).await?;
    }
    client.chat(&token, gone, "hello before you go").await?;
    stack.model.fail_next(400, "invalid_request_error", None);
    let failed = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "this one fails" }),
            Some(&token),
        )
        .await?;
    assert_eq!(failed.status, 502);
    client
        .post_json("/bots/delete", &json!({ "chatbot_id": gone }), Some(&token))
        .await?;
    eventually(Duration::from_secs(20), "the memory refresh", || {
        let client = client.clone();
        let token = token.clone();
        async move {
            let memory = client
                .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
                .await?;
            Ok(memory.body["data"]["summary"].is_string().then_some(()))
        }
    })
    .await?;
    let other = client.create_bot(&token, "Other", 0, "").await?;
    client.chat(&token, other, "remember this").await?;
    let forgot = client
        .post_json(
            "/chat/memory/forget",
            &json!({ "chatbot_id": bot }),
            Some(&token),
        )
        .await?;
    assert_eq!(forgot.status, 200, "{forgot:?}");

    let (_, _, refresh) = client.login("auditee", "pass word").await?;
    let refreshed = client
        .post_json("/login/refresh/", &json!({ "refresh": refresh }), None)
        .await?;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    let changed = client
        .patch_json(
            &format!("/users/users/{user}/"),
            &json!({ "password": "a new password" }),
            Some(&token),
        )
        .await?;
    assert_eq!(changed.status, 200, "{changed:?}");
    Ok((user, token, bot))
}

#[tokio::test]
async fn verify_passes_on_a_healthy_system_and_names_every_tampered_row() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let (user, _, bot) = lived_in(&stack).await?;
    let env = stack.env();
    let pool = stack.pool()?;

    let (ok, report) = verify(&env).await?;
    assert!(ok, "{report}");
    assert!(report.contains("match the log at position"), "{report}");
    for table in [
        "bots",
        "chat_history",
        "chat_list",
        "sessions",
        "conversation_memory",
    ] {
        assert!(report.contains(table), "{table} compared: {report}");
    }
    let memory: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversation_memory")
        .fetch_one(&pool)
        .await?;
    assert!(memory > 0, "memory is among the views compared");

    // A changed value: named by key, with both values.
    sqlx::query(
        "UPDATE chat_history SET content = 'tampered' WHERE user_id = ? AND chatbot_id = ? AND seq = 1",
    )
    .bind(user)
    .bind(bot)
    .execute(&pool)
    .await?;
    let (ok, report) = verify(&env).await?;
    assert!(!ok, "a tampered row fails verify: {report}");
    assert!(report.contains("chat_history: 1 row(s) differ"), "{report}");
    assert!(
        report.contains(&format!("user_id={user}, chatbot_id={bot}, seq=1"))
            && report
                .contains(r#"live: content="tampered"; rebuilt from the log: content="sealed:v1:"#),
        "{report}"
    );
    // The views keep the texts sealed as the log has them: verify needs no key,
    // and its report shows nothing a user wrote.
    assert!(!report.contains("message 1"), "{report}");

    // A rebuild repairs it; then a deleted row.
    assert!(replay(&env, &["rebuild"]).await?.status.success());
    assert!(verify(&env).await?.0, "rebuilt views match");
    sqlx::query("DELETE FROM chat_list WHERE user_id = ? AND chatbot_id = ?")
        .bind(user)
        .bind(bot)
        .execute(&pool)
        .await?;
    let (ok, report) = verify(&env).await?;
    assert!(!ok);
    assert!(
        report.contains("chat_list: 1 row(s) differ")
            && report.contains(&format!(
                "row (user_id={user}, chatbot_id={bot}): missing from the live view"
            )),
        "{report}"
    );

    // And an extra one.
    assert!(replay(&env, &["rebuild"]).await?.status.success());
    sqlx::query(
        "INSERT INTO bots (chatbot_id, user_id, chatbot_name, chatbot_type, chatbot_persona, \
         created_at) VALUES (987654, ?, 'ghost', 0, '', NOW(6))",
    )
    .bind(user)
    .execute(&pool)
    .await?;
    let (ok, report) = verify(&env).await?;
    assert!(!ok);
    assert!(
        report.contains("bots: 1 row(s) differ")
            && report.contains("row (chatbot_id=987654): only in the live view")
            && report.contains(r#"chatbot_name="ghost""#),
        "{report}"
    );
    stack.teardown().await
}

#[tokio::test]
async fn verify_reports_nothing_while_users_keep_writing() -> anyhow::Result<()> {
    // The writer posts faster than a worker answers, which is the point: the
    // admission caps that would refuse it (429) are off here.
    let stack = Stack::start(StackOptions {
        env: vec![
            ("CONVERSATION_MAX_UNANSWERED".into(), "0".into()),
            ("USER_MAX_UNANSWERED".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("busy").await?;
    for n in 0..40 {
        client
            .post_later(&token, bot, &format!("before {n}"))
            .await?;
    }
    let pool = stack.pool()?;
    let count = |pool: MySqlPool| async move {
        anyhow::Ok(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events")
                .fetch_one(&pool)
                .await?,
        )
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let (client, token, stop) = (client.clone(), token.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                client
                    .post_later(&token, bot, &format!("during {n}"))
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = count(pool.clone()).await?;
    // Small batches make the replay long enough to overlap many writes.
    let output = replay(&stack.env(), &["verify", "--batch", "3"]).await?;
    let after = count(pool.clone()).await?;
    stop.cancel();
    let posted = load.await??;
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    println!(
        "{posted} posts during the run; the log grew {} events while verify ran",
        after - before
    );
    assert!(after > before, "writes landed during the verify");
    stack.teardown().await
}

/// The fields of one exported line, checked against the event as stored.
fn assert_exported(line: &Value, event: &events::store::RecordedEvent) -> anyhow::Result<()> {
    assert_eq!(line["position"], json!(event.global_position));
    assert_eq!(line["event_id"], json!(event.event_id));
    assert_eq!(line["stream"], json!(event.stream_id));
    assert_eq!(line["version"], json!(event.stream_version));
    assert_eq!(line["type"], json!(event.event_type));
    assert_eq!(line["schema_version"], json!(event.schema_version));
    // Sealed texts are exported opened, or "[erased]" once their key is gone.
    match (&line["payload"], &event.payload) {
        (Value::Object(exported), Value::Object(stored)) => {
            assert_eq!(exported.len(), stored.len());
            for (field, value) in stored {
                match value.as_str() {
                    Some(sealed) if events::sealing::is_sealed(sealed) => {
                        let shown = exported[field].as_str().unwrap_or_default();
                        assert!(!shown.is_empty() && !events::sealing::is_sealed(shown));
                    }
                    _ => assert_eq!(&exported[field], value, "{field}"),
                }
            }
        }
        (exported, stored) => assert_eq!(exported, stored),
    }
    assert_eq!(line["metadata"], serde_json::to_value(&event.metadata)?);
    let at: DateTime<Utc> = serde_json::from_value(line["recorded_at"].clone())?;
    assert_eq!(at.naive_utc(), event.recorded_at);
    Ok(())
}

fn lines(output: &Output) -> anyhow::Result<Vec<Value>> {
    anyhow::ensure!(output.status.success(), "{}", text(&output.stderr));
    Ok(text(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn positions(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .filter_map(|l| l["position"].as_i64())
        .collect()
}

#[tokio::test]
async fn export_round_trips_every_field_and_honours_every_filter() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let (user, _, bot) = lived_in(&stack).await?;
    let other_client = stack.client(0);
    let (other_user, other_token, other_bot) = other_client.user_with_bot("bystander").await?;
    other_client
        .chat(&other_token, other_bot, "not yours")
        .await?;
    let env = stack.env();
    let pool = stack.pool()?;
    let log = read_all(&pool, 0, 100_000).await?;

    // Everything, field by field; and no password hash, though the users table has them.
    let all = replay(&env, &["export"]).await?;
    let everything = lines(&all)?;
    assert_eq!(everything.len(), log.len());
    for (line, event) in everything.iter().zip(&log) {
        assert_exported(line, event)?;
    }
    let hashes: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE password_hash LIKE '$argon2%'")
            .fetch_one(&pool)
            .await?;
    assert!(hashes >= 2);
    assert!(
        !text(&all.stdout).contains("$argon2"),
        "no password hash leaves"
    );

    // One stream.
    let stream = format!("chat-{user}-{bot}");
    let one = lines(&replay(&env, &["export", "--stream", &stream]).await?)?;
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| e.stream_id == stream)
        .map(|e| e.global_position)
        .collect();
    assert!(expected.len() > 10);
    assert_eq!(positions(&one), expected);

    // One user: their bots', chats' and sessions' streams, nobody else's.
    let mine = lines(&replay(&env, &["export", "--user", &user.to_string()]).await?)?;
    let owned_by = |e: &events::store::RecordedEvent, who: i64| {
        e.stream_id.starts_with(&format!("chat-{who}-"))
            || ((e.stream_id.starts_with("bot-") || e.stream_id.starts_with("session-"))
                && log.iter().any(|first| {
                    first.stream_id == e.stream_id
                        && first.stream_version == 1
                        && first.payload["user_id"] == json!(who)
                }))
    };
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| owned_by(e, user))
        .map(|e| e.global_position)
        .collect();
    assert_eq!(positions(&mine), expected);
    for kind in ["chat-", "bot-", "session-"] {
        assert!(
            mine.iter()
                .any(|l| l["stream"].as_str().is_some_and(|s| s.starts_with(kind))),
            "the user's {kind} streams are in"
        );
    }
    assert!(
        !mine
            .iter()
            .any(|l| l["stream"] == json!(format!("chat-{other_user}-{other_bot}"))),
        "another user's conversation is not"
    );

    // After a position; a time window [from, to); all of them combined.
    let middle = log[log.len() / 2].global_position;
    let after = lines(&replay(&env, &["export", "--after", &middle.to_string()]).await?)?;
    assert_eq!(
        positions(&after),
        log.iter()
            .map(|e| e.global_position)
            .filter(|p| *p > middle)
            .collect::<Vec<_>>()
    );
    let rfc3339 = |at: NaiveDateTime| {
        DateTime::<Utc>::from_naive_utc_and_offset(at, Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let (from, to) = (log[3].recorded_at, log[log.len() - 4].recorded_at);
    let window = lines(
        &replay(
            &env,
            &["export", "--from", &rfc3339(from), "--to", &rfc3339(to)],
        )
        .await?,
    )?;
    assert_eq!(
        positions(&window),
        log.iter()
            .filter(|e| e.recorded_at >= from && e.recorded_at < to)
            .map(|e| e.global_position)
            .collect::<Vec<_>>()
    );
    let combined = lines(
        &replay(
            &env,
            &[
                "export",
                "--user",
                &user.to_string(),
                "--after",
                &middle.to_string(),
                "--to",
                &rfc3339(to),
            ],
        )
        .await?,
    )?;
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| owned_by(e, user) && e.global_position > middle && e.recorded_at < to)
        .map(|e| e.global_position)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(positions(&combined), expected);

    // CSV: the same events and fields, flat.
    let csv_out = replay(&env, &["export", "--stream", &stream, "--format", "csv"]).await?;
    assert!(csv_out.status.success());
    let mut reader = csv::Reader::from_reader(csv_out.stdout.as_slice());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    assert_eq!(
        header,
        [
            "position",
            "event_id",
            "stream",
            "version",
            "type",
            "schema_version",
            "recorded_at",
            "correlation_id",
            "causation_id",
            "user_id",
            "payload",
            "metadata"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), one.len());
    for (row, line) in rows.iter().zip(&one) {
        assert_eq!(row.get(0), Some(line["position"].to_string().as_str()));
        assert_eq!(row.get(4), line["type"].as_str());
        assert_eq!(
            serde_json::from_str::<Value>(row.get(10).unwrap_or("null"))?,
            line["payload"]
        );
        assert_eq!(
            row.get(7).filter(|c| !c.is_empty()),
            line["metadata"]["correlation_id"].as_str()
        );
    }

    // Bad input says what is wrong and exports nothing.
    let bad = replay(&env, &["export", "--from", "yesterday"]).await?;
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("RFC 3339"),
        "{}",
        text(&bad.stderr)
    );
    assert!(bad.stdout.is_empty());
    stack.teardown().await
}

#[tokio::test]
async fn history_as_of_shows_each_instant_even_after_the_bot_is_deleted() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("timetraveller").await?;
    let pool = stack.pool()?;
    let stream = format!("chat-{user}-{bot}");
    let created: NaiveDateTime =
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE stream_id = ?")
            .bind(format!("bot-{bot}"))
            .fetch_one(&pool)
            .await?;

    // After each exchange: the instant of its last event, and what the route served.
    let mut seen = Vec::new();
    for n in 1..=3 {
        client.chat(&token, bot, &format!("exchange {n}")).await?;
        let at: NaiveDateTime =
            sqlx::query_scalar("SELECT MAX(recorded_at) FROM events WHERE stream_id = ?")
                .bind(&stream)
                .fetch_one(&pool)
                .await?;
        let served = client
            .get(&format!("/chat/history?chatbot_id={bot}"), Some(&token))
            .await?;
        seen.push((at, served.body["data"].clone()));
    }
    assert!(
        client
            .post_json("/bots/delete", &json!({ "chatbot_id": bot }), Some(&token))
            .await?
            .status
            == 200
    );

    let as_of = |at: NaiveDateTime, format: &'static str| {
        let env = stack.env();
        let at = DateTime::<Utc>::from_naive_utc_and_offset(at, Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        async move {
            let user = user.to_string();
            let bot = bot.to_string();
            replay(
                &env,
                &[
                    "history", "--user", &user, "--bot", &bot, "--as-of", &at, "--format", format,
                ],
            )
            .await
        }
    };
    for (at, served) in &seen {
        let output = as_of(*at, "array").await?;
        assert!(output.status.success(), "{}", text(&output.stderr));
        let rows: Value = serde_json::from_slice(&output.stdout)?;
        assert_eq!(&rows, served, "as of {at}, the deleted bot's conversation");
    }
    // Between two exchanges: only the first.
    let between = seen[0].0 + chrono::TimeDelta::microseconds(1);
    let rows: Value = serde_json::from_slice(&as_of(between, "object").await?.stdout)?;
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    assert_eq!(rows[0]["content"], json!("exchange 1"));
    assert_eq!(rows[1]["status"], json!("done"));

    let before = as_of(created - chrono::TimeDelta::seconds(1), "array").await?;
    assert!(!before.status.success());
    assert!(
        text(&before.stderr).contains("did not exist yet"),
        "{}",
        text(&before.stderr)
    );
    let after = as_of(chrono::Utc::now().naive_utc(), "array").await?;
    assert!(!after.status.success());
    assert!(
        text(&after.stderr).contains("had already been deleted"),
        "{}",
        text(&after.stderr)
    );
    stack.teardown().await
}

#[tokio::test]
async fn events_in_an_older_schema_replay_everywhere() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let client = stack.client(0);
    let (user, token, bot) = client.user_with_bot("oldtimer").await?;
    client.chat(&token, bot, "written today").await?;
    let pool = stack.pool()?;
    let env = stack.env();
    let stream = format!("chat-{user}-{bot}");

    // A UserMessagePosted exactly as the first release wrote it: schema version 1,
    // no `source`. Positions come from the head row, as every append's do.
    let message_id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let position: i64 =
        sqlx::query_scalar("SELECT position + 1 FROM event_log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let version: i64 =
        sqlx::query_scalar("SELECT MAX(stream_version) + 1 FROM events WHERE stream_id = ?")
            .bind(&stream)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO events (global_position, event_id, stream_id, stream_version, event_type, \
         schema_version, payload, metadata, recorded_at) \
         VALUES (?, ?, ?, ?, 'UserMessagePosted', 1, ?, '{}', NOW(6))",
    )
    .bind(position)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&stream)
    .bind(version)
    .bind(
        json!({"message_id": message_id, "user_id": user, "bot_id": bot,
                  "content": "written by an older release"})
        .to_string(),
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE event_log_head SET position = ? WHERE id = 1")
        .bind(position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // Rebuild reads it into the views; verify agrees.
    let rebuilt = replay(&env, &["rebuild"]).await?;
    assert!(rebuilt.status.success(), "{}", text(&rebuilt.stderr));
    let (ok, report) = verify(&env).await?;
    assert!(ok, "{report}");

    // Export shows it as stored, or in today's shape.
    let raw = lines(&replay(&env, &["export", "--stream", &stream]).await?)?;
    let old = raw
        .iter()
        .find(|l| l["position"] == json!(position))
        .cloned()
        .unwrap_or_default();
    assert_eq!(old["schema_version"], json!(1));
    assert_eq!(old["payload"].get("source"), None);
    let upcast = lines(&replay(&env, &["export", "--stream", &stream, "--upcast"]).await?)?;
    let new = upcast
        .iter()
        .find(|l| l["position"] == json!(position))
        .cloned()
        .unwrap_or_default();
    assert_eq!(new["schema_version"], json!(2));
    assert_eq!(new["payload"]["source"], json!("unrecorded"));
    assert_eq!(
        new["payload"]["content"],
        json!("written by an older release")
    );

    // The worker answers it once the outbox hands it over.
    sqlx::query("INSERT INTO outbox (global_position, created_at) VALUES (?, NOW(6))")
        .bind(position)
        .execute(&pool)
        .await?;
    let history = eventually(Duration::from_secs(20), "the old message answered", || {
        let client = client.clone();
        let token = token.clone();
        async move {
            let history = client
                .get(
                    &format!("/chat/history?chatbot_id={bot}&format=object"),
                    Some(&token),
                )
                .await?;
            let rows = history.body["data"].as_array().cloned().unwrap_or_default();
            let answered = rows.len() == 4 && rows[2]["status"] == json!("done");
            Ok(answered.then_some(rows))
        }
    })
    .await?;
    assert_eq!(history[2]["content"], json!("written by an older release"));
    assert_eq!(history[3]["status"], json!("done"));

    // As-of history reads it too.
    let now = Utc::now().to_rfc3339();
    let output = replay(
        &env,
        &[
            "history",
            "--user",
            &user.to_string(),
            "--bot",
            &bot.to_string(),
            "--as-of",
            &now,
            "--format",
            "object",
        ],
    )
    .await?;
    let rows: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(rows[2]["content"], json!("written by an older release"));
    assert!(verify(&env).await?.0);
    stack.teardown().await
}

/// `CHECKSUM TABLE` of every live view.
async fn checksums(pool: &MySqlPool) -> anyhow::Result<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query_as(
        "CHECKSUM TABLE bots, chat_history, chat_list, sessions, conversation_memory",
    )
    .fetch_all(pool)
    .await?)
}

#[tokio::test]
async fn an_interrupted_rebuild_leaves_the_live_views_and_a_second_run_is_refused(
) -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let plan = SeedPlan {
        users: 20,
        bots_per_user: 5,
        events: 20_000,
        sealed: true,
    };
    seed_log(&pool, plan, |_| {}).await?;
    let env = vec![(
        "DATABASE_URL".to_string(),
        isolation.database.url.expose_secret().to_string(),
    )];
    let first = replay(&env, &["rebuild"]).await?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let before = checksums(&pool).await?;
    assert!(before.iter().all(|(_, sum)| sum.is_some()));

    // A slow rebuild (tiny batches), watched through its progress lines.
    let mut slow = Command::new(binary("worker")?)
        .args(["replay", "rebuild", "--batch", "5"])
        .envs(env.iter().cloned())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = slow
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut progress = tokio::io::BufReader::new(stderr).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = progress.next_line().await? {
            if line.starts_with("rebuild: ") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("the rebuild ended without progress")
    })
    .await??;
    assert!(
        line.contains("events/s") && line.contains("ETA"),
        "plain progress lines when not on a terminal: {line}"
    );

    // A second run is refused, clearly.
    let second = replay(&env, &["verify"]).await?;
    assert!(!second.status.success());
    assert!(
        text(&second.stderr)
            .contains("another `worker replay rebuild`, `verify` or `encrypt-history` is running"),
        "{}",
        text(&second.stderr)
    );

    // Ctrl-C: the rebuild stops, says so, and the live views are as they were.
    let pid = slow.id().ok_or_else(|| anyhow::anyhow!("exited early"))?;
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(20), slow.wait()).await??;
    assert!(!status.success());
    let mut rest = String::new();
    while let Some(line) = progress.next_line().await? {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("stopped before the end"), "{rest}");
    assert_eq!(
        checksums(&pool).await?,
        before,
        "the live views are untouched"
    );
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '%\\_rebuild'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        leftovers,
        Vec::<String>::new(),
        "no shadow tables left behind"
    );

    // The next run starts clean.
    let (ok, report) = verify(&env).await?;
    assert!(ok, "{report}");
    isolation.teardown().await
}

#[tokio::test]
async fn on_a_terminal_the_rebuild_draws_a_progress_bar() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let pool = isolation.migrated_pool().await?;
    let plan = SeedPlan {
        users: 10,
        bots_per_user: 2,
        events: 4_000,
        sealed: true,
    };
    seed_log(&pool, plan, |_| {}).await?;
    // `script` gives the command a pseudo-terminal and records what it drew.
    let worker = binary("worker")?;
    let output = Command::new("script")
        .args([
            "-qec",
            &format!("{} replay rebuild --batch 5", worker.display()),
            "/dev/null",
        ])
        .env("DATABASE_URL", isolation.database.url.expose_secret())
        .output()
        .await?;
    let drawn = text(&output.stdout);
    assert!(output.status.success(), "{drawn}");
    assert!(
        drawn.contains("rebuild [") && drawn.contains("/s, ETA"),
        "a bar with events/s and an ETA: {drawn:?}"
    );
    assert!(
        !drawn.contains("events ("),
        "no plain lines on a terminal: {drawn:?}"
    );
    isolation.teardown().await
}

/// Sessions whose tokens have all expired are pruned from the read model (the
/// log keeps them), and `verify` still finds the views matching the log.
#[tokio::test]
async fn inactive_sessions_are_pruned_and_verify_still_matches() -> anyhow::Result<()> {
    let retention = [
        ("ACCESS_TOKEN_TTL_SECS", "1"),
        ("REFRESH_TOKEN_TTL_SECS", "2"),
        ("SESSION_RETENTION_SECS", "8"),
    ];
    let stack = Stack::start(StackOptions {
        env: retention
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let pool = stack.pool()?;
    for n in 0..5 {
        client
            .signup(&format!("fleeting{n}"), "a long enough password")
            .await?;
    }
    let sessions = || async {
        Ok::<i64, anyhow::Error>(
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
                .fetch_one(&pool)
                .await?,
        )
    };
    assert_eq!(sessions().await?, 5);
    eventually(Duration::from_secs(30), "the sessions pruned", || async {
        Ok((sessions().await? == 0).then_some(()))
    })
    .await?;
    let started: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'SessionStarted'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(started, 5, "the log keeps every session");
    // A session of now is compared; the pruned ones are not.
    let (_, _, refresh) = client.login("fleeting0", "a long enough password").await?;
    assert!(!refresh.is_empty());
    let (ok, report) = verify(&stack.env()).await?;
    assert!(ok, "{report}");
    assert!(report.contains("sessions 1"), "{report}");
    stack.teardown().await
}
