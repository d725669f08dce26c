//! `worker replay usage`: what each user's model calls cost, per UTC day and
//! model, summed from the log alone (the usage the events record), for billing.
//!
//! The same rule as the `usage_daily` read model ([`UsageProjection::contribution`])
//! decides what each event adds, so the export and `GET /chat/usage` agree; the
//! log is read in batches, so memory holds only the sums.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{NaiveDate, TimeDelta};
use serde::Serialize;
use sqlx::mysql::{MySqlPool, MySqlRow};

use events::event::{DomainEvent, UserId};
use events::projections::usage::{UsageProjection, MEMORY};
use events::store::{recorded_from_row, SELECT_EVENTS};

use super::ReplayError;

const BATCH: u32 = 1000;
const MODEL_EVENTS: &str = "'BotReplyGenerated', 'BotReplyFailed', 'ModelCallStopped', \
    'ConversationSummarized', 'UserProfileUpdated'";

/// One line of the bill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BillingLine {
    pub user_id: UserId,
    pub day: NaiveDate,
    pub model: String,
    pub replies: i64,
    pub memory_refreshes: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BillingFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per user, day and model.
    Csv,
}

/// The bill from `from` to `to` (UTC days, both included), of one user or all,
/// ordered by user, day and model.
pub async fn usage_lines(
    pool: &MySqlPool,
    (from, to): (NaiveDate, NaiveDate),
    user: Option<UserId>,
) -> Result<Vec<BillingLine>, ReplayError> {
    let start = from.and_time(chrono::NaiveTime::MIN);
    let end = (to + TimeDelta::days(1)).and_time(chrono::NaiveTime::MIN);
    let streams = user.map(|user| format!("chat-{user}-%"));
    let mut lines: BTreeMap<(UserId, NaiveDate, String), BillingLine> = BTreeMap::new();
    let mut position = 0;
    loop {
        let events = sqlx::query(&format!(
            "{SELECT_EVENTS} WHERE global_position > ? AND event_type IN ({MODEL_EVENTS}) \
             AND recorded_at >= ? AND recorded_at < ? AND (? IS NULL OR stream_id LIKE ?) \
             ORDER BY global_position LIMIT ?"
        ))
        .bind(position)
        .bind(start)
        .bind(end)
        .bind(&streams)
        .bind(&streams)
        .bind(BATCH)
        .try_map(|row: MySqlRow| recorded_from_row(&row))
        .fetch_all(pool)
        .await?;
        let Some(last) = events.last() else { break };
        position = last.global_position;
        for event in &events {
            let decoded = DomainEvent::decode(event).map_err(|source| {
                events::projections::shadow::ReplayError::Unreadable {
                    position: event.global_position,
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    source,
                }
            })?;
            let Some(((user, day, _, kind, model), add)) =
                UsageProjection::contribution(&event.stamp(), &decoded)
            else {
                continue;
            };
            let line = lines
                .entry((user, day, model.clone()))
                .or_insert_with(|| BillingLine {
                    user_id: user,
                    day,
                    model,
                    ..BillingLine::default()
                });
            match kind {
                MEMORY => line.memory_refreshes += add.calls,
                _ => line.replies += add.calls,
            }
            line.prompt_tokens += add.prompt_tokens;
            line.completion_tokens += add.completion_tokens;
        }
    }
    Ok(lines.into_values().collect())
}

/// Writes the bill; returns how many lines.
pub fn write_lines(
    lines: &[BillingLine],
    format: BillingFormat,
    out: &mut impl Write,
) -> Result<usize, ReplayError> {
    match format {
        BillingFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            for line in lines {
                csv.serialize(line)?;
            }
            csv.flush()?;
        }
        BillingFormat::Jsonl => {
            for line in lines {
                serde_json::to_writer(&mut *out, line)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(lines.len())
}
