//! Read models built from the event log, and the queries that serve the GET routes.
//!
//! The rules are written once, in `fold`: how each event changes rows held in
//! memory. `bulk` applies a batch of events through them: it loads the rows the
//! batch touches (one `SELECT … IN` per table), folds the batch, and writes back
//! what changed with multi-row statements. Everything that writes a read model
//! goes that way:
//! - [`ReadModels`], the [`InlineProjector`] the appender calls inside every commit,
//!   so a read model and its checkpoint always move with the events (exactly once,
//!   and a request that appended can read its own write at once);
//! - `shadow`, which replays the log into the `*_rebuild` tables that `rebuild`
//!   swaps in and `verify` compares with the live ones;
//! - as-of history, which folds one conversation from nothing, with no database.
//!
//! Since a commit holds a few events and a rebuild a thousand, the result must not
//! depend on where the log is cut into batches: `batch_split` checks that on
//! random logs, and `verify` on real ones.
//!
//! Each of `bots`, `history`, `chat_list`, `sessions`, `memory` and `usage` holds
//! one table's rows and how they are read; `rows` is how history is shaped for
//! clients, `page` bounds what one read holds, and `erasure` forgets a user.

#[cfg(test)]
mod batch_split;
pub mod bots;
pub mod bulk;
pub mod chat_list;
pub mod erasure;
pub mod fold;
pub mod history;
pub mod memory;
pub mod page;
pub mod rebuild;
pub mod rows;
pub mod sessions;
pub mod shadow;
pub mod usage;
pub mod verify;

use futures::future::BoxFuture;
use sqlx::mysql::MySqlConnection;

use crate::event::DomainEvent;
use crate::store::{InlineProjector, RecordedEvent};

pub use bots::{Bot, BotsProjection};
pub use chat_list::{ChatListProjection, ChatListRow};
pub use history::{ChatHistoryProjection, Exchange, HistoryPage, HistoryRow, MessageStatus};
pub use memory::{ConversationMemory, MemoryProjection};
pub use sessions::{Session, SessionsProjection};

/// The checkpoint row shared by the read models: the last global position applied.
pub const CHECKPOINT_NAME: &str = "read_models";

/// Which tables an event is applied to: the live ones, or the shadow copies a
/// rebuild fills before swapping them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    pub bots: &'static str,
    pub chat_history: &'static str,
    pub chat_list: &'static str,
    pub sessions: &'static str,
    pub memory: &'static str,
    pub usage: &'static str,
}

impl Tables {
    pub const LIVE: Tables = Tables {
        bots: "bots",
        chat_history: "chat_history",
        chat_list: "chat_list",
        sessions: "sessions",
        memory: "conversation_memory",
        usage: "usage_daily",
    };
    pub const SHADOW: Tables = Tables {
        bots: "bots_rebuild",
        chat_history: "chat_history_rebuild",
        chat_list: "chat_list_rebuild",
        sessions: "sessions_rebuild",
        memory: "conversation_memory_rebuild",
        usage: "usage_daily_rebuild",
    };

    /// `(live, shadow)` name pairs.
    pub fn pairs() -> [(&'static str, &'static str); 6] {
        [
            (Self::LIVE.bots, Self::SHADOW.bots),
            (Self::LIVE.chat_history, Self::SHADOW.chat_history),
            (Self::LIVE.chat_list, Self::SHADOW.chat_list),
            (Self::LIVE.sessions, Self::SHADOW.sessions),
            (Self::LIVE.memory, Self::SHADOW.memory),
            (Self::LIVE.usage, Self::SHADOW.usage),
        ]
    }
}

/// The read models kept live: each batch the appender commits is folded into
/// them inside its transaction, by the same rules a rebuild replays the log with.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadModels;

impl ReadModels {
    pub async fn checkpoint(conn: &mut MySqlConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT position FROM projection_checkpoint WHERE name = ?")
            .bind(CHECKPOINT_NAME)
            .fetch_one(conn)
            .await
    }
}

impl InlineProjector for ReadModels {
    fn apply<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let Some(last) = events.last() else {
                return Ok(());
            };
            let decoded = events
                .iter()
                .map(|event| Ok((event.stamp(), DomainEvent::decode(event)?)))
                .collect::<Result<Vec<_>, crate::event::DecodeError>>()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            bulk::apply_batch(conn, &Tables::LIVE, &decoded).await?;
            sqlx::query("UPDATE projection_checkpoint SET position = ? WHERE name = ?")
                .bind(last.global_position)
                .bind(CHECKPOINT_NAME)
                .execute(conn)
                .await?;
            Ok(())
        })
    }
}

/// `2024-05-21T15:53:25`: the original's timestamp format (UTC, whole seconds).
///
/// Written field by field: every row of every page goes through here, and
/// `format("%Y-…")` parses its pattern again on each call (2% of an uncached
/// history read's CPU in a profile).
pub fn format_timestamp(at: &chrono::NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    #[test]
    fn timestamps_read_as_chrono_writes_them() {
        let times = [
            (2024, 5, 21, 15, 53, 25, 999_999),
            (2026, 12, 31, 23, 59, 59, 0),
            (999, 1, 2, 3, 4, 5, 0),
        ];
        for (y, mo, d, h, mi, s, us) in times {
            let at = NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|day| day.and_hms_micro_opt(h, mi, s, us))
                .unwrap();
            assert_eq!(
                super::format_timestamp(&at),
                at.format("%Y-%m-%dT%H:%M:%S").to_string()
            );
        }
    }
}
