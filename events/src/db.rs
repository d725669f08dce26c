//! Connecting to MySQL/MariaDB: create the database when it is missing, then apply the
//! migrations.
//!
//! Both steps are safe when many processes start at once: `CREATE DATABASE IF NOT
//! EXISTS` is atomic, and migrations run while holding a named lock (`GET_LOCK` with
//! a positive timeout), so a second process waits and then finds nothing left to do.
//! (sqlx's own migration lock asks for an infinite wait with `-1`, which MariaDB
//! does not honour, so it is switched off in favour of ours.)

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::config::{DatabaseSettings, ExposeSecret};

/// Connections idle for longer than this are pinged before use.
const IDLE_BEFORE_PING: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a starting process waits for another one's migrations.
const MIGRATION_LOCK_TIMEOUT_SECS: u32 = 120;

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("DATABASE_URL is not a valid MySQL URL: {0}")]
    Url(sqlx::Error),
    #[error("DATABASE_URL must name a database, e.g. mysql://root@127.0.0.1:3306/chatbot")]
    NoDatabaseName,
    #[error("database name {0:?} may only contain letters, digits and underscores")]
    BadDatabaseName(String),
    #[error("cannot reach the database server: {0}")]
    Connect(sqlx::Error),
    /// Reached, and refused: waiting will not help.
    #[error("the database connection was refused: {0}. Check DATABASE_URL: its user and password, its ssl-mode (the server may require TLS: ssl-mode=REQUIRED or stricter), and with VERIFY_CA or VERIFY_IDENTITY its ssl-ca (the CA that signed the server's certificate) and host (a name the certificate holds)")]
    Refused(sqlx::Error),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("another process held the migration lock for over {MIGRATION_LOCK_TIMEOUT_SECS}s")]
    MigrationLockTimeout,
}

/// [`connect_and_migrate`], waiting with backoff (and a WARN per attempt) while the
/// database server cannot be reached, so that a process started before its
/// database (or during a restart) comes up when the database does, rather than
/// exiting for a supervisor to restart. Other errors (a malformed URL, a failed
/// migration) are returned at once.
pub async fn connect_and_migrate_patiently(
    settings: &DatabaseSettings,
) -> Result<MySqlPool, DbSetupError> {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(5),
    );
    let mut attempt = 1u32;
    loop {
        match connect_and_migrate(settings).await {
            Err(DbSetupError::Connect(e)) if is_refusal(&e) => {
                return Err(DbSetupError::Refused(e))
            }
            Err(DbSetupError::Connect(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "the database is not reachable yet; waiting for it");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => {
                if attempt > 1 && other.is_ok() {
                    tracing::info!(attempts = attempt, "connected to the database");
                }
                return other;
            }
        }
    }
}

/// Creates the database if needed, migrates it, and returns a pool.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> Result<MySqlPool, DbSetupError> {
    let options =
        MySqlConnectOptions::from_str(settings.url.expose_secret()).map_err(DbSetupError::Url)?;
    connect_and_migrate_with(settings, options).await
}

/// [`connect_and_migrate`] for `worker replay`, whose statements stream whole tables
/// and are long by design: a "slow statement" warning there would be noise.
pub async fn connect_and_migrate_for_replay(
    settings: &DatabaseSettings,
) -> Result<MySqlPool, DbSetupError> {
    let options = MySqlConnectOptions::from_str(settings.url.expose_secret())
        .map_err(DbSetupError::Url)?
        .log_slow_statements(tracing::log::LevelFilter::Off, std::time::Duration::MAX);
    // Its lock connection idles for the whole run: the server must not close it.
    let settings = DatabaseSettings {
        session_idle_timeout: None,
        ..settings.clone()
    };
    connect_and_migrate_with(&settings, options).await
}

async fn connect_and_migrate_with(
    settings: &DatabaseSettings,
    options: MySqlConnectOptions,
) -> Result<MySqlPool, DbSetupError> {
    create_database_if_missing(settings.url.expose_secret(), &options).await?;
    let pool = pool(settings, options);
    migrate(&pool).await?;
    Ok(pool)
}

/// Whether a migration failed because the server went away mid-way.
fn migrate_error(error: sqlx::migrate::MigrateError) -> DbSetupError {
    match error {
        sqlx::migrate::MigrateError::Execute(e) if is_unavailable(&e) => DbSetupError::Connect(e),
        other => DbSetupError::Migrate(other),
    }
}

/// A pool against an existing database, without migrating (for tools and tests).
pub fn pool(settings: &DatabaseSettings, options: MySqlConnectOptions) -> MySqlPool {
    // Every timestamp is UTC, the database's own `NOW(6)` included. A lock wait
    // gives up after a few seconds (and is retried) rather than the server's 50.
    let mut session = "SET time_zone = '+00:00', innodb_lock_wait_timeout = 5".to_string();
    let mut pool = MySqlPoolOptions::new();
    if let Some(idle) = settings.session_idle_timeout {
        let secs = idle.as_secs().max(2);
        session.push_str(&format!(", wait_timeout = {secs}"));
        // The pool retires its idle connections before the server closes them.
        pool = pool.idle_timeout(std::time::Duration::from_secs(secs - 1));
    }
    let session: std::sync::Arc<str> = session.into();
    pool.max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // Ping only connections that sat idle (they may have died with a database
        // restart); a busy pool would otherwise pay a round trip per query. A busy
        // connection that dies fails its query and is discarded.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < IDLE_BEFORE_PING {
                    return Ok(true);
                }
                Ok(conn.ping().await.is_ok())
            })
        })
        .after_connect(move |conn, _| {
            let session = session.clone();
            Box::pin(async move { sqlx::query(&session).execute(conn).await.map(|_| ()) })
        })
        .connect_lazy_with(options.log_statements(tracing::log::LevelFilter::Trace))
}

/// `true` for errors that mean "the database is unreachable right now" rather than
/// "this statement is wrong": worth waiting out, and a 503 for clients.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    )
}

/// A connection the server (or its certificate) refused, as opposed to one that
/// could not be made: a wrong password, TLS the server requires or a certificate
/// we do not trust.
pub fn is_refusal(error: &sqlx::Error) -> bool {
    match error {
        // rustls's verdict on the certificate reaches sqlx as either.
        sqlx::Error::Tls(_) | sqlx::Error::Io(_) => error.to_string().contains("certificate"),
        sqlx::Error::Database(_) => !is_lock_contention(error),
        _ => false,
    }
}

/// `true` for a deadlock (1213) or a lock wait that timed out (1205): the statement
/// lost a race for a lock, and running it again is the cure. Clients get a 503 with
/// "try again", never a 500.
pub fn is_lock_contention(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|db| matches!(db.number(), 1205 | 1213))
}

/// The SQL expression for this database's named lock for `purpose`. `GET_LOCK`
/// names are server-wide, and MySQL 8 refuses one over 64 characters, which a
/// database name alone may reach: the name carries the database's SHA1 (40 hex
/// characters), not the database name itself.
pub fn lock_name_sql(purpose: &str) -> String {
    format!("CONCAT('{purpose}:', SHA1(DATABASE()))")
}

/// Applies pending migrations under a server-wide named lock.
pub async fn migrate(pool: &MySqlPool) -> Result<(), DbSetupError> {
    let mut conn = pool.acquire().await.map_err(DbSetupError::Connect)?;
    let lock_name: String = sqlx::query_scalar(&format!("SELECT {}", lock_name_sql("migrate")))
        .fetch_one(&mut *conn)
        .await
        .map_err(DbSetupError::Connect)?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(&lock_name)
        .bind(MIGRATION_LOCK_TIMEOUT_SECS)
        .fetch_one(&mut *conn)
        .await
        .map_err(DbSetupError::Connect)?;
    if locked != Some(1) {
        return Err(DbSetupError::MigrationLockTimeout);
    }
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_locking(false);
    let result = migrator.run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&lock_name)
        .execute(&mut *conn)
        .await;
    result.map_err(migrate_error)
}

async fn create_database_if_missing(
    url: &str,
    options: &MySqlConnectOptions,
) -> Result<(), DbSetupError> {
    let name = options
        .get_database()
        .ok_or(DbSetupError::NoDatabaseName)?
        .to_string();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbSetupError::BadDatabaseName(name));
    }
    let mut server = MySqlConnectOptions::from_str(&server_url(url))
        .map_err(DbSetupError::Url)?
        .connect()
        .await
        .map_err(DbSetupError::Connect)?;
    // The name was checked above, so it is safe to splice into the statement.
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .execute(&mut server)
    .await
    .map_err(DbSetupError::Connect)?;
    let _ = server.close().await;
    Ok(())
}

/// The same URL with the database path removed, to connect to the server itself.
fn server_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/?{query}"),
        None => format!("{base}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::server_url;

    #[test]
    fn server_url_drops_only_the_database() {
        assert_eq!(
            server_url("mysql://root@127.0.0.1:3306/chatbot"),
            "mysql://root@127.0.0.1:3306/"
        );
        assert_eq!(
            server_url("mysql://u:p@db/chatbot?ssl-mode=disabled"),
            "mysql://u:p@db/?ssl-mode=disabled"
        );
        assert_eq!(server_url("mysql://db"), "mysql://db/");
    }
}
