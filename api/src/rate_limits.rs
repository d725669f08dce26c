//! Rate limits, counted by `governor`'s keyed limiters, held per api process:
//! - `NEW_CHAT_PER_MINUTE`, per user, on `new_chat`;
//! - `LOGIN_FAILURES_PER_MINUTE`, per client address and per username, on
//!   `login/`, against password guessing. Only failures count: a failure past
//!   the allowance blocks the address or username until `governor` would allow
//!   one more, and a blocked login is refused before its password is checked;
//! - `REGISTER_PER_MINUTE`, per client address, on `users/register/`.
//!
//! A refused request gets 429 with `Retry-After` and changes nothing. `0` turns
//! a limit off. Keys idle for a minute are dropped by
//! [`RateLimits::forget_idle_until`], so memory follows recent activity.
//!
//! With N api replicas behind a balancer, a client that spreads its requests can
//! get up to N times a limit: these limits stop floods and guessing at a
//! replica's door, cheaply, not exact quotas (the admission caps, counted in the
//! database, bound what a user can queue whatever the replica).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use events::event::UserId;

use crate::error::ApiError;

/// Per-minute limits as configured (`0` = off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub new_chat_per_minute: u32,
    pub login_failures_per_minute: u32,
    pub register_per_minute: u32,
}

pub struct RateLimits {
    new_chat: Option<DefaultKeyedRateLimiter<UserId>>,
    login_by_address: Option<FailureLimit<IpAddr>>,
    login_by_username: Option<FailureLimit<String>>,
    register: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn per_minute<K: Hash + Eq + Clone>(n: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

fn refused(wait: Duration, message: String) -> ApiError {
    ApiError::TooManyRequests {
        message,
        retry_after_secs: wait.as_secs().max(1),
    }
}

/// Spends one of `key`'s allowance, or says how long until there is one.
fn spend<K: Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
    message: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        refused(
            not_until.wait_time_from(DefaultClock::default().now()),
            message(),
        )
    })
}

/// Failures counted by `governor`; a failure it refuses blocks the key until it
/// would allow one again. (`governor` cannot look at an allowance without
/// spending it, so the block is what a login checks first.)
struct FailureLimit<K: Hash + Eq + Clone> {
    failures: DefaultKeyedRateLimiter<K>,
    blocked: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> FailureLimit<K> {
    fn per_minute(n: u32) -> Option<Self> {
        per_minute(n).map(|failures| Self {
            failures,
            blocked: Mutex::default(),
        })
    }

    /// How long `key` is still blocked, if it is.
    fn blocked_for(&self, key: &K) -> Option<Duration> {
        let blocked = self.blocked.lock().ok()?;
        let until = blocked.get(key)?;
        until.checked_duration_since(Instant::now())
    }

    fn failed(&self, key: &K) {
        if let Err(not_until) = self.failures.check_key(key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            if let Ok(mut blocked) = self.blocked.lock() {
                blocked.insert(key.clone(), Instant::now() + wait);
            }
        }
    }

    fn forget_idle(&self) {
        forget_idle_keys(&self.failures);
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.shrink_to_fit();
        }
    }
}

/// Drops the keys whose allowance is whole again, and the room they took.
fn forget_idle_keys<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

fn account_key(account: &str) -> String {
    account.trim().to_lowercase()
}

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            new_chat: per_minute(settings.new_chat_per_minute),
            login_by_address: FailureLimit::per_minute(settings.login_failures_per_minute),
            login_by_username: FailureLimit::per_minute(settings.login_failures_per_minute),
            register: per_minute(settings.register_per_minute),
        }
    }

    pub fn new_chat(&self, user: UserId) -> Result<(), ApiError> {
        spend(&self.new_chat, &user, || {
            "You are sending messages faster than this server allows; wait a moment and send again."
                .into()
        })
    }

    /// Before a login's password is checked: refused while the address or the
    /// account tried (compared case-insensitively) is blocked.
    pub fn login_allowed(&self, address: IpAddr, account: &str) -> Result<(), ApiError> {
        let by_address = self
            .login_by_address
            .as_ref()
            .and_then(|l| l.blocked_for(&address));
        let by_username = self
            .login_by_username
            .as_ref()
            .and_then(|l| l.blocked_for(&account_key(account)));
        match by_address.max(by_username) {
            Some(wait) => Err(refused(
                wait,
                "Too many failed logins; wait before trying again (see Retry-After).".into(),
            )),
            None => Ok(()),
        }
    }

    /// A login failed (wrong password or unknown user).
    pub fn login_failed(&self, address: IpAddr, account: &str) {
        if let Some(limit) = &self.login_by_address {
            limit.failed(&address);
        }
        if let Some(limit) = &self.login_by_username {
            limit.failed(&account_key(account));
        }
    }

    pub fn register(&self, address: IpAddr) -> Result<(), ApiError> {
        spend(&self.register, &address, || {
            "Too many registrations from this address; wait a minute before trying again.".into()
        })
    }

    /// Drops the state of keys whose allowance is whole again, every minute,
    /// until `shutdown`: the limiters hold only recently active keys.
    pub async fn forget_idle_until(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Some(limiter) = &self.new_chat {
                forget_idle_keys(limiter);
            }
            if let Some(limiter) = &self.register {
                forget_idle_keys(limiter);
            }
            if let Some(limit) = &self.login_by_address {
                limit.forget_idle();
            }
            if let Some(limit) = &self.login_by_username {
                limit.forget_idle();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_refuses_past_its_allowance_with_a_wait_and_zero_is_off() {
        let limits = RateLimits::new(RateLimitSettings {
            new_chat_per_minute: 2,
            login_failures_per_minute: 0,
            register_per_minute: 1,
        });
        assert!(limits.new_chat(1).is_ok());
        assert!(limits.new_chat(1).is_ok());
        match limits.new_chat(1) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!((1..=60).contains(&retry_after_secs)),
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(limits.new_chat(2).is_ok(), "another user has their own");
        let address: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..100 {
            limits.login_failed(address, "anyone");
        }
        assert!(
            limits.login_allowed(address, "anyone").is_ok(),
            "0 turns it off"
        );
        assert!(limits.register(address).is_ok());
        assert!(limits.register(address).is_err());
    }

    #[test]
    fn only_failures_count_per_address_and_per_username() {
        let limits = RateLimits::new(RateLimitSettings {
            new_chat_per_minute: 0,
            login_failures_per_minute: 2,
            register_per_minute: 0,
        });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            [10, 0, 0, 3].into(),
        );
        // Successful logins spend nothing.
        for _ in 0..20 {
            assert!(limits.login_allowed(a, "alice").is_ok());
        }
        limits.login_failed(a, "alice");
        limits.login_failed(b, "Alice");
        assert!(
            limits.login_allowed(c, "ALICE").is_ok(),
            "two failures are allowed"
        );
        limits.login_failed(c, "alice");
        assert!(
            limits.login_allowed(c, "alice").is_err(),
            "the username is blocked"
        );
        assert!(limits.login_allowed(c, "bob").is_ok());
        limits.login_failed(a, "bob");
        limits.login_failed(a, "carol");
        assert!(
            limits.login_allowed(a, "dave").is_err(),
            "the address is blocked"
        );
    }
}
