//! `GET /chat/usage`: what the caller's model calls cost, from the `usage_daily`
//! read model.

use axum::extract::State;
use axum::Json;
use chrono::{NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use events::projections::usage::{UsageAmounts, UsageProjection};
use events::projections::BotsProjection;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{lenient, Params};
use crate::openapi::UsageReport;
use crate::state::AppState;
use crate::views::chat_ok;

/// The period reported without `from`: the last 30 days, today included.
const DEFAULT_DAYS: i64 = 30;
/// The longest period one request sums.
const MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    /// One bot's usage; all of the caller's without it.
    #[serde(default, deserialize_with = "lenient::int")]
    chatbot_id: Option<i64>,
    /// The first UTC day, `2026-12-01` (default: 29 days before `to`).
    from: Option<String>,
    /// The last UTC day, included (default: today).
    to: Option<String>,
}

fn day(value: Option<&str>, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                ApiError::BadRequest(format!(
                    "{name} must be a UTC day such as 2026-12-01, not {v:?}"
                ))
            })
        })
        .transpose()
}

fn amounts(calls: &str, a: &UsageAmounts) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    fields.insert(calls.into(), json!(a.calls));
    fields.insert("prompt_tokens".into(), json!(a.prompt_tokens));
    fields.insert("completion_tokens".into(), json!(a.completion_tokens));
    fields
}

/// The caller's usage from `from` to `to` (UTC days, both included): replies
/// and their tokens, in total and per bot, and memory refreshes apart. Failed
/// and stopped calls add their tokens (they are paid), not replies.
#[utoipa::path(get, path = "/chat/usage", operation_id = "usage", tag = "chat", params(UsageParams),
    responses((status = 200, description = "The usage.", body = UsageReport)), security(("bearer" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<UsageParams>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let to = day(params.to.as_deref(), "to")?.unwrap_or_else(|| Utc::now().date_naive());
    let from = match day(params.from.as_deref(), "from")? {
        Some(from) => from,
        None => to
            .checked_sub_signed(TimeDelta::days(DEFAULT_DAYS - 1))
            .ok_or_else(|| ApiError::BadRequest("to is too early a day".into()))?,
    };
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::BadRequest(format!(
            "a report covers at most {MAX_DAYS} days; ask for a shorter period"
        )));
    }
    if let Some(bot) = params.chatbot_id {
        if BotsProjection::find_owned(&state.pool, user, bot)
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound(
                "No such chatbot for this user (it may have been deleted).".into(),
            ));
        }
    }
    let report = UsageProjection::report(&state.pool, user, params.chatbot_id, (from, to)).await?;
    let mut body = amounts("replies", &report.replies);
    body.insert(
        "memory".into(),
        Value::Object(amounts("refreshes", &report.memory)),
    );
    body.insert(
        "by_bot".into(),
        Value::Array(
            report
                .by_bot
                .iter()
                .map(|(bot, a)| {
                    let mut row = amounts("replies", a);
                    row.insert("chatbot_id".into(), json!(bot));
                    Value::Object(row)
                })
                .collect(),
        ),
    );
    body.insert("from".into(), json!(from.to_string()));
    body.insert("to".into(), json!(to.to_string()));
    Ok(chat_ok(Value::Object(body)))
}
