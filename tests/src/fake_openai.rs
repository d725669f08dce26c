//! A fake OpenAI-compatible server: `POST /v1/chat/completions`.
//!
//! It answers `"<model> reply #<n> to: <last user message>"`, records every request
//! so tests can check what the worker sent, and can be told to be slow or to fail
//! (429, 500, 400, `insufficient_quota`) for the next calls. Asked to stream, it
//! sends the answer word by word as server-sent events, with an optional pause
//! between words, and notes when a caller hangs up before the answer is over.
//!
//! It reports usage as OpenAI does (in the response, or, streamed with
//! `stream_options.include_usage`, in a last chunk of its own): a prompt token
//! per word of the messages plus 4 per message, a completion token per word
//! sent. It honours `max_completion_tokens` (in words, ending with
//! `finish_reason: "length"`). [`FakeOpenAi::report_usage`] turns usage off, as
//! some OpenAI-compatible servers do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Value>>,
    failures: Mutex<VecDeque<(u16, Value)>>,
    latency_ms: AtomicU64,
    /// Extra random latency, up to this many milliseconds.
    jitter_ms: AtomicU64,
    calls: AtomicU64,
    /// Calls answered with a reply, and with an injected failure. A call counted
    /// in neither was abandoned by its caller (a worker killed mid-call).
    answered: AtomicU64,
    failed: AtomicU64,
    /// Requests whose JSON contains this text fail with 500.
    failing_marker: Mutex<Option<String>>,
    /// The positions in `requests` of the calls that got a reply back.
    answered_requests: Mutex<Vec<usize>>,
    /// Pause between two streamed words.
    chunk_delay_ms: AtomicU64,
    /// The next streamed answer stops after this many words, without finishing.
    cut_next_after: Mutex<Option<usize>>,
    /// The next streamed answer breaks the connection after this many words.
    break_next_after: Mutex<Option<usize>>,
    /// Streamed answers send their last chunk, then keep the connection open
    /// without `[DONE]`.
    hold_open_after_finish: std::sync::atomic::AtomicBool,
    /// Answers are padded with this many bytes (in 1 KiB words).
    padding_bytes: AtomicU64,
    /// Requests containing this text are counted while they wait out the latency,
    /// and the most at once is kept.
    watched: Mutex<Option<String>>,
    watched_in_flight: AtomicU64,
    watched_peak: AtomicU64,
    /// Calls whose answer is not over yet (its body not yet finished or dropped).
    in_flight: AtomicU64,
    /// The positions in `requests` of the calls answered with a failure.
    failed_requests: Mutex<Vec<usize>>,
    /// Calls whose caller closed the connection before the answer was over:
    /// their position in `requests`, and when the close was seen.
    hung_up: Mutex<Vec<(usize, std::time::Instant)>>,
    /// Answers carry no usage.
    no_usage: std::sync::atomic::AtomicBool,
}

/// One call in flight, until dropped: when its answer ends, or when its caller
/// closes the connection (a hang-up, if no answer or failure went out).
struct InFlight {
    inner: Arc<Inner>,
    position: Option<usize>,
}

impl InFlight {
    fn new(inner: &Arc<Inner>, position: Option<usize>) -> Self {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: inner.clone(),
            position,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        let Some(position) = self.position else {
            return;
        };
        let settled = |list: &Mutex<Vec<usize>>| list.lock().is_ok_and(|l| l.contains(&position));
        if !settled(&self.inner.answered_requests) && !settled(&self.inner.failed_requests) {
            if let Ok(mut hung_up) = self.inner.hung_up.lock() {
                hung_up.push((position, std::time::Instant::now()));
            }
        }
    }
}

#[derive(Clone)]
pub struct FakeOpenAi {
    inner: Arc<Inner>,
    pub base_url: String,
}

impl FakeOpenAi {
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            inner,
            base_url: format!("http://{addr}/v1"),
        })
    }

    /// Every request received so far, as JSON.
    pub fn requests(&self) -> Vec<Value> {
        self.inner
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Calls that got a reply back to the caller.
    pub fn answered(&self) -> u64 {
        self.inner.answered.load(Ordering::SeqCst)
    }

    /// Calls that got a reply back and whose request contains `marker`.
    pub fn answered_containing(&self, marker: &str) -> u64 {
        let requests = self.requests();
        self.inner
            .answered_requests
            .lock()
            .map(|answered| {
                answered
                    .iter()
                    .filter(|&&i| {
                        requests
                            .get(i)
                            .is_some_and(|r| r.to_string().contains(marker))
                    })
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// From now on, counts the calls whose request contains `marker` that are in
    /// flight at once (during their latency); see [`FakeOpenAi::peak_in_flight`].
    pub fn watch_in_flight(&self, marker: &str) {
        if let Ok(mut watched) = self.inner.watched.lock() {
            *watched = Some(marker.to_string());
        }
    }

    /// Whether answers report usage (they do by default).
    pub fn report_usage(&self, report: bool) {
        self.inner.no_usage.store(!report, Ordering::SeqCst);
    }

    /// The prompt tokens this fake reports for `request`.
    pub fn prompt_tokens(request: &Value) -> u64 {
        request["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| {
                        4 + m["content"]
                            .as_str()
                            .map_or(0, |c| c.split_whitespace().count() as u64)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Calls whose caller closed the connection before the answer was over: the
    /// request, and when the close was seen.
    pub fn hang_ups(&self) -> Vec<(Value, std::time::Instant)> {
        let requests = self.requests();
        self.inner
            .hung_up
            .lock()
            .map(|hung_up| {
                hung_up
                    .iter()
                    .filter_map(|(i, at)| requests.get(*i).map(|r| (r.clone(), *at)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// When the caller of the call whose request contains `marker` hung up, once
    /// it has (or an error after `timeout`).
    pub async fn wait_for_hang_up(
        &self,
        marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::time::Instant> {
        crate::eventually(timeout, "the caller to hang up", || {
            let seen = self
                .hang_ups()
                .into_iter()
                .find(|(request, _)| request.to_string().contains(marker))
                .map(|(_, at)| at);
            async move { Ok(seen) }
        })
        .await
    }

    /// Calls in flight now: started, and their answer not over yet.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no call is open and none has begun for `quiet`: work the
    /// callers start on their own (memory refreshes after replies) has ended.
    /// Fails after `timeout`, naming the calls still open.
    pub async fn wait_until_quiet(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = (self.calls(), tokio::time::Instant::now());
        loop {
            let (now, calls) = (tokio::time::Instant::now(), self.calls());
            if calls != seen.0 || self.in_flight() > 0 {
                seen = (calls, now);
            } else if now - seen.1 >= quiet {
                return Ok(());
            }
            if now >= deadline {
                anyhow::bail!(
                    "after {timeout:?}, {} model calls are still open: {:?}",
                    self.in_flight(),
                    self.open_requests()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last message of each call neither answered, failed, nor hung up on.
    fn open_requests(&self) -> Vec<String> {
        let settled = |list: &Mutex<Vec<usize>>| list.lock().map(|l| l.clone()).unwrap_or_default();
        let mut closed = settled(&self.inner.answered_requests);
        closed.extend(settled(&self.inner.failed_requests));
        if let Ok(hung_up) = self.inner.hung_up.lock() {
            closed.extend(hung_up.iter().map(|(i, _)| *i));
        }
        self.requests()
            .iter()
            .enumerate()
            .filter(|(i, _)| !closed.contains(i))
            .map(|(_, r)| {
                let last = r["messages"].as_array().and_then(|m| m.last()).cloned();
                let text = last.map(|m| m["content"].to_string()).unwrap_or_default();
                text.chars().take(120).collect()
            })
            .collect()
    }

    /// The most watched calls that were in flight at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.inner.watched_peak.load(Ordering::SeqCst)
    }

    /// Calls that got an injected failure back.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// Every request whose JSON contains `marker` fails with a 500 from now on
    /// (`None` stops it): to fail one kind of call, e.g. memory refreshes.
    pub fn fail_requests_containing(&self, marker: Option<&str>) {
        if let Ok(mut failing) = self.inner.failing_marker.lock() {
            *failing = marker.map(str::to_string);
        }
    }

    /// Injected failures not yet handed out.
    pub fn failures_queued(&self) -> usize {
        self.inner.failures.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Waits until at least `n` calls have arrived (a call is then in flight).
    pub async fn wait_for_calls(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        crate::eventually(timeout, "model calls", || {
            let calls = self.calls();
            async move { Ok((calls >= n).then_some(())) }
        })
        .await
    }

    pub fn set_latency(&self, latency: Duration) {
        self.inner
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next streamed answer breaks off after `words` words: no `finish_reason`,
    /// no `[DONE]`, as when a connection to a provider drops mid-answer.
    pub fn cut_next_stream_after(&self, words: usize) {
        if let Ok(mut cut) = self.inner.cut_next_after.lock() {
            *cut = Some(words);
        }
    }

    /// The next streamed answer breaks off after `words` words with a transport
    /// error (the connection is reset mid-body), as a flaky network does.
    pub fn break_next_stream_after(&self, words: usize) {
        if let Ok(mut cut) = self.inner.break_next_after.lock() {
            *cut = Some(words);
        }
    }

    /// Streamed answers finish (`finish_reason: "stop"`), then hold the
    /// connection open without ever sending `[DONE]`.
    pub fn hold_open_after_finish(&self, hold: bool) {
        self.inner
            .hold_open_after_finish
            .store(hold, Ordering::SeqCst);
    }

    /// Every answer gains about `bytes` more bytes, in 1 KiB words.
    pub fn pad_answers(&self, bytes: u64) {
        self.inner.padding_bytes.store(bytes, Ordering::SeqCst);
    }

    /// A streamed answer pauses this long between words.
    pub fn set_chunk_delay(&self, delay: Duration) {
        self.inner
            .chunk_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Latency drawn uniformly from `min..=max` for every call.
    pub fn set_latency_range(&self, min: Duration, max: Duration) {
        self.set_latency(min);
        self.inner
            .jitter_ms
            .store(max.saturating_sub(min).as_millis() as u64, Ordering::SeqCst);
    }

    /// The next call answers with `status` and an OpenAI-style error body.
    pub fn fail_next(&self, status: u16, error_type: &str, code: Option<&str>) {
        self.fail_next_body(
            status,
            json!({ "error": {
                "message": format!("injected {status} {error_type}"),
                "type": error_type,
                "param": null,
                "code": code,
            }}),
        );
    }

    /// The next call fails with the provider's own `message` (which may hold
    /// account details, as OpenAI's "Incorrect API key provided: sk-..." does).
    pub fn fail_next_with(&self, status: u16, message: &str, error_type: &str) {
        self.fail_next_body(
            status,
            json!({ "error": { "message": message, "type": error_type, "param": null, "code": null }}),
        );
    }

    fn fail_next_body(&self, status: u16, body: Value) {
        if let Ok(mut failures) = self.inner.failures.lock() {
            failures.push_back((status, body));
        }
    }
}

async fn completions(State(inner): State<Arc<Inner>>, Json(request): Json<Value>) -> Response {
    let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let position = inner
        .requests
        .lock()
        .map(|mut requests| {
            requests.push(request.clone());
            requests.len() - 1
        })
        .ok();
    let in_flight = InFlight::new(&inner, position);
    let jitter = inner.jitter_ms.load(Ordering::SeqCst);
    let jitter = if jitter > 0 {
        (n.wrapping_mul(2654435761) >> 7) % (jitter + 1)
    } else {
        0
    };
    let latency = inner.latency_ms.load(Ordering::SeqCst) + jitter;
    let watched = inner
        .watched
        .lock()
        .ok()
        .and_then(|m| m.clone())
        .is_some_and(|marker| request.to_string().contains(&marker));
    if watched {
        let now = inner.watched_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.watched_peak.fetch_max(now, Ordering::SeqCst);
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if watched {
        inner.watched_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let marked = inner
        .failing_marker
        .lock()
        .ok()
        .and_then(|m| m.clone())
        .is_some_and(|marker| request.to_string().contains(&marker));
    let failure = if marked {
        Some((
            500,
            json!({ "error": { "message": "injected failure for marked requests",
            "type": "server_error", "param": null, "code": null }}),
        ))
    } else {
        inner.failures.lock().ok().and_then(|mut f| f.pop_front())
    };
    if let Some((status, body)) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        inner.failed.fetch_add(1, Ordering::SeqCst);
        if let (Some(position), Ok(mut failed)) = (position, inner.failed_requests.lock()) {
            failed.push(position);
        }
        return (status, Json(body)).into_response();
    }
    let model = request["model"].as_str().unwrap_or("unknown").to_string();
    let last_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .map(without_time)
        .unwrap_or("")
        .to_string();
    let mut content = format!("{model} reply #{n} to: {last_user}");
    let padding = inner.padding_bytes.load(Ordering::SeqCst);
    if padding > 0 {
        let word = format!(" {}", "x".repeat(1023));
        for _ in 0..padding.div_ceil(1024) {
            content.push_str(&word);
        }
    }
    let cap = request["max_completion_tokens"]
        .as_u64()
        .map(|c| c as usize);
    let mut capped = false;
    if let Some(cap) = cap {
        let words: Vec<&str> = content.split_inclusive(' ').collect();
        if words.len() > cap {
            content = words[..cap.max(1)].concat();
            capped = true;
        }
    }
    let usage = (!inner.no_usage.load(Ordering::SeqCst)).then(|| {
        json!({
            "prompt_tokens": FakeOpenAi::prompt_tokens(&request),
            "completion_tokens": content.split_inclusive(' ').count(),
            "total_tokens": 0,
        })
    });
    let finish = if capped { "length" } else { "stop" };
    if request["stream"] == json!(true) {
        let usage = usage.filter(|_| request["stream_options"]["include_usage"] == json!(true));
        return streamed(
            inner,
            in_flight,
            position,
            n,
            model,
            content,
            (finish, usage),
        );
    }
    answered(&inner, position);
    Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": finish,
        }],
        "usage": usage,
    }))
    .into_response()
}

/// A user turn's text without the `[2026-01-02 03:04 UTC] ` the worker puts first.
fn without_time(content: &str) -> &str {
    match content.split_once(" UTC] ") {
        Some((time, text)) if time.starts_with('[') && time.len() <= 20 => text,
        _ => content,
    }
}

fn answered(inner: &Inner, position: Option<usize>) {
    inner.answered.fetch_add(1, Ordering::SeqCst);
    if let (Some(position), Ok(mut answered)) = (position, inner.answered_requests.lock()) {
        answered.push(position);
    }
}

/// The answer as OpenAI streams it: a chunk per word, then `[DONE]`. The call
/// counts as answered only once the last chunk went out: a caller that went away
/// mid-stream abandoned it.
fn streamed(
    inner: Arc<Inner>,
    in_flight: InFlight,
    position: Option<usize>,
    n: u64,
    model: String,
    content: String,
    (finish_reason, usage): (&'static str, Option<Value>),
) -> Response {
    let chunk = move |delta: Value, finish: Value| {
        // The usage chunk has no choices; every other chunk has no usage.
        let body = if delta == json!("usage") {
            json!({
                "id": format!("chatcmpl-{n}"),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": finish,
            })
        } else {
            json!({
                "id": format!("chatcmpl-{n}"),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            })
        };
        axum::body::Bytes::from(format!("data: {body}\n\n"))
    };
    let mut words: Vec<String> = content.split_inclusive(' ').map(str::to_string).collect();
    let cut = inner.cut_next_after.lock().ok().and_then(|mut c| c.take());
    let broken = inner
        .break_next_after
        .lock()
        .ok()
        .and_then(|mut c| c.take());
    if let Some(keep) = cut.or(broken) {
        words.truncate(keep);
    }
    // An answer cut short on purpose is the model's doing, not a hang-up.
    if let (true, Some(position), Ok(mut failed)) = (
        cut.or(broken).is_some(),
        position,
        inner.failed_requests.lock(),
    ) {
        failed.push(position);
    }
    let ending = if broken.is_some() {
        Ending::Break
    } else if cut.is_some() {
        Ending::Cut
    } else if inner.hold_open_after_finish.load(Ordering::SeqCst) {
        Ending::HoldOpen
    } else {
        Ending::Done
    };
    let stream = async_stream(
        inner,
        position,
        words,
        (ending, finish_reason, usage),
        chunk,
    )
    .map(move |bytes| {
        // The call is in flight for as long as its body lives.
        let _ = &in_flight;
        bytes
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How a streamed answer ends after its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `finish_reason: "stop"`, then `[DONE]`.
    Done,
    /// Nothing more: the body just ends.
    Cut,
    /// The connection breaks (a body error).
    Break,
    /// `finish_reason: "stop"`, then the connection stays open, silent.
    HoldOpen,
}

fn async_stream(
    inner: Arc<Inner>,
    position: Option<usize>,
    words: Vec<String>,
    (ending, finish_reason, usage): (Ending, &'static str, Option<Value>),
    chunk: impl Fn(Value, Value) -> axum::body::Bytes + Send + 'static,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    futures::stream::unfold(0usize, move |i| {
        let inner = inner.clone();
        let next: Option<Result<axum::body::Bytes, std::io::Error>> = if i == 0 {
            Some(Ok(chunk(
                json!({ "role": "assistant", "content": "" }),
                Value::Null,
            )))
        } else if i <= words.len() {
            Some(Ok(chunk(json!({ "content": words[i - 1] }), Value::Null)))
        } else if ending == Ending::Cut || i > words.len() + 3 {
            None
        } else if ending == Ending::Break {
            (i == words.len() + 1).then(|| Err(std::io::Error::other("connection reset")))
        } else if i == words.len() + 1 {
            if ending == Ending::HoldOpen {
                answered(&inner, position);
            }
            Some(Ok(chunk(json!({}), json!(finish_reason))))
        } else if i == words.len() + 2 && usage.is_some() {
            Some(Ok(chunk(json!("usage"), usage.clone().unwrap_or_default())))
        } else if ending == Ending::HoldOpen {
            // Never `[DONE]`, never the end of the body.
            return futures::future::Either::Left(std::future::pending());
        } else if i == words.len() + 2 || (i == words.len() + 3 && usage.is_some()) {
            answered(&inner, position);
            Some(Ok(axum::body::Bytes::from_static(b"data: [DONE]\n\n")))
        } else {
            None
        };
        futures::future::Either::Right(async move {
            let pause = inner.chunk_delay_ms.load(Ordering::SeqCst);
            if pause > 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            next.map(|bytes| (bytes, i + 1))
        })
    })
}

/// A recorded request's conversation after the system prompt, as (role, content),
/// the user turns without their time.
pub fn turns(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .skip(1)
                .map(|m| {
                    (
                        m["role"].as_str().unwrap_or("").to_string(),
                        without_time(m["content"].as_str().unwrap_or("")).to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
