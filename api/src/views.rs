//! Response shapes: the envelope, and the positional rows the app indexes into.
//!
//! Rows only ever grow at the end, so `item[0]`, `item[1]`, ... keep their meaning
//! for the app; `format=object` gives the same rows keyed by name.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use events::projections::{format_timestamp, Bot, ChatListRow};

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

pub use events::projections::rows::{history_row, history_rows, shape, RowFormat};

const LIST_FIELDS: [&str; 5] = ["chatbot_id", "chatbot_name", "timestamp", "content", "seq"];

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
        // Additive (bots/update); null: the operator's defaults.
        "model": bot.model,
        "temperature": bot.temperature,
        "max_reply_tokens": bot.max_reply_tokens,
    })
}

/// A bot as `bots/list` shows it: the detail plus its id.
pub fn bot_summary(bot: &Bot) -> Value {
    let mut value = bot_detail(bot);
    value["chatbot_id"] = json!(bot.chatbot_id);
    value
}
