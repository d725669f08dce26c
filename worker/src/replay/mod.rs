//! `worker replay ...`: operator and audit tools over the event log.
//!
//! - `rebuild`: replays the whole log into fresh read-model tables and swaps them in
//!   atomically, while the api and workers keep running;
//! - `verify`: the same replay, compared row by row with the live tables instead of
//!   swapped in;
//! - `export`: events as JSON Lines or CSV, filtered, for audit;
//! - `history --as-of`: one conversation as it stood at an instant;
//! - `usage`: what each user's model calls cost per day and model, for billing;
//! - `explain --message`: a reply's prompt rebuilt from the log and checked
//!   against the digest the reply recorded;
//! - `rotate-kek`: every data key rewrapped under a new key-encryption key;
//! - `encrypt-history`: the texts earlier releases wrote in the clear, sealed
//!   in place.
//!
//! The replay machinery itself lives in `events::projections` (`shadow`, `rebuild`,
//! `verify`); this module drives it and reports.

pub mod as_of;
pub mod billing;
pub mod encrypt_history;
pub mod explain;
pub mod export;
pub mod progress;

use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use events::projections::rebuild::{rebuild_read_models, RebuildReport};
use events::projections::shadow;
use events::projections::verify::{verify_read_models, VerifyReport};

use progress::ProgressDisplay;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Replay(#[from] shadow::ReplayError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Upcast(#[from] events::upcast::UpcastError),
    #[error("{0}")]
    NoSuchBot(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot write the CSV export: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Sealed(#[from] events::sealing::SealError),
    #[error("cannot record the run in the log: {0}")]
    Append(#[from] events::store::AppendError),
}

pub async fn rebuild(
    pool: &MySqlPool,
    batch: u32,
    cancel: &CancellationToken,
) -> Result<RebuildReport, ReplayError> {
    let mut display = ProgressDisplay::new("rebuild");
    let report = rebuild_read_models(pool, batch, cancel, |p| display.update(p)).await;
    display.finish();
    let report = report?;
    tracing::info!(
        events = report.events,
        position = report.position,
        "read models rebuilt and swapped in"
    );
    Ok(report)
}

pub async fn verify(
    pool: &MySqlPool,
    batch: u32,
    session_retention: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<VerifyReport, ReplayError> {
    let mut display = ProgressDisplay::new("verify");
    let report = verify_read_models(pool, batch, session_retention, cancel, |p| {
        display.update(p)
    })
    .await;
    display.finish();
    Ok(report?)
}

/// `verify`'s verdict as the operator reads it: one line when all is well, the
/// first differences per table otherwise.
pub fn describe(report: &VerifyReport) -> String {
    let counts = report
        .tables
        .iter()
        .map(|t| format!("{} {}", t.table, t.rows))
        .collect::<Vec<_>>()
        .join(", ");
    if report.is_identical() {
        return format!(
            "verify: the live views match the log at position {} (rows compared: {counts})",
            report.position
        );
    }
    let mut text = format!(
        "verify: the live views DIFFER from the log at position {} (rows compared: {counts})",
        report.position
    );
    for table in report.tables.iter().filter(|t| t.differences_total > 0) {
        text.push_str(&format!(
            "\n{}: {} row(s) differ{}",
            table.table,
            table.differences_total,
            match table.differences_total as usize > table.differences.len() {
                true => format!("; the first {}:", table.differences.len()),
                false => ":".to_string(),
            }
        ));
        for difference in &table.differences {
            text.push_str(&format!("\n  {difference}"));
        }
    }
    text.push_str("\nRun `worker replay rebuild` to replace the live views with the log's.");
    text
}
