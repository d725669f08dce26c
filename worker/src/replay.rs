//! `worker replay ...`: operator tools over the event log.
//!
//! - `rebuild`: replays the whole log into fresh read-model tables and swaps them in
//!   atomically, while the api and workers keep running (see
//!   `events::projections::rebuild`).
//! - `export`: writes events as JSON lines (one stream, or the whole log from a
//!   position), for audit.

use std::io::Write;

use sqlx::MySqlPool;

use events::projections::rebuild::{rebuild_read_models, RebuildError, RebuildReport};
use events::store::{read_all, read_stream_after, RecordedEvent};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
}

pub async fn rebuild(pool: &MySqlPool, batch: u32) -> Result<RebuildReport, ReplayError> {
    let mut last_logged = 0;
    let report = rebuild_read_models(pool, batch, |position, head| {
        // A line per ~10% (and the last one), so a long rebuild shows it is moving.
        if position == head || position - last_logged >= (head / 10).max(1) {
            last_logged = position;
            tracing::info!(position, head, "rebuilding read models");
        }
    })
    .await?;
    tracing::info!(
        events = report.events,
        position = report.position,
        "read models rebuilt and swapped in"
    );
    Ok(report)
}

/// Writes the events of `stream` (or every event after `after`) to `out`, one JSON
/// object per line, oldest first. Returns how many were written.
pub async fn export(
    pool: &MySqlPool,
    stream: Option<&str>,
    after: i64,
    out: &mut impl Write,
) -> Result<u64, ReplayError> {
    let mut written = 0;
    let mut position = after;
    loop {
        let events: Vec<RecordedEvent> = match stream {
            Some(stream) => read_stream_after(pool, stream, position, 1000).await?,
            None => read_all(pool, position, 1000).await?,
        };
        let Some(last) = events.last() else { break };
        position = last.global_position;
        for event in &events {
            serde_json::to_writer(&mut *out, event)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}
