//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use events::outbox::OutboxRelay;

use crate::openapi::{Alive, Readiness};
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up.", body = Alive)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database and the broker are reachable. The detail also counts the
/// outbox rows parked because the broker kept refusing them (they need an
/// operator, not a restart, so they do not make the process unready).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready.", body = Readiness),
    (status = 503, description = "The database or the broker is down.", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let parked = OutboxRelay::parked_count(&state.pool).await.ok();
    let database = parked.is_some();
    let broker = state.relay.publisher().channel().await.is_ok();
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |up: bool| if up { "up" } else { "down" };
    (
        status,
        Json(json!({
            "database": word(database),
            "broker": word(broker),
            "outbox_parked": parked,
        })),
    )
}
