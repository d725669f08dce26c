//! Property-based hostile input on every route (issue 21, item 4), with proptest,
//! against the real api: arbitrary JSON and form bodies, huge and deeply nested
//! bodies, bad UTF-8 and odd headers, SQL-injection and path-traversal strings.
//!
//! Every case carries a defect the api must refuse (a field of the wrong type,
//! bytes that are not UTF-8, a body past the limit, an id that is not a number),
//! so each must get a 4xx (or, on the bot routes, the contract's HTTP 200 with
//! `code: -1`), never a 5xx or a panic; and the events, users and bots tables
//! must be as they were. `FUZZ_CASES` scales the run (default 10,500 cases).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};
use system_tests::stack::{Stack, StackOptions};

/// A route, and a field that, given a value of the wrong kind, must make the
/// request fail.
#[derive(Debug)]
struct Route {
    method: &'static str,
    path: &'static str,
    /// `true`: a field the route reads as text; `false`: as an integer.
    defect: (&'static str, bool),
    bot_module: bool,
}

const ROUTES: [Route; 16] = [
    route("POST", "/users/register", ("username", true), false),
    route("POST", "/login", ("username", true), false),
    route("POST", "/login/refresh", ("refresh", true), false),
    route("POST", "/logout", ("refresh", true), false),
    route("PATCH", "/users/users/{me}", ("email", true), false),
    route("POST", "/bots/create", ("chatbot_type", false), true),
    route("POST", "/bots/detail", ("chatbot_id", false), true),
    route("POST", "/bots/list", ("limit", false), true),
    route("POST", "/bots/delete", ("chatbot_id", false), true),
    route("POST", "/bots/update", ("chatbot_id", false), true),
    route("POST", "/chat/new_chat", ("chatbot_id", false), false),
    route("POST", "/chat/stream/ticket", ("chatbot_id", false), false),
    route("POST", "/chat/memory/forget", ("chatbot_id", false), false),
    route("POST", "/chat/stop", ("chatbot_id", false), false),
    route("POST", "/chat/regenerate", ("chatbot_id", false), false),
    route("POST", "/chat/clear", ("chatbot_id", false), false),
];

const fn route(
    method: &'static str,
    path: &'static str,
    defect: (&'static str, bool),
    bot_module: bool,
) -> Route {
    Route {
        method,
        path,
        defect,
        bot_module,
    }
}

/// The api's default `MAX_BODY_BYTES`.
const BODY_LIMIT: usize = 64 * 1024;

/// The GET routes, and a query parameter that must be an integer.
const QUERIES: [(&str, &str); 5] = [
    ("/chat/history", "chatbot_id"),
    ("/chat/list", "limit"),
    ("/chat/memory", "chatbot_id"),
    ("/chat/stream", "chatbot_id"),
    ("/chat/usage", "chatbot_id"),
];

/// What attackers type into ids, names and paths.
const HOSTILE: [&str; 16] = [
    "1 OR 1=1",
    "1; DROP TABLE events; --",
    "' OR ''='",
    "1' UNION SELECT password_hash FROM users --",
    "\" OR \"\"=\"",
    "1/**/OR/**/1=1",
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/Cargo.toml",
    "....//....//etc/passwd",
    "..\\..\\windows\\win.ini",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "%00",
    "9223372036854775808",
    "-9223372036854775809",
];

/// Field names the api reads, so that arbitrary bodies hit real fields.
const FIELDS: [&str; 12] = [
    "user_id",
    "chatbot_id",
    "chatbot_name",
    "chatbot_type",
    "chatbot_persona",
    "input",
    "client_msg_id",
    "username",
    "password",
    "email",
    "refresh",
    "after",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELDS.as_slice()).prop_map(str::to_string),
        1 => any::<String>(),
        1 => proptest::sample::select(HOSTILE.as_slice()).prop_map(str::to_string),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::sample::select(HOSTILE.as_slice()).prop_map(str::to_string),
        "[a-z]{0,12}",
    ]
}

/// Any JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value a text field cannot take.
fn not_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        proptest::collection::vec(text().prop_map(Value::from), 0..3).prop_map(Value::Array),
        Just(json!({ "$gt": "" })),
    ]
}

/// A value an integer field cannot take.
fn not_integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        proptest::sample::select(HOSTILE.as_slice()).prop_map(Value::from),
        "[a-z][a-z0-9 ]{0,10}".prop_map(Value::from),
        (0.5f64..1e6)
            .prop_filter("a fraction", |f| f.fract() != 0.0)
            .prop_map(|f| json!(f)),
        proptest::collection::vec(any::<i64>().prop_map(Value::from), 0..3).prop_map(Value::Array),
        Just(json!({ "$ne": 0 })),
    ]
}

/// An arbitrary object for `route`, with its defect field set to a value of
/// the wrong kind.
fn defective_object(route: &'static Route) -> impl Strategy<Value = Value> {
    let wrong = if route.defect.1 {
        not_text().boxed()
    } else {
        not_integer().boxed()
    };
    (
        proptest::collection::btree_map(key(), json_value(), 0..8),
        wrong,
    )
        .prop_map(move |(fields, wrong)| {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
            object.insert(route.defect.0.to_string(), wrong);
            Value::Object(object)
        })
}

/// Percent-encodes every byte, so a form can carry bytes that are not UTF-8.
fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A form for `route` whose defect field holds bytes that are not UTF-8, or
/// (for an integer field) text that is not a number.
fn defective_form(route: &'static Route) -> impl Strategy<Value = Vec<u8>> {
    let pairs =
        proptest::collection::vec((key(), proptest::collection::vec(any::<u8>(), 0..24)), 0..6);
    let bad_utf8 = proptest::collection::vec(any::<u8>(), 0..8)
        .prop_map(|mut bytes| {
            bytes.push(0xFF);
            bytes
        })
        .boxed();
    let wrong = if route.defect.1 {
        bad_utf8
    } else {
        prop_oneof![
            bad_utf8,
            proptest::sample::select(HOSTILE.as_slice()).prop_map(|h| h.as_bytes().to_vec()),
            "[a-z][a-z ]{0,8}".prop_map(String::into_bytes),
        ]
        .boxed()
    };
    (pairs, wrong).prop_map(move |(pairs, wrong)| {
        let mut form: Vec<String> = pairs
            .into_iter()
            .filter(|(k, _)| k != route.defect.0)
            .map(|(k, v)| format!("{}={}", percent(k.as_bytes()), percent(&v)))
            .collect();
        form.push(format!("{}={}", route.defect.0, percent(&wrong)));
        form.join("&").into_bytes()
    })
}

/// A body of `bytes` that is not JSON or is too big or too deep.
fn huge_or_deep() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Nested deeper than any parser should follow.
        (129usize..20_000).prop_map(|depth| {
            let mut body = "[".repeat(depth).into_bytes();
            body.extend("]".repeat(depth).into_bytes());
            body
        }),
        (129usize..5_000).prop_map(|depth| {
            let mut body = r#"{"a":"#.repeat(depth).into_bytes();
            body.push(b'1');
            body.extend("}".repeat(depth).into_bytes());
            body
        }),
        // Past the body limit (64 KiB by default), as one long string.
        (70_000usize..400_000).prop_map(|size| {
            format!(r#"{{"input":"{}","chatbot_id":"x"}}"#, "a".repeat(size)).into_bytes()
        }),
        // Bytes that are not UTF-8, inside a JSON string.
        proptest::collection::vec(128u8..=255, 0..64).prop_map(|bad| {
            let mut body = br#"{"chatbot_id":"#.to_vec();
            body.push(b'"');
            body.extend(bad);
            // Never valid in UTF-8, whatever comes before it.
            body.push(0xFF);
            body.extend(br#"","input":"hi"}"#);
            body
        }),
    ]
}

/// Headers no client should send: odd types, junk tokens, bytes past ASCII.
fn odd_headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let value = prop_oneof![
        proptest::collection::vec(32u8..=255, 0..300),
        proptest::sample::select(HOSTILE.as_slice()).prop_map(|h| h.as_bytes().to_vec()),
        Just(b"application/json; charset=utf-16".to_vec()),
        Just(b"multipart/form-data; boundary=x".to_vec()),
        Just(b"text/plain".to_vec()),
        Just(b"Bearer a.b.c".to_vec()),
        Just(b"Bearer ".to_vec()),
        Just(b"Basic Zm9vOmJhcg==".to_vec()),
    ];
    let name = proptest::sample::select(
        [
            "content-type",
            "authorization",
            "x-request-id",
            "last-event-id",
            "x-forwarded-for",
            "origin",
            "accept",
            "content-encoding",
        ]
        .as_slice(),
    );
    proptest::collection::vec((name, value), 1..5)
}

/// One request, and what it must come to.
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    bot_module: bool,
}

struct Fuzz {
    http: reqwest::Client,
    base: String,
    token: String,
    me: i64,
    runtime: tokio::runtime::Handle,
    cases: AtomicUsize,
}

impl Fuzz {
    /// Sends `case` and checks the answer is a refusal.
    fn refused(&self, case: Case) -> Result<(), TestCaseError> {
        self.cases.fetch_add(1, Ordering::Relaxed);
        let path = case.path.replace("{me}", &self.me.to_string());
        let url = format!("{}{}", self.base, path);
        let method = Method::from_bytes(case.method.as_bytes()).map_err(fail)?;
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &case.headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request = request.header(HeaderName::from_static(name), value);
            }
        }
        let oversized = case.body.as_ref().is_some_and(|b| b.len() > BODY_LIMIT);
        if let Some(body) = case.body {
            request = request.body(body);
        }
        let answered = self.runtime.block_on(async {
            let answer = request.send().await?;
            let status = answer.status().as_u16();
            anyhow::Ok((status, answer.text().await.unwrap_or_default()))
        });
        let (status, text) = match answered {
            Ok(answer) => answer,
            // The api answers 413 as soon as it sees the declared length, and
            // closes the connection while the rest is still being sent; the
            // client may then see only the reset.
            Err(_) if oversized => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        prop_assert!(
            !text.contains("root:x:")
                && !text.contains("[workspace]")
                && !text.contains("[package]"),
            "{} {path} answered with a file's content",
            case.method
        );
        let bot_refusal = case.bot_module
            && status == 200
            && serde_json::from_str::<Value>(&text).is_ok_and(|v| v["code"] == -1);
        prop_assert!(
            (400..500).contains(&status) || bot_refusal,
            "{} {path} answered {status}: {}",
            case.method,
            text.chars().take(300).collect::<String>()
        );
        Ok(())
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> anyhow::Result<()> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, test)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    println!("{name}: {cases} cases refused");
    Ok(())
}

#[test]
fn hostile_input_on_every_route_is_refused_and_stores_nothing() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let scale: f64 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(1.0, |n| n / 10_500.0);
    let share = |n: f64| (n * scale).ceil() as u32;
    let stack = runtime.block_on(Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    }))?;
    let client = stack.client(0);
    let (me, token, _bot) = runtime.block_on(client.user_with_bot("fuzzed"))?;
    let pool = {
        let _in_runtime = runtime.enter();
        stack.pool()?
    };
    let counts = || {
        runtime.block_on(async {
            let events = system_tests::event_count(&pool).await?;
            let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(&pool)
                .await?;
            let bots: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bots")
                .fetch_one(&pool)
                .await?;
            anyhow::Ok((events, users, bots))
        })
    };
    let before = counts()?;
    let fuzz = Fuzz {
        // A connection per request: the api closes one it answered 413 on
        // mid-body, and a pooled one might be reused after that.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        base: client.base.clone(),
        token,
        me,
        runtime: runtime.handle().clone(),
        cases: AtomicUsize::new(0),
    };
    let routes = || (0..ROUTES.len()).prop_map(|i| &ROUTES[i]);

    run(
        "arbitrary JSON bodies",
        share(3_500.0),
        routes().prop_flat_map(|r| (Just(r), defective_object(r))),
        |(route, body)| {
            fuzz.refused(Case {
                method: route.method,
                path: route.path.into(),
                headers: Vec::new(),
                body: Some(serde_json::to_vec(&body).map_err(fail)?),
                content_type: Some("application/json"),
                bot_module: route.bot_module,
            })
        },
    )?;
    run(
        "arbitrary form bodies",
        share(2_500.0),
        routes().prop_flat_map(|r| (Just(r), defective_form(r))),
        |(route, body)| {
            fuzz.refused(Case {
                method: route.method,
                path: route.path.into(),
                headers: Vec::new(),
                body: Some(body),
                content_type: Some("application/x-www-form-urlencoded"),
                bot_module: route.bot_module,
            })
        },
    )?;
    run(
        "huge, deep and non-UTF-8 bodies",
        share(1_000.0),
        (routes(), huge_or_deep()),
        |(route, body)| {
            fuzz.refused(Case {
                method: route.method,
                path: route.path.into(),
                headers: Vec::new(),
                body: Some(body),
                content_type: Some("application/json"),
                bot_module: route.bot_module,
            })
        },
    )?;
    run(
        "odd headers",
        share(2_000.0),
        routes().prop_flat_map(|r| (Just(r), defective_object(r), odd_headers())),
        |(route, body, headers)| {
            fuzz.refused(Case {
                method: route.method,
                path: route.path.into(),
                headers,
                body: Some(serde_json::to_vec(&body).map_err(fail)?),
                content_type: None,
                bot_module: route.bot_module,
            })
        },
    )?;
    run(
        "injection and traversal in paths and queries",
        share(1_500.0),
        (
            0..QUERIES.len(),
            proptest::sample::select(HOSTILE.as_slice()),
            any::<bool>(),
        ),
        |(query, hostile, in_path)| {
            let (path, param) = QUERIES[query];
            let path = if in_path {
                // Traversal in the path: the web client's files, or beside a route.
                let prefix = if query % 2 == 0 { "/app/" } else { "/chat/" };
                format!("{prefix}{hostile}")
            } else {
                let value: String = url_encode(hostile);
                format!("{path}?{param}={value}")
            };
            fuzz.refused(Case {
                method: "GET",
                path,
                headers: Vec::new(),
                body: None,
                content_type: None,
                bot_module: false,
            })
        },
    )?;

    let after = counts()?;
    let cases = fuzz.cases.load(Ordering::Relaxed);
    println!("{cases} hostile requests in all; (events, users, bots) {before:?} -> {after:?}");
    assert_eq!(before, after, "a refused request stored something");
    let mut stack = stack;
    assert!(stack.apis[0].is_running(), "the api died");
    let log = stack.apis[0].log_text();
    assert!(!log.contains("panicked"), "the api panicked");
    assert!(
        !log.contains("internal error"),
        "the api logged an internal error"
    );
    runtime.block_on(stack.teardown())
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
