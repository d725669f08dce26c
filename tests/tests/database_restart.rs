//! A real MariaDB restart (`mariadb-admin shutdown`, then the server started again
//! as `scripts/services.sh` does) under a running api and worker. Cargo runs test
//! binaries one after another, and this binary holds this one test, so the restart
//! disturbs no other test.

use std::time::Duration;

use serde_json::json;

use system_tests::{eventually, wait_until_answered, Stack, StackOptions};

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| anyhow::anyhow!("{program} is needed for this test: {e}"))?;
    anyhow::ensure!(status.success(), "{program} {args:?} failed");
    Ok(())
}

fn database_is_up() -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], 3306).into(), Duration::from_millis(200))
        .is_ok()
}

fn server_process_running() -> bool {
    std::process::Command::new("pgrep")
        .args(["-x", "mariadbd"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn requests_get_503_while_the_database_restarts_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![("DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_latency(Duration::from_millis(2000));
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("restart").await?;
    let id = client.post_later(&token, bot, "keep me").await?;
    stack
        .model
        .wait_for_calls(1, Duration::from_secs(20))
        .await?;

    run(
        "mariadb-admin",
        &["-uroot", "--protocol=tcp", "-h127.0.0.1", "shutdown"],
    )?;
    let down = eventually(Duration::from_secs(30), "the database to stop", || async {
        Ok((!database_is_up()).then_some(()))
    })
    .await;
    // A connection the api already holds may still be served for a moment while
    // the server shuts down; then every request gets 503.
    let during = eventually(Duration::from_secs(20), "a 503 from the api", || async {
        let answer = client.get("/chat/list", Some(&token)).await?;
        Ok((answer.status != 200).then_some(answer))
    })
    .await;
    // `--oknodo` would skip the start while the old server is still exiting.
    let exited = eventually(
        Duration::from_secs(60),
        "the old server process to exit",
        || async { Ok((!server_process_running()).then_some(())) },
    )
    .await;
    let restarted = run(
        "start-stop-daemon",
        &[
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ],
    );
    down?;
    exited?;
    restarted?;
    let during = during?;
    assert_eq!(
        (during.status, during.body["code"].as_i64()),
        (503, Some(503)),
        "{during:?}"
    );

    eventually(
        Duration::from_secs(60),
        "the database to accept connections",
        || async { Ok(database_is_up().then_some(())) },
    )
    .await?;
    let recovered = client
        .wait_for_ok("/chat/list", Some(&token), Duration::from_secs(60))
        .await?;
    assert_eq!(recovered.status, 200);
    let pool = stack.pool()?;
    // The message accepted before the restart is answered after it.
    wait_until_answered(&pool, std::slice::from_ref(&id), Duration::from_secs(60)).await?;
    assert_eq!(
        stack.model.calls(),
        1,
        "the reply produced during the outage was kept"
    );
    stack.model.set_latency(Duration::ZERO);
    let after = client
        .post_json(
            "/chat/new_chat",
            &json!({ "chatbot_id": bot, "input": "and now?" }),
            Some(&token),
        )
        .await?;
    assert_eq!(after.status, 200, "{after:?}");
    assert!(
        stack.apis[0].is_running() && stack.workers[0].is_running(),
        "nothing was restarted"
    );
    stack.teardown().await
}
