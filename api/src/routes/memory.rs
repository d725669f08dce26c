//! `chat/memory` and `chat/memory/forget`: what a bot remembers of its user, shown
//! and erasable by that user.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use events::projections::format_timestamp;

use super::{metadata, publish_in_background};
use crate::auth::Caller;
use crate::domain::{memory, required};
use crate::error::ApiError;
use crate::extract::{lenient, CorrelationId, Params, Payload};
use crate::state::AppState;
use crate::views::chat_ok;

#[derive(Debug, Deserialize)]
pub struct MemoryRef {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    chatbot_id: Option<i64>,
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<MemoryRef>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let bot = required(params.chatbot_id, "chatbot_id")?;
    let remembered = memory::recall(&state.store, user, bot).await?;
    Ok(chat_ok(json!({
        "summary": remembered.summary,
        "profile": remembered.profile,
        "up_to_seq": remembered.summary_covers,
        "updated_at": remembered
            .summary
            .as_ref()
            .and(remembered.updated_at.as_ref())
            .map(format_timestamp),
    })))
}

pub async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Payload(body): Payload<MemoryRef>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    let bot = required(body.chatbot_id, "chatbot_id")?;
    let events = memory::forget(&state.store, user, bot, metadata(correlation, user)).await?;
    publish_in_background(&state, events);
    Ok(chat_ok(json!([])))
}
