//! One delivery's life: decode, trace, answer, then settle it with the broker.
//!
//! - answered (or nothing left to answer): ack, after the reply's commit;
//! - the database is down: the responder waits it out in place (a delivery is not
//!   spent on an outage); if the worker is stopping meanwhile, or another database
//!   error persists, requeue after a pause, and the queue's delivery limit
//!   dead-letters a message that keeps failing;
//! - undecodable (poison): reject without requeue, straight to the dead letters.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tracing::Instrument;

use events::bus::correlation_id;
use events::event::DomainEvent;
use events::store::RecordedEvent;

use crate::responder::Responder;

/// Pause before requeueing after a transient failure, so an outage is not a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

pub async fn handle_delivery(responder: Responder, delivery: Delivery) {
    let correlation = correlation_id(&delivery);
    let span = tracing::info_span!(
        "handle_message",
        correlation_id = correlation.as_deref().unwrap_or("-"),
        message_id = tracing::field::Empty,
        redelivered = delivery.redelivered,
    );
    async move {
        let message = serde_json::from_slice::<RecordedEvent>(&delivery.data)
            .map_err(|e| e.to_string())
            .and_then(|event| DomainEvent::decode(&event).map_err(|e| e.to_string()));
        let message = match message {
            Ok(DomainEvent::UserMessagePosted(m)) => m,
            Ok(other) => {
                tracing::warn!(
                    event = other.event_type(),
                    "unexpected event on the work queue; dropping it"
                );
                settle(delivery.acker.ack(BasicAckOptions::default()).await);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "undecodable message; dead-lettering it");
                settle(
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await,
                );
                return;
            }
        };
        tracing::Span::current().record("message_id", tracing::field::display(message.message_id));
        match responder.answer(&message, correlation).await {
            Ok(()) => settle(delivery.acker.ack(BasicAckOptions::default()).await),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "could not answer now; requeueing");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                settle(
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await,
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot answer this message; dead-lettering it");
                settle(
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await,
                );
            }
        }
    }
    .instrument(span)
    .await
}

/// A failed ack means the channel is gone; the broker redelivers the message, and
/// answering it again is harmless.
fn settle(result: Result<(), lapin::Error>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not settle the delivery; it will be redelivered");
    }
}
