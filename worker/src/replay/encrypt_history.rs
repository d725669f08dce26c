//! `worker replay encrypt-history`: seals, in place, the personal texts that
//! releases before sealing wrote in the clear. It is the one sanctioned rewrite
//! of stored events besides erasure's blanking, and it changes what a text is
//! stored as, never what it says.
//!
//! 1. Under the replay lock, the log is read in batches of positions. Each
//!    batch's plaintext texts are sealed ([`Keyring::seal_plaintext`]) and
//!    written back in one transaction with where the run stands
//!    (`history_encryption`), so a run stopped anywhere resumes where it was,
//!    and a rerun finds nothing left to do. A text is replaced only if it is
//!    still the plaintext that was read (an erasure may have blanked it since).
//! 2. The views still hold the old texts in the clear: they are rebuilt from
//!    the sealed log (and swapped in live, as `rebuild` does).
//! 3. `HistoryEncrypted` records the counts, and `verify` checks the views
//!    against the log.
//!
//! Events appended meanwhile are sealed by the store as they are written.

use sqlx::mysql::{MySqlPool, MySqlRow};
use tokio_util::sync::CancellationToken;

use events::event::{stream, DomainEvent, EventMetadata, HistoryEncrypted};
use events::projections::shadow::{ReplayError as ShadowError, ReplayLock};
use events::projections::ReadModels;
use events::sealing::Keyring;
use events::store::{recorded_from_row, EventStore, ExpectedVersion, SELECT_EVENTS};

use super::ReplayError;

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encryption {
    /// The log is sealed through here.
    pub position: i64,
    /// The head of the log when the run started.
    pub head: i64,
    /// Events read by this run.
    pub scanned: u64,
    /// Events with a text sealed by this run, and the texts.
    pub events_sealed: u64,
    pub fields_sealed: u64,
    /// Texts sealed by every run so far.
    pub fields_sealed_in_all: u64,
}

/// Seals every plaintext text through the head of the log, `batch` events at
/// a time, telling `progress` after each batch; then rebuilds the views.
pub async fn encrypt_history(
    (pool, keyring): (&MySqlPool, &Keyring),
    batch: u32,
    cancel: &CancellationToken,
    mut progress: impl FnMut(Encryption),
) -> Result<Encryption, ReplayError> {
    // Sealing with a key-encryption key other than the api's would make data
    // keys that the api cannot open.
    keyring.check_kek().await?;
    let mut lock = ReplayLock::take(pool).await?;
    let sealed = seal_log((pool, keyring), batch.max(1), cancel, &mut progress).await;
    lock.release().await;
    let run = sealed?;
    let views_rebuilt: i8 =
        sqlx::query_scalar("SELECT views_rebuilt FROM history_encryption WHERE id = 1")
            .fetch_one(pool)
            .await?;
    if views_rebuilt == 0 {
        super::rebuild(pool, batch, cancel).await?;
        sqlx::query("UPDATE history_encryption SET views_rebuilt = 1 WHERE id = 1")
            .execute(pool)
            .await?;
    }
    let store = EventStore::new(pool.clone(), std::sync::Arc::new(ReadModels));
    let done = DomainEvent::HistoryEncrypted(HistoryEncrypted {
        through_position: run.position,
        events_sealed: run.events_sealed,
        fields_sealed: run.fields_sealed,
        fields_sealed_in_all: run.fields_sealed_in_all,
    });
    store
        .append_to_stream(
            stream::MAINTENANCE,
            ExpectedVersion::Any,
            &[done.to_new_event(EventMetadata::default())?],
        )
        .await?;
    Ok(run)
}

/// Step 1: the log sealed through its head as it is now.
async fn seal_log(
    (pool, keyring): (&MySqlPool, &Keyring),
    batch: u32,
    cancel: &CancellationToken,
    progress: &mut impl FnMut(Encryption),
) -> Result<Encryption, ReplayError> {
    sqlx::query(
        "INSERT IGNORE INTO history_encryption \
         (id, position, events_sealed, fields_sealed, views_rebuilt, updated_at) \
         VALUES (1, 0, 0, 0, 1, NOW(6))",
    )
    .execute(pool)
    .await?;
    let (position, fields_in_all): (i64, i64) =
        sqlx::query_as("SELECT position, fields_sealed FROM history_encryption WHERE id = 1")
            .fetch_one(pool)
            .await?;
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let mut run = Encryption {
        position,
        head,
        fields_sealed_in_all: u64::try_from(fields_in_all).unwrap_or(0),
        ..Encryption::default()
    };
    progress(run);
    while run.position < head {
        if cancel.is_cancelled() {
            return Err(ShadowError::Cancelled.into());
        }
        let events = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE global_position > ? AND global_position <= ? \
             ORDER BY global_position LIMIT ?"
        ))
        .bind(run.position)
        .bind(head)
        .bind(batch)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(pool)
        .await?;
        let Some(through) = events.last().map(|e| e.global_position) else {
            break;
        };
        let mut updates = Vec::new();
        for event in &events {
            let fields = keyring
                .seal_plaintext(&event.event_type, event.event_id, &event.payload)
                .await?;
            if !fields.is_empty() {
                updates.push((event.global_position, fields));
            }
        }
        let mut tx = pool.begin().await?;
        let (mut sealed_events, mut fields) = (0u64, 0u64);
        for (position, sealed) in &updates {
            let mut changed = false;
            for field in sealed {
                let path = format!("$.{}", field.field);
                let done = sqlx::query(
                    "UPDATE events SET payload = JSON_SET(payload, ?, ?) \
                     WHERE global_position = ? AND JSON_UNQUOTE(JSON_EXTRACT(payload, ?)) = ?",
                )
                .bind(&path)
                .bind(&field.sealed)
                .bind(position)
                .bind(&path)
                .bind(&field.plaintext)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() > 0 {
                    changed = true;
                    fields += 1;
                }
            }
            sealed_events += u64::from(changed);
        }
        sqlx::query(
            "UPDATE history_encryption SET position = ?, events_sealed = events_sealed + ?, \
             fields_sealed = fields_sealed + ?, \
             views_rebuilt = IF(? > 0, 0, views_rebuilt), updated_at = NOW(6) WHERE id = 1",
        )
        .bind(through)
        .bind(sealed_events)
        .bind(fields)
        .bind(fields)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        run.position = through;
        run.scanned += events.len() as u64;
        run.events_sealed += sealed_events;
        run.fields_sealed += fields;
        run.fields_sealed_in_all += fields;
        progress(run);
    }
    Ok(run)
}
