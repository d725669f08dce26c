//! Stopping a reply while the model writes it, on whichever worker that is.
//!
//! The api records the stop itself (`BotReplyStopped`, the attempt's outcome, so
//! no reply can be recorded after it) and publishes it like every event. Each
//! worker hears every stop on a private queue and cancels the model call it is
//! making for that message, if any: dropping the call closes the connection to
//! the model, and nothing more is paid.
//!
//! No stop is missed between a worker choosing a message and starting its call:
//! the worker registers its interest ([`StopSignals::watch`]) *before* it reads
//! the conversation for the prompt, and that read shows a stop committed
//! earlier; a stop committed later is published later, and finds the
//! registration. (While the broker is away a stop's signal can be lost: the call
//! then runs to its end, and its reply is refused as a duplicate of the stop.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::Delivery;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::bus::consumer::Subscription;
use events::bus::ConsumerSupervisor;
use events::config::BusSettings;
use events::event::{Attempt, DomainEvent};
use events::store::RecordedEvent;

/// Which answer a stop ends.
type Answering = (Uuid, Attempt);

/// The replies this worker is writing, and how to cancel each.
#[derive(Clone, Default)]
pub struct StopSignals {
    watched: Arc<Mutex<HashMap<Answering, CancellationToken>>>,
}

/// A reply being written: cancelled when its stop is heard; dropping it ends
/// the watch.
pub struct Watch {
    key: Answering,
    token: CancellationToken,
    signals: StopSignals,
}

impl Watch {
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut watched) = self.signals.watched.lock() {
            watched.remove(&self.key);
        }
    }
}

impl StopSignals {
    /// Watches for a stop of `attempt` at answering `message_id`.
    pub fn watch(&self, message_id: Uuid, attempt: Attempt) -> Watch {
        let key = (message_id, attempt);
        let token = CancellationToken::new();
        if let Ok(mut watched) = self.watched.lock() {
            watched.insert(key, token.clone());
        }
        Watch {
            key,
            token,
            signals: self.clone(),
        }
    }

    fn stop(&self, key: Answering) {
        let token = self
            .watched
            .lock()
            .ok()
            .and_then(|watched| watched.get(&key).cloned());
        if let Some(token) = token {
            tracing::info!(reply_to = %key.0, attempt = key.1, "stopping the model call: the user stopped the reply");
            token.cancel();
        }
    }

    /// Hears every stop on the bus until `shutdown`.
    pub async fn run(self, bus: BusSettings, name: String, shutdown: CancellationToken) {
        let supervisor = ConsumerSupervisor::new(
            bus,
            Subscription::Private {
                routing_keys: vec![DomainEvent::BOT_REPLY_STOPPED.to_string()],
                deltas: false,
            },
            64,
            name,
        )
        .with_grace(Duration::from_secs(1));
        let signals = self.clone();
        supervisor
            .run(
                shutdown,
                move |delivery| {
                    let signals = signals.clone();
                    async move { signals.hear(&delivery) }
                },
                |_| {},
            )
            .await;
    }

    fn hear(&self, delivery: &Delivery) {
        #[derive(Deserialize)]
        struct Stopped {
            reply_to: Uuid,
            #[serde(default = "first")]
            attempt: Attempt,
        }
        fn first() -> Attempt {
            events::event::FIRST_ATTEMPT
        }
        let stopped = serde_json::from_slice::<RecordedEvent>(&delivery.data)
            .ok()
            .filter(|event| event.event_type == DomainEvent::BOT_REPLY_STOPPED)
            .and_then(|event| Stopped::deserialize(&event.payload).ok());
        match stopped {
            Some(stopped) => self.stop((stopped.reply_to, stopped.attempt)),
            None => tracing::debug!("ignoring an unreadable stop"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_cancels_only_the_watched_attempt_and_a_dropped_watch_is_forgotten() {
        let signals = StopSignals::default();
        let message = Uuid::now_v7();
        let first = signals.watch(message, 1);
        let second = signals.watch(message, 2);
        signals.stop((message, 1));
        assert!(first.token.is_cancelled());
        assert!(!second.token.is_cancelled());
        drop(second);
        assert_eq!(signals.watched.lock().map(|w| w.len()).unwrap_or(9), 1);
        drop(first);
        assert!(signals
            .watched
            .lock()
            .map(|w| w.is_empty())
            .unwrap_or(false));
    }
}
