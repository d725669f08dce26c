//! Builds the application from its configuration and runs it. `main` and the tests
//! both go through [`Application::build`], so tests exercise the real wiring on a
//! random port.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use events::bus::Publisher;
use events::config::ExposeSecret;
use events::db::{connect_and_migrate_patiently, DbSetupError};
use events::outbox::OutboxRelay;
use events::projections::ReadModels;
use events::store::EventStore;
use events::supervisor::Supervisor;

use crate::auth::{password, AuthMode, JwtKeys};
use crate::config::ApiConfig;
use crate::cors::only_for_allowed_origins;
use crate::extract::{
    drop_unacceptable_request_id, guard_edges, normalize_path, REQUEST_ID_HEADER,
};
use crate::feed::ChatFeed;
use crate::heavy_reads::HeavyReads;
use crate::known_users::KnownUsers;
use crate::live::LiveReplies;
use crate::rate_limits::RateLimits;
use crate::read_cache::ReadCache;
use crate::routes::router;
use crate::sessions::RevokedSessions;
use crate::state::{AppState, Shared};
use crate::streams::OpenStreams;

/// How often the database's side of the metrics (outbox backlog, pool) is read.
const METRICS_SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbSetupError),
    #[error("cannot load the revoked sessions: {0}")]
    Sessions(sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(config: ApiConfig) -> Result<Self, StartupError> {
        let pool = connect_and_migrate_patiently(&config.database).await?;
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        if config.auth_mode == AuthMode::Legacy {
            tracing::warn!(
                "AUTH_MODE=legacy: chat and bot requests without a token act for the user_id they name; \
                 anyone can read and write any user's chats. Use only for the original mobile app."
            );
        }
        let publisher = Arc::new(Publisher::new(config.bus.clone(), "api-publisher"));
        let read_cache = Arc::new(ReadCache::new(
            config.read_cache_ttl,
            config.read_cache_max_bytes,
        ));
        let sessions = Arc::new(RevokedSessions::new(config.access_ttl));
        sessions.load(&pool).await.map_err(StartupError::Sessions)?;
        password::warm_up().await;
        let keyring = events::sealing::Keyring::new(pool.clone(), config.kek.clone());
        let state = AppState::new(Shared {
            jwt: Arc::new(JwtKeys::new(
                config.jwt_secret.expose_secret(),
                config.access_ttl,
                config.refresh_ttl,
            )),
            store: EventStore::with_commit_timeout(
                pool.clone(),
                Arc::new(ReadModels),
                config.database.commit_timeout,
            )
            .sealing_with(keyring.clone()),
            relay: OutboxRelay::new(pool.clone(), publisher)
                .with_retention(config.database.outbox_retention),
            feed: ChatFeed::new(
                read_cache.clone(),
                sessions.clone(),
                Arc::new(LiveReplies::default()),
            ),
            read_cache,
            sessions,
            users: Arc::new(KnownUsers::default()),
            limits: Arc::new(RateLimits::new(config.rate_limits)),
            heavy_reads: Arc::new(HeavyReads::new(config.heavy_reads_at_once)),
            streams: Arc::new(OpenStreams::default()),
            legacy_requests: Arc::new(AtomicU64::new(0)),
            draining: CancellationToken::new(),
            keyring,
            config: Arc::new(config),
            pool,
        });
        Ok(Self { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `signal` completes, then stops accepting, drains the requests in
    /// flight, and stops the background tasks.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let background = CancellationToken::new();
        let state = self.state;
        let mut tasks = Supervisor::new(background.clone());
        tasks.spawn("outbox relay", {
            let relay = state.relay.clone();
            let token = background.clone();
            async move { relay.run(Duration::from_secs(1), token).await }
        });
        tasks.spawn(
            "chat feed",
            state
                .feed
                .clone()
                .run(state.config.bus.clone(), background.clone()),
        );
        tasks.spawn("revocation reload", {
            let (sessions, pool, token) = (
                state.sessions.clone(),
                state.pool.clone(),
                background.clone(),
            );
            async move { sessions.run(pool, token).await }
        });
        tasks.spawn(
            "session pruning",
            RevokedSessions::prune_inactive_until(
                state.pool.clone(),
                state.config.database.session_retention,
                background.clone(),
            ),
        );
        tasks.spawn("rate limit upkeep", {
            let (limits, token) = (state.limits.clone(), background.clone());
            async move { limits.forget_idle_until(token).await }
        });
        tasks.spawn("metrics sampler", {
            let (pool, token) = (state.pool.clone(), background.clone());
            async move { events::metrics::sample_until(pool, METRICS_SAMPLE_EVERY, token).await }
        });
        tasks.spawn("read cache purge", {
            let (cache, token) = (state.read_cache.clone(), background.clone());
            async move { cache.purge_expired_until(token).await }
        });
        let task_failed = tasks.failed();
        let watching = tokio::spawn(tasks.watch());

        let config = state.config.clone();
        let publisher = state.relay.publisher().clone();
        let draining = state.draining.clone();
        let routes = router(state)
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(
                config.max_body_bytes,
                guard_edges,
            ))
            .layer(RequestBodyTimeoutLayer::new(config.body_read_timeout))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        let request_id = req
                            .headers()
                            .get(REQUEST_ID_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), correlation_id = %request_id)
                    })
                    // A 5xx here is already handled and reported where it arose
                    // (an outage once per episode, an internal error at ERROR).
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(tower::util::option_layer(config.cors_allowed_origins.layer()))
            .layer(axum::middleware::from_fn_with_state(
                config.cors_allowed_origins.clone(),
                only_for_allowed_origins,
            ));
        // Normalizing the path must happen before routing, so it wraps the router;
        // a refused request id goes before the request-id layer makes a new one.
        let app = tower::util::MapRequestLayer::new(|req| {
            normalize_path::<axum::body::Body>(drop_unacceptable_request_id(req))
        })
        .layer(routes);

        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "api listening");
            if config.web_app {
                tracing::info!("web client at http://{addr}/app/");
            }
        }
        // The background tasks (the feed above all) run on through the drain, so
        // that a request finishing its wait still hears of its reply.
        let served = crate::server::serve(
            self.listener,
            app,
            config.header_read_timeout,
            config.send_stall,
            async move {
                tokio::select! {
                    _ = signal => {}
                    _ = task_failed.cancelled() => {}
                }
                tracing::info!("shutting down: ending streams and long-polls, draining requests");
                draining.cancel();
            },
        )
        .await;
        background.cancel();
        let watched = watching.await.map_err(std::io::Error::other)?;
        publisher.close().await;
        served?;
        watched.map_err(std::io::Error::other)
    }
}
