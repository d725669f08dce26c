//! One delivery's life: read, trace, answer, then settle it with the broker.
//!
//! - answered (or nothing left to answer): ack, after the reply's commit;
//! - the database is down: the responder waits it out in place (a delivery is not
//!   spent on an outage); if the worker is stopping meanwhile, or another database
//!   error persists, requeue, and the queue's delivery limit dead-letters a
//!   message that keeps failing;
//! - unreadable: requeue, since a newer worker of a rolling deploy may read it; the
//!   delivery limit dead-letters it if none can;
//! - dead-lettered: [`handle_dead_letter`] records `BotReplyFailed`, so that the
//!   message ends as `failed` rather than `pending` forever.
//!
//! A delivery is read only as far as the worker needs (its message id, user and
//! bot, see [`MessageRef`]); the answer comes from the read models.
//!
//! Memory jobs ([`handle_memory_job`]) are reply events; one that fails for good
//! (the model, after its bounded retries) goes to the memory dead letters, and the
//! conversation keeps the memory it had.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use serde::Deserialize;
use tracing::Instrument;

use events::bus::correlation_id;
use events::event::DomainEvent;
use events::store::RecordedEvent;

use crate::memory::{MemoryJob, MemoryKeeper, IDLE_AFTER_HEADER};
use crate::responder::{MessageRef, Responder, GIVEN_UP};

/// Pause before requeueing after a transient failure, so an outage is not a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// What a delivery holds, as far as the worker is concerned.
enum Read {
    Message(MessageRef),
    /// Another event type (not for this queue): nothing to do.
    Other(String),
    Unreadable(String),
}

fn read(delivery: &Delivery) -> Read {
    let event = match serde_json::from_slice::<RecordedEvent>(&delivery.data) {
        Ok(event) => event,
        Err(e) => return Read::Unreadable(format!("not an event: {e}")),
    };
    // A regeneration asks for a message's next answer: work like a new message.
    let work = [
        DomainEvent::USER_MESSAGE_POSTED,
        DomainEvent::REPLY_REGENERATION_REQUESTED,
    ];
    if !work.contains(&event.event_type.as_str()) {
        return Read::Other(event.event_type);
    }
    match MessageRef::deserialize(&event.payload) {
        Ok(message) => Read::Message(message),
        Err(e) => Read::Unreadable(format!(
            "{} (schema version {}) lacks what the worker needs: {e}",
            event.event_type, event.schema_version
        )),
    }
}

pub async fn handle_delivery(responder: Responder, delivery: Delivery) {
    let correlation = correlation_id(&delivery);
    let span = tracing::info_span!(
        "handle_message",
        correlation_id = correlation.as_deref().unwrap_or("-"),
        message_id = tracing::field::Empty,
        redelivered = delivery.redelivered,
    );
    let _in_flight = events::metrics::Raised::new(events::metrics::DELIVERIES_IN_FLIGHT);
    let handled = async move {
        let message = match read(&delivery) {
            Read::Message(message) => message,
            Read::Other(event_type) => {
                tracing::warn!(event = %event_type, "unexpected event on the work queue; dropping it");
                ack(&delivery).await;
                return;
            }
            Read::Unreadable(why) => {
                tracing::warn!(%why, "cannot read this message; requeueing it for another worker");
                requeue(&delivery, REQUEUE_PAUSE).await;
                return;
            }
        };
        tracing::Span::current().record("message_id", tracing::field::display(message.message_id));
        match responder.answer(&message, correlation).await {
            Ok(()) => ack(&delivery).await,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "could not answer now; requeueing");
                let pause = match e {
                    crate::responder::RespondError::Stopping => Duration::ZERO,
                    crate::responder::RespondError::Contended => Duration::from_millis(200),
                    _ => REQUEUE_PAUSE,
                };
                requeue(&delivery, pause).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot answer this message; recording its failure");
                match responder.give_up(&message, GIVEN_UP).await {
                    Ok(()) => ack(&delivery).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the failure; requeueing");
                        requeue(&delivery, REQUEUE_PAUSE).await;
                    }
                }
            }
        }
    }
    .instrument(span);
    handled.await;
}

/// A message given up on: record its failure (once), so that it is not left
/// `pending` and a waiting `new_chat` hears about it.
pub async fn handle_dead_letter(responder: Responder, delivery: Delivery) {
    let span = tracing::info_span!(
        "handle_dead_letter",
        correlation_id = correlation_id(&delivery).as_deref().unwrap_or("-")
    );
    metrics::counter!(events::metrics::DEAD_LETTERED).increment(1);
    async move {
        match read(&delivery) {
            Read::Message(message) => match responder.give_up(&message, GIVEN_UP).await {
                Ok(()) => ack(&delivery).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record a dead letter's failure; retrying");
                    requeue(&delivery, REQUEUE_PAUSE).await;
                }
            },
            Read::Other(event_type) => {
                tracing::warn!(event = %event_type, "dead-lettered event needs no outcome");
                ack(&delivery).await;
            }
            Read::Unreadable(why) => {
                tracing::error!(%why, "a dead letter names no message; it is dropped and needs a person to look at it");
                ack(&delivery).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// A reply event on the memory queue: refresh the conversation's memory if due.
pub async fn handle_memory_job(keeper: MemoryKeeper, delivery: Delivery) {
    let span = tracing::info_span!(
        "memory_job",
        correlation_id = correlation_id(&delivery).as_deref().unwrap_or("-"),
        user_id = tracing::field::Empty,
        bot_id = tracing::field::Empty,
    );
    async move {
        let Some(job) = memory_job(&delivery) else {
            tracing::warn!("not a reply event; dropping it from the memory queue");
            ack(&delivery).await;
            return;
        };
        tracing::Span::current().record("user_id", job.user_id);
        tracing::Span::current().record("bot_id", job.bot_id);
        let handled = match keeper.handle(job).await {
            // A reply's first job schedules its idle check, before the ack, so
            // that a crash in between repeats the job rather than losing it.
            Ok(()) if !job.idle_check => {
                keeper
                    .schedule_idle_check(&job, &delivery.data, correlation_id(&delivery))
                    .await
            }
            other => other,
        };
        match handled {
            Ok(()) => ack(&delivery).await,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "memory job failed; requeueing it");
                requeue(&delivery, REQUEUE_PAUSE).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "memory job failed for good; dead-lettering it, the memory stays as it was");
                settle(
                    delivery
                        .acker
                        .reject(lapin::options::BasicRejectOptions { requeue: false })
                        .await,
                );
            }
        }
    }
    .instrument(span)
    .await
}

/// The job a reply event makes: which conversation, and whether this is the
/// delayed delivery (it came through the idle queue, so it carries `x-death`).
fn memory_job(delivery: &Delivery) -> Option<MemoryJob> {
    #[derive(Deserialize)]
    struct Conversation {
        user_id: events::event::UserId,
        bot_id: events::event::BotId,
    }
    let event = serde_json::from_slice::<RecordedEvent>(&delivery.data).ok()?;
    if event.event_type != DomainEvent::BOT_REPLY_GENERATED {
        return None;
    }
    let conversation = Conversation::deserialize(&event.payload).ok()?;
    let headers = delivery.properties.headers().as_ref().map(|h| h.inner());
    let idle_check = headers.is_some_and(|h| h.contains_key("x-death"));
    let idle_after = headers
        .and_then(|h| h.get(IDLE_AFTER_HEADER))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
            _ => None,
        })
        .map(Duration::from_millis);
    Some(MemoryJob {
        user_id: conversation.user_id,
        bot_id: conversation.bot_id,
        seq: event.stream_version,
        idle_check,
        idle_after,
    })
}

async fn ack(delivery: &Delivery) {
    settle(delivery.acker.ack(BasicAckOptions::default()).await);
}

async fn requeue(delivery: &Delivery, pause: Duration) {
    tokio::time::sleep(pause).await;
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

/// A failed ack means the channel is gone; the broker redelivers the message, and
/// answering it again is harmless.
fn settle(result: Result<(), lapin::Error>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not settle the delivery; it will be redelivered");
    }
}
