//! Which sessions were revoked, in memory, so that checking an access token costs
//! no database round trip.
//!
//! An access token outlives its session's revocation by at most its own TTL, so
//! only sessions revoked within the last access TTL need remembering: the view is
//! bounded by the revocations of one TTL window. It is fed three ways:
//! - this process's own revocations, at once;
//! - every other api's, by `SessionRevoked` notices on the bus (see `feed`);
//! - a reload from the `sessions` read model at start, after every bus reconnect
//!   (notices may have been missed), and every `RELOAD_EVERY` as a backstop.
//!
//! Every revocation also ticks a watch, so that the streams and long-polls open on
//! a session hear of it at once and end (see `hangup`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use events::projections::SessionsProjection;

/// How often the view is reloaded even without a reconnect.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// How often, at most, inactive sessions are pruned, and how many per statement.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: u32 = 5_000;

pub struct RevokedSessions {
    /// How long a revocation matters: the access tokens' TTL, plus the leeway
    /// their validation allows.
    remember: Duration,
    revoked: RwLock<HashMap<String, Instant>>,
    reload: Notify,
    /// Ticks at every revocation this view learns of.
    changes: watch::Sender<u64>,
}

impl RevokedSessions {
    pub fn new(access_ttl: Duration) -> Self {
        Self {
            remember: access_ttl + Duration::from_secs(10),
            revoked: RwLock::default(),
            reload: Notify::new(),
            changes: watch::channel(0).0,
        }
    }

    /// Ticks whenever a session is revoked: check yours again then.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn tick(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked
            .read()
            .map(|revoked| revoked.contains_key(sid))
            // A poisoned lock means a panic elsewhere: refuse rather than allow.
            .unwrap_or(true)
    }

    pub fn revoke(&self, sid: &str) {
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.insert(sid.to_string(), Instant::now());
        }
        self.tick();
    }

    /// Asks the background task to reload from the database (after a reconnect).
    pub fn request_reload(&self) {
        self.reload.notify_one();
    }

    /// Replaces the view with the database's recent revocations.
    pub async fn load(&self, pool: &MySqlPool) -> Result<usize, sqlx::Error> {
        let recent = SessionsProjection::revoked_since(pool, self.remember).await?;
        let now = Instant::now();
        let mut learned = false;
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.retain(|_, at| now.duration_since(*at) < self.remember);
            for sid in &recent {
                if !revoked.contains_key(sid) {
                    revoked.insert(sid.clone(), now);
                    learned = true;
                }
            }
        }
        if learned {
            self.tick();
        }
        Ok(recent.len())
    }

    /// Prunes sessions unused for longer than `retention` (all their tokens have
    /// expired), a batch at a time, until `shutdown`.
    pub async fn prune_inactive_until(
        pool: MySqlPool,
        retention: Duration,
        shutdown: CancellationToken,
    ) {
        // Often enough that a short retention (in tests) is honoured closely.
        let every = (retention / 2).clamp(Duration::from_secs(1), PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            loop {
                match SessionsProjection::prune_inactive(&pool, retention, PRUNE_BATCH).await {
                    Ok(n) if n == u64::from(PRUNE_BATCH) => continue,
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "pruned inactive sessions"),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not prune sessions; trying again later")
                    }
                }
                break;
            }
        }
    }

    /// Reloads on request and every `RELOAD_EVERY`, until `shutdown`.
    pub async fn run(&self, pool: MySqlPool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = self.reload.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.load(&pool).await {
                tracing::debug!(error = %e, "could not reload revoked sessions; keeping the current view");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_sessions_are_refused_and_others_are_not() {
        let view = RevokedSessions::new(Duration::from_secs(60));
        assert!(!view.is_revoked("a"));
        view.revoke("a");
        assert!(view.is_revoked("a"));
        assert!(!view.is_revoked("b"));
    }
}
