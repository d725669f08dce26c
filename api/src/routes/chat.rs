//! `chat/new_chat`, `chat/history` and `chat/list`.

use super::page::{Page, LIST_MAX_BYTES};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use events::event::stream;
use events::projections::{ChatHistoryProjection, ChatListProjection, HistoryRow, MessageStatus};

use super::{metadata, publish_in_background};
use crate::auth::Caller;
use crate::domain::chat::{self, PostMessage, Posted};
use crate::domain::required;
use crate::error::ApiError;
use crate::extract::{lenient, CorrelationId, Params, Payload};
use crate::feed::{self, Heard};
use crate::hangup::Hangup;
use crate::heavy_reads::Turn;
use crate::openapi::{ChatList, Failure, History, Pending, Reply};
use crate::read_cache::ReadKey;
use crate::state::AppState;
use crate::views::{chat_list_rows, chat_ok, chat_ok_bytes, history_rows, json_body, RowFormat};

/// Longest long-poll a client may ask for.
const MAX_LONG_POLL: Duration = Duration::from_secs(60);
/// Most history rows one request returns ...
const MAX_HISTORY_ROWS: u32 = 2_000;
/// ... and about the most message text (a page of long messages is shorter).
const HISTORY_MAX_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewChatBody {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
    /// The message.
    #[schema(required = true)]
    input: Option<String>,
    /// The client's own id for this message: a retry with the same id is
    /// answered as the first was, and stores nothing more.
    client_msg_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// `true` (the default) waits for the reply; `false` answers 202 at once.
    wait: Option<String>,
}

impl WaitParams {
    /// `wait` is a yes or a no; anything else is refused rather than guessed.
    pub(super) fn wait(&self) -> Result<bool, ApiError> {
        match self
            .wait
            .as_deref()
            .map(|w| w.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "wait must be true or false (also 1/0, yes/no), not {other:?}"
            ))),
        }
    }
}

fn row_format(format: Option<&str>) -> Result<RowFormat, ApiError> {
    RowFormat::from_param(format).map_err(ApiError::BadRequest)
}

/// Posts a message to a bot. With `wait` (the default) the answer is the reply,
/// or 202 if it takes longer than the api waits; history has it either way.
#[utoipa::path(post, path = "/chat/new_chat", tag = "chat", params(WaitParams), request_body(content((NewChatBody = "application/json"), (NewChatBody = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The reply.", body = Reply),
        (status = 202, description = "Recorded; the reply is not written yet.", body = Pending),
        (status = 422, description = "`client_msg_id` was used for another message.", body = Failure),
        (status = 502, description = "The model failed for good; history shows the reply as failed.", body = Failure),
    ),
    security(("bearer" = [])))]
pub async fn new_chat(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    Params(params): Params<WaitParams>,
    Payload(body): Payload<NewChatBody>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(body.user_id, &state).await?;
    state.limits.new_chat(user)?;
    let wait = params.wait()?;
    let command = PostMessage::parse(
        user,
        body.chatbot_id,
        body.input,
        body.client_msg_id,
        state.config.max_input_chars,
    )?;
    within_budget(&state, user).await?;
    // Subscribe before appending, so the reply's notice cannot slip past.
    let notices = state
        .feed
        .subscribe(&stream::chat(command.user_id, command.bot_id));
    let caps = chat::UnansweredCaps {
        conversation: state.config.conversation_max_unanswered,
        user: state.config.user_max_unanswered,
    };
    let posted =
        chat::post_message(&state.store, command, caps, metadata(correlation, user)).await?;
    state.read_cache.invalidate(user);
    let message_id = posted.message_id();
    let just_posted = matches!(posted, Posted::New { .. });
    if let Posted::New { events, .. } = posted {
        // In the request's span: the line that ties its id to the message.
        tracing::info!(%message_id, "message recorded");
        publish_in_background(&state, events);
    }
    let awaited = Awaited {
        user,
        message_id,
        attempt: events::event::FIRST_ATTEMPT,
        just_posted,
    };
    reply_or_pending(&state, notices, awaited, wait).await
}

/// Refuses a model call (a new message, a regeneration) once the user's daily
/// token budget is used up, before anything is recorded.
pub(super) async fn within_budget(
    state: &AppState,
    user: events::event::UserId,
) -> Result<(), ApiError> {
    match state.config.token_budget.check(&state.pool, user).await? {
        Ok(()) => Ok(()),
        Err(exhausted) => Err(ApiError::TooManyRequests {
            message: exhausted.reason(),
            retry_after_secs: exhausted.retry_after_secs(),
        }),
    }
}

/// A message whose outcome a request waits for.
pub(super) struct Awaited {
    pub user: events::event::UserId,
    pub message_id: uuid::Uuid,
    /// The attempt whose outcome is awaited (a regeneration's, not the one it
    /// replaced).
    pub attempt: events::event::Attempt,
    /// Recorded by this request: no outcome can be there yet.
    pub just_posted: bool,
}

/// The message's outcome as `new_chat` answers it: the reply (200), the text
/// written before a stop (200, `msg: "stopped"`), a failure (502), or 202 when
/// the reply takes longer than the api waits (or `wait` is false).
pub(super) async fn reply_or_pending(
    state: &AppState,
    mut notices: feed::Waiter,
    Awaited {
        user,
        message_id,
        attempt,
        just_posted,
    }: Awaited,
    wait: bool,
) -> Result<Response, ApiError> {
    let pending = || {
        (
            StatusCode::ACCEPTED,
            Json(json!({
                "code": 202,
                "msg": "pending",
                "data": { "message_id": message_id, "status": MessageStatus::Pending.as_str() },
            })),
        )
            .into_response()
    };
    if !wait {
        return Ok(pending());
    }
    // On shutdown the reply still gets a few seconds (inside the server's drain
    // bound), then the answer is "pending" and the client reads the reply later.
    let draining = async {
        state.draining.cancelled().await;
        tokio::time::sleep(crate::server::REPLY_GRACE_WHEN_DRAINING).await;
    };
    let reply = tokio::select! {
        reply = feed::wait_for_reply(
            &state.pool,
            &mut notices,
            (message_id, attempt),
            just_posted,
            state.config.reply_wait,
        ) => reply?,
        _ = draining => None,
    };
    // The reply may have been read before this process heard of it on the bus.
    state.read_cache.invalidate(user);
    let Some(reply) = reply else {
        return Ok(pending());
    };
    let content = state
        .keyring
        .open(&reply.content, "content", None)
        .await?
        .into_text();
    match reply.status {
        MessageStatus::Failed => Err(ApiError::BadGateway(content)),
        MessageStatus::Stopped => Ok(Json(json!({
            "code": 200, "msg": MessageStatus::Stopped.as_str(), "data": content,
        }))
        .into_response()),
        MessageStatus::Done | MessageStatus::Pending => Ok(chat_ok(json!(content)).into_response()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[param(required = true)]
    chatbot_id: Option<i64>,
    /// `array` (the default: positional rows) or `object`.
    format: Option<String>,
    /// The rows after this seq, oldest first.
    #[serde(default, deserialize_with = "lenient::int")]
    after: Option<i64>,
    /// The newest rows before this seq (not with `after`).
    #[serde(default, deserialize_with = "lenient::int")]
    before: Option<i64>,
    /// At most this many rows (the cap is 2,000).
    #[serde(default, deserialize_with = "lenient::int")]
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// With `after`: wait up to this many seconds (at most 60) for a row.
    #[serde(default, deserialize_with = "lenient::int")]
    #[param(minimum = 0, maximum = 60)]
    wait: Option<i64>,
}

/// Which rows a history request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// The oldest rows after this seq (paging forward, polling, long-polling).
    After(i64),
    /// The newest rows before this seq (`None`: the newest of all), oldest first
    /// within them: what a plain request gets, so that a client that never pages
    /// still sees new messages in a conversation longer than the cap.
    Newest { before: Option<i64> },
}

/// A conversation's rows. A plain call returns the newest rows, oldest first;
/// `before` pages back, `after` forward, and `after` with `wait` long-polls.
#[utoipa::path(get, path = "/chat/history", tag = "chat", params(HistoryParams),
    responses((status = 200, description = "The rows.", body = History)), security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<HistoryParams>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let bot_id = required(params.chatbot_id, "chatbot_id")?;
    let limit = match params.limit {
        Some(l) if l < 1 => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(l) => u32::try_from(l)
            .unwrap_or(MAX_HISTORY_ROWS)
            .min(MAX_HISTORY_ROWS),
        None => MAX_HISTORY_ROWS,
    };
    let wait =
        Duration::from_secs(params.wait.unwrap_or(0).max(0).unsigned_abs()).min(MAX_LONG_POLL);
    let window = match (params.after, params.before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "Give after (to page forward) or before (to page back), not both.".into(),
            ))
        }
        (_, Some(_)) if !wait.is_zero() => {
            return Err(ApiError::BadRequest(
                "wait long-polls for rows after a seq: use it with after, not before.".into(),
            ))
        }
        (_, Some(before)) => Window::Newest {
            before: Some(before),
        },
        (Some(after), None) => Window::After(after.max(0)),
        (None, None) if params.limit.is_none() && wait.is_zero() => Window::Newest { before: None },
        (None, None) => Window::After(0),
    };
    let format = row_format(params.format.as_deref())?;
    // Only what polling asks for is cached: the conversation's newest rows, now.
    let key =
        (window == Window::Newest { before: None }).then_some(ReadKey::History { bot_id, format });
    if let Some(key) = &key {
        if let Some(body) = state.read_cache.get(user, key) {
            return Ok(json_body(body));
        }
    }
    let read = |window: Window| {
        let pool = state.pool.clone();
        async move {
            match window {
                Window::After(after) => {
                    ChatHistoryProjection::read(
                        &pool,
                        user,
                        bot_id,
                        after,
                        limit,
                        HISTORY_MAX_BYTES,
                    )
                    .await
                }
                Window::Newest { before } => {
                    ChatHistoryProjection::read_newest(
                        &pool,
                        user,
                        bot_id,
                        before,
                        limit,
                        HISTORY_MAX_BYTES,
                    )
                    .await
                }
            }
        }
    };

    let deadline = Instant::now() + wait;
    let stream_id = stream::chat(user, bot_id);
    let ticket = state.read_cache.ticket(user);
    // Subscribe before the first read, so that nothing appended in between is missed.
    let mut notices = (!wait.is_zero()).then(|| state.feed.subscribe(&stream_id));
    let mut hangup = Hangup::for_caller(&caller, &state);
    // A notice that brings the very next row saves the read.
    let mut brought: Option<Vec<HistoryRow>> = None;
    let next_seq = match window {
        Window::After(after) => after.checked_add(1),
        Window::Newest { .. } => None,
    };
    loop {
        // Held from the read until the answer is sent; never while waiting.
        let mut turn = Turn::default();
        let rows = match brought.take() {
            Some(rows) => rows,
            None => {
                turn = state.heavy_reads.turn(user).await;
                read(window).await?.rows
            }
        };
        match notices.as_mut() {
            Some(notices) if rows.is_empty() && Instant::now() < deadline => {
                drop(turn);
                let waiting = events::metrics::Raised::new(events::metrics::LONG_POLLS);
                let heard = tokio::select! {
                    heard = feed::wait_for_stream(notices, &stream_id, bot_id, deadline) => Some(heard),
                    // The caller's session or token ended, or the api is stopping.
                    _ = hangup.wait() => None,
                };
                drop(waiting);
                match heard {
                    // Answered without data; the client's next poll is refused,
                    // or goes to another replica.
                    None | Some(Heard::BotDeleted) => {
                        return Ok(json_body(chat_ok_bytes(history_rows(Vec::new(), format))))
                    }
                    Some(Heard::Changed(row)) => {
                        brought = row
                            .filter(|r| Some(r.seq) == next_seq)
                            .map(|r| vec![(*r).clone()]);
                    }
                }
            }
            _ => {
                let mut rows = rows;
                state.keyring.open_rows(&mut rows).await?;
                let empty = rows.is_empty();
                let body = chat_ok_bytes(history_rows(rows, format));
                if let Some(key) = key.filter(|_| !empty) {
                    state.read_cache.put(user, key, ticket, body.clone());
                }
                return Ok(turn.answer(body));
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    format: Option<String>,
    /// Paging (additive): the conversations after this bot's, at most `limit`.
    #[serde(default, deserialize_with = "lenient::int")]
    after: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    limit: Option<i64>,
}

/// The caller's conversations, each with its last row.
#[utoipa::path(get, path = "/chat/list", operation_id = "chat_list", tag = "chat", params(ListParams),
    responses((status = 200, description = "The conversations.", body = ChatList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<ListParams>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let format = row_format(params.format.as_deref())?;
    let page = Page::parse(params.after, params.limit)?;
    // The cache holds the plain list, the one pollers ask for.
    let key = page.is_default().then_some(ReadKey::List { format });
    if let Some(body) = key.as_ref().and_then(|key| state.read_cache.get(user, key)) {
        return Ok(json_body(body));
    }
    let ticket = state.read_cache.ticket(user);
    let turn = state.heavy_reads.turn(user).await;
    let mut rows =
        ChatListProjection::list(&state.pool, user, page.after, page.limit, LIST_MAX_BYTES)
            .await?
            .rows;
    state.keyring.open_rows(&mut rows).await?;
    let empty = rows.is_empty();
    let body = chat_ok_bytes(chat_list_rows(rows, format));
    if let Some(key) = key.filter(|_| !empty) {
        state.read_cache.put(user, key, ticket, body.clone());
    }
    Ok(turn.answer(body))
}
