//! `GET /chat/stream`: a conversation as Server-Sent Events.
//!
//! The same four steps as every chat route (extract, authorize, call the domain,
//! shape the answer), then a tail: every history row after the client's cursor
//! (`Last-Event-ID` or `after`, the `seq` that polling and long-polling use too),
//! the text written so far of a reply in progress, then live: rows as they are
//! appended (on any api: notices come over the bus) and the deltas of replies
//! being written. Rows carry `id: <seq>`; deltas carry none, so a client that
//! resumes never lands in the middle of a reply.
//!
//! A stream holds a broadcast receiver and one slot of its user's cap; both go
//! when the client does (the response body is dropped), so nothing outlives it.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use events::event::{stream, BotId, UserId};
use events::projections::{BotsProjection, ChatHistoryProjection, HistoryRow, MessageStatus};

use crate::auth::Caller;
use crate::domain::required;
use crate::error::ApiError;
use crate::extract::{lenient, Params};
use crate::feed::{Notice, Waiter};
use crate::state::AppState;
use crate::streams::StreamSlot;
use crate::views::{history_row, RowFormat};

/// Most rows one read sends; the next read continues from there.
const ROWS_PER_READ: u32 = 500;

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    chatbot_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    after: Option<i64>,
}

pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Params(params): Params<StreamParams>,
) -> Result<Response, ApiError> {
    let user = caller.acting_for(params.user_id, &state).await?;
    let bot = required(params.chatbot_id, "chatbot_id")?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Last-Event-ID must be a seq, as the events' ids are.".into(),
                    )
                })?,
        ),
        None => params.after,
    };
    if BotsProjection::find_owned(&state.pool, user, bot)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(
            "No such chatbot for this user (it may have been deleted).".into(),
        ));
    }
    let slot = state
        .streams
        .acquire(user, state.config.max_streams_per_user)
        .ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "At most {} streams per user at once; close one first.",
                state.config.max_streams_per_user
            ))
        })?;
    // Subscribe before the first read, so nothing appended in between is missed.
    let mut tail = Tail {
        waiter: state.feed.subscribe(),
        stream_id: stream::chat(user, bot),
        user,
        bot,
        cursor: resume.unwrap_or(0).max(0),
        queue: VecDeque::new(),
        state: state.clone(),
        _slot: slot,
    };
    tail.read_new().await?;
    for (reply_to, text) in state.feed.live().in_progress(&tail.stream_id) {
        tail.queue.push_back(delta(reply_to, &text));
    }
    let keep_alive = KeepAlive::new()
        .interval(state.config.stream_keep_alive)
        .text("keep-alive");
    Ok(Sse::new(events(tail))
        .keep_alive(keep_alive)
        .into_response())
}

/// One stream's state: where it is in the conversation, and what is ready to send.
struct Tail {
    state: AppState,
    waiter: Waiter,
    stream_id: String,
    user: UserId,
    bot: BotId,
    /// The last seq sent.
    cursor: i64,
    queue: VecDeque<Event>,
    _slot: StreamSlot,
}

impl Tail {
    /// Queues the rows appended after the cursor.
    async fn read_new(&mut self) -> Result<(), sqlx::Error> {
        loop {
            let rows = ChatHistoryProjection::read(
                &self.state.pool,
                self.user,
                self.bot,
                self.cursor,
                ROWS_PER_READ,
            )
            .await?;
            let full = rows.len() as u32 == ROWS_PER_READ;
            for row in rows {
                self.cursor = row.seq;
                self.queue.push_back(row_event(row));
            }
            if !full {
                return Ok(());
            }
        }
    }
}

fn events(tail: Tail) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(tail, |mut tail| async move {
        loop {
            if let Some(event) = tail.queue.pop_front() {
                return Some((Ok(event), tail));
            }
            let reread = match tail.waiter.next().await {
                Some(Notice::Appended { stream_id, row, .. }) if stream_id == tail.stream_id => {
                    match row {
                        // The very next row: sent as the notice brought it.
                        Some(row) if row.seq == tail.cursor + 1 => {
                            tail.cursor = row.seq;
                            tail.queue.push_back(row_event((*row).clone()));
                            false
                        }
                        Some(row) if row.seq <= tail.cursor => false,
                        _ => true,
                    }
                }
                Some(Notice::Appended { .. }) => false,
                Some(Notice::Delta {
                    stream_id,
                    reply_to,
                    text,
                }) => {
                    if stream_id == tail.stream_id {
                        tail.queue.push_back(delta(reply_to, &text));
                    }
                    false
                }
                Some(Notice::Resync) | None => true,
            };
            if reread {
                if let Err(e) = tail.read_new().await {
                    // The client resumes from its last id once the database is back.
                    tracing::warn!(error = %e, "ending a stream: cannot read the history");
                    return None;
                }
            }
        }
    })
}

fn row_event(row: HistoryRow) -> Event {
    let kind = if row.by_user == 1 {
        "message"
    } else if row.status == MessageStatus::Failed.as_str() {
        "failed"
    } else {
        "reply"
    };
    let id = row.seq.to_string();
    Event::default()
        .event(kind)
        .id(id)
        .data(history_row(row, RowFormat::Object).to_string())
}

/// `message_id` is the message being answered (the reply has no id until it is
/// recorded).
fn delta(reply_to: uuid::Uuid, text: &str) -> Event {
    Event::default()
        .event("delta")
        .data(json!({ "message_id": reply_to, "text": text }).to_string())
}
