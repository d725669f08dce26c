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
use crate::openapi::{Done, Memory};
use crate::state::AppState;
use crate::views::chat_ok;

#[derive(Debug, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MemoryRef {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    #[param(required = true)]
    chatbot_id: Option<i64>,
}

/// What the bot remembers of this conversation: a summary and a profile of the user.
#[utoipa::path(get, path = "/chat/memory", operation_id = "memory", tag = "chat", params(MemoryRef),
    responses((status = 200, description = "The memory.", body = Memory)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<MemoryRef>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let bot = required(params.chatbot_id, "chatbot_id")?;
    let remembered = memory::recall(&state.store, &state.keyring, user, bot).await?;
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

/// Erases what the bot remembers of this conversation; later prompts go without it.
#[utoipa::path(post, path = "/chat/memory/forget", operation_id = "forget_memory", tag = "chat", request_body(content((MemoryRef = "application/json"), (MemoryRef = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "Forgotten.", body = Done)), security(("bearer" = [])))]
pub async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Payload(body): Payload<MemoryRef>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    let bot = required(body.chatbot_id, "chatbot_id")?;
    let events = memory::forget(
        &state.store,
        &state.keyring,
        user,
        bot,
        metadata(correlation, user),
    )
    .await?;
    publish_in_background(&state, events);
    Ok(chat_ok(json!([])))
}
