//! The api's Prometheus metrics: a recorder installed at start, served at
//! `/metrics`, and a layer that counts and times every request by its route
//! template (`/chat/history`, never a raw path, so ids cannot explode the
//! labels) and status. The names are in `events::metrics`.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{counter, histogram, Counter, Histogram};
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
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = handles(route, method, response.status().as_u16());
    requests.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    response
}

/// The standard methods by name; any other is "other", so a client cannot add
/// label values at will.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .iter()
    .find(|m| *m == method)
    .map_or("other", |m| m.as_str())
}

/// A request's counter and histogram, by route template, method and status.
type Handles = (Counter, Histogram);

/// The handles of each label set seen so far. Looking them up by the route
/// costs a read lock and a hash; building the labels and finding them in the
/// registry, on every request, cost several allocations. Bounded: routes are
/// the router's templates (or "unmatched"), methods are labelled as above, and
/// statuses are HTTP's.
static HANDLES: LazyLock<RwLock<HandlesByRoute>> = LazyLock::new(Default::default);

/// Per route template: each method and status seen, and its handles.
type HandlesByRoute = HashMap<String, Vec<(&'static str, u16, Handles)>>;

fn handles(route: &str, method: &'static str, status: u16) -> Handles {
    let known = HANDLES.read().ok().and_then(|routes| {
        routes.get(route).and_then(|seen| {
            seen.iter()
                .find(|(m, s, _)| *m == method && *s == status)
                .map(|(_, _, handles)| handles.clone())
        })
    });
    if let Some(handles) = known {
        return handles;
    }
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    let handles = (
        counter!(HTTP_REQUESTS, &labels),
        histogram!(HTTP_DURATION, &labels),
    );
    if let Ok(mut routes) = HANDLES.write() {
        let seen = routes.entry(route.to_string()).or_default();
        if !seen.iter().any(|(m, s, _)| *m == method && *s == status) {
            seen.push((method, status, handles.clone()));
        }
    }
    handles
}
