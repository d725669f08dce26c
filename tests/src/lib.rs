//! Test support: fresh databases and broker namespaces, a fake OpenAI-compatible
//! model server, and the real `api` and `worker` binaries started as child processes.
//!
//! Every test gets its own database and its own exchange/queue names, so tests run
//! in parallel and can be rerun; `teardown` removes both.

pub mod browser;
pub mod client;
pub mod fake_openai;
pub mod proxy;
pub mod seed;
pub mod sse;
pub mod stack;

use std::str::FromStr;

use events::config::ExposeSecret;
use events::config::{BusSettings, DatabaseSettings};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};

pub use client::{Client, Reply};
pub use fake_openai::FakeOpenAi;
pub use proxy::TcpProxy;
pub use stack::{binary, free_port, Stack, StackOptions};

/// The server the tests use; `TEST_DATABASE_SERVER` overrides it.
pub fn database_server() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A database of its own and a broker namespace of its own. Dropped without an
/// explicit [`Isolation::teardown`] (a test that failed), it still removes both.
#[derive(Debug)]
pub struct Isolation {
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    torn_down: std::sync::atomic::AtomicBool,
}

impl Isolation {
    pub fn new() -> Self {
        let name = unique_name("t");
        Self {
            database: DatabaseSettings {
                url: format!("{}/{name}", database_server()).into(),
                max_connections: 8,
                acquire_timeout: std::time::Duration::from_secs(5),
                commit_timeout: std::time::Duration::from_secs(10),
                outbox_retention: std::time::Duration::from_secs(24 * 3600),
                session_idle_timeout: Some(std::time::Duration::from_secs(20)),
                session_retention: std::time::Duration::from_secs(30 * 24 * 3600),
            },
            bus: BusSettings {
                url: amqp_url().into(),
                namespace: name,
                heartbeat_secs: 5,
                delivery_limit: 5,
                ca_file: None,
            },
            torn_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Creates and migrates the database, as the binaries do at start.
    pub async fn migrated_pool(&self) -> anyhow::Result<MySqlPool> {
        Ok(events::db::connect_and_migrate(&self.database).await?)
    }

    /// A pool on an already created database.
    pub fn pool(&self) -> anyhow::Result<MySqlPool> {
        Ok(events::db::pool(
            &self.database,
            MySqlConnectOptions::from_str(self.database.url.expose_secret())?,
        ))
    }

    /// Drops the database and the broker topology.
    pub async fn teardown(&self) -> anyhow::Result<()> {
        self.torn_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        remove(&self.database, &self.bus).await
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        if self.torn_down.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Drop runs outside any async context we could borrow: clean up on a
        // thread with a runtime of its own.
        let (database, bus) = (self.database.clone(), self.bus.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime.block_on(remove(&database, &bus));
            }
        })
        .join();
    }
}

async fn remove(database: &DatabaseSettings, bus: &BusSettings) -> anyhow::Result<()> {
    let options = MySqlConnectOptions::from_str(database.url.expose_secret())?;
    if let Some(name) = options.get_database() {
        let server = MySqlPool::connect(&format!("{}/", database_server())).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&server)
            .await?;
        server.close().await;
    }
    let connection = events::bus::connect(bus, "teardown").await?;
    let channel = connection.create_channel().await?;
    let topology = events::bus::Topology::new(bus);
    topology.delete(&channel).await?;
    // The idle queues of the idle times tests use (one per delay).
    for secs in [1, 2, 3, 5, 8] {
        use lapin::options::QueueDeleteOptions;
        let queue = topology.memory_idle_queue(std::time::Duration::from_secs(secs));
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "teardown").await;
    Ok(())
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

/// A projector that projects nothing: the store is generic, and its own tests
/// store plain events with no read models.
pub struct NoProjection;

impl events::store::InlineProjector for NoProjection {
    fn apply<'a>(
        &'a self,
        _conn: &'a mut sqlx::mysql::MySqlConnection,
        _events: &'a [events::store::RecordedEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// A process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// How many events the log holds (to prove that bad input wrote nothing).
pub async fn event_count(pool: &MySqlPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(pool)
        .await?)
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(
    timeout: std::time::Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The key-encryption key every process of a test stack gets (see `Stack::env`,
/// which passes it in base64).
pub const TEST_KEK: &[u8; 32] = b"system-test-key-encryption-key!!";
/// [`TEST_KEK`] as the processes read it.
pub const TEST_KEK_BASE64: &str = "c3lzdGVtLXRlc3Qta2V5LWVuY3J5cHRpb24ta2V5ISE=";

/// A keyring that opens what a test stack sealed.
pub fn test_keyring(pool: &MySqlPool) -> events::sealing::Keyring {
    events::sealing::Keyring::new(pool.clone(), events::sealing::Kek::from_bytes(TEST_KEK))
}

/// The rows of a conversation straight from the read model (works while the api
/// is down), their texts opened.
pub async fn history_rows(
    pool: &MySqlPool,
    user_id: i64,
    bot_id: i64,
) -> anyhow::Result<Vec<events::projections::HistoryRow>> {
    let mut rows = events::projections::ChatHistoryProjection::read(
        pool,
        user_id,
        bot_id,
        0,
        10_000,
        usize::MAX,
    )
    .await?
    .rows;
    test_keyring(pool).open_rows(&mut rows).await?;
    Ok(rows)
}

/// The payloads of every event of a type, oldest first, straight from the log,
/// their texts opened.
pub async fn event_payloads(
    pool: &MySqlPool,
    event_type: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let keyring = test_keyring(pool);
    let mut events = sqlx::query(&format!(
        "{} WHERE event_type = ? ORDER BY global_position",
        events::store::SELECT_EVENTS
    ))
    .bind(event_type)
    .try_map(|row: sqlx::mysql::MySqlRow| events::store::recorded_from_row(&row))
    .fetch_all(pool)
    .await?;
    for event in &mut events {
        keyring.open_event(event).await?;
    }
    Ok(events.into_iter().map(|e| e.payload).collect())
}

/// The ids of the user's messages in a conversation, oldest first.
pub async fn user_message_ids(
    pool: &MySqlPool,
    user_id: i64,
    bot_id: i64,
) -> anyhow::Result<Vec<String>> {
    Ok(history_rows(pool, user_id, bot_id)
        .await?
        .into_iter()
        .filter(|r| r.by_user == 1)
        .map(|r| r.message_id)
        .collect())
}

/// How many reply events (generated or failed) answer `message_id`.
pub async fn outcomes_for(pool: &MySqlPool, message_id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE event_type IN ('BotReplyGenerated', 'BotReplyFailed') \
         AND JSON_UNQUOTE(JSON_EXTRACT(payload, '$.reply_to')) = ?",
    )
    .bind(message_id)
    .fetch_one(pool)
    .await?)
}

/// Every message has exactly one outcome, and the outcomes come in message order.
pub async fn answered_in_order(pool: &MySqlPool, user: i64, bot: i64) -> anyhow::Result<usize> {
    let rows = history_rows(pool, user, bot).await?;
    let messages: Vec<&events::projections::HistoryRow> =
        rows.iter().filter(|r| r.by_user == 1).collect();
    let mut last_reply_seq = 0;
    for message in &messages {
        let replies: Vec<_> = rows
            .iter()
            .filter(|r| r.reply_to.as_deref() == Some(message.message_id.as_str()))
            .collect();
        anyhow::ensure!(
            replies.len() == 1,
            "message {} has {} outcomes",
            message.seq,
            replies.len()
        );
        anyhow::ensure!(
            replies[0].seq > last_reply_seq,
            "the reply to message seq {} (at {}) came before an earlier message's reply (at {})",
            message.seq,
            replies[0].seq,
            last_reply_seq
        );
        last_reply_seq = replies[0].seq;
    }
    Ok(messages.len())
}

/// Waits until every message in `ids` has an outcome, then checks it has exactly
/// one. Read errors while waiting (a database coming back) count as "not yet".
pub async fn wait_until_answered(
    pool: &MySqlPool,
    ids: &[String],
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    eventually(timeout, "every message to be answered", || async {
        for id in ids {
            if outcomes_for(pool, id).await.unwrap_or(0) == 0 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    for id in ids {
        let outcomes = outcomes_for(pool, id).await?;
        anyhow::ensure!(
            outcomes == 1,
            "message {id} has {outcomes} replies, not exactly one"
        );
    }
    Ok(())
}

/// 20 messages from 10 other users, spread over 10 s, each waiting for its reply:
/// how long each waited, fastest first.
pub async fn bystanders(
    client: &Client,
    others: &[(i64, String, i64)],
) -> anyhow::Result<Vec<std::time::Duration>> {
    let mut waits: Vec<_> = bystander_waits(client, others, None)
        .await?
        .into_iter()
        .map(|(took, _)| took)
        .collect();
    waits.sort();
    Ok(waits)
}

/// As [`bystanders`], with, for each message, how many other model calls began
/// while it waited: how much of someone else's work overtook it. Unlike the time
/// it waited, that does not grow when the machine is slow.
pub async fn bystander_waits(
    client: &Client,
    others: &[(i64, String, i64)],
    model: Option<&fake_openai::FakeOpenAi>,
) -> anyhow::Result<Vec<(std::time::Duration, u64)>> {
    let calls = || model.map_or(0, |m| m.calls());
    let mut waits = Vec::new();
    for round in 0..2 {
        for (i, (_, token, bot)) in others.iter().enumerate() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let (sent, calls_before) = (std::time::Instant::now(), calls());
            let reply = client
                .post_json(
                    "/chat/new_chat",
                    &serde_json::json!({ "chatbot_id": bot, "input": format!("hello {round} {i}") }),
                    Some(token),
                )
                .await?;
            anyhow::ensure!(reply.status == 200, "{reply:?}");
            // Its own call is not one that overtook it.
            let overtaking = (calls() - calls_before).saturating_sub(u64::from(model.is_some()));
            waits.push((sent.elapsed(), overtaking));
        }
    }
    Ok(waits)
}
