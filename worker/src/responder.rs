//! Answering one user message, exactly once, with one model call.
//!
//! - Exactly once: the reply's idempotency key is derived from the message it
//!   answers, so however many deliveries or workers race on a message, only one
//!   `BotReplyGenerated` (or `BotReplyFailed`) can be appended.
//! - One model call: only the holder of a conversation's lease (see
//!   [`crate::lease`]) calls the model for it, and it answers the conversation's
//!   unanswered messages oldest first until none is left.
//! - Waiting costs nothing: a delivery that finds the lease held hands its
//!   message to the holder (a hand-off counted on the lease row, which the holder
//!   checks before it lets go) and is acknowledged at once, so a conversation's
//!   backlog takes one of a worker's delivery slots, not one per message, and
//!   other users' messages are not stuck behind it. A holder that dies leaves its
//!   lease to expire, and [`Responder::take_over_expired`] (run by every worker)
//!   answers what it was handed.
//! - Fair shares: each user has a share of this worker's drains, and borrows
//!   beyond it only while others leave the room idle (see [`crate::share`]); a
//!   message over its user's share is parked for the sweep, so one user with
//!   many conversations cannot take every model call from others.
//! - In order: the next message is found in the `chat_history` read model, however
//!   old it is, and every reply is generated with the replies before it in context.
//! - Stoppable: a stop of the message being answered cancels the model call (see
//!   [`crate::stops`]); the api has recorded the stop, and the drain goes on to
//!   the next message.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use events::budget::{self, Admission, DailyBudget, Purpose, Reservation};
use events::bus::Backoff;
use events::db::{is_lock_contention, is_unavailable};
use events::event::{
    stream, Attempt, BotId, BotReplyFailed, BotReplyGenerated, DomainEvent, EventMetadata,
    ModelCallStopped, PromptSnapshot, Usage, UserId, FIRST_ATTEMPT,
};
use events::outbox::OutboxRelay;
use events::projections::{
    BotsProjection, ChatHistoryProjection, ConversationMemory, MessageStatus,
};
use events::sealing::{Keyring, SealError};
use events::store::{AppendError, EventStore, ExpectedVersion};

use crate::conversation::ConversationId;
use crate::lease::{ConversationLeases, Lease, Release};
use crate::meter::Meter;
use crate::model::{CallSettings, Model};
use crate::prompt::{build_prompt, BotProfile, Memory, Turn};
use crate::share::{ShareSlot, UserShares};
use crate::stops::{StopSignals, Watch};

/// What the worker needs of a delivered `UserMessagePosted`, whatever its schema
/// version: any version that still names these three fields can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct MessageRef {
    pub message_id: Uuid,
    pub user_id: UserId,
    pub bot_id: BotId,
}

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The database is unreachable or failed: try the delivery again later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the read model holds a malformed message id {0:?}")]
    MalformedId(String),
    /// A text of the conversation cannot be opened: tampered with (never
    /// answered from), or the key-encryption key is not the one it needs (a
    /// configuration to mend; tried again).
    #[error(transparent)]
    Sealed(SealError),
    /// The worker is shutting down: the message goes back to the queue.
    #[error("the worker is stopping")]
    Stopping,
    /// The conversation's lease stayed between holders (a holder waiting out an
    /// outage with its lease run out): try the delivery again shortly.
    #[error("the conversation's lease could be neither taken nor handed to a holder")]
    Contended,
}

impl From<SealError> for RespondError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Database(e) => RespondError::Database(e),
            other => RespondError::Sealed(other),
        }
    }
}

impl RespondError {
    /// Worth another try later (the delivery is requeued), as opposed to a message
    /// that can never be answered (dead-lettered).
    pub fn is_transient(&self) -> bool {
        // The user was erased meanwhile: the message is gone with them.
        if matches!(self, RespondError::Append(e) if e.is_user_erased()) {
            return false;
        }
        matches!(
            self,
            RespondError::Database(_)
                | RespondError::Append(_)
                | RespondError::Stopping
                | RespondError::Contended
                | RespondError::Sealed(SealError::Unwrap(_))
        )
    }

    /// The database is unreachable or contended: wait it out rather than spend
    /// deliveries.
    fn is_outage(&self) -> bool {
        match self {
            RespondError::Database(e) | RespondError::Append(AppendError::Database(e)) => {
                is_unavailable(e) || is_lock_contention(e)
            }
            _ => false,
        }
    }
}

/// One pass of answering a conversation under its lease.
struct Drain {
    conversation: ConversationId,
    share: ShareSlot,
    correlation_id: Option<String>,
    /// When the drain gives way. One started by a delivery holds that delivery
    /// unacknowledged, so it gives way well before the broker's
    /// `consumer_timeout` (30 minutes) would close the channel and requeue
    /// everything on it; one started by the sweep, after its turn.
    until: Option<tokio::time::Instant>,
}

impl Drain {
    /// Leave the rest to the sweep: the user's borrowed slot is needed by
    /// others, or the drain's time is up.
    fn should_give_way(&self) -> bool {
        self.share.should_yield()
            || self
                .until
                .is_some_and(|until| tokio::time::Instant::now() >= until)
    }
}

/// How a drain's pass over a conversation ended.
enum Drained {
    /// Nothing left (or the lease was taken over, with the work).
    Done,
    /// Stopped part-way, leaving the rest to the sweep.
    GaveWay,
}

/// A reply or failure whose append was refused (the message got its outcome
/// first): the cost of its call, to record on its own.
fn unrecorded_cost(outcome: &DomainEvent) -> Option<DomainEvent> {
    let (reply_to, user_id, bot_id, attempt, usage) = match outcome {
        DomainEvent::BotReplyGenerated(e) => (e.reply_to, e.user_id, e.bot_id, e.attempt, &e.usage),
        DomainEvent::BotReplyFailed(e) => (e.reply_to, e.user_id, e.bot_id, e.attempt, &e.usage),
        _ => return None,
    };
    let usage = usage.clone().filter(|u| u.billed() != (0, 0))?;
    Some(DomainEvent::ModelCallStopped(ModelCallStopped {
        reply_to,
        user_id,
        bot_id,
        attempt,
        usage,
    }))
}

/// The message a drain is answering, and which attempt at it.
#[derive(Debug, Clone, Copy)]
struct Answering {
    conversation: ConversationId,
    reply_to: Uuid,
    attempt: Attempt,
    seq: i64,
    /// The seq of the first message the prompt's turns were read from.
    first_seq: i64,
}

/// What the sender of a message given up on is told.
pub(crate) const GIVEN_UP: &str =
    "This message could not be processed after several attempts. Please send it again.";

/// Other database errors (a deadlock, say) are retried this often in place.
const IN_PLACE_ATTEMPTS: u32 = 3;
/// Tries at taking or handing off a lease that is between holders (each one a
/// few milliseconds) before the delivery is requeued.
const LEASE_TRIES: u32 = 100;
/// Expired leases taken over per sweep, and drains a sweep runs at once.
const TAKE_OVER_BATCH: u32 = 16;
const SWEEP_DRAINS: usize = 8;
/// How long a drain the sweep started answers before it gives the next
/// conversation in line a turn.
const SWEEP_TURN: Duration = Duration::from_secs(30);
/// How often a call waiting for the user's other calls to settle asks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(200);
/// Holders that may give up on a conversation in a row before its oldest
/// unanswered message is recorded as failed (as the delivery limit would).
const DRAIN_FAILURES: i64 = 5;

#[derive(Clone)]
pub struct Responder {
    store: EventStore,
    keyring: Keyring,
    relay: OutboxRelay,
    model: Arc<Model>,
    leases: ConversationLeases,
    shares: UserShares,
    stops: StopSignals,
    settings: ResponderSettings,
    shutdown: CancellationToken,
}

/// How the responder answers, from the worker's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ResponderSettings {
    /// How long a drain started by a delivery may hold it (`DELIVERY_HOLD_SECS`).
    pub delivery_hold: Duration,
    /// How much of the conversation goes into a prompt (`CONTEXT_BUDGET_CHARS`).
    pub context_budget_chars: usize,
    /// The cap on a reply's tokens when its bot sets none (`MAX_REPLY_TOKENS`).
    pub max_reply_tokens: u32,
    /// `USER_DAILY_TOKEN_BUDGET`.
    pub token_budget: DailyBudget,
}

impl Responder {
    pub fn new(
        (store, keyring): (EventStore, Keyring),
        relay: OutboxRelay,
        model: Arc<Model>,
        (leases, shares, stops): (ConversationLeases, UserShares, StopSignals),
        settings: ResponderSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            keyring,
            relay,
            model,
            leases,
            shares,
            stops,
            settings,
            shutdown,
        }
    }

    /// Runs a database step, waiting out an outage (until shutdown) so that a
    /// reply the model already produced is not lost and the model is not called
    /// again for it.
    async fn persist<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T, RespondError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RespondError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let mut attempts = 0;
        loop {
            attempts += 1;
            match step().await {
                Err(e)
                    if !self.shutdown.is_cancelled()
                        && (e.is_outage()
                            || (e.is_transient() && attempts < IN_PLACE_ATTEMPTS)) =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, step = what, retry_in_ms = delay.as_millis() as u64,
                        "database step failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Makes sure `message` gets an outcome: answers it (and every unanswered
    /// message of its conversation, oldest first) under the conversation's lease,
    /// hands it to the lease's holder, or, when its user has their share of this
    /// worker, parks it for the sweep. Safe to call any number of times, from any
    /// number of workers.
    pub async fn answer(
        &self,
        message: &MessageRef,
        correlation_id: Option<String>,
    ) -> Result<(), RespondError> {
        let id = message.message_id.to_string();
        let pool = self.store.pool();
        let row = self
            .persist("find the message", || async {
                Ok(ChatHistoryProjection::find_message(pool, &id).await?)
            })
            .await?;
        let Some(row) = row else {
            tracing::warn!("message not found in the history; nothing to answer");
            return Ok(());
        };
        if row.status != MessageStatus::Pending.as_str() {
            return Ok(());
        }
        let conversation = ConversationId {
            user_id: message.user_id,
            bot_id: message.bot_id,
        };
        let stream_id = stream::chat(message.user_id, message.bot_id);
        for _ in 0..LEASE_TRIES {
            let share = self.shares.try_take(conversation.user_id);
            let over_share = share.is_none();
            if let Some(share) = share {
                let lease = self
                    .persist("take the conversation's lease", || async {
                        Ok(self.leases.try_acquire(&stream_id).await?)
                    })
                    .await?;
                if let Some(lease) = lease {
                    let drain = Drain {
                        conversation,
                        share,
                        correlation_id,
                        until: Some(tokio::time::Instant::now() + self.settings.delivery_hold),
                    };
                    return self.drain(drain, lease).await;
                }
            }
            let handed = self
                .persist("hand the message to the lease's holder", || async {
                    Ok(self.leases.hand_off(&stream_id).await?)
                })
                .await?;
            if handed {
                tracing::debug!("the conversation's lease holder answers it");
                return Ok(());
            }
            if over_share {
                let parked = self
                    .persist("park the message for the sweep", || async {
                        Ok(self.leases.park(&stream_id).await?)
                    })
                    .await?;
                if parked {
                    self.shares.parked(conversation.user_id);
                    tracing::debug!("the user has their share of this worker; parked");
                    return Ok(());
                }
            }
            // Between holders: one is taking the lease, or just let it go.
            if self.shutdown.is_cancelled() {
                return Err(RespondError::Stopping);
            }
            let pause = rand::thread_rng().gen_range(5..25);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(RespondError::Contended)
    }

    /// Answers the unanswered messages of conversations whose lease ran out
    /// without a release (a holder that died, or stopped part-way, may have been
    /// handed them). Every worker runs this every `every`, until shutdown; then
    /// the drains it started get `grace` to finish the call they are making.
    pub async fn take_over_expired(&self, every: Duration, grace: Duration) {
        let mut draining = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                // A user with parked messages has a slot free again.
                _ = self.shares.slot_freed() => {}
                _ = self.shutdown.cancelled() => break,
            }
            while draining.try_join_next().is_some() {}
            let skipped = self.shares.users_at_share();
            let expired = match self.leases.expired_chats(TAKE_OVER_BATCH, &skipped).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot look for expired leases; trying again later");
                    continue;
                }
            };
            for stream_id in expired {
                if draining.len() >= SWEEP_DRAINS {
                    break;
                }
                let Some(conversation) = ConversationId::from_stream(&stream_id) else {
                    continue;
                };
                let Some(share) = self.shares.try_take(conversation.user_id) else {
                    continue;
                };
                let Ok(Some(lease)) = self.leases.try_acquire(&stream_id).await else {
                    continue;
                };
                tracing::info!(%stream_id, "taking over a conversation whose lease ran out");
                let responder = self.clone();
                draining.spawn(async move {
                    if let Err(e) = responder.take_over(conversation, lease, share).await {
                        tracing::warn!(error = %e, "taking over the conversation failed; its lease will run out again");
                    }
                });
            }
        }
        // Drains stop between messages at shutdown; one still in a model call
        // after the grace is dropped, and its lease runs out for another worker.
        let finished = async { while draining.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, finished).await.is_err() {
            draining.abort_all();
            while draining.join_next().await.is_some() {}
        }
    }

    /// Drains a conversation whose lease ran out. One whose holders kept giving
    /// up part-way has its oldest unanswered message recorded as failed first:
    /// a message that can never be answered must not hold the rest.
    async fn take_over(
        &self,
        conversation: ConversationId,
        lease: Lease,
        share: ShareSlot,
    ) -> Result<(), RespondError> {
        if lease.failures() >= DRAIN_FAILURES {
            if let Some(stuck) = conversation.oldest_pending(self.store.pool()).await? {
                let message_id = Uuid::parse_str(&stuck.message_id)
                    .map_err(|_| RespondError::MalformedId(stuck.message_id.clone()))?;
                let message = MessageRef {
                    message_id,
                    user_id: conversation.user_id,
                    bot_id: conversation.bot_id,
                };
                self.give_up(&message, GIVEN_UP).await?;
            }
            lease.made_progress().await?;
        }
        // A turn, not the whole backlog: other conversations waiting for the
        // sweep get theirs (a drain that gives way goes to the back of the line).
        let drain = Drain {
            conversation,
            share,
            correlation_id: None,
            until: Some(tokio::time::Instant::now() + SWEEP_TURN.min(self.settings.delivery_hold)),
        };
        self.drain(drain, lease).await
    }

    /// Answers the conversation's unanswered messages until none is left and no
    /// hand-off came meanwhile, then lets the lease go. On a failure the lease is
    /// abandoned (it expires at once), so that a sweep takes the work over; when
    /// the drain gives way, the sweep takes the rest over too. The user's share
    /// slot is held throughout, and freed when it ends.
    async fn drain(&self, drain: Drain, mut lease: Lease) -> Result<(), RespondError> {
        let conversation = drain.conversation;
        let mut read_with_take = Some(lease.handoffs_when_taken());
        loop {
            // Read before looking for work: a hand-off after this makes the
            // release below fail, and the loop looks again.
            let seen = match read_with_take.take() {
                Some(seen) => Ok(seen),
                None => {
                    self.persist("read the lease's hand-offs", || async {
                        Ok(lease.handoffs().await?)
                    })
                    .await
                }
            };
            let seen = match seen {
                Ok(seen) => seen,
                Err(e) => return Err(Self::let_go(lease, e).await),
            };
            match self.answer_pending(&drain, &lease).await {
                Ok(Drained::Done) => {}
                Ok(Drained::GaveWay) => {
                    tracing::debug!("giving way; the rest waits for the sweep");
                    self.shares.parked(conversation.user_id);
                    lease.give_way().await;
                    return Ok(());
                }
                Err(e) => return Err(Self::let_go(lease, e).await),
            }
            match lease.release_if_quiet(seen).await {
                Ok(Release::Released | Release::Lost) => return Ok(()),
                Ok(Release::Busy(held)) => lease = held,
                Err((held, e)) => {
                    held.abandon().await;
                    return Err(e.into());
                }
            }
        }
    }

    /// Lets go of a lease after `error`, leaving the work to the sweep: a failure
    /// counts against the conversation (see `take_over`), a shutdown does not.
    async fn let_go(lease: Lease, error: RespondError) -> RespondError {
        if matches!(error, RespondError::Stopping) {
            lease.give_way().await;
        } else {
            lease.abandon().await;
        }
        error
    }

    /// Answers the conversation's unanswered messages, oldest first, until none
    /// is left, or until the drain must give way. Runs under the conversation's
    /// lease.
    async fn answer_pending(&self, drain: &Drain, lease: &Lease) -> Result<Drained, RespondError> {
        let (conversation, correlation_id) = (drain.conversation, &drain.correlation_id);
        let pool = self.store.pool();
        let stream_id = stream::chat(conversation.user_id, conversation.bot_id);
        // Whether a message may wait that was not seen yet: none did behind the
        // last one answered, and one that comes later is handed to the lease by
        // its delivery. (One whose delivery is held up, by a broker outage, is
        // answered when the relay gets it out, not by this drain.)
        let mut more = true;
        while more {
            // A stopping worker leaves the rest to the next holder.
            if self.shutdown.is_cancelled() {
                return Err(RespondError::Stopping);
            }
            // Taken over (this holder stalled past its expiry): the new holder
            // has the work, and the release that follows finds the lease gone.
            if lease.is_lost() {
                return Ok(Drained::Done);
            }
            let front = self
                .persist("find the oldest unanswered message", || async {
                    Ok(conversation.next_pending(pool).await?)
                })
                .await?;
            let Some(next) = front.message else {
                return Ok(Drained::Done);
            };
            if drain.should_give_way() {
                return Ok(Drained::GaveWay);
            }
            let reply_to = Uuid::parse_str(&next.message_id)
                .map_err(|_| RespondError::MalformedId(next.message_id.clone()))?;
            let attempt = Attempt::try_from(next.attempt).unwrap_or(FIRST_ATTEMPT);
            // Before the read that shows a stop recorded so far (see `stops`).
            let watch = self.stops.watch(reply_to, attempt);
            let (memory, turns) = self
                .persist("read the conversation and its memory", || async {
                    let memory = conversation.memory(pool).await?;
                    let turns = conversation
                        .turns_through((pool, &self.keyring), memory.erased_through, &next)
                        .await?;
                    Ok((memory, turns))
                })
                .await?;
            // The memory's texts are sealed; one that cannot be opened is left
            // out of the prompt rather than holding the reply.
            let memory = match self.keyring.open_memory(memory.clone()).await {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the conversation's memory; answering without it");
                    ConversationMemory {
                        summary: None,
                        profile: None,
                        ..memory
                    }
                }
            };
            let Some(recent) = turns else {
                tracing::info!(%reply_to, "the message got its outcome meanwhile (stopped, or answered elsewhere)");
                continue;
            };
            more = front.more;
            let answering = Answering {
                conversation,
                reply_to,
                attempt,
                seq: next.seq,
                first_seq: recent.first_seq,
            };
            let (outcome, reservation) = self
                .outcome_for(&answering, &watch, &memory, &recent.turns)
                .await?;
            drop(watch);
            let metadata = EventMetadata {
                correlation_id: correlation_id.clone(),
                causation_id: Some(reply_to),
                user_id: Some(conversation.user_id),
            };
            let event = outcome.to_new_event(metadata)?;
            let appended = self
                .persist("record the reply", || async {
                    let append = self
                        .store
                        .append_to_stream(
                            &stream_id,
                            ExpectedVersion::Any,
                            std::slice::from_ref(&event),
                        )
                        .await;
                    match append {
                        Err(AppendError::Duplicate(_)) => Ok(None),
                        other => Ok(Some(other?)),
                    }
                })
                .await?;
            match appended {
                Some(recorded) => {
                    tracing::info!(%reply_to, event = outcome.event_type(), "reply recorded");
                    self.relay.publish_now(&recorded).await;
                    if let Err(e) = lease.made_progress().await {
                        tracing::debug!(error = %e, "could not clear the lease's failures");
                    }
                }
                None => {
                    tracing::info!(%reply_to, "the message got its outcome first (a stop, or another delivery)");
                    // The call was paid all the same: its usage goes on record.
                    if let Some(paid) = unrecorded_cost(&outcome) {
                        let event = paid.to_new_event(EventMetadata {
                            correlation_id: correlation_id.clone(),
                            causation_id: Some(reply_to),
                            user_id: Some(conversation.user_id),
                        })?;
                        let recorded = self
                            .persist("record the call's cost", || async {
                                match self
                                    .store
                                    .append_to_stream(
                                        &stream_id,
                                        ExpectedVersion::Any,
                                        std::slice::from_ref(&event),
                                    )
                                    .await
                                {
                                    Err(AppendError::Duplicate(_)) => Ok(Vec::new()),
                                    other => Ok(other?),
                                }
                            })
                            .await?;
                        self.relay.publish_now(&recorded).await;
                    }
                }
            }
            // The call's usage is recorded (or was refused as a repeat): its
            // reservation goes back to the budget.
            if let Some(reservation) = reservation {
                if let Err(e) = budget::release(pool, reservation).await {
                    tracing::debug!(error = %e, "could not release a budget reservation; it expires on its own");
                }
            }
        }
        Ok(Drained::Done)
    }

    /// Calls the model (or explains why not) for one message: the reply or the
    /// failure to record, or, when the user stopped the reply meanwhile (the api
    /// recorded that), what the dropped call had cost; with the budget
    /// reservation the call held, to give back once that is recorded. A user
    /// whose daily budget is used up gets a failure, and no call.
    async fn outcome_for(
        &self,
        answering: &Answering,
        watch: &Watch,
        memory: &ConversationMemory,
        turns: &[Turn],
    ) -> Result<(DomainEvent, Option<Reservation>), RespondError> {
        let Answering {
            conversation,
            reply_to,
            attempt,
            seq,
            first_seq,
        } = *answering;
        let failed = |reason: String, usage: Option<Usage>| {
            DomainEvent::BotReplyFailed(BotReplyFailed {
                message_id: Uuid::now_v7(),
                reply_to,
                user_id: conversation.user_id,
                bot_id: conversation.bot_id,
                reason,
                attempt,
                usage,
            })
        };
        let pool = self.store.pool();
        let bot = self
            .persist("load the bot", || async {
                Ok(BotsProjection::find(pool, conversation.bot_id).await?)
            })
            .await?;
        let bot = match bot {
            Some(bot) if bot.deleted_at.is_none() && bot.user_id == conversation.user_id => {
                self.keyring.open_row(bot).await?
            }
            // Posted just as the bot was deleted: answered without calling the model.
            _ => {
                return Ok((
                    failed(
                        "This chatbot has been deleted, so it cannot reply.".into(),
                        None,
                    ),
                    None,
                ))
            }
        };
        // Read once, at the start: a reply keeps the settings it started with,
        // whatever the bot's owner changes meanwhile.
        let settings = CallSettings {
            model: bot.model.clone(),
            temperature: bot.temperature.map(|t| t as f32),
            max_tokens: bot
                .max_reply_tokens
                .or(Some(self.settings.max_reply_tokens)),
        };
        let profile = BotProfile {
            kind: bot.kind(),
            name: bot.chatbot_name,
            persona: bot.chatbot_persona,
        };
        let remembered = Memory {
            summary: memory.summary.clone(),
            user_profile: memory.profile.clone(),
        };
        let now = Utc::now();
        let prompt = build_prompt(
            &profile,
            Some(&remembered),
            turns,
            now,
            self.settings.context_budget_chars,
        );
        let digests = prompt.digests();
        let snapshot = PromptSnapshot {
            bot_version: bot.version,
            summary_covers: memory.summary.as_ref().and(memory.summary_covers),
            profile_covers: memory.profile.as_ref().and(memory.profile_covers),
            after_seq: memory.erased_through,
            first_seq,
            last_seq: seq,
            turns_read: u32::try_from(turns.len()).unwrap_or(u32::MAX),
            turns_trimmed: u32::try_from(turns.len().saturating_sub(prompt.turns.len()))
                .unwrap_or(u32::MAX),
            context_budget_chars: u64::try_from(self.settings.context_budget_chars)
                .unwrap_or(u64::MAX),
            model: self.model.name_for(&settings).to_string(),
            temperature: settings.temperature,
            max_tokens: settings.max_tokens,
            now,
            sha256: digests.all,
            system_sha256: digests.system,
            turns_sha256: digests.turns,
        };
        let mut meter = Meter::new(&prompt);
        let cap = settings
            .max_tokens
            .unwrap_or(self.settings.max_reply_tokens);
        let stopped = |usage: Usage| {
            DomainEvent::ModelCallStopped(ModelCallStopped {
                reply_to,
                user_id: conversation.user_id,
                bot_id: conversation.bot_id,
                attempt,
                usage,
            })
        };
        let reservation = loop {
            let admission = self
                .persist("weigh the call against the user's budget", || async {
                    if self.settings.token_budget.tokens().is_none() {
                        return Ok(Admission::Admitted(None));
                    }
                    let tokens = (u64::from(meter.prompt_tokens()), u64::from(cap));
                    Ok(self
                        .settings
                        .token_budget
                        .reserve(pool, (conversation.user_id, Purpose::Reply), tokens)
                        .await?)
                })
                .await?;
            match admission {
                Admission::Admitted(reservation) => break reservation,
                Admission::Refused(exhausted) => {
                    tracing::info!(%reply_to, "the user's daily token budget is used up; no model call");
                    return Ok((failed(exhausted.reason(), None), None));
                }
                // The user's other calls hold the rest of the budget: wait for
                // them to settle (or for this reply to be stopped meanwhile).
                Admission::Wait => {
                    tokio::select! {
                        () = tokio::time::sleep(BUDGET_RECHECK) => {}
                        () = watch.stopped() => {
                            let usage = meter.usage(self.model.name_for(&settings));
                            return Ok((stopped(usage), None));
                        }
                        () = self.shutdown.cancelled() => return Err(RespondError::Stopping),
                    }
                }
            }
        };
        tracing::debug!(seq, "calling the model");
        let (sink, forwarding) = crate::deltas::forward(
            self.relay.publisher().clone(),
            reply_to,
            conversation.user_id,
            conversation.bot_id,
        );
        // A stop drops the call, which closes its connection to the model.
        let completed = tokio::select! {
            completed = self.model.complete(&prompt, &settings, Some(&sink), &mut meter) => {
                Some(completed)
            }
            () = watch.stopped() => None,
        };
        let model = self.model.name_for(&settings);
        let Some(completed) = completed else {
            metrics::counter!(events::metrics::MODEL_CALLS, "outcome" => "stopped").increment(1);
            tracing::info!(%reply_to, "the reply was stopped; its model call is dropped");
            return Ok((stopped(meter.usage(model)), reservation));
        };
        // The forwarding finishes on its own (each delta publish is bounded): the
        // reply is recorded without waiting for deltas, and the apis ignore any
        // delta that arrives after the final event.
        drop(sink);
        drop(forwarding);
        let outcome = match completed {
            Ok(content) => DomainEvent::BotReplyGenerated(BotReplyGenerated {
                message_id: Uuid::now_v7(),
                reply_to,
                user_id: conversation.user_id,
                bot_id: conversation.bot_id,
                content,
                model: model.to_string(),
                attempt,
                usage: Some(meter.usage(model)),
                prompt: Some(Box::new(snapshot)),
            }),
            Err(failure) => failed(failure.0, Some(meter.failed_usage(model))),
        };
        Ok((outcome, reservation))
    }

    /// Records that `message` was given up on (dead-lettered), unless it already has
    /// an outcome, so that nobody waits for it forever.
    pub async fn give_up(&self, message: &MessageRef, reason: &str) -> Result<(), RespondError> {
        let id = message.message_id.to_string();
        let attempt = match ChatHistoryProjection::find_message(self.store.pool(), &id).await? {
            Some(row) if row.status == MessageStatus::Pending.as_str() => {
                Attempt::try_from(row.attempt).unwrap_or(FIRST_ATTEMPT)
            }
            Some(_) => return Ok(()),
            None => {
                tracing::error!(message_id = %id, "a dead-lettered message is not in any history; dropping it");
                return Ok(());
            }
        };
        let event = DomainEvent::BotReplyFailed(BotReplyFailed {
            message_id: Uuid::now_v7(),
            reply_to: message.message_id,
            user_id: message.user_id,
            bot_id: message.bot_id,
            reason: reason.to_string(),
            attempt,
            usage: None,
        })
        .to_new_event(EventMetadata {
            correlation_id: None,
            causation_id: Some(message.message_id),
            user_id: Some(message.user_id),
        })?;
        let stream_id = stream::chat(message.user_id, message.bot_id);
        match self
            .store
            .append_to_stream(&stream_id, ExpectedVersion::Any, &[event])
            .await
        {
            Ok(recorded) => {
                tracing::warn!(message_id = %message.message_id, %reason, "gave up on a message; recorded its failure");
                self.relay.publish_now(&recorded).await;
                Ok(())
            }
            Err(AppendError::Duplicate(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
