//! Cross-origin requests from browsers (`CORS_ALLOWED_ORIGINS`), with
//! tower-http's `CorsLayer`.
//!
//! None by default: a page is served the api only from the api's own origin.
//! A comma-separated list allows those origins (a dev server, say
//! `http://localhost:5173`); `*` allows any, as the original backend did. No
//! cookies are involved (tokens travel in `Authorization`, and a stream's ticket in
//! its URL), so credentials are never allowed, and `*` is safe from CSRF in the
//! cookie sense, though any page may then drive a user's token if it has one.
//!
//! tower-http answers a preflight with the allowed methods and headers whatever
//! its origin; an origin that is not allowed gets no `Access-Control-*` header at
//! all here, so nothing about the api's rules leaks to it.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use events::config::ConfigError;

/// What clients send: tokens, JSON or form bodies, a stream's resume point, and
/// their own correlation ids.
const ALLOWED_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("x-request-id"),
];
/// What scripts may read of an answer beyond the basics.
const EXPOSED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("x-request-id"), header::RETRY_AFTER];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    None,
    Any,
    List(Vec<HeaderValue>),
}

impl AllowedOrigins {
    /// `CORS_ALLOWED_ORIGINS`: empty, `*`, or origins separated by commas, each
    /// `scheme://host[:port]` with no path.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self::None);
        }
        if value == "*" {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let origin = origin.trim_end_matches('/');
            let well_formed = ["http://", "https://"].iter().any(|scheme| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|host| !host.is_empty() && !host.contains('/'))
            });
            let header = HeaderValue::from_str(origin).ok().filter(|_| well_formed);
            match header {
                Some(header) => origins.push(header),
                None => {
                    return Err(ConfigError::Invalid {
                        name: "CORS_ALLOWED_ORIGINS",
                        value: value.to_string(),
                        reason: format!(
                            "{origin:?} is not an origin: write scheme://host[:port], e.g. http://localhost:5173, or * for any"
                        ),
                    })
                }
            }
        }
        Ok(Self::List(origins))
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::List(origins) => origins.iter().any(|o| o == origin),
        }
    }

    /// The layer, unless no origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow_origin = match self {
            Self::None => return None,
            Self::Any => AllowOrigin::any(),
            Self::List(origins) => AllowOrigin::list(origins.clone()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers(ALLOWED_HEADERS)
                .expose_headers(EXPOSED_HEADERS)
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// Wraps the CORS layer: a request from an origin that is not allowed gets an
/// answer with no `Access-Control-*` header.
pub async fn only_for_allowed_origins(
    State(origins): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|origin| origins.allows(origin));
    let mut response = next.run(request).await;
    if !allowed {
        let cors: Vec<HeaderName> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors {
            response.headers_mut().remove(name);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_as_none_any_or_a_list() {
        assert_eq!(AllowedOrigins::parse("").unwrap(), AllowedOrigins::None);
        assert_eq!(AllowedOrigins::parse(" * ").unwrap(), AllowedOrigins::Any);
        let list =
            AllowedOrigins::parse("http://localhost:5173, https://chat.example.com/").unwrap();
        assert!(list.allows(&HeaderValue::from_static("http://localhost:5173")));
        assert!(list.allows(&HeaderValue::from_static("https://chat.example.com")));
        assert!(!list.allows(&HeaderValue::from_static("http://localhost:5174")));
    }

    #[test]
    fn a_malformed_origin_is_refused_with_an_example() {
        for bad in ["localhost:5173", "http://", "http://host/path", "ftp://x"] {
            let error = AllowedOrigins::parse(bad).unwrap_err().to_string();
            assert!(error.contains("scheme://host"), "{bad}: {error}");
        }
    }
}
