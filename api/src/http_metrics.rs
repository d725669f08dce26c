//! The api's Prometheus metrics: a recorder installed at start, served at
//! `/metrics`, and a layer that counts and times every request by its route
//! template (`/chat/history`, never a raw path, so ids cannot explode the
//! labels) and status. The names are in `events::metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{BuildError, PrometheusHandle};

use events::metrics::{HTTP_DURATION, HTTP_REQUESTS};

use crate::error::ApiError;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histograms' samples are folded into their buckets. Without it they
/// pile up between scrapes, and without a scraper, for ever.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process's recorder, and its upkeep (once; `main` calls it, on
/// the runtime).
pub fn install() -> Result<(), BuildError> {
    if RECORDER.get().is_some() {
        return Ok(());
    }
    let handle = events::metrics::prometheus()?.install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    let _ = RECORDER.set(handle);
    Ok(())
}

/// `GET /metrics`, in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus's text format.", content_type = "text/plain", body = String)))]
pub async fn render() -> Result<Response, ApiError> {
    let handle = RECORDER
        .get()
        .ok_or_else(|| ApiError::NotFound("Metrics are not recorded in this process.".into()))?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// Counts and times a request under its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}
