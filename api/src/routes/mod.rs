//! The router: one module per route family, each handler thin (extract, authorize,
//! call the domain, shape the response).

pub mod bots;
pub mod chat;
pub mod health;
pub mod users;

use axum::routing::{get, patch, post};
use axum::Router;

use events::event::{EventMetadata, UserId};
use events::store::RecordedEvent;

use crate::extract::CorrelationId;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/users/register", post(users::register))
        .route("/login", post(users::login))
        .route("/login/refresh", post(users::refresh))
        .route("/users/users/{id}", patch(users::update))
        .route("/bots/create", post(bots::create))
        .route("/bots/detail", post(bots::detail))
        .route("/bots/list", post(bots::list))
        .route("/bots/delete", post(bots::delete))
        .route("/bots/get_persona", get(bots::get_persona))
        .route("/chat/new_chat", post(chat::new_chat))
        .route("/chat/history", get(chat::history))
        .route("/chat/list", get(chat::list))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
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
