//! Builds the worker from its configuration and runs it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use events::bus::consumer::Subscription;
use events::bus::{ConsumerSupervisor, Publisher};
use events::db::{connect_and_migrate_patiently, DbSetupError};
use events::outbox::OutboxRelay;
use events::projections::ReadModels;
use events::sealing::Keyring;
use events::store::EventStore;
use events::supervisor::{Supervisor, TaskEnded};

use crate::config::WorkerConfig;
use crate::consumer::{handle_dead_letter, handle_delivery, handle_memory_job};
use crate::lease::ConversationLeases;
use crate::memory::MemoryKeeper;
use crate::model::Model;
use crate::responder::{Responder, ResponderSettings};
use crate::share::UserShares;
use crate::stops::StopSignals;

/// How often each worker looks for conversations whose lease ran out.
const LEASE_SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbSetupError),
    #[error("cannot build the model client: {0}")]
    Model(#[from] reqwest::Error),
}

pub struct Worker {
    config: WorkerConfig,
    keyring: Keyring,
    relay: OutboxRelay,
    store: EventStore,
    model: Arc<Model>,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> Result<Self, StartupError> {
        let pool = connect_and_migrate_patiently(&config.database).await?;
        let publisher = Arc::new(Publisher::new(config.bus.clone(), "worker-publisher"));
        let relay = OutboxRelay::new(pool.clone(), publisher)
            .with_retention(config.database.outbox_retention);
        let keyring = Keyring::new(pool.clone(), config.kek.clone());
        let store = EventStore::with_commit_timeout(
            pool,
            Arc::new(ReadModels),
            config.database.commit_timeout,
        )
        .sealing_with(keyring.clone());
        let model = Arc::new(Model::from_settings(&config.model)?);
        tracing::info!(
            model = model.name(),
            prefetch = config.prefetch,
            "worker ready"
        );
        Ok(Self {
            keyring,
            config,
            relay,
            store,
            model,
        })
    }

    /// Consumes until `shutdown` in the given roles, then finishes or hands back
    /// in-flight messages. A background task that ends sooner shuts the worker
    /// down the same way, and is the error.
    pub async fn run(self, roles: Roles, shutdown: CancellationToken) -> Result<(), TaskEnded> {
        let mut tasks = Supervisor::new(shutdown.clone());
        tasks.spawn("outbox relay", {
            let relay = self.relay.clone();
            let token = shutdown.clone();
            async move { relay.run(Duration::from_secs(1), token).await }
        });
        if self.config.metrics_addr.is_some() {
            tasks.spawn("metrics sampler", {
                let (pool, token) = (self.store.pool().clone(), shutdown.clone());
                async move {
                    events::metrics::sample_until(pool, Duration::from_secs(10), token).await
                }
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let leases =
            ConversationLeases::new(self.store.pool().clone(), self.config.conversation_lease);
        if roles.replies {
            let shares = UserShares::new(
                self.config.user_max_model_calls,
                u32::from(self.config.prefetch),
            );
            let settings = ResponderSettings {
                delivery_hold: self.config.delivery_hold,
                context_budget_chars: self.config.context_budget_chars,
                max_reply_tokens: self.config.model.max_reply_tokens,
                token_budget: self.config.token_budget,
            };
            let stops = StopSignals::default();
            tasks.spawn("stop listener", {
                let (stops, bus, token) =
                    (stops.clone(), self.config.bus.clone(), shutdown.clone());
                let name = format!("worker-stops-{id}");
                async move { stops.run(bus, name, token).await }
            });
            let responder = Responder::new(
                (self.store.clone(), self.keyring.clone()),
                self.relay.clone(),
                self.model.clone(),
                (leases.clone(), shares, stops),
                settings,
                shutdown.clone(),
            );
            let replies = ConsumerSupervisor::new(
                self.config.bus.clone(),
                Subscription::UserMessages,
                self.config.prefetch,
                format!("worker-{id}"),
            )
            .with_grace(self.config.shutdown_grace);
            let dead_letters = ConsumerSupervisor::new(
                self.config.bus.clone(),
                Subscription::DeadLetters,
                8,
                format!("worker-dead-letters-{id}"),
            )
            .with_grace(Duration::from_secs(5));
            tasks.spawn("expired lease sweep", {
                let (responder, grace) = (responder.clone(), self.config.shutdown_grace);
                async move { responder.take_over_expired(LEASE_SWEEP_EVERY, grace).await }
            });
            tasks.spawn("reply consumer", {
                let (responder, token) = (responder.clone(), shutdown.clone());
                async move {
                    replies
                        .run(
                            token,
                            move |d| handle_delivery(responder.clone(), d),
                            |_| {},
                        )
                        .await
                }
            });
            tasks.spawn("dead-letter consumer", {
                let token = shutdown.clone();
                async move {
                    dead_letters
                        .run(
                            token,
                            move |d| handle_dead_letter(responder.clone(), d),
                            |_| {},
                        )
                        .await
                }
            });
        }
        if roles.memory {
            let keeper = MemoryKeeper::new(
                (self.store.clone(), self.keyring.clone()),
                self.relay.clone(),
                self.model.clone(),
                leases,
                self.config.memory.clone(),
                self.config.context_budget_chars,
                shutdown.clone(),
            );
            let memory = ConsumerSupervisor::new(
                self.config.bus.clone(),
                Subscription::MemoryJobs {
                    idle: self.config.memory.idle,
                },
                self.config.memory.prefetch,
                format!("worker-memory-{id}"),
            )
            .with_grace(self.config.shutdown_grace);
            tasks.spawn("memory consumer", {
                let token = shutdown.clone();
                async move {
                    memory
                        .run(token, move |d| handle_memory_job(keeper.clone(), d), |_| {})
                        .await
                }
            });
        }
        let failed = tasks.failed();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = failed.cancelled() => shutdown.cancel(),
                    _ = shutdown.cancelled() => {}
                }
            }
        });
        let watched = tasks.watch().await;
        self.relay.publisher().close().await;
        tracing::info!("worker stopped");
        watched
    }
}

/// What a worker process does (`--roles`, default both): answer messages, keep
/// memory, or both. Running them apart lets each scale on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub replies: bool,
    pub memory: bool,
}

impl std::str::FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut roles = Roles {
            replies: false,
            memory: false,
        };
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "replies" => roles.replies = true,
                "memory" => roles.memory = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: use replies, memory or both"
                    ))
                }
            }
        }
        if !roles.replies && !roles.memory {
            return Err("name at least one role: replies, memory".into());
        }
        Ok(roles)
    }
}
