//! Keeping a bot's long-term memory of a user: a rolling summary and a profile,
//! recorded as events on the chat stream (`ConversationSummarized`,
//! `UserProfileUpdated`).
//!
//! Jobs are reply events, delivered on the memory queue twice: at once, and again
//! `MEMORY_IDLE_SECS` later (see `events::bus`). A job refreshes the memory only
//! when it is due: at least `MEMORY_EVERY_MESSAGES` user messages since the last
//! refresh, or, for the delayed delivery, a conversation idle that long with
//! anything unsummarized. So a burst of 50 messages costs a handful of refreshes.
//!
//! Races are settled by the log, not by luck:
//! - one refresh per conversation at a time (a lease of its own, so memory never
//!   waits on replies or replies on memory);
//! - a refresh covers the messages after what is remembered, up to a version, and
//!   is appended with the stream's expected version after checking that nothing
//!   newer (a newer memory, an erasure) was recorded meanwhile; a stale job is
//!   dropped and logged;
//! - the read model only lets a text replace one that covers less, and never one
//!   from before an erasure, so a replay ends the same however jobs interleaved.
//!
//! Every reply makes two jobs, and most idle checks are moot without a query
//! (see [`IdleChecks`]): in a conversation that goes on, each reply's check
//! finds a later one scheduled.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;

use tokio_util::sync::CancellationToken;

use events::event::{
    stream, BotId, ConversationSummarized, DomainEvent, EventMetadata, Usage, UserId,
    UserProfileUpdated,
};
use events::outbox::OutboxRelay;
use events::projections::{BotsProjection, ChatHistoryProjection, MemoryProjection, MessageStatus};
use events::store::{AppendError, EventStore, ExpectedVersion};

use crate::config::MemorySettings;
use crate::lease::ConversationLeases;
use crate::memory_prompt::{capped, profile_prompt, summary_prompt};
use crate::meter::Meter;
use crate::model::{CallSettings, Model, ModelFailure};
use crate::prompt::{Prompt, Role, Turn};
use events::budget::{Admission, Purpose};
use events::sealing::Keyring;

/// Most history rows one refresh reads (the context budget usually binds first).
const MAX_ROWS: u32 = 400;
/// Attempts at the expected-version append while the conversation keeps moving.
const APPEND_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("cannot encode the memory: {0}")]
    Encode(#[from] serde_json::Error),
    /// The model failed for good (after its own bounded retries).
    #[error("the model failed: {0}")]
    Model(#[from] ModelFailure),
    #[error("the worker is stopping")]
    Stopping,
    #[error("cannot schedule the idle check: {0}")]
    Bus(#[from] events::bus::BusError),
    #[error(transparent)]
    Sealed(#[from] events::sealing::SealError),
}

impl MemoryError {
    /// Worth another delivery, as opposed to a job to dead-letter.
    pub fn is_transient(&self) -> bool {
        !matches!(self, MemoryError::Model(_) | MemoryError::Encode(_))
    }
}

/// One job: a reply that was recorded in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryJob {
    pub user_id: UserId,
    pub bot_id: BotId,
    /// The reply's version in the chat stream.
    pub seq: i64,
    /// Delivered again after `MEMORY_IDLE_SECS`: due only if the conversation has
    /// been idle since.
    pub idle_check: bool,
    /// The idle time the check was scheduled for, which a worker with another
    /// `MEMORY_IDLE_SECS` (mid-deploy) judges it by.
    pub idle_after: Option<Duration>,
}

/// The header that carries an idle check's delay, in milliseconds.
pub const IDLE_AFTER_HEADER: &str = "x-idle-after-ms";

/// Conversations whose newest idle check a worker remembers (about 40 bytes
/// each).
const REMEMBERED_CONVERSATIONS: usize = 10_000;

/// The newest reply, per conversation, whose idle check this worker
/// scheduled. An idle check is moot once a later reply's is scheduled: the
/// conversation was not idle since, and that check looks again later. A
/// conversation forgotten here (or another worker's) only costs the reads.
#[derive(Clone)]
struct IdleChecks(Arc<Mutex<LruCache<(UserId, BotId), i64>>>);

impl IdleChecks {
    fn new() -> Self {
        let capacity = NonZeroUsize::new(REMEMBERED_CONVERSATIONS).unwrap_or(NonZeroUsize::MIN);
        Self(Arc::new(Mutex::new(LruCache::new(capacity))))
    }

    fn moot(&self, job: &MemoryJob) -> bool {
        job.idle_check
            && self.0.lock().is_ok_and(|mut scheduled| {
                scheduled
                    .get(&(job.user_id, job.bot_id))
                    .is_some_and(|newest| *newest > job.seq)
            })
    }

    fn scheduled(&self, job: &MemoryJob) {
        if let Ok(mut scheduled) = self.0.lock() {
            let newest = scheduled.get_or_insert_mut((job.user_id, job.bot_id), || job.seq);
            *newest = (*newest).max(job.seq);
        }
    }
}

#[derive(Clone)]
pub struct MemoryKeeper {
    store: EventStore,
    keyring: Keyring,
    relay: OutboxRelay,
    model: Arc<Model>,
    leases: ConversationLeases,
    settings: MemorySettings,
    context_budget_chars: usize,
    shutdown: CancellationToken,
    idle_checks: IdleChecks,
}

impl MemoryKeeper {
    pub fn new(
        (store, keyring): (EventStore, Keyring),
        relay: OutboxRelay,
        model: Arc<Model>,
        leases: ConversationLeases,
        settings: MemorySettings,
        context_budget_chars: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            keyring,
            relay,
            model,
            leases,
            settings,
            context_budget_chars,
            shutdown,
            idle_checks: IdleChecks::new(),
        }
    }

    /// Refreshes the conversation's memory if the job finds it due.
    pub async fn handle(&self, job: MemoryJob) -> Result<(), MemoryError> {
        if self.idle_checks.moot(&job) || !self.due(&job).await? {
            return Ok(());
        }
        let pool = self.store.pool();
        match BotsProjection::find(pool, job.bot_id).await? {
            Some(bot) if bot.deleted_at.is_none() && bot.user_id == job.user_id => {}
            // Deleting a bot ends its memory jobs.
            _ => return Ok(()),
        }
        let lease_name = format!("memory-{}", stream::chat(job.user_id, job.bot_id));
        let lease = self
            .leases
            .acquire(&lease_name, &self.shutdown)
            .await?
            .ok_or(MemoryError::Stopping)?;
        // Checked again under the lease: a job that waited may find the refresh done.
        let refreshed = match self.due(&job).await {
            Ok(true) => {
                let refreshed = self.refresh(&job).await;
                let outcome = if refreshed.is_ok() { "done" } else { "failed" };
                metrics::counter!(events::metrics::MEMORY_REFRESHES, "outcome" => outcome)
                    .increment(1);
                refreshed
            }
            other => other.map(|_| ()),
        };
        lease.release().await;
        refreshed
    }

    /// Puts the reply's job back on the bus as an idle check, due after
    /// `MEMORY_IDLE_SECS` (see `events::bus`).
    pub async fn schedule_idle_check(
        &self,
        job: &MemoryJob,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<(), MemoryError> {
        use lapin::types::{AMQPValue, FieldTable};
        let mut headers = FieldTable::default();
        let millis = i64::try_from(self.settings.idle.as_millis()).unwrap_or(i64::MAX);
        headers.insert(IDLE_AFTER_HEADER.into(), AMQPValue::LongLongInt(millis));
        if let Some(id) = correlation_id {
            headers.insert(
                events::bus::CORRELATION_HEADER.into(),
                AMQPValue::LongString(id.into()),
            );
        }
        self.relay
            .publisher()
            .publish_idle_check(body, headers, self.settings.idle)
            .await?;
        self.idle_checks.scheduled(job);
        Ok(())
    }

    async fn due(&self, job: &MemoryJob) -> Result<bool, MemoryError> {
        let pool = self.store.pool();
        let memory = MemoryProjection::find(pool, job.user_id, job.bot_id).await?;
        let (unsummarized, idle) = ChatHistoryProjection::activity_after(
            pool,
            job.user_id,
            job.bot_id,
            memory.remembered_through(),
            self.settings.every_messages,
        )
        .await?;
        Ok(if job.idle_check {
            let idle_for = job.idle_after.unwrap_or(self.settings.idle);
            unsummarized > 0 && idle.is_some_and(|idle| idle >= idle_for)
        } else {
            unsummarized >= i64::from(self.settings.every_messages)
        })
    }

    async fn refresh(&self, job: &MemoryJob) -> Result<(), MemoryError> {
        let pool = self.store.pool();
        let sealed = MemoryProjection::find(pool, job.user_id, job.bot_id).await?;
        let memory = self.keyring.open_memory(sealed).await?;
        let mut rows = ChatHistoryProjection::rows_after(
            pool,
            job.user_id,
            job.bot_id,
            memory.remembered_through(),
            MAX_ROWS,
        )
        .await?;
        self.keyring.open_rows(&mut rows).await?;
        // The previous texts plus the messages since, within the context budget:
        // what does not fit waits for the next refresh.
        let mut budget = self
            .context_budget_chars
            .saturating_sub(memory.summary.as_deref().map_or(0, str::len))
            .saturating_sub(memory.profile.as_deref().map_or(0, str::len));
        let mut messages = Vec::new();
        let mut covers = None;
        for row in &rows {
            let size = row.content.chars().count();
            if covers.is_some() && size > budget {
                break;
            }
            budget = budget.saturating_sub(size);
            covers = Some(row.seq);
            if row.by_user == 0 && row.status == MessageStatus::Failed.as_str() {
                continue; // a failure's reason is not something the user said
            }
            if row.content.is_empty() {
                continue; // a reply stopped before it was written
            }
            messages.push(Turn {
                role: if row.by_user == 1 {
                    Role::User
                } else {
                    Role::Assistant
                },
                content: row.content.clone(),
                at: Some(row.created_at),
            });
        }
        let Some(covers) = covers else {
            return Ok(());
        };
        let max = self.settings.max_chars;
        let prompts = [
            summary_prompt(memory.summary.as_deref(), &messages, max),
            profile_prompt(memory.profile.as_deref(), &messages, max),
        ];
        // Memory is spent on the user's behalf: it counts against their budget,
        // and a user past it keeps the memory they have.
        let tokens = prompts
            .iter()
            .map(|p| crate::meter::prompt_tokens(p) as u64)
            .sum::<u64>();
        let caps = 2 * u64::from(self.settings.max_tokens);
        let reservation = match self
            .settings
            .token_budget
            .reserve(
                self.store.pool(),
                (job.user_id, Purpose::Memory),
                (tokens, caps),
            )
            .await?
        {
            Admission::Admitted(reservation) => reservation,
            Admission::Wait | Admission::Refused(_) => {
                tracing::info!(user_id = job.user_id, bot_id = job.bot_id,
                    "the user's daily token budget has no room for a refresh now; the memory stays as it is");
                return Ok(());
            }
        };
        let [summary_prompt, profile_prompt] = &prompts;
        let called = async {
            let summary = self.call(summary_prompt).await?;
            let profile = self.call(profile_prompt).await?;
            Ok::<_, ModelFailure>((summary, profile))
        }
        .await;
        let ((summary, summary_usage), (profile, profile_usage)) = match called {
            Ok(answers) => answers,
            Err(failure) => {
                if let Some(reservation) = reservation {
                    let _ = events::budget::release(self.store.pool(), reservation).await;
                }
                return Err(failure.into());
            }
        };
        let events = [
            DomainEvent::ConversationSummarized(ConversationSummarized {
                user_id: job.user_id,
                bot_id: job.bot_id,
                summary: capped(&summary, max),
                covers_version: covers,
                usage: Some(summary_usage),
            }),
            DomainEvent::UserProfileUpdated(UserProfileUpdated {
                user_id: job.user_id,
                bot_id: job.bot_id,
                profile: capped(&profile, max),
                covers_version: covers,
                usage: Some(profile_usage),
            }),
        ]
        .iter()
        .map(|e| {
            e.to_new_event(EventMetadata {
                correlation_id: None,
                causation_id: None,
                user_id: Some(job.user_id),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
        // The store seals what is remembered under the conversation's memory
        // key, which `forget` destroys.
        let recorded = match self.record(job, covers, &events).await {
            Err(MemoryError::Append(e)) if e.is_user_erased() => {
                tracing::info!(
                    user_id = job.user_id,
                    "the user was erased; their memory is not recorded"
                );
                Ok(())
            }
            other => other,
        };
        if let Some(reservation) = reservation {
            if let Err(e) = events::budget::release(self.store.pool(), reservation).await {
                tracing::debug!(error = %e, "could not release a budget reservation; it expires on its own");
            }
        }
        recorded
    }

    /// One metered call, capped at `MEMORY_MAX_TOKENS`.
    async fn call(&self, prompt: &Prompt) -> Result<(String, Usage), ModelFailure> {
        let settings = CallSettings {
            max_tokens: Some(self.settings.max_tokens),
            ..CallSettings::default()
        };
        let mut meter = Meter::new(prompt);
        let text = self
            .model
            .complete(prompt, &settings, None, &mut meter)
            .await?;
        Ok((text, meter.usage(self.model.name_for(&settings))))
    }

    /// Appends the refresh at the stream's current version, unless something newer
    /// was remembered (or erased) while the model was writing.
    async fn record(
        &self,
        job: &MemoryJob,
        covers: i64,
        events: &[events::store::NewEvent],
    ) -> Result<(), MemoryError> {
        let pool = self.store.pool();
        let stream_id = stream::chat(job.user_id, job.bot_id);
        for attempt in 1..=APPEND_ATTEMPTS {
            let version = self.store.stream_version(&stream_id).await?;
            let memory = MemoryProjection::find(pool, job.user_id, job.bot_id).await?;
            if memory.remembered_through() >= covers {
                tracing::info!(user_id = job.user_id, bot_id = job.bot_id, covers,
                    remembered_through = memory.remembered_through(),
                    "a newer memory or an erasure was recorded meanwhile; dropping this stale refresh");
                return Ok(());
            }
            match self
                .store
                .append_to_stream(&stream_id, ExpectedVersion::Exact(version), events)
                .await
            {
                Ok(recorded) => {
                    tracing::info!(
                        user_id = job.user_id,
                        bot_id = job.bot_id,
                        covers,
                        "memory refreshed"
                    );
                    self.relay.publish_now(&recorded).await;
                    return Ok(());
                }
                // A repeated job: these very texts are recorded already.
                Err(AppendError::Duplicate(_)) => return Ok(()),
                Err(AppendError::Conflict { .. }) if attempt < APPEND_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
