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
//! Its memory is bounded whatever the conversation's length: history is read a
//! page at a time, the next page only once the last one was sent.
//!
//! Deltas carry their attempt and index. The stream remembers, per reply, how
//! much of which attempt its client has, so a delta the snapshot already covered
//! is dropped, a newer attempt is announced with `event: reset`, and a gap (a
//! notice lost to lag) is mended with a reset and the text so far. At every step
//! the text a client assembles is a prefix of what the model wrote.
//!
//! A browser's `EventSource` opens it with a ticket instead of a token (see
//! `stream_ticket`).
//!
//! The server ends the stream (see `hangup`) when its session is revoked, its
//! token (or ticket) expires, its bot is deleted, or the api shuts down.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use events::event::{stream, BotId, UserId};
use events::projections::{BotsProjection, ChatHistoryProjection, HistoryRow, MessageStatus};
use events::sealing::SealError;

use crate::auth::Caller;
use crate::domain::required;
use crate::error::ApiError;
use crate::extract::{lenient, Params};
use crate::feed::{Notice, Waiter};
use crate::hangup::Hangup;
use crate::live::InProgress;
use crate::state::AppState;
use crate::streams::StreamSlot;
use crate::views::{history_row, RowFormat};

/// Most rows one read holds; the next read comes once they are sent.
const ROWS_PER_READ: u32 = 200;
/// About the most content one read holds: one of the longest replies, or many
/// short rows.
const BYTES_PER_READ: usize = 256 * 1024;
/// Most replies whose delta progress a stream tracks (a conversation writes one
/// at a time; past this the map starts over, and a gap mends it).
const TRACKED_REPLIES: usize = 16;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[param(required = true)]
    chatbot_id: Option<i64>,
    /// Resume after this seq (`Last-Event-ID` does the same, and wins).
    #[serde(default, deserialize_with = "lenient::int")]
    after: Option<i64>,
    /// A stream ticket (`POST /chat/stream/ticket`), for clients that cannot
    /// send an `Authorization` header: the browser's `EventSource`.
    ticket: Option<String>,
}

/// A conversation as Server-Sent Events: history after the cursor, the text so
/// far of a reply being written, then rows and deltas live.
///
/// Events: `message`, `reply`, `failed` and `stopped` (a history row: the
/// user's message, the bot's reply, a reply that failed, or one the user
/// stopped, with the text written before the stop; `id:` is its seq and
/// `data:` the row as `format=object` gives it), `delta` (`{message_id,
/// attempt, index, text}`: the next words of a reply being written), `reset`
/// (`{message_id, attempt}`: a newer attempt, or a regeneration, starts the
/// reply to that message over: drop its text, and its reply row), `cleared`
/// (`{before}`: the conversation was cleared; drop the rows before that seq),
/// and comments as keep-alives. The
/// stream ends when the session is revoked, the token expires, the bot is
/// deleted or the api shuts down; reconnect with `Last-Event-ID` to resume.
#[utoipa::path(get, path = "/chat/stream", tag = "chat", params(StreamParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "The last seq received; the stream resumes after it.")),
    responses((status = 200, description = "The event stream.", content_type = "text/event-stream", body = String)),
    security(("bearer" = []), ()))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    Params(params): Params<StreamParams>,
) -> Result<Response, ApiError> {
    let bot = required(params.chatbot_id, "chatbot_id")?;
    // An `Authorization` header wins; without one, a ticket stands in for it.
    let caller = match (caller, params.ticket.as_deref()) {
        (Err(_) | Ok(Caller::Legacy), Some(ticket)) if !headers.contains_key(AUTHORIZATION) => {
            Caller::from_stream_ticket(ticket, bot, &state).await?
        }
        (caller, _) => caller?,
    };
    let user = caller.acting_for(params.user_id, &state).await?;
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
        .ok_or_else(|| ApiError::TooManyRequests {
            message: format!(
                "At most {} streams per user at once; close one first.",
                state.config.max_streams_per_user
            ),
            retry_after_secs: 10,
        })?;
    // Subscribe before the first read, so nothing appended in between is missed.
    let tail = Tail {
        waiter: state.feed.subscribe(&stream::chat(user, bot)),
        hangup: Hangup::for_caller(&caller, &state),
        stream_id: stream::chat(user, bot),
        user,
        bot,
        cursor: resume.unwrap_or(0).max(0),
        behind: true,
        queue: VecDeque::new(),
        sent: HashMap::new(),
        state: state.clone(),
        _slot: slot,
    };
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
    hangup: Hangup,
    stream_id: String,
    user: UserId,
    bot: BotId,
    /// The last seq queued.
    cursor: i64,
    /// Rows after the cursor may exist that are not queued: read the next page
    /// once the queue is empty.
    behind: bool,
    /// At most one page of rows, or a few deltas.
    queue: VecDeque<Event>,
    /// Per reply being written: the attempt the client has, and how many of its
    /// deltas.
    sent: HashMap<Uuid, (Uuid, u32)>,
    _slot: StreamSlot,
}

impl Tail {
    /// Queues the next page of rows after the cursor; once there are no more, the
    /// stream is live, and the text so far of replies being written is queued.
    async fn read_page(&mut self) -> Result<(), SealError> {
        let page = ChatHistoryProjection::read(
            &self.state.pool,
            self.user,
            self.bot,
            self.cursor,
            ROWS_PER_READ,
            BYTES_PER_READ,
        )
        .await?;
        self.behind = page.more;
        for row in page.rows {
            self.cursor = row.seq;
            self.push_row(row).await?;
        }
        if !self.behind {
            for reply in self.state.feed.live().in_progress(&self.stream_id) {
                self.catch_up(reply);
            }
        }
        Ok(())
    }

    /// Queues a row, its text opened.
    async fn push_row(&mut self, row: HistoryRow) -> Result<(), SealError> {
        let row = self.state.keyring.open_row(row).await?;
        self.queue.push_back(row_event(row));
        Ok(())
    }

    /// Brings the client to the text so far of one reply, unless it has it.
    fn catch_up(&mut self, reply: InProgress) {
        let known = self.sent.get(&reply.reply_to).copied();
        if known == Some((reply.attempt, reply.next)) || reply.next == 0 {
            return;
        }
        if known.is_some() {
            self.queue.push_back(reset(reply.reply_to, reply.attempt));
        }
        self.queue.push_back(delta(
            reply.reply_to,
            reply.attempt,
            reply.next - 1,
            &reply.text,
        ));
        self.track(reply.reply_to, reply.attempt, reply.next);
    }

    fn track(&mut self, reply_to: Uuid, attempt: Uuid, next: u32) {
        if self.sent.len() >= TRACKED_REPLIES && !self.sent.contains_key(&reply_to) {
            self.sent.clear();
        }
        self.sent.insert(reply_to, (attempt, next));
    }

    /// A live delta: sent, dropped (already covered, or of an older attempt), or
    /// mended (it does not follow what the client has).
    fn on_delta(&mut self, reply_to: Uuid, attempt: Uuid, index: u32, text: &str) {
        match self.sent.get(&reply_to).copied() {
            Some((have, next)) if have == attempt && index < next => {}
            Some((have, _)) if attempt < have => {}
            Some((have, next)) if have == attempt && index == next => {
                self.queue.push_back(delta(reply_to, attempt, index, text));
                self.track(reply_to, attempt, index.saturating_add(1));
            }
            Some((have, _)) if have != attempt && index == 0 => {
                self.queue.push_back(reset(reply_to, attempt));
                self.queue.push_back(delta(reply_to, attempt, index, text));
                self.track(reply_to, attempt, 1);
            }
            None if index == 0 => {
                self.queue.push_back(delta(reply_to, attempt, index, text));
                self.track(reply_to, attempt, 1);
            }
            _ => {
                // A gap: start this reply over from the text so far.
                let reply = self
                    .state
                    .feed
                    .live()
                    .in_progress(&self.stream_id)
                    .into_iter()
                    .find(|r| r.reply_to == reply_to);
                if let Some(reply) = reply {
                    if self.sent.remove(&reply_to).is_some() {
                        self.queue.push_back(reset(reply_to, reply.attempt));
                    }
                    self.catch_up(reply);
                }
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
            if tail.behind {
                if let Err(e) = tail.read_page().await {
                    // The client resumes from its last id once the database is back.
                    tracing::warn!(error = %e, "ending a stream: cannot read the history");
                    return None;
                }
                continue;
            }
            let notice = tokio::select! {
                notice = tail.waiter.next() => notice,
                reason = tail.hangup.wait() => {
                    tracing::info!(reason = reason.as_str(), "ending a stream");
                    return None;
                }
            };
            match notice {
                Some(Notice::Appended { stream_id, row, .. }) if stream_id == tail.stream_id => {
                    match row {
                        // The very next row: sent as the notice brought it.
                        Some(row) if Some(row.seq) == tail.cursor.checked_add(1) => {
                            tail.cursor = row.seq;
                            if let Some(reply_to) = row.reply_to.as_deref() {
                                if let Ok(reply_to) = Uuid::parse_str(reply_to) {
                                    tail.sent.remove(&reply_to);
                                }
                            }
                            if let Err(e) = tail.push_row((*row).clone()).await {
                                tracing::warn!(error = %e, "ending a stream: cannot open a row");
                                return None;
                            }
                        }
                        Some(row) if row.seq <= tail.cursor => {}
                        _ => tail.behind = true,
                    }
                }
                Some(Notice::Appended { .. }) => {}
                Some(Notice::Delta {
                    stream_id,
                    reply_to,
                    attempt,
                    index,
                    text,
                    ..
                }) => {
                    if stream_id == tail.stream_id {
                        tail.on_delta(reply_to, attempt, index, &text);
                    }
                }
                Some(Notice::Regenerating {
                    stream_id,
                    reply_to,
                    attempt,
                }) if stream_id == tail.stream_id => {
                    // The reply shown for this message is withdrawn; the new
                    // one's deltas start from nothing.
                    tail.sent.remove(&reply_to);
                    tail.queue.push_back(reset(reply_to, attempt));
                }
                Some(Notice::Cleared { stream_id, before }) if stream_id == tail.stream_id => {
                    tail.queue.push_back(cleared(before));
                }
                Some(Notice::Regenerating { .. } | Notice::Cleared { .. }) => {}
                Some(Notice::BotDeleted { bot_id }) if bot_id == tail.bot => {
                    tracing::info!(reason = "bot_deleted", "ending a stream");
                    return None;
                }
                Some(Notice::BotDeleted { .. }) => {}
                Some(Notice::Resync) | None => tail.behind = true,
            }
        }
    })
}

fn row_event(row: HistoryRow) -> Event {
    let kind = if row.by_user == 1 {
        "message"
    } else if row.status == MessageStatus::Failed.as_str() {
        "failed"
    } else if row.status == MessageStatus::Stopped.as_str() {
        "stopped"
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
/// recorded); `index` is the last delta of `attempt` this text includes.
fn delta(reply_to: Uuid, attempt: Uuid, index: u32, text: &str) -> Event {
    Event::default().event("delta").data(
        json!({ "message_id": reply_to, "attempt": attempt, "index": index, "text": text })
            .to_string(),
    )
}

/// The reply is being written again from the start (a retry, a redelivery, or
/// a regeneration, which also withdraws the reply row shown for the message):
/// drop the text shown so far.
fn reset(reply_to: Uuid, attempt: Uuid) -> Event {
    Event::default()
        .event("reset")
        .data(json!({ "message_id": reply_to, "attempt": attempt }).to_string())
}

/// The conversation was cleared: drop every row before `before` (a seq).
fn cleared(before: i64) -> Event {
    Event::default()
        .event("cleared")
        .data(json!({ "before": before }).to_string())
}
