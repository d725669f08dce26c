//! The router: one module per route family, each handler thin (extract, authorize,
//! call the domain, shape the response).

pub mod bots;
pub mod chat;
pub mod health;
pub mod memory;
pub mod page;
pub mod stream;
pub mod stream_ticket;
pub mod users;

use axum::http::{Method, Uri};
use axum::routing::{get, patch, post};
use axum::Router;

use events::event::{EventMetadata, UserId};
use events::store::RecordedEvent;

use crate::error::ApiError;
use crate::extract::CorrelationId;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let web_app = if state.config.web_app {
        crate::web_app::routes()
    } else {
        Router::new()
    };
    Router::new()
        .merge(web_app)
        .route("/users/register", post(users::register))
        .route("/login", post(users::login))
        .route("/login/refresh", post(users::refresh))
        .route("/logout", post(users::logout))
        .route("/users/users/{id}", patch(users::update))
        .route("/bots/create", post(bots::create))
        .route("/bots/detail", post(bots::detail))
        .route("/bots/list", post(bots::list))
        .route("/bots/delete", post(bots::delete))
        .route("/bots/get_persona", get(bots::get_persona))
        .route("/chat/new_chat", post(chat::new_chat))
        .route("/chat/history", get(chat::history))
        .route("/chat/list", get(chat::list))
        .route("/chat/stream", get(stream::stream))
        .route("/chat/stream/ticket", post(stream_ticket::issue))
        .route("/chat/memory", get(memory::show))
        .route("/chat/memory/forget", post(memory::forget))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(crate::http_metrics::render))
        .route("/readyz", get(health::readyz))
        .route_layer(axum::middleware::from_fn(crate::http_metrics::track))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
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
