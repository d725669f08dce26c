//! Upcasters: reading events written by older releases as today's types.
//!
//! An event is stored once and never rewritten, with the `schema_version` its
//! writer used. When a payload changes shape, the type's version goes up and one
//! upcaster is added here: a pure function from version N's payload to N+1's. Every
//! reader ([`crate::event::DomainEvent::decode`]: the projections, rebuilds, the
//! worker, as-of history) goes through [`upcast`], which chains them, so only the
//! current shapes need Rust types and a log from any release still replays.
//!
//! To evolve a type: bump its number in [`current_version`], add the step to
//! `step`, and add a case to the tests below with a payload exactly as the older
//! release stored it.

use std::borrow::Cow;

use serde_json::Value;

// Type names as the log stores them; they never change once written, so this module
// names them itself rather than borrow them from the types it reads old shapes for.
const USER_MESSAGE_POSTED: &str = "UserMessagePosted";
/// The events of a model call, which record its usage from v2 on.
const METERED: [&str; 4] = [
    "BotReplyGenerated",
    "BotReplyFailed",
    "ConversationSummarized",
    "UserProfileUpdated",
];

/// The schema version this release writes, and that [`upcast`] brings every older
/// event of the type up to.
pub fn current_version(event_type: &str) -> u16 {
    match event_type {
        // v2 records where the message came from (`source`).
        USER_MESSAGE_POSTED => 2,
        // v2 records what the model call cost (`usage`).
        metered if METERED.contains(&metered) => 2,
        _ => 1,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpcastError {
    #[error("{event_type} has schema version {version}, newer than this release reads ({current}); upgrade this process")]
    FromTheFuture {
        event_type: String,
        version: u16,
        current: u16,
    },
    #[error("{event_type} v{version} has no upcaster to v{}", version + 1)]
    Missing { event_type: String, version: u16 },
}

/// The payload of a stored event in its type's current shape. Borrows when the event
/// is already current, which is the common case, so reading costs no copy.
pub fn upcast<'a>(
    event_type: &str,
    version: u16,
    payload: &'a Value,
) -> Result<Cow<'a, Value>, UpcastError> {
    let current = current_version(event_type);
    if version > current {
        return Err(UpcastError::FromTheFuture {
            event_type: event_type.to_string(),
            version,
            current,
        });
    }
    let mut payload = Cow::Borrowed(payload);
    for from in version..current {
        let mut owned = payload.into_owned();
        step(event_type, from, &mut owned)?;
        payload = Cow::Owned(owned);
    }
    Ok(payload)
}

/// One step, from version `from` to `from + 1`.
fn step(event_type: &str, from: u16, payload: &mut Value) -> Result<(), UpcastError> {
    match (event_type, from) {
        (USER_MESSAGE_POSTED, 1) => {
            // Releases before v2 did not record a source.
            if let Value::Object(fields) = payload {
                fields
                    .entry("source")
                    .or_insert_with(|| Value::from("unrecorded"));
            }
            Ok(())
        }
        (metered, 1) if METERED.contains(&metered) => {
            // Releases before v2 did not record usage: it reads as unrecorded.
            if let Value::Object(fields) = payload {
                fields.entry("usage").or_insert(Value::Null);
            }
            Ok(())
        }
        _ => Err(UpcastError::Missing {
            event_type: event_type.to_string(),
            version: from,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_v1_user_message_gains_an_unrecorded_source() {
        // Exactly as the first release stored it.
        let v1 = json!({"message_id": "0190b3c4-0000-7000-8000-000000000001",
            "user_id": 7, "bot_id": 42, "content": "hi"});
        let current = upcast("UserMessagePosted", 1, &v1).map(Cow::into_owned);
        assert_eq!(
            current.map(|p| p["source"].clone()),
            Ok(json!("unrecorded"))
        );
    }

    #[test]
    fn a_v1_model_event_reads_with_its_usage_unrecorded() {
        let v1 = json!({"message_id": "0190b3c4-0000-7000-8000-000000000002",
            "reply_to": "0190b3c4-0000-7000-8000-000000000001", "user_id": 7, "bot_id": 42,
            "content": "hello", "model": "gpt-4o-mini"});
        let current = upcast("BotReplyGenerated", 1, &v1).map(Cow::into_owned);
        assert_eq!(
            current.as_ref().map(|p| p["usage"].clone()),
            Ok(Value::Null)
        );
        assert_eq!(current.map(|p| p["content"].clone()), Ok(json!("hello")));
        assert_eq!(current_version("UserProfileUpdated"), 2);
        assert_eq!(current_version("BotReplyStopped"), 1);
    }

    #[test]
    fn a_current_event_is_borrowed_untouched() {
        let v2 = json!({"content": "hi", "source": "api"});
        assert!(matches!(
            upcast("UserMessagePosted", 2, &v2),
            Ok(Cow::Borrowed(p)) if *p == v2
        ));
        assert!(matches!(upcast("BotCreated", 1, &v2), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn an_event_from_a_newer_release_is_refused_by_name() {
        let error = upcast("UserMessagePosted", 3, &json!({})).err();
        assert_eq!(
            error.map(|e| e.to_string()),
            Some("UserMessagePosted has schema version 3, newer than this release reads (2); upgrade this process".into())
        );
    }
}
