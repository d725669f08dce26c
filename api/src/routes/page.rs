//! Paging of `bots/list` and `chat/list`: `after` (a bot id) and `limit`, both
//! additive. Without them a list answers as the original did, up to
//! [`LIST_CAP`] rows, which a user's bots (`USER_MAX_BOTS`) never pass by
//! default.

use crate::error::ApiError;

/// The most rows one list answer holds, asked for or not.
pub const LIST_CAP: u32 = 1000;
/// About the most text (names and latest messages) one `chat/list` answer
/// holds; a page of long messages is shorter, and `after` pages on.
pub const LIST_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: Option<i64>,
    pub limit: u32,
}

impl Page {
    pub fn parse(after: Option<i64>, limit: Option<i64>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => LIST_CAP,
            Some(l) if l < 1 => {
                return Err(ApiError::BadRequest("limit must be at least 1".into()))
            }
            Some(l) => u32::try_from(l).unwrap_or(LIST_CAP).min(LIST_CAP),
        };
        Ok(Self { after, limit })
    }

    /// No paging asked for: the list as the original app reads it.
    pub fn is_default(&self) -> bool {
        self.after.is_none() && self.limit == LIST_CAP
    }
}
