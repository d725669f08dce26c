//! A Server-Sent Events client for the tests: connects to `chat/stream` and hands
//! back each event (name, id, data) as it arrives.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// An open stream; dropping it closes the connection.
pub struct SseStream {
    pub status: u16,
    events: mpsc::UnboundedReceiver<SseEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseStream {
    /// Opens `GET {base}{path}`, with a token and a `Last-Event-ID` if given.
    pub async fn open(
        base: &str,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut request = reqwest::Client::new().get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let (sender, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(bytes)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if let Some(event) = parse(&block) {
                        if sender.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            status,
            events,
            task,
        })
    }

    /// The next event, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<SseEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no event within {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))
    }

    /// Events until (and including) the first one named `last`.
    pub async fn until(&mut self, last: &str, timeout: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .map_err(|e| anyhow::anyhow!("{e}; seen so far: {seen:?}"))?;
            let done = event.event == last;
            seen.push(event);
            if done {
                return Ok(seen);
            }
        }
    }
}

/// One SSE block; comments (keep-alives) and blocks without data are skipped.
fn parse(block: &str) -> Option<SseEvent> {
    let mut event = "message".to_string();
    let mut id = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            event = value.trim().to_string();
        } else if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event,
        id,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}
