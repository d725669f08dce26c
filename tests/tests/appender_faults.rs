//! The appender under the faults the review found (items 2 and 10): one bad append
//! in a group commit must fail alone, idempotency keys are compared exactly, and a
//! database connection that hangs inside a commit must not block every append.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use events::config::DatabaseSettings;
use events::config::ExposeSecret;
use events::event::EventMetadata;
use events::store::{AppendError, EventStore, ExpectedVersion, NewEvent};
use system_tests::{Isolation, NoProjection, TcpProxy};

fn event(key: Option<&str>) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: json!({}),
        metadata: EventMetadata::default(),
        idempotency_key: key.map(str::to_string),
    }
}

#[tokio::test]
async fn one_bad_append_fails_alone_and_keys_are_compared_exactly() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let store = EventStore::new(isolation.migrated_pool().await?, Arc::new(NoProjection));
    let first = store
        .append_to_stream("keys", ExpectedVersion::Any, &[event(Some("abc-key"))])
        .await?;

    // Many appends at once, so that they share group commits with two bad ones: an
    // event id that exists already (the database refuses the whole insert), and a
    // key that differs from a recorded one only in case (a different key).
    let mut reused_id = event(None);
    reused_id.event_id = first[0].event_id;
    let mut jobs = Vec::new();
    for i in 0..30 {
        let store = store.clone();
        jobs.push(tokio::spawn(async move {
            store
                .append_to_stream(
                    &format!("user-{i}"),
                    ExpectedVersion::Any,
                    &[event(Some(&format!("key-{i}")))],
                )
                .await
        }));
    }
    let bad = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append_to_stream("bad", ExpectedVersion::Any, &[reused_id])
                .await
        })
    };
    let other_case = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append_to_stream("keys", ExpectedVersion::Any, &[event(Some("ABC-KEY"))])
                .await
        })
    };
    for job in jobs {
        job.await??;
    }
    assert!(other_case.await?.is_ok(), "ABC-KEY is not abc-key");
    assert!(bad.await?.is_err(), "the bad append fails");
    let again = store
        .append_to_stream("keys", ExpectedVersion::Any, &[event(Some("abc-key"))])
        .await;
    assert!(matches!(again, Err(AppendError::Duplicate(_))), "{again:?}");
    isolation.teardown().await
}

/// A pool of one connection to the test's database through `proxy`, with
/// `settings` otherwise.
fn one_connection_through(
    proxy: &TcpProxy,
    isolation: &Isolation,
    settings: DatabaseSettings,
) -> anyhow::Result<sqlx::MySqlPool> {
    let settings = DatabaseSettings {
        url: isolation
            .database
            .url
            .expose_secret()
            .replace(":3306/", &format!(":{}/", proxy.port))
            .into(),
        max_connections: 1,
        ..settings
    };
    Ok(events::db::pool(
        &settings,
        settings.url.expose_secret().parse()?,
    ))
}

#[tokio::test]
async fn a_commit_on_a_hung_connection_times_out_and_the_next_append_works() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    isolation.migrated_pool().await?.close().await;
    let proxy = TcpProxy::start("127.0.0.1:3306").await?;
    let pool = one_connection_through(&proxy, &isolation, isolation.database.clone())?;
    let store =
        EventStore::with_commit_timeout(pool, Arc::new(NoProjection), Duration::from_secs(1));
    let first = store
        .append_to_stream("s", ExpectedVersion::Any, &[event(None)])
        .await;
    first?;
    // Let the connection go back to the pool first (sqlx pings it on release).
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.freeze(); // the pooled connection now hangs without erroring
    let started = Instant::now();
    let hung = store
        .append_to_stream("s", ExpectedVersion::Any, &[event(None)])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    match &hung {
        Err(AppendError::Database(e)) => assert!(events::db::is_unavailable(e), "{e}"),
        other => anyhow::bail!("expected an unavailable error, got {other:?}"),
    }
    // The hung connection was dropped; a fresh one (the proxy lets new ones
    // through) serves the next append.
    let next = store
        .append_to_stream("s", ExpectedVersion::Any, &[event(None)])
        .await;
    let next = next?;
    assert_eq!(next[0].stream_version, 2, "the hung append did not commit");
    drop(proxy);
    isolation.teardown().await
}

/// A projector that panics on one event type.
struct PanicsOnBoom;

impl events::store::InlineProjector for PanicsOnBoom {
    fn apply<'a>(
        &'a self,
        _conn: &'a mut sqlx::mysql::MySqlConnection,
        events: &'a [events::store::RecordedEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        let boom = events.iter().any(|e| e.event_type == "Boom");
        Box::pin(async move {
            assert!(!boom, "a projector bug");
            Ok(())
        })
    }
}

/// A panic inside an append (a projector's bug) fails that append, and the
/// process's appender goes on: it is the only way in to the log (issue 18,
/// item 23).
#[tokio::test]
async fn a_panicking_append_fails_alone_and_the_appender_lives_on() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    let store = EventStore::new(isolation.migrated_pool().await?, Arc::new(PanicsOnBoom));
    let mut boom = event(None);
    boom.event_type = "Boom".into();
    let failed = store
        .append_to_stream("panics", ExpectedVersion::Any, &[boom])
        .await;
    assert!(failed.is_err(), "{failed:?}");
    for _ in 0..3 {
        store
            .append_to_stream("panics", ExpectedVersion::Any, &[event(None)])
            .await?;
    }
    let recorded = events::store::read_all(store.pool(), 0, 10).await?;
    assert_eq!(recorded.len(), 3, "the panicked append left nothing behind");
    isolation.teardown().await
}

/// A process that freezes (SIGSTOP, a VM pause, a partition) while it holds the
/// log's head lock, without closing its connection, holds up every other
/// process's appends only until the server's idle timeout closes that
/// connection (issue 18, item 14). The freeze is a proxy that swallows both
/// directions and sends no FIN.
#[tokio::test]
async fn a_frozen_lock_holder_stops_other_appends_for_seconds_not_hours() -> anyhow::Result<()> {
    let isolation = Isolation::new();
    isolation.migrated_pool().await?.close().await;
    let proxy = TcpProxy::start("127.0.0.1:3306").await?;
    // The frozen process's connection, with the settings every process uses.
    let defaults = DatabaseSettings::from_env()?;
    let timeout = defaults
        .session_idle_timeout
        .ok_or_else(|| anyhow::anyhow!("the default bounds an idle session"))?;
    let frozen_pool = one_connection_through(&proxy, &isolation, defaults)?;
    let mut frozen = frozen_pool.acquire().await?;
    sqlx::query("BEGIN").execute(&mut *frozen).await?;
    sqlx::query("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *frozen)
        .await?;
    proxy.freeze();

    // Another process appends meanwhile, as a client would retry it.
    let store = EventStore::new(isolation.pool()?, Arc::new(NoProjection));
    let started = Instant::now();
    let mut failed_tries = 0;
    loop {
        match store
            .append_to_stream("after-freeze", ExpectedVersion::Any, &[event(None)])
            .await
        {
            Ok(_) => break,
            Err(e) => {
                failed_tries += 1;
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "appends still blocked after {:?}: {e}",
                    started.elapsed()
                );
            }
        }
    }
    let blocked = started.elapsed();
    println!(
        "appends resumed {blocked:?} after the lock holder froze ({failed_tries} failed tries; idle timeout {timeout:?})"
    );
    assert!(blocked < Duration::from_secs(30), "{blocked:?}");
    assert!(
        blocked >= timeout.saturating_sub(Duration::from_secs(2)),
        "the lock was really held: {blocked:?}"
    );
    drop(frozen);
    drop(proxy);
    isolation.teardown().await
}
