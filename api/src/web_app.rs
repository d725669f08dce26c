//! The reference web client (`web/`), served at `/app/` from files embedded in
//! the binary, so the api needs nothing beside it. `WEB_APP=off` leaves it out.
//!
//! The page calls the api at its own origin, or at `/app/?api=<origin>` (then
//! that api must allow this origin: `CORS_ALLOWED_ORIGINS`).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(rust_embed::Embed)]
#[folder = "../web/"]
struct WebFiles;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app", get(|| async { file("index.html") }))
        .route(
            "/app/{*file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Result<Response, ApiError> {
    let file = WebFiles::get(name)
        .ok_or_else(|| ApiError::NotFound(format!("The web client has no file {name:?}.")))?;
    Ok((
        [
            (CONTENT_TYPE, file.metadata.mimetype().to_string()),
            // The files change only with the binary: a short cache, revalidated.
            (CACHE_CONTROL, "no-cache".to_string()),
        ],
        file.data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_embedded_with_its_types() {
        for (name, kind) in [
            ("index.html", "text/html"),
            ("app.js", "javascript"),
            ("app.css", "text/css"),
        ] {
            let response = file(name).expect(name);
            let content_type = response.headers()[CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.contains(kind), "{name}: {content_type}");
        }
        assert!(file("../Cargo.toml").is_err());
    }
}
