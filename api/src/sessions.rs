//! Which sessions were revoked, and which users changed their password, in
//! memory, so that checking an access token costs no database round trip.
//!
//! A password change raises the user's credentials version (in the same UPDATE
//! as the hash), and every token carries the version its session started under:
//! a token of an older version is refused here, even one whose login raced the
//! change and started its session after the change had listed the sessions to
//! revoke.
//!
//! An access token outlives its session's revocation by at most its own TTL, so
//! only sessions revoked within the last access TTL need remembering: the view is
//! bounded by the revocations of one TTL window. It is fed three ways:
//! - this process's own revocations and password changes, at once;
//! - every other api's, by `SessionRevoked` notices on the bus (see `feed`); a
//!   password change's notices ask for a reload, which reads the new version;
//! - a reload from the `sessions` read model and the users' recent credentials
//!   changes at start, after every bus reconnect (notices may have been missed),
//!   and every `RELOAD_EVERY` as a backstop.
//!
//! Every revocation also ticks a watch, so that the streams and long-polls open on
//! a session hear of it at once and end (see `hangup`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use events::event::UserId;
use events::projections::SessionsProjection;

use crate::domain::users;

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
    /// Users whose credentials version rose within `remember`: the version now.
    credentials: RwLock<HashMap<UserId, (u32, Instant)>>,
    reload: Notify,
    /// Ticks at every revocation this view learns of.
    changes: watch::Sender<u64>,
}

impl RevokedSessions {
    pub fn new(access_ttl: Duration) -> Self {
        Self {
            remember: access_ttl + Duration::from_secs(10),
            revoked: RwLock::default(),
            credentials: RwLock::default(),
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

    /// Whether a token of session `sid`, issued to `user` under credentials
    /// version `credentials`, no longer works.
    pub fn is_revoked(&self, sid: &str, user: UserId, credentials: u32) -> bool {
        // A poisoned lock means a panic elsewhere: refuse rather than allow.
        let revoked = self
            .revoked
            .read()
            .map(|revoked| revoked.contains_key(sid))
            .unwrap_or(true);
        revoked
            || self
                .credentials
                .read()
                .map(|c| c.get(&user).is_some_and(|(now, _)| *now > credentials))
                .unwrap_or(true)
    }

    /// `user`'s credentials version is now `version` (it only ever rises).
    pub fn raise_credentials(&self, user: UserId, version: u32) {
        let mut raised = false;
        if let Ok(mut credentials) = self.credentials.write() {
            let entry = credentials.entry(user).or_insert((0, Instant::now()));
            if version > entry.0 {
                *entry = (version, Instant::now());
                raised = true;
            }
        }
        if raised {
            self.tick();
        }
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

    /// Replaces the view with the database's recent revocations and credentials
    /// changes.
    pub async fn load(&self, pool: &MySqlPool) -> Result<usize, sqlx::Error> {
        let recent = SessionsProjection::revoked_since(pool, self.remember).await?;
        let changed = users::credentials_changed_since(pool, self.remember).await?;
        let now = Instant::now();
        if let Ok(mut credentials) = self.credentials.write() {
            credentials.retain(|_, (_, at)| now.duration_since(*at) < self.remember);
        }
        for (user, version) in changed {
            self.raise_credentials(user, version);
        }
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
        assert!(!view.is_revoked("a", 1, 0));
        view.revoke("a");
        assert!(view.is_revoked("a", 1, 0));
        assert!(!view.is_revoked("b", 1, 0));
    }

    #[test]
    fn tokens_of_older_credentials_are_refused() {
        let view = RevokedSessions::new(Duration::from_secs(60));
        let changes = view.changes();
        view.raise_credentials(7, 2);
        assert!(changes.has_changed().unwrap());
        assert!(view.is_revoked("a", 7, 1), "issued before the change");
        assert!(!view.is_revoked("a", 7, 2), "issued after it");
        assert!(!view.is_revoked("a", 8, 0), "another user");
        // A stale, lower version learned later changes nothing.
        view.raise_credentials(7, 1);
        assert!(view.is_revoked("a", 7, 1));
    }
}
