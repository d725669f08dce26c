//! Daily token budgets, enforced before a model call.
//!
//! What a user's calls have used today is the `usage_daily` read model (replies
//! and memory refreshes alike: both are spent on the user's behalf, so one
//! budget bounds what a user can cost a day). A call about to start reserves
//! its prompt and its cap, under a per-user row lock, so concurrent calls are
//! weighed one after another:
//! - its prompt fits beside what is used and what others hold: it goes ahead;
//! - it fits beside what is used, not beside what others hold: it waits for
//!   them to settle (they may use less than they hold);
//! - it does not fit beside what is used: the budget is exhausted for the day,
//!   the call is refused, and the day is marked, so the api refuses new
//!   messages until the budget resets.
//!
//! So calls overshoot the budget by at most one call's cap. The reservation is
//! given back once the call's usage is recorded; one whose worker died expires
//! on its own.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use sqlx::mysql::MySqlPool;
use sqlx::Connection;
use uuid::Uuid;

use crate::config::{env_opt, ConfigError};
use crate::event::UserId;
use crate::projections::usage::UsageProjection;

/// How long a reservation outlives a worker that died holding it, unless the
/// worker says (a call's longest run: every attempt, to its timeout).
const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

/// `USER_DAILY_TOKEN_BUDGET`: tokens per user per UTC day (`None`, unlimited),
/// and how long a reservation is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyBudget {
    tokens: Option<u64>,
    reservation_ttl: Duration,
}

/// Who asks for a call: a refused reply ends the user's day (the api refuses
/// new messages); a refused memory refresh only waits for another day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Reply,
    Memory,
}

/// A budget used up: when it starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub budget: u64,
    pub resets_at: DateTime<Utc>,
}

impl Exhausted {
    /// Seconds from now until the budget starts again.
    pub fn retry_after_secs(&self) -> u64 {
        (self.resets_at - Utc::now())
            .num_seconds()
            .max(1)
            .unsigned_abs()
    }

    /// Worded for the user.
    pub fn reason(&self) -> String {
        format!(
            "Your daily token budget ({} tokens) is used up; it resets at {}.",
            self.budget,
            self.resets_at.format("%Y-%m-%d %H:%M UTC")
        )
    }
}

/// Tokens held for a call in progress, until [`release`]d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation(String);

/// What a call about to start may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead, holding this (`None`: no budget is set).
    Admitted(Option<Reservation>),
    /// Wait for the calls in progress to settle, then ask again.
    Wait,
    /// No: the budget is used up for the day.
    Refused(Exhausted),
}

/// The next UTC midnight after `now`.
pub fn resets_at(now: NaiveDateTime) -> DateTime<Utc> {
    let tomorrow = now.date() + TimeDelta::days(1);
    tomorrow.and_time(chrono::NaiveTime::MIN).and_utc()
}

impl DailyBudget {
    pub fn new(tokens: Option<u64>) -> Self {
        Self {
            tokens,
            reservation_ttl: RESERVATION_TTL,
        }
    }

    /// Reservations are held at least this long (a call that may run longer
    /// must not outlive its reservation).
    pub fn with_reservation_ttl(self, ttl: Duration) -> Self {
        Self {
            reservation_ttl: ttl.max(RESERVATION_TTL),
            ..self
        }
    }

    pub fn tokens(&self) -> Option<u64> {
        self.tokens
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let Some(value) = env_opt("USER_DAILY_TOKEN_BUDGET") else {
            return Ok(Self::new(None));
        };
        value
            .trim()
            .parse::<u64>()
            .map(|tokens| Self::new(Some(tokens)))
            .map_err(|e| ConfigError::Invalid {
                name: "USER_DAILY_TOKEN_BUDGET",
                value: value.clone(),
                reason: format!("{e}; give a number of tokens, or leave it unset for no budget"),
            })
    }

    /// `Err` when the user's budget for today is used up: what is used and held
    /// reaches it, or a call was refused for it today.
    pub async fn check(
        &self,
        pool: &MySqlPool,
        user: UserId,
    ) -> Result<Result<(), Exhausted>, sqlx::Error> {
        let Some(budget) = self.tokens else {
            return Ok(Ok(()));
        };
        let (now, refused_today): (NaiveDateTime, i64) = sqlx::query_as(
            "SELECT UTC_TIMESTAMP(6), CAST((SELECT COUNT(*) FROM token_budgets WHERE user_id = ? \
             AND exhausted_on = UTC_DATE() AND exhausted_budget >= ?) AS SIGNED)",
        )
        .bind(user)
        .bind(to_i64(budget))
        .fetch_one(pool)
        .await?;
        let spent = UsageProjection::tokens_on(pool, user, now.date()).await?;
        let held = reserved(pool, user).await?;
        Ok(
            if refused_today > 0 || spent.saturating_add(held) >= to_i64(budget) {
                Err(Exhausted {
                    budget,
                    resets_at: resets_at(now),
                })
            } else {
                Ok(())
            },
        )
    }

    /// Weighs a call of `prompt` tokens capped at `cap` (see the module's doc),
    /// and reserves `prompt + cap` for one admitted.
    pub async fn reserve(
        &self,
        pool: &MySqlPool,
        (user, purpose): (UserId, Purpose),
        (prompt, cap): (u64, u64),
    ) -> Result<Admission, sqlx::Error> {
        let Some(budget) = self.tokens else {
            return Ok(Admission::Admitted(None));
        };
        let mut conn = pool.acquire().await?;
        sqlx::query("INSERT IGNORE INTO token_budgets (user_id) VALUES (?)")
            .bind(user)
            .execute(&mut *conn)
            .await?;
        let mut tx = conn.begin().await?;
        let now: NaiveDateTime = sqlx::query_scalar(
            "SELECT UTC_TIMESTAMP(6) FROM token_budgets WHERE user_id = ? FOR UPDATE",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        let spent: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS SIGNED) \
             FROM usage_daily WHERE user_id = ? AND day = ?",
        )
        .bind(user)
        .bind(now.date())
        .fetch_one(&mut *tx)
        .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(tokens), 0) AS SIGNED) FROM token_reservations \
             WHERE user_id = ? AND expires_at > ?",
        )
        .bind(user)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let prompt_i = to_i64(prompt);
        if spent.saturating_add(prompt_i) >= to_i64(budget) && purpose == Purpose::Memory {
            tx.rollback().await?;
            return Ok(Admission::Refused(Exhausted {
                budget,
                resets_at: resets_at(now),
            }));
        }
        if spent.saturating_add(prompt_i) >= to_i64(budget) {
            sqlx::query(
                "UPDATE token_budgets SET exhausted_on = ?, exhausted_budget = ? WHERE user_id = ?",
            )
            .bind(now.date())
            .bind(to_i64(budget))
            .bind(user)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Admission::Refused(Exhausted {
                budget,
                resets_at: resets_at(now),
            }));
        }
        if spent.saturating_add(held).saturating_add(prompt_i) >= to_i64(budget) {
            tx.rollback().await?;
            return Ok(Admission::Wait);
        }
        let id = Uuid::now_v7().to_string();
        let ttl = TimeDelta::from_std(self.reservation_ttl).unwrap_or(TimeDelta::minutes(15));
        sqlx::query(
            "INSERT INTO token_reservations (reservation_id, user_id, tokens, expires_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(user)
        .bind(to_i64(prompt.saturating_add(cap)))
        .bind(now + ttl)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Admission::Admitted(Some(Reservation(id))))
    }
}

/// Gives a reservation back (its call's usage is recorded, or it made none),
/// and clears long-expired ones.
pub async fn release(pool: &MySqlPool, reservation: Reservation) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM token_reservations WHERE reservation_id = ? \
         OR expires_at < UTC_TIMESTAMP(6) - INTERVAL 1 DAY",
    )
    .bind(reservation.0)
    .execute(pool)
    .await?;
    Ok(())
}

async fn reserved(pool: &MySqlPool, user: UserId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(tokens), 0) AS SIGNED) FROM token_reservations \
         WHERE user_id = ? AND expires_at > UTC_TIMESTAMP(6)",
    )
    .bind(user)
    .fetch_one(pool)
    .await
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_resets_at_the_next_utc_midnight() {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 5)
            .and_then(|d| d.and_hms_opt(23, 59, 59))
            .unwrap_or_default();
        assert_eq!(resets_at(now).to_rfc3339(), "2026-12-06T00:00:00+00:00");
        let exhausted = Exhausted {
            budget: 1000,
            resets_at: resets_at(now),
        };
        assert!(exhausted
            .reason()
            .contains("resets at 2026-12-06 00:00 UTC"));
    }
}
