//! Extractors for the contract's quirks, so that handlers only see typed values.
//!
//! - [`Payload`]: a POST/PATCH body as JSON or `application/x-www-form-urlencoded`
//!   (the app sends both; a form-labelled body holding a JSON object is JSON).
//! - [`BotPayload`]: the same, failing the bot module's way (`code: -1`).
//! - [`Params`]: the query string, failing with a 400 envelope.
//! - [`lenient`]: integers that arrive as numbers or numeric strings.
//! - [`normalize_path`]: merges `//` and drops the trailing slash before routing.
//! - [`guard_edges`]: 413 at once for a declared length over the limit.
//! - [`CorrelationId`]: the request id, carried into events and the broker.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A request body, accepted as JSON or as a form.
#[derive(Debug)]
pub struct Payload<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Payload<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        let value = parse_body(&content_type, &bytes)?;
        // The path names the offending field: "chatbot_type: expected an integer".
        serde_path_to_error::deserialize(value)
            .map(Payload)
            .map_err(|e| ApiError::BadRequest(format!("Invalid field {e}")))
    }
}

/// [`Payload`] for the bot module, whose failures are `HTTP 200, code -1`.
#[derive(Debug)]
pub struct BotPayload<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for BotPayload<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Payload::from_request(req, state)
            .await
            .map(|Payload(body)| BotPayload(body))
            .map_err(ApiError::into_bot_module)
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge("The request body is too large.".into());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::RequestTimeout("The request body did not arrive in time.".into());
        }
        source = error.source();
    }
    ApiError::BadRequest(format!("Cannot read the request body: {rejection}"))
}

/// Answers 413 as soon as a request declares a body over `MAX_BODY_BYTES` (the
/// state), rather than waiting for a body that may never come; and ends a
/// database outage episode at the first answer that is not a 5xx.
pub async fn guard_edges(
    axum::extract::State(max_body_bytes): axum::extract::State<usize>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = max_body_bytes as u64;
    if let Some(length) = declared.filter(|&length| length > limit) {
        return ApiError::PayloadTooLarge(format!(
            "The request body ({length} bytes) is larger than the limit of {limit} bytes."
        ))
        .into_response();
    }
    let liveness = request.uri().path() == "/healthz";
    let response = next.run(request).await;
    if !liveness && !response.status().is_server_error() {
        crate::error::database_reached();
    }
    response
}

/// Decodes `application/x-www-form-urlencoded` text strictly: a percent-encoded
/// byte sequence that is not UTF-8 is an error, never a U+FFFD stored for good.
pub fn decode_form(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |raw: &str| {
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "The field {:?} is not valid UTF-8 once percent-decoded.",
                    raw.split('=').next().unwrap_or(raw)
                ))
            })
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((
                decode(key)?,
                decode(value).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "The value of {key:?} is not valid UTF-8 once percent-decoded."
                    ))
                })?,
            ))
        })
        .collect()
}

/// Turns a body into a JSON object, whichever way it was sent.
pub fn parse_body(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("The request body is not valid UTF-8.".into()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let is_json = media_type == "application/json" || media_type.ends_with("+json");
    let is_form = media_type == "application/x-www-form-urlencoded";
    let untyped = media_type.is_empty() || media_type == "text/plain";
    if is_json || ((is_form || untyped) && trimmed.starts_with('{')) {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(object)) => Ok(Value::Object(object)),
            Ok(_) => Err(ApiError::BadRequest(
                "The request body must be a JSON object.".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!("Malformed JSON body: {e}"))),
        };
    }
    if is_form || untyped {
        let pairs = decode_form(trimmed)?;
        return Ok(Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ));
    }
    Err(ApiError::UnsupportedMediaType(format!(
        "Send the body as application/json or application/x-www-form-urlencoded, not {media_type}."
    )))
}

/// The query string, typed.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = parts.uri.query() {
            decode_form(query)?;
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|e| {
                ApiError::BadRequest(format!("Invalid query parameters: {}", e.body_text()))
            })
    }
}

/// Integers as the app sends them: `7`, `"7"` or `" 7 "`.
pub mod lenient {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    struct IntVisitor;

    impl<'de> Visitor<'de> for IntVisitor {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer, as a number or a string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("integer out of range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(Some(v as i64))
            } else {
                Err(E::custom(format!("expected an integer, got {v}")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| E::custom(format!("expected an integer, got {v:?}")))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(IntVisitor)
        }
    }

    /// For `#[serde(default, deserialize_with = "lenient::int")]` on `Option<i64>`.
    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(IntVisitor)
    }

    struct FloatVisitor;

    impl<'de> Visitor<'de> for FloatVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, as a number or a string")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() {
                Ok(Some(v))
            } else {
                Err(E::custom("expected a finite number"))
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            match v.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(Some(n)),
                _ => Err(E::custom(format!("expected a number, got {v:?}"))),
            }
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(FloatVisitor)
        }
    }

    /// For `#[serde(default, deserialize_with = "lenient::float")]` on `Option<f64>`.
    pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(FloatVisitor)
    }

    struct BoolVisitor;

    impl<'de> Visitor<'de> for BoolVisitor {
        type Value = Option<bool>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false (also 1/0, yes/no), as a boolean, a number or a string")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match v {
                0 => Ok(Some(false)),
                1 => Ok(Some(true)),
                _ => Err(E::custom(format!("expected true or false, got {v}"))),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(E::custom(format!("expected true or false, got {v:?}"))),
            }
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(BoolVisitor)
        }
    }

    /// For `#[serde(default, deserialize_with = "lenient::boolean")]` on `Option<bool>`.
    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_any(BoolVisitor)
    }
}

/// Merges repeated slashes and drops a trailing one, so `//users/register/` and
/// `/chat/list` reach the same routes as their canonical forms.
pub fn normalize_path<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = req.uri().path();
    if !path.contains("//") && (path == "/" || !path.ends_with('/')) {
        return req;
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    if let Some(query) = req.uri().query() {
        normalized.push('?');
        normalized.push_str(query);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(path_and_query) = normalized.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-chosen request id kept.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// Whether a client's `X-Request-Id` may become the correlation id: it goes into
/// the event log and into AMQP headers, so it must be short (an unbounded one
/// made a publish larger than the broker's frame, which closed the connection of
/// every process that retried it) and plain.
pub fn is_acceptable_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_CHARS
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Drops a request id that [`is_acceptable_request_id`] refuses, before the
/// request-id layer runs, so that the layer generates one instead.
pub fn drop_unacceptable_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let mut ids = req.headers().get_all(REQUEST_ID_HEADER).iter();
    let kept = match (ids.next(), ids.next()) {
        (Some(id), None) => is_acceptable_request_id(id.as_bytes()),
        (None, _) => true,
        // Two ids: which one would travel is the layers' guess; make one instead.
        (Some(_), Some(_)) => false,
    };
    if !kept {
        req.headers_mut().remove(REQUEST_ID_HEADER);
    }
    req
}

/// The request's id (set by the request-id layer), used as the correlation id of
/// the events it records.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(CorrelationId(
            parts
                .headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(is_acceptable_request_id(b"req-1.2_AB"));
        assert!(is_acceptable_request_id(&[b'a'; MAX_REQUEST_ID_CHARS]));
        assert!(!is_acceptable_request_id(&[b'a'; MAX_REQUEST_ID_CHARS + 1]));
        assert!(!is_acceptable_request_id(b""));
        assert!(!is_acceptable_request_id(b"has space"));
        assert!(!is_acceptable_request_id("caf\u{e9}".as_bytes()));
        let req = axum::http::Request::builder()
            .header(REQUEST_ID_HEADER, "x".repeat(300_000))
            .body(())
            .unwrap();
        assert!(drop_unacceptable_request_id(req)
            .headers()
            .get(REQUEST_ID_HEADER)
            .is_none());
    }

    #[test]
    fn form_values_become_strings_and_json_in_a_form_is_json() {
        let form = parse_body(
            "application/x-www-form-urlencoded",
            b"user_id=7&input=a%26b+%E4%BD%A0",
        )
        .unwrap();
        assert_eq!(form["user_id"], "7");
        assert_eq!(form["input"], "a&b 你");
        let json =
            parse_body("application/x-www-form-urlencoded", br#"{"chatbot_id": 3}"#).unwrap();
        assert_eq!(json["chatbot_id"], 3);
    }

    #[test]
    fn malformed_and_unsupported_bodies_are_refused() {
        assert!(matches!(
            parse_body("application/json", b"{\"a\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_body("application/json", b"[1,2]"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_body("multipart/form-data; boundary=x", b"--x"),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn paths_are_normalized() {
        let norm = |p: &str| {
            normalize_path(axum::http::Request::get(p).body(()).unwrap())
                .uri()
                .to_string()
        };
        assert_eq!(norm("//users/register/"), "/users/register");
        assert_eq!(norm("/bots/delete/"), "/bots/delete");
        assert_eq!(
            norm("/chat//history/?chatbot_id=1"),
            "/chat/history?chatbot_id=1"
        );
        assert_eq!(norm("/chat/list"), "/chat/list");
        assert_eq!(norm("/"), "/");
    }

    #[test]
    fn lenient_ints_accept_numbers_and_strings() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "lenient::int")]
            id: Option<i64>,
        }
        let parse = |v: serde_json::Value| serde_json::from_value::<T>(v).map(|t| t.id);
        assert_eq!(parse(serde_json::json!({"id": 7})).unwrap(), Some(7));
        assert_eq!(
            parse(serde_json::json!({"id": "15870"})).unwrap(),
            Some(15870)
        );
        assert_eq!(parse(serde_json::json!({})).unwrap(), None);
        assert!(parse(serde_json::json!({"id": "seven"})).is_err());
        assert!(parse(serde_json::json!({"id": 1.5})).is_err());
    }
}
