//! Accepting connections, with the limits a public server needs.
//!
//! `axum::serve` has no header read timeout, so a client that never finishes its
//! headers holds a connection (and its task) forever. This loop serves the same
//! router through hyper's HTTP/1 builder with a timer, so headers must arrive
//! within `HEADER_READ_TIMEOUT_SECS`, and a client that stops reading what it is
//! sent is cut off after `SEND_STALL_SECS`; the body's own timeout and the early 413 for
//! an oversized `Content-Length` are layers on the router (see `startup`).
//!
//! On shutdown it stops accepting, lets every open connection finish its
//! in-flight request, then returns. Streams and long-polls end as soon as the
//! api starts draining (see `hangup`), and a `new_chat` waiting for its reply
//! gets `REPLY_GRACE_WHEN_DRAINING` more before it answers "pending". The whole
//! drain is still bounded by `DRAIN_TIMEOUT`, so a deploy never ends in SIGKILL
//! because one connection would not finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::send_stall::SendStallTimeout;

/// The longest the drain may take after the accept loop stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `new_chat` waiting for its reply may still wait once the drain
/// starts, before it answers "pending": well inside `DRAIN_TIMEOUT`.
pub const REPLY_GRACE_WHEN_DRAINING: Duration = Duration::from_secs(5);

pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    header_read_timeout: Duration,
    send_stall: Duration,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |request: hyper::Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(
                TokioIo::new(SendStallTimeout::new(stream, send_stall)),
                service,
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            secs = DRAIN_TIMEOUT.as_secs(),
            "connections still open after the drain timeout; closing them"
        );
    }
    Ok(())
}
