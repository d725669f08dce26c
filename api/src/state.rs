//! What every handler can reach. Extractors clone the state for every request,
//! so it is one `Arc`: one reference count to bump, not one per field (which,
//! shared by every core, was a tenth of a cached read's time).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use events::outbox::OutboxRelay;
use events::sealing::Keyring;
use events::store::EventStore;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::auth::JwtKeys;
use crate::config::ApiConfig;
use crate::feed::ChatFeed;
use crate::heavy_reads::HeavyReads;
use crate::known_users::KnownUsers;
use crate::rate_limits::RateLimits;
use crate::read_cache::ReadCache;
use crate::sessions::RevokedSessions;
use crate::streams::OpenStreams;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<ApiConfig>,
    pub pool: MySqlPool,
    pub store: EventStore,
    pub relay: OutboxRelay,
    pub jwt: Arc<JwtKeys>,
    pub feed: ChatFeed,
    pub read_cache: Arc<ReadCache>,
    /// Sessions revoked recently enough that their access tokens may still be live.
    pub sessions: Arc<RevokedSessions>,
    /// User ids known to exist.
    pub users: Arc<KnownUsers>,
    /// Streams open now, per user.
    pub streams: Arc<OpenStreams>,
    /// Requests served without a token under `AUTH_MODE=legacy`.
    pub legacy_requests: Arc<AtomicU64>,
    pub limits: Arc<RateLimits>,
    /// Turns for the reads whose answers can be large.
    pub heavy_reads: Arc<HeavyReads>,
    /// Cancelled when the api starts shutting down: streams and long-polls end.
    pub draining: CancellationToken,
    /// Opens sealed texts, and destroys keys (`forget`).
    pub keyring: Keyring,
}
