//! Rows as `GET /chat/history` serves them, positional (`item[0]`, `item[1]`, ...,
//! as the app indexes them) or keyed by name: shared by the api and the operator's
//! as-of history, which must print exactly what the route would have served.

use serde_json::{json, Value};

use super::{format_timestamp, HistoryRow};

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

pub fn shape<const N: usize>(fields: [&str; N], values: [Value; N], format: RowFormat) -> Value {
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

/// One history row, in either shape. As an object, a bot's row also says which
/// message it answers (`reply_to`) and which attempt it is (`attempt`: 1, then
/// one more per regeneration).
pub fn history_row(r: HistoryRow, format: RowFormat) -> Value {
    let answer = (r.by_user == 0).then(|| (r.reply_to.clone(), r.attempt));
    let mut row = shape(
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
    );
    if let (Value::Object(fields), Some((reply_to, attempt))) = (&mut row, answer) {
        fields.insert("reply_to".into(), json!(reply_to));
        fields.insert("attempt".into(), json!(attempt));
    }
    row
}
