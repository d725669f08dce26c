//! The router: one module per route family, each handler thin (extract, authorize,
//! call the domain, shape the response).

pub mod bots;
pub mod chat;
pub mod controls;
pub mod health;
pub mod memory;
pub mod page;
pub mod stream;
pub mod stream_ticket;
pub mod usage;
pub mod users;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable};

use events::event::{EventMetadata, UserId};
use events::store::RecordedEvent;

use crate::error::ApiError;
use crate::extract::CorrelationId;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The API's routes and their OpenAPI description, made together: each route
/// comes from its handler's `#[utoipa::path]`, so none is served undescribed.
pub fn described() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::register))
        .routes(routes!(users::login))
        .routes(routes!(users::refresh))
        .routes(routes!(users::logout))
        .routes(routes!(users::update, users::erase))
        .routes(routes!(bots::create))
        .routes(routes!(bots::detail))
        .routes(routes!(bots::list))
        .routes(routes!(bots::update))
        .routes(routes!(bots::delete))
        .routes(routes!(bots::get_persona))
        .routes(routes!(chat::new_chat))
        .routes(routes!(chat::history))
        .routes(routes!(chat::list))
        .routes(routes!(controls::stop))
        .routes(routes!(controls::regenerate))
        .routes(routes!(controls::clear))
        .routes(routes!(stream::stream))
        .routes(routes!(stream_ticket::issue))
        .routes(routes!(memory::show))
        .routes(routes!(memory::forget))
        .routes(routes!(usage::usage))
        .routes(routes!(health::healthz))
        .routes(routes!(crate::http_metrics::render))
        .routes(routes!(health::readyz))
        .split_for_parts();
    crate::openapi::complete(&mut spec);
    (routes, spec)
}

pub fn router(state: AppState) -> Router {
    let (router, _) = routes(state.config.web_app, state.config.metrics);
    router.with_state(state)
}

/// Every route the api serves, before its state is given, and the description
/// of those that make up the API. Besides the API, it serves the description,
/// a reader for it, and (when `web_app`) the web client. With `metrics`, each
/// request is counted and timed.
pub fn routes(web_app: bool, metrics: bool) -> (Router<AppState>, Arc<utoipa::openapi::OpenApi>) {
    let (api, spec) = described();
    let spec = Arc::new(spec);
    let mut pages = Router::new()
        .route(
            "/openapi.json",
            get({
                let body = crate::openapi::rendered(&spec);
                move || std::future::ready(crate::views::json_body(body.clone()))
            }),
        )
        .merge(Scalar::with_url("/docs", spec.as_ref().clone()));
    if web_app {
        pages = pages.merge(crate::web_app::routes());
    }
    let mut router = api.merge(pages);
    if metrics {
        router = router.route_layer(axum::middleware::from_fn(crate::http_metrics::track));
    }
    let router = router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method);
    (router, spec)
}

/// Unknown routes answer in the envelope too, so clients parse every failure alike.
async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "No route for {method} {}; see the API documentation.",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}.", uri.path()))
}

/// Metadata for the events a request records.
fn metadata(correlation: CorrelationId, user_id: UserId) -> EventMetadata {
    EventMetadata {
        correlation_id: correlation.0,
        causation_id: None,
        user_id: Some(user_id),
    }
}

/// Publishes freshly committed events without making the client wait for the broker;
/// if this fails, the outbox relay publishes them later.
fn publish_in_background(state: &AppState, events: Vec<RecordedEvent>) {
    let relay = state.relay.clone();
    tokio::spawn(async move { relay.publish_now(&events).await });
}
