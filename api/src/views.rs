//! Response shapes: the envelope, and the positional rows the app indexes into.
//!
//! Rows only ever grow at the end, so `item[0]`, `item[1]`, ... keep their meaning
//! for the app; `format=object` gives the same rows keyed by name.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use events::projections::{format_timestamp, Bot, ChatListRow, HistoryRow};

/// `{"code": 200, "msg": "OK", "data": ...}` (bot and user routes).
pub fn ok(data: Value) -> Json<Value> {
    Json(json!({ "code": 200, "msg": "OK", "data": data }))
}

/// `{"code": 200, "msg": "ok", "data": ...}` (chat routes spell it in lower case).
pub fn chat_ok(data: Value) -> Json<Value> {
    Json(chat_envelope(data))
}

fn chat_envelope(data: Value) -> Value {
    json!({ "code": 200, "msg": "ok", "data": data })
}

/// The chat envelope rendered once, to be cached and served as is.
pub fn chat_ok_bytes(data: Value) -> Bytes {
    Bytes::from(chat_envelope(data).to_string())
}

/// A rendered JSON body as a response.
pub fn json_body(body: Bytes) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowFormat {
    Positional,
    Object,
}

impl RowFormat {
    /// `format=object`, `format=array` or none; anything else is refused rather
    /// than guessed.
    pub fn from_param(format: Option<&str>) -> Result<Self, String> {
        match format.map(str::trim) {
            None | Some("") => Ok(RowFormat::Positional),
            Some(f) if f.eq_ignore_ascii_case("object") => Ok(RowFormat::Object),
            Some(f) if f.eq_ignore_ascii_case("array") => Ok(RowFormat::Positional),
            Some(other) => Err(format!(
                "format must be `object` or `array` (the default), not {other:?}"
            )),
        }
    }
}

const HISTORY_FIELDS: [&str; 6] = [
    "content",
    "by_user",
    "timestamp",
    "seq",
    "message_id",
    "status",
];
const LIST_FIELDS: [&str; 5] = ["chatbot_id", "chatbot_name", "timestamp", "content", "seq"];

fn shape<const N: usize>(fields: [&str; N], values: [Value; N], format: RowFormat) -> Value {
    match format {
        RowFormat::Positional => Value::Array(values.into()),
        RowFormat::Object => {
            Value::Object(fields.iter().map(|f| f.to_string()).zip(values).collect())
        }
    }
}

/// `[content, by_user, timestamp, seq, message_id, status]`.
pub fn history_rows(rows: Vec<HistoryRow>, format: RowFormat) -> Value {
    Value::Array(rows.into_iter().map(|r| history_row(r, format)).collect())
}

/// One history row, in either shape.
pub fn history_row(r: HistoryRow, format: RowFormat) -> Value {
    shape(
        HISTORY_FIELDS,
        [
            json!(r.content),
            json!(r.by_user),
            json!(format_timestamp(&r.created_at)),
            json!(r.seq),
            json!(r.message_id),
            json!(r.status),
        ],
        format,
    )
}

/// `[chatbot_id, chatbot_name, timestamp, content, seq]`.
pub fn chat_list_rows(rows: Vec<ChatListRow>, format: RowFormat) -> Value {
    Value::Array(
        rows.into_iter()
            .map(|r| {
                shape(
                    LIST_FIELDS,
                    [
                        json!(r.chatbot_id),
                        json!(r.chatbot_name),
                        json!(format_timestamp(&r.last_at)),
                        json!(r.last_content),
                        json!(r.last_seq),
                    ],
                    format,
                )
            })
            .collect(),
    )
}

/// A bot as `bots/detail` shows it.
pub fn bot_detail(bot: &Bot) -> Value {
    json!({
        "chatbot_name": bot.chatbot_name,
        "chatbot_type": bot.chatbot_type,
        "chatbot_persona": bot.chatbot_persona,
        "create_at": format_timestamp(&bot.created_at),
    })
}

/// A bot as `bots/list` shows it: the detail plus its id.
pub fn bot_summary(bot: &Bot) -> Value {
    let mut value = bot_detail(bot);
    value["chatbot_id"] = json!(bot.chatbot_id);
    value
}
