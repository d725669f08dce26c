//! Statements whose number of rows or keys varies, written in few distinct texts.
//!
//! A statement prepared afresh costs the server a parse and a plan, and the client
//! a round trip; for the small statements of each commit that is most of their
//! cost. A statement kept prepared (sqlx caches up to 100 per connection) costs
//! that once, but the server holds each one until the connection closes and
//! refuses more than `max_prepared_stmt_count` across all connections, so a text
//! that varies with its number of rows must not be kept for every length.
//!
//! So a small statement takes one of four shapes, kept prepared: an `IN` list is
//! padded to 1, 2, 4 or 8 keys by repeating its last key (which changes nothing),
//! and rows are written 8, 4, 2 or 1 at a time. A larger one (a busy commit, a
//! rebuild's thousands of rows) is prepared for its one use.

/// The most rows or keys a statement kept prepared holds.
pub const SMALL: usize = 8;

/// How many of `rows` rows (`rows` > 0) the next statement writes, and whether it
/// is kept prepared.
pub fn next_chunk(rows: usize) -> (usize, bool) {
    if rows <= SMALL {
        (1 << rows.ilog2(), true)
    } else {
        (rows, false)
    }
}

/// `keys` as an `IN` list: padded to a power of two if small, and whether the
/// statement is kept prepared.
pub fn padded<T: Clone>(keys: impl IntoIterator<Item = T>) -> (Vec<T>, bool) {
    let mut keys: Vec<T> = keys.into_iter().collect();
    if keys.is_empty() || keys.len() > SMALL {
        return (keys, false);
    }
    let padded = keys.len().next_power_of_two();
    if let Some(last) = keys.last().cloned() {
        keys.resize(padded, last);
    }
    (keys, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_statements_take_one_of_four_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for rows in 1..=SMALL {
            let mut left = rows;
            while left > 0 {
                let (n, kept) = next_chunk(left);
                assert!(kept && n <= left && n > 0);
                shapes.insert(n);
                left -= n;
            }
            let (keys, kept) = padded(0..rows);
            assert!(kept);
            assert_eq!(keys.len(), rows.next_power_of_two());
            assert_eq!(keys.iter().max(), Some(&(rows - 1)), "every key is there");
            shapes.insert(keys.len());
        }
        assert_eq!(shapes.into_iter().collect::<Vec<_>>(), [1, 2, 4, 8]);
        assert_eq!(next_chunk(9), (9, false));
        assert!(!padded(0..9).1);
    }
}
