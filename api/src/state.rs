//! What every handler can reach, cloned cheaply per request.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use events::outbox::OutboxRelay;
use events::store::EventStore;
use sqlx::MySqlPool;

use crate::auth::JwtKeys;
use crate::config::ApiConfig;
use crate::feed::ChatFeed;
use crate::read_cache::ReadCache;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub pool: MySqlPool,
    pub store: EventStore,
    pub relay: OutboxRelay,
    pub jwt: Arc<JwtKeys>,
    pub feed: ChatFeed,
    pub read_cache: Arc<ReadCache>,
    /// Requests served without a token under `AUTH_MODE=legacy`.
    pub legacy_requests: Arc<AtomicU64>,
}
