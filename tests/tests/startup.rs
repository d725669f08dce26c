//! Starting up: several processes at once against a database that does not exist
//! yet, the offline responder when no model key is configured, and refusing to run
//! in production with the development JWT secret.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

use system_tests::stack::binary;
use system_tests::{Client, Isolation, Stack, StackOptions};

use events::config::ExposeSecret;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Two apis and two workers start at the same moment on a fresh database name:
/// each creates it if missing and migrates under a lock, and all come up.
#[tokio::test]
async fn many_processes_create_and_migrate_one_database_concurrently() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let env = [
        (
            "DATABASE_URL",
            isolation.database.url.expose_secret().to_string(),
        ),
        ("AMQP_URL", isolation.bus.url.expose_secret().to_string()),
        ("BUS_NAMESPACE", isolation.bus.namespace.clone()),
        ("JWT_SECRET", "s".to_string()),
        ("NO_COLOR", "1".to_string()),
    ];
    let ports = [free_port()?, free_port()?];
    let mut children = Vec::new();
    for port in ports {
        children.push(
            Command::new(binary("api")?)
                .envs(env.clone())
                .env("BIND_ADDR", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    for _ in 0..2 {
        children.push(
            Command::new(binary("worker")?)
                .envs(env.clone())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    for port in ports {
        let client = Client::new(format!("http://127.0.0.1:{port}"));
        client
            .wait_for_ok("/readyz", None, Duration::from_secs(60))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for child in &mut children {
        assert!(
            child.try_wait()?.is_none(),
            "every process is still running"
        );
    }
    let pool = isolation.pool()?;
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&pool)
            .await?;
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))?
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    assert_eq!(applied, migrations, "each migration applied once");
    drop(children);
    isolation.teardown().await
}

#[tokio::test]
async fn without_a_model_key_the_worker_answers_as_a_labelled_offline_responder(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("OPENAI_API_KEY".into(), String::new())],
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("offline").await?;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "anyone home?" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200);
    let text = reply.body["data"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("[offline responder") && text.ends_with("anyone home?"),
        "{text}"
    );
    assert_eq!(stack.model.calls(), 0);
    assert!(stack.workers[0]
        .log_text()
        .contains("OPENAI_API_KEY is not set"));
    stack.teardown().await
}

#[tokio::test]
async fn production_refuses_the_development_jwt_secret() -> anyhow::Result<()> {
    let output = Command::new(binary("api")?)
        .env("APP_ENV", "production")
        .env_remove("JWT_SECRET")
        .env("DATABASE_URL", "mysql://root@127.0.0.1:1/never_used")
        .env("NO_COLOR", "1")
        .output()
        .await?;
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("JWT_SECRET") && log.contains("production"),
        "{log}"
    );
    Ok(())
}

/// Issue 18, item 22: `GET_LOCK` names are server-wide, and MySQL 8 refuses one
/// over 64 characters. A database name may itself be 64 characters long; the
/// binaries still start on one (migration lock), take the accounts lock (a
/// registration), and every lock name stays within MySQL's limit.
#[tokio::test]
async fn lock_names_fit_mysql_on_a_database_with_a_64_character_name() -> anyhow::Result<()> {
    let mut isolation = Isolation::new();
    let long = format!("{}_{}", isolation.bus.namespace, "l".repeat(64));
    let long = &long[..64];
    isolation.database.url = format!("{}/{long}", system_tests::database_server()).into();
    let pool = isolation.migrated_pool().await?;
    for purpose in ["migrate", "accounts", "rebuild"] {
        let length: i64 = sqlx::query_scalar(&format!(
            "SELECT CHAR_LENGTH({})",
            events::db::lock_name_sql(purpose)
        ))
        .fetch_one(&pool)
        .await?;
        assert!(
            length <= 64,
            "{purpose}: a lock name of {length} characters"
        );
        // What the names were before: the database name itself.
        let old: i64 = sqlx::query_scalar(&format!(
            "SELECT CHAR_LENGTH(CONCAT('{purpose}:', DATABASE()))"
        ))
        .fetch_one(&pool)
        .await?;
        assert!(old > 64, "the old name would have been {old} characters");
    }
    pool.close().await;
    let port = free_port()?;
    let mut api = Command::new(binary("api")?)
        .env("DATABASE_URL", isolation.database.url.expose_secret())
        .env("AMQP_URL", isolation.bus.url.expose_secret())
        .env("BUS_NAMESPACE", &isolation.bus.namespace)
        .env("JWT_SECRET", "s")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client = Client::new(format!("http://127.0.0.1:{port}"));
    client
        .wait_for_ok("/readyz", None, Duration::from_secs(30))
        .await?;
    client.signup("long_db_user", "pass word").await?;
    let _ = api.kill().await;
    isolation.teardown().await
}
