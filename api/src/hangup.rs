//! When a long-lived response must end: a stream (`/chat/stream`) or a waiting
//! long-poll (`/chat/history?wait=`) is authorized once, when it starts, but it
//! may outlive what authorized it. It ends, and the client reconnects (and is
//! refused, or resumes with a fresh token and its cursor), as soon as:
//! - its session is revoked (logout, a password change, a reused refresh token),
//!   on this api or any other: [`RevokedSessions`] ticks at every revocation;
//! - its access token expires;
//! - the api shuts down (the client resumes on another replica).
//!
//! A deleted bot ends a stream too; that news comes with the chat notices (see
//! `feed::Notice::BotDeleted`), so the routes watch for it themselves.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::caller::TokenSession;
use crate::auth::Caller;
use crate::sessions::RevokedSessions;
use crate::state::AppState;

/// Why a long-lived response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    SessionRevoked,
    TokenExpired,
    ShuttingDown,
}

impl HangupReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::SessionRevoked => "session_revoked",
            HangupReason::TokenExpired => "token_expired",
            HangupReason::ShuttingDown => "shutting_down",
        }
    }
}

pub struct Hangup {
    session: Option<(TokenSession, Arc<RevokedSessions>, watch::Receiver<u64>)>,
    expires_at: Option<Instant>,
    shutdown: CancellationToken,
}

impl Hangup {
    /// What ends `caller`'s long-lived response. A legacy caller (no token) has
    /// no session to lose: only a shutdown ends it.
    pub fn for_caller(caller: &Caller, state: &AppState) -> Self {
        let session = caller.session();
        Self {
            session: session.map(|s| (s.clone(), state.sessions.clone(), state.sessions.changes())),
            expires_at: session.map(expiry_instant),
            shutdown: state.draining.clone(),
        }
    }

    /// Resolves when the response must end, and says why.
    pub async fn wait(&mut self) -> HangupReason {
        let expired = async {
            match self.expires_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let revoked = async {
            match &mut self.session {
                Some((token, sessions, changes)) => loop {
                    if sessions.is_revoked(&token.sid, token.user, token.credentials) {
                        return;
                    }
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => HangupReason::ShuttingDown,
            _ = revoked => HangupReason::SessionRevoked,
            _ = expired => HangupReason::TokenExpired,
        }
    }
}

/// The token's `exp` as a monotonic instant (a clock step later cannot extend it).
fn expiry_instant(session: &TokenSession) -> Instant {
    let left = session.expires_at - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.max(0).unsigned_abs())
}
