//! The API's OpenAPI 3.1 description, generated from the handlers.
//!
//! Each handler carries its `#[utoipa::path]` (route, parameters, body and
//! answers), and the router is built from those handlers through
//! `utoipa_axum::routes!` (see `routes`), so a route is served exactly when it
//! is described. This module holds what the handlers share: the document's
//! frame, the bearer scheme, the failure answers every route can give, and the
//! shapes of the JSON the views build by hand (the envelopes, and rows that are
//! arrays the app indexes into, with `format=object`'s shape beside them).
//!
//! Served at `/openapi.json`, and read in a browser at `/docs` (Scalar).

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, SchemaFormat};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatbot",
        description = "An event-sourced chatbot backend. The routes and their quirks (form \
            bodies, positional rows, the bot module's `code: -1`) keep the original Django \
            backend's contract, which its mobile app relies on; see API.md. Paths may also be \
            spelled with a trailing slash or a doubled `//`, as the app does.\n\n\
            Failures come in three shapes, as the original's did: the `{code, msg, data}` \
            envelope (chat and bot routes), Django REST framework's field errors on the user \
            routes (`{\"username\": [\"...\"]}`), and simplejwt's `{detail, code}` for \
            credentials and tokens."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "users", description = "Accounts and sessions (JWT access and refresh tokens)."),
        (name = "bots", description = "A user's bots. The bot module answers its own failures \
            with HTTP 200 and `code: -1`, as the app expects."),
        (name = "chat", description = "Messages, replies, history and memory."),
        (name = "operations", description = "Health, readiness and metrics."),
    )
)]
pub struct ApiDoc;

/// Finishes the description once every route is in it.
pub fn complete(spec: &mut utoipa::openapi::OpenApi) {
    FailureAnswers.modify(spec);
}

/// `/openapi.json`'s body, rendered once when the router is built.
pub fn rendered(spec: &utoipa::openapi::OpenApi) -> axum::body::Bytes {
    // An `OpenApi` is plain data; serializing it cannot fail.
    serde_json::to_vec(spec).unwrap_or_default().into()
}

/// The access token, as `Authorization: Bearer <access>`.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access` token from `POST /login`. With `AUTH_MODE=legacy` the \
                         chat and bot routes also take a `user_id` field instead, as the \
                         original app sends.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The failures any route can answer with, added to every operation so that each
/// handler lists only what is its own.
struct FailureAnswers;

const COMMON_FAILURES: [(&str, &str); 9] = [
    (
        "400",
        "The input is malformed or a field is invalid; nothing was stored.",
    ),
    (
        "401",
        "No token, or one that is invalid, expired or revoked.",
    ),
    ("403", "The token's user may not act for the user named."),
    ("404", "No such user, bot or conversation for the caller."),
    ("408", "The request did not arrive in time."),
    (
        "409",
        "Lost a race with a concurrent change; send it again.",
    ),
    ("413", "The body is larger than the limit."),
    (
        "429",
        "Past a rate limit or cap; `Retry-After` says when to try again.",
    ),
    (
        "503",
        "The database or the broker is unavailable; try again shortly.",
    ),
];

impl Modify for FailureAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ];
            for operation in operations.into_iter().flatten() {
                add_failures(operation);
            }
        }
    }
}

fn add_failures(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    for (status, description) in COMMON_FAILURES {
        responses.entry(status.to_string()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Failure::schema()))
                        .build(),
                )
                .into()
        });
    }
    // Only a body-bearing route can get the wrong media type.
    if operation.request_body.is_some() {
        responses.entry("415".into()).or_insert_with(|| {
            ResponseBuilder::new()
                .description("The body is neither JSON nor a form.")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Failure::schema()))
                        .build(),
                )
                .into()
        });
    }
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

fn nullable(of: Type) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter([of, Type::Null]))
}

fn object(fields: Vec<(&str, ObjectBuilder)>) -> ObjectBuilder {
    fields
        .into_iter()
        .fold(ObjectBuilder::new(), |object, (name, schema)| {
            object.property(name, schema).required(name)
        })
}

/// A row the app indexes into (`item[0]`, `item[1]`, ...), or with
/// `format=object` the same fields by name.
///
/// The positional form would be a `prefixItems` tuple, but schemathesis (4.32)
/// cannot read `prefixItems` in a response (its issues 3842 and 4099), so the
/// positions are named in the description and each item is a string or an
/// integer; the named form gives each field's type.
fn row(fields: Vec<(&str, ObjectBuilder)>) -> OneOfBuilder {
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    let positional = ArrayBuilder::new()
        .items(
            ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Integer])),
        )
        .min_items(Some(fields.len()))
        .max_items(Some(fields.len()))
        .description(Some(format!(
            "Positional (the default): [{}].",
            names.join(", ")
        )));
    let named = object(fields).description(Some("With `format=object`."));
    OneOfBuilder::new().item(positional).item(named)
}

fn timestamp() -> ObjectBuilder {
    string().description(Some("UTC, `YYYY-MM-DD HH:MM:SS`."))
}

/// What a failure answers, in one of the contract's three shapes.
pub struct Failure;

impl ToSchema for Failure {}

impl PartialSchema for Failure {
    fn schema() -> RefOr<Schema> {
        let envelope = object(vec![
            ("code", integer()),
            ("msg", string()),
            ("data", ObjectBuilder::new().schema_type(Type::Null)),
        ])
        .description(Some(
            "The envelope: `code` is the HTTP status, `msg` says why.",
        ));
        let fields = ObjectBuilder::new()
            .additional_properties(Some(RefOr::T(Schema::from(
                ArrayBuilder::new().items(string()).build(),
            ))))
            .description(Some(
                "Field errors on the user routes: each field, its messages.",
            ));
        let detail = ObjectBuilder::new()
            .property("detail", string())
            .required("detail")
            .property("code", string())
            .property(
                "messages",
                ArrayBuilder::new().items(ObjectBuilder::new()).build(),
            )
            .description(Some("Credentials and tokens, in simplejwt's shape."));
        OneOfBuilder::new()
            .item(envelope)
            .item(fields)
            .item(detail)
            .into()
    }
}

/// Declares a schema built by a function, for an answer the views build by hand.
macro_rules! described {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl ToSchema for $name {}

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }
    };
}

/// `{code, msg, data}` with `data` as given.
fn envelope(data: impl Into<RefOr<Schema>>) -> ObjectBuilder {
    object(vec![("code", integer()), ("msg", string())])
        .property("data", data)
        .required("data")
}

fn bot_fields() -> Vec<(&'static str, ObjectBuilder)> {
    vec![
        ("chatbot_name", string()),
        ("chatbot_type", integer()),
        ("chatbot_persona", string()),
        ("create_at", timestamp()),
        (
            "model",
            nullable(Type::String).description(Some("null: `OPENAI_MODEL`.")),
        ),
        ("temperature", nullable(Type::Number)),
        ("max_reply_tokens", nullable(Type::Integer)),
    ]
}

/// The bot module answers its failures with HTTP 200, `code: -1` and `data: []`.
const BOT_MODULE: &str = "`code` is 200, or -1 with `msg` naming the failure and `data: []`.";

described!(
    /// `POST /users/register`.
    Registered => envelope(object(vec![("username", string()), ("email", string())]))
);
described!(
    /// `POST /login`.
    LoggedIn => object(vec![
        ("code", integer()),
        ("msg", string()),
        ("user_id", integer()),
        ("username", string()),
        ("email", string()),
        ("access", string()),
        ("refresh", string()),
    ])
);
described!(
    /// `POST /login/refresh`: a new pair; the refresh token given is spent.
    TokenPair => object(vec![("access", string()), ("refresh", string())])
);
described!(
    /// `POST /logout`.
    LoggedOut => object(vec![("code", integer()), ("msg", string())])
);
described!(
    /// `POST /bots/create`.
    BotCreated => envelope(ArrayBuilder::new().items(object(vec![("chatbot_id", integer())])))
        .description(Some(BOT_MODULE))
);
described!(
    /// `POST /bots/detail`.
    BotDetails => envelope(ArrayBuilder::new().items(object(bot_fields())))
        .description(Some(BOT_MODULE))
);
described!(
    /// `POST /bots/list`.
    BotList => envelope(ArrayBuilder::new().items(object(
        bot_fields().into_iter().chain([("chatbot_id", integer())]).collect()
    )))
    .description(Some(BOT_MODULE))
);
described!(
    /// `POST /bots/delete` and `POST /chat/memory/forget`: an empty list.
    Done => envelope(ArrayBuilder::new().items(ObjectBuilder::new()).max_items(Some(0)))
        .description(Some(BOT_MODULE))
);
described!(
    /// `GET /bots/get_persona`: the preset personas.
    Personas => envelope(ArrayBuilder::new().items(string()))
);
described!(
    /// `POST /chat/new_chat` answered: `data` is the reply's text.
    Reply => envelope(string())
);
described!(
    /// `POST /chat/new_chat` before its reply: read it later from history.
    Pending => envelope(object(vec![("message_id", string()), ("status", string())]))
);
described!(
    /// `GET /chat/history`.
    History => envelope(ArrayBuilder::new().items(row(vec![
        ("content", string()),
        ("by_user", integer()),
        ("timestamp", timestamp()),
        ("seq", integer()),
        ("message_id", string()),
        ("status", string()),
    ])))
);
described!(
    /// `POST /chat/stop`: the conversation's last reply row (status `stopped`
    /// when this stop ended it), or null when the bot has not replied yet.
    LastReply => envelope(
        object(vec![
            ("content", string()),
            ("by_user", integer()),
            ("timestamp", timestamp()),
            ("seq", integer()),
            ("message_id", string()),
            ("status", string()),
            ("reply_to", nullable(Type::String)),
            ("attempt", integer()),
        ])
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
    )
);
described!(
    /// `GET /chat/list`: each conversation and its last row.
    ChatList => envelope(ArrayBuilder::new().items(row(vec![
        ("chatbot_id", integer()),
        ("chatbot_name", string()),
        ("timestamp", timestamp()),
        ("content", string()),
        ("seq", integer()),
    ])))
);
described!(
    /// `GET /chat/memory`: what the bot remembers of this conversation.
    Memory => envelope(object(vec![
        ("summary", nullable(Type::String)),
        ("profile", nullable(Type::String)),
        ("up_to_seq", nullable(Type::Integer)),
        ("updated_at", nullable(Type::String)),
    ]))
);
described!(
    /// `GET /chat/usage`: tokens paid for in the period, replies (per bot too)
    /// and memory refreshes apart.
    UsageReport => envelope(object(vec![
        ("replies", integer()),
        ("prompt_tokens", integer()),
        ("completion_tokens", integer()),
        (
            "memory",
            object(vec![
                ("refreshes", integer()),
                ("prompt_tokens", integer()),
                ("completion_tokens", integer()),
            ]),
        ),
        ("from", string()),
        ("to", string()),
    ])
    .property(
        "by_bot",
        ArrayBuilder::new().items(object(vec![
            ("chatbot_id", integer()),
            ("replies", integer()),
            ("prompt_tokens", integer()),
            ("completion_tokens", integer()),
        ])),
    )
    .required("by_bot"))
);
described!(
    /// `POST /chat/stream/ticket`.
    StreamTicket => envelope(object(vec![
        ("ticket", string()),
        ("expires_in", integer()),
        ("url", string()),
    ]))
);
described!(
    /// `GET /healthz`.
    Alive => object(vec![("status", string())])
);
described!(
    /// `GET /readyz`: `outbox_parked` counts rows the broker kept refusing.
    Readiness => object(vec![("database", string()), ("broker", string())])
        .property("outbox_parked", nullable(Type::Integer))
        .required("outbox_parked")
);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The pages served beside the API, which are for people, not programs.
    const PAGES: [&str; 4] = ["/openapi.json", "/docs", "/app", "/app/{*file}"];

    /// The paths a router serves, read from its `Debug` form, which lists each
    /// route's path in quotes, then the fallback's (axum has no other way to
    /// enumerate them).
    fn served_paths(router: &axum::Router<crate::state::AppState>) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        let (routes, _fallback) = debug.split_once("fallback_router").unwrap_or_default();
        routes
            .split('"')
            .filter(|part| part.starts_with('/'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_route_the_api_serves_is_described_and_every_description_is_served() {
        let (router, spec) = crate::routes::routes(true, true);
        let served = served_paths(&router);
        let described: BTreeSet<String> = spec.paths.paths.keys().cloned().collect();
        assert!(
            served.len() > 15,
            "read too few paths from the router: {served:?}"
        );
        let undescribed: Vec<_> = served
            .iter()
            .filter(|path| !described.contains(*path) && !PAGES.contains(&path.as_str()))
            .collect();
        assert!(
            undescribed.is_empty(),
            "served but not described: {undescribed:?}"
        );
        let unserved: Vec<_> = described.difference(&served).collect();
        assert!(
            unserved.is_empty(),
            "described but not served: {unserved:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_failures_and_the_bearer_scheme_exists() {
        let (_, spec) = crate::routes::routes(false, true);
        let value = serde_json::to_value(spec.as_ref()).unwrap_or_default();
        assert_eq!(value["openapi"], "3.1.0");
        assert_eq!(
            value["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, item) in value["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                for status in ["400", "401", "413", "429", "503"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} does not describe {status}"
                    );
                }
            }
        }
    }
}
