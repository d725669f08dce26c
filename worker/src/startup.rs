//! Builds the worker from its configuration and runs it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use events::bus::consumer::Subscription;
use events::bus::{ConsumerSupervisor, Publisher};
use events::db::{connect_and_migrate_patiently, DbSetupError};
use events::outbox::OutboxRelay;
use events::projections::ReadModels;
use events::store::EventStore;

use crate::config::WorkerConfig;
use crate::consumer::{handle_dead_letter, handle_delivery};
use crate::lease::ConversationLeases;
use crate::model::Model;
use crate::responder::Responder;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbSetupError),
    #[error("cannot build the model client: {0}")]
    Model(#[from] reqwest::Error),
}

pub struct Worker {
    config: WorkerConfig,
    relay: OutboxRelay,
    store: EventStore,
    model: Arc<Model>,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> Result<Self, StartupError> {
        let pool = connect_and_migrate_patiently(&config.database).await?;
        let publisher = Arc::new(Publisher::new(config.bus.clone(), "worker-publisher"));
        let relay = OutboxRelay::new(pool.clone(), publisher);
        let store = EventStore::with_commit_timeout(
            pool,
            Arc::new(ReadModels),
            config.database.commit_timeout,
        );
        let model = Arc::new(Model::from_settings(&config.model)?);
        tracing::info!(
            model = model.name(),
            prefetch = config.prefetch,
            "worker ready"
        );
        Ok(Self {
            config,
            relay,
            store,
            model,
        })
    }

    /// Consumes until `shutdown`, then finishes or hands back in-flight messages.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay_task = tokio::spawn({
            let relay = self.relay.clone();
            let token = shutdown.clone();
            async move { relay.run(Duration::from_secs(1), token).await }
        });
        let id = uuid::Uuid::new_v4().simple().to_string();
        let supervisor = ConsumerSupervisor::new(
            self.config.bus.clone(),
            Subscription::UserMessages,
            self.config.prefetch,
            format!("worker-{id}"),
        )
        .with_grace(self.config.shutdown_grace);
        let responder = Responder::new(
            self.store.clone(),
            self.relay.clone(),
            self.model.clone(),
            ConversationLeases::new(self.store.pool().clone(), self.config.conversation_lease),
            self.config.context_budget_chars,
            shutdown.clone(),
        );
        let dead_letters = tokio::spawn({
            let responder = responder.clone();
            let token = shutdown.clone();
            let supervisor = ConsumerSupervisor::new(
                self.config.bus.clone(),
                Subscription::DeadLetters,
                8,
                format!("worker-dead-letters-{id}"),
            )
            .with_grace(Duration::from_secs(5));
            async move {
                supervisor
                    .run(
                        token,
                        move |delivery| handle_dead_letter(responder.clone(), delivery),
                        |_| {},
                    )
                    .await
            }
        });
        supervisor
            .run(
                shutdown,
                move |delivery| handle_delivery(responder.clone(), delivery),
                |_| {},
            )
            .await;
        let _ = dead_letters.await;
        let _ = relay_task.await;
        self.relay.publisher().close().await;
        tracing::info!("worker stopped");
    }
}
