//! Proving that the live read models match the log: replay the log into shadow
//! tables, then compare every row of every read model with its live counterpart.
//!
//! The comparison is at one position, with the system running. While appends are
//! held back for an instant (the `event_log_head` row lock that every append takes
//! first), a second connection opens a consistent snapshot: it sees the live tables
//! exactly as of that position, `H`, and nothing committed later. The shadow tables
//! are then replayed through exactly `H`, so a write landing during the run is in
//! neither side of the comparison and is never reported as a difference.
//!
//! Rows are streamed from both sides in primary-key order and merged, so memory
//! stays flat whatever the tables' size.

use std::cmp::Ordering;
use std::fmt;

use futures::TryStreamExt;
use serde_json::Value;
use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::{Acquire, Connection};
use tokio_util::sync::CancellationToken;

use super::shadow::{Progress, ReplayError, Shadow};
use super::Tables;

/// Differences kept (and printed) per table; the rest are only counted.
const DIFFERENCES_KEPT: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// The log position both sides were compared at.
    pub position: i64,
    pub tables: Vec<TableComparison>,
}

impl VerifyReport {
    pub fn is_identical(&self) -> bool {
        self.tables.iter().all(|t| t.differences_total == 0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableComparison {
    pub table: &'static str,
    /// Rows read from the live table.
    pub rows: u64,
    pub differences_total: u64,
    /// The first few, in key order.
    pub differences: Vec<Difference>,
}

/// One row that is not the same on both sides: its key, and the live and rebuilt
/// values of the columns that differ (`None` for a row missing on that side).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub key: Vec<(String, Value)>,
    pub live: Option<Vec<(String, Value)>>,
    pub rebuilt: Option<Vec<(String, Value)>>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = |pairs: &[(String, Value)]| {
            pairs
                .iter()
                .map(|(column, value)| format!("{column}={value}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(f, "row ({}): ", pairs(&self.key))?;
        match (&self.live, &self.rebuilt) {
            (Some(live), None) => write!(f, "only in the live view: {}", pairs(live)),
            (None, Some(rebuilt)) => {
                write!(f, "missing from the live view; rebuilt: {}", pairs(rebuilt))
            }
            (Some(live), Some(rebuilt)) => write!(
                f,
                "live: {}; rebuilt from the log: {}",
                pairs(live),
                pairs(rebuilt)
            ),
            (None, None) => write!(f, "(no values)"),
        }
    }
}

/// Rebuilds every read model into shadow tables and compares them with the live
/// ones at one position. The shadow tables are dropped afterwards.
///
/// Sessions unused for longer than `session_retention` are left out on both
/// sides: the api prunes them on its own clock (see
/// `SessionsProjection::prune_inactive`), while the log keeps them. The cutoff
/// is read once the snapshot is open, so a session compared was too recent to
/// have been pruned by any prune the snapshot can see.
pub async fn verify_read_models(
    pool: &MySqlPool,
    batch: u32,
    session_retention: std::time::Duration,
    cancel: &CancellationToken,
    mut progress: impl FnMut(Progress),
) -> Result<VerifyReport, ReplayError> {
    let mut shadow = Shadow::create(pool, batch).await?;
    let outcome = compare_with_live(&mut shadow, session_retention, cancel, &mut progress).await;
    shadow.discard().await?;
    outcome
}

async fn compare_with_live(
    shadow: &mut Shadow,
    session_retention: std::time::Duration,
    cancel: &CancellationToken,
    progress: &mut impl FnMut(Progress),
) -> Result<VerifyReport, ReplayError> {
    shadow.replay(None, cancel, &mut *progress).await?;
    let pool = shadow.pool().clone();

    // A connection of its own, closed rather than returned to the pool, since it
    // carries a long transaction.
    let mut snapshot = pool.acquire().await?.detach();
    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut snapshot)
        .await?;
    let position = {
        let mut locker = pool.acquire().await?;
        let mut lock = locker.begin().await?;
        let head: i64 =
            sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *lock)
                .await?;
        sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .execute(&mut snapshot)
            .await?;
        lock.commit().await?;
        head
    };
    let sessions_from: chrono::NaiveDateTime =
        sqlx::query_scalar("SELECT NOW(6) - INTERVAL ? SECOND")
            .bind(session_retention.as_secs())
            .fetch_one(&mut snapshot)
            .await?;
    shadow
        .replay(Some(position), cancel, &mut *progress)
        .await?;

    let mut rebuilt = pool.acquire().await?;
    let mut tables = Vec::new();
    for (live, shadow_table) in Tables::pairs() {
        if cancel.is_cancelled() {
            return Err(ReplayError::Cancelled);
        }
        let session_filter = (live == Tables::LIVE.sessions).then(|| {
            format!(
                "last_active_at >= '{}'",
                sessions_from.format("%Y-%m-%d %H:%M:%S%.6f")
            )
        });
        tables.push(
            compare_table(
                &mut snapshot,
                &mut rebuilt,
                (live, shadow_table),
                session_filter,
            )
            .await?,
        );
    }
    let _ = snapshot.close().await;
    Ok(VerifyReport { position, tables })
}

/// A table's columns, primary key first.
struct Layout {
    key: Vec<Column>,
    rest: Vec<Column>,
}

struct Column {
    name: String,
    textual: bool,
}

impl Layout {
    async fn of(conn: &mut MySqlConnection, table: &str) -> Result<Self, sqlx::Error> {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let primary: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let mut columns: Vec<Column> = columns
            .into_iter()
            .map(|(name, data_type)| Column {
                textual: matches!(data_type.as_str(), "char" | "varchar"),
                name,
            })
            .collect();
        let mut key = Vec::new();
        for name in &primary {
            if let Some(i) = columns.iter().position(|c| &c.name == name) {
                key.push(columns.remove(i));
            }
        }
        Ok(Self { key, rest: columns })
    }

    /// Every row as one JSON array, key columns first, in key order (text keys
    /// compared byte by byte, as [`compare_keys`] does).
    fn select(&self, table: &str, filter: Option<&str>) -> String {
        let all = self
            .key
            .iter()
            .chain(&self.rest)
            .map(|c| format!("`{}`", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let order = self
            .key
            .iter()
            .map(|c| match c.textual {
                true => format!("CAST(`{}` AS BINARY)", c.name),
                false => format!("`{}`", c.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        format!("SELECT CAST(JSON_ARRAY({all}) AS CHAR) FROM {table}{filter} ORDER BY {order}")
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.key.iter().chain(&self.rest).map(|c| c.name.as_str())
    }
}

async fn compare_table(
    live_conn: &mut MySqlConnection,
    rebuilt_conn: &mut MySqlConnection,
    (live, shadow): (&'static str, &'static str),
    filter: Option<String>,
) -> Result<TableComparison, ReplayError> {
    let layout = Layout::of(&mut *rebuilt_conn, live).await?;
    let keys = layout.key.len();
    let names: Vec<&str> = layout.names().collect();
    let mut comparison = TableComparison {
        table: live,
        rows: 0,
        differences_total: 0,
        differences: Vec::new(),
    };
    let live_sql = layout.select(live, filter.as_deref());
    let shadow_sql = layout.select(shadow, filter.as_deref());
    let mut live_rows = sqlx::query_scalar::<_, String>(&live_sql).fetch(&mut *live_conn);
    let mut rebuilt_rows = sqlx::query_scalar::<_, String>(&shadow_sql).fetch(&mut *rebuilt_conn);
    let parse = |row: Option<String>| -> Result<Option<Vec<Value>>, sqlx::Error> {
        row.map(|text| serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    };
    let mut left = parse(live_rows.try_next().await?)?;
    let mut right = parse(rebuilt_rows.try_next().await?)?;
    let named = |values: &[Value], range: std::ops::Range<usize>| {
        range
            .map(|i| (names[i].to_string(), values[i].clone()))
            .collect::<Vec<_>>()
    };
    loop {
        let order = match (&left, &right) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => compare_keys(&l[..keys], &r[..keys]),
        };
        let difference = match (order, &left, &right) {
            (Ordering::Less, Some(l), _) => Some(Difference {
                key: named(l, 0..keys),
                live: Some(named(l, keys..l.len())),
                rebuilt: None,
            }),
            (Ordering::Greater, _, Some(r)) => Some(Difference {
                key: named(r, 0..keys),
                live: None,
                rebuilt: Some(named(r, keys..r.len())),
            }),
            (Ordering::Equal, Some(l), Some(r)) if l != r => {
                let differing: Vec<usize> =
                    (keys..l.len()).filter(|&i| l.get(i) != r.get(i)).collect();
                let pick = |values: &[Value]| {
                    differing
                        .iter()
                        .map(|&i| {
                            (
                                names[i].to_string(),
                                values.get(i).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect::<Vec<_>>()
                };
                Some(Difference {
                    key: named(l, 0..keys),
                    live: Some(pick(l)),
                    rebuilt: Some(pick(r)),
                })
            }
            _ => None,
        };
        if let Some(difference) = difference {
            comparison.differences_total += 1;
            if comparison.differences.len() < DIFFERENCES_KEPT {
                comparison.differences.push(difference);
            }
        }
        if order != Ordering::Greater {
            comparison.rows += 1;
            left = parse(live_rows.try_next().await?)?;
        }
        if order != Ordering::Less {
            right = parse(rebuilt_rows.try_next().await?)?;
        }
    }
    Ok(comparison)
}

/// Orders primary keys as the `ORDER BY` of [`Layout::select`] does: numbers by
/// value, text byte by byte.
fn compare_keys(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (x, y) {
            (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => x.to_string().cmp(&y.to_string()),
            },
            (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
            _ => x.to_string().cmp(&y.to_string()),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::compare_keys;
    use serde_json::json;
    use std::cmp::Ordering;

    #[test]
    fn keys_order_like_the_database_orders_them() {
        let k = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
        assert_eq!(
            compare_keys(&k(json!([2, 10])), &k(json!([2, 9]))),
            Ordering::Greater
        );
        assert_eq!(
            compare_keys(&k(json!([-1])), &k(json!([1]))),
            Ordering::Less
        );
        assert_eq!(
            compare_keys(&k(json!(["0-a"])), &k(json!(["0a"]))),
            Ordering::Less
        );
        assert_eq!(
            compare_keys(&k(json!([1, "x"])), &k(json!([1, "x"]))),
            Ordering::Equal
        );
    }
}
