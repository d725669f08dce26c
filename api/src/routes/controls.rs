//! `chat/stop`, `chat/regenerate` and `chat/clear`: the controls a user has over
//! a conversation (see `domain::controls`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use events::projections::rows::{history_row, RowFormat};

use super::chat::{reply_or_pending, within_budget, Awaited, WaitParams};
use super::{metadata, publish_in_background};
use crate::auth::Caller;
use crate::domain::{controls, required};
use crate::error::ApiError;
use crate::extract::{lenient, CorrelationId, Params, Payload};
use crate::openapi::{Done, Failure, LastReply, Pending, Reply};
use crate::state::AppState;
use crate::views::chat_ok;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ConversationRef {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
}

/// Stops the reply being written (or next to be written) in this conversation,
/// on whichever worker writes it: the model call is cancelled, and the reply is
/// recorded as `stopped` with the text written so far. Messages sent after it
/// are still answered. After a finished reply, nothing changes, and the answer
/// is that reply's row.
#[utoipa::path(post, path = "/chat/stop", operation_id = "stop", tag = "chat",
    request_body(content((ConversationRef = "application/json"), (ConversationRef = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The conversation's last reply row.", body = LastReply)),
    security(("bearer" = [])))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Payload(body): Payload<ConversationRef>,
) -> Result<Json<Value>, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    let bot = required(body.chatbot_id, "chatbot_id")?;
    let live = state.feed.live();
    let stop = controls::stop(
        &state.store,
        (user, bot),
        |reply_to| live.text_so_far(reply_to),
        metadata(correlation, user),
    )
    .await?;
    let row = match stop {
        controls::Stop::Stopped { row, events } => {
            tracing::info!(
                reply_to = row.reply_to.as_deref().unwrap_or("-"),
                "reply stopped"
            );
            state.read_cache.invalidate(user);
            publish_in_background(&state, events);
            Some(row)
        }
        controls::Stop::Nothing(row) => row,
    };
    let row = match row {
        Some(row) => Some(state.keyring.open_row(row).await?),
        None => None,
    };
    Ok(chat_ok(row.map_or(Value::Null, |row| {
        history_row(row, RowFormat::Object)
    })))
}

/// Asks again for a reply to the conversation's last message. The new reply
/// replaces the last one in history, with the next `attempt` and a new `seq`;
/// the old one stays in the log. Answered like `new_chat`.
#[utoipa::path(post, path = "/chat/regenerate", operation_id = "regenerate", tag = "chat", params(WaitParams),
    request_body(content((ConversationRef = "application/json"), (ConversationRef = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The new reply.", body = Reply),
        (status = 202, description = "Recorded; the reply is not written yet.", body = Pending),
        (status = 409, description = "A reply is being written: stop it or wait for it.", body = Failure),
        (status = 502, description = "The model failed for good; history shows the reply as failed.", body = Failure),
    ),
    security(("bearer" = [])))]
pub async fn regenerate(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Params(params): Params<WaitParams>,
    Payload(body): Payload<ConversationRef>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    // A regeneration is a model call, like a new message.
    state.limits.new_chat(user)?;
    let wait = params.wait()?;
    let bot = required(body.chatbot_id, "chatbot_id")?;
    within_budget(&state, user).await?;
    let notices = state
        .feed
        .subscribe(&events::event::stream::chat(user, bot));
    let (message_id, attempt, events) =
        controls::regenerate(&state.store, (user, bot), metadata(correlation, user)).await?;
    tracing::info!(%message_id, "regeneration recorded");
    state.read_cache.invalidate(user);
    publish_in_background(&state, events);
    let awaited = Awaited {
        user,
        message_id,
        attempt,
        just_posted: true,
    };
    reply_or_pending(&state, notices, awaited, wait).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ClearBody {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
    /// Also erase what the bot remembers of the conversation (as
    /// `chat/memory/forget` does). `false` by default.
    #[serde(default, deserialize_with = "lenient::boolean")]
    forget_memory: Option<bool>,
}

/// Clears the conversation: history and the chat list show nothing from
/// before, and prompts carry none of it (with `forget_memory`, nor the memory).
/// A reply being written is stopped first. The log keeps everything.
#[utoipa::path(post, path = "/chat/clear", operation_id = "clear", tag = "chat",
    request_body(content((ClearBody = "application/json"), (ClearBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "Cleared.", body = Done)),
    security(("bearer" = [])))]
pub async fn clear(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Payload(body): Payload<ClearBody>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    let bot = required(body.chatbot_id, "chatbot_id")?;
    let live = state.feed.live();
    let events = controls::clear(
        (&state.store, &state.keyring),
        (user, bot),
        body.forget_memory.unwrap_or(false),
        |reply_to| live.text_so_far(reply_to),
        metadata(correlation, user),
    )
    .await?;
    state.read_cache.invalidate(user);
    publish_in_background(&state, events);
    Ok(chat_ok(json!([])).into_response())
}
