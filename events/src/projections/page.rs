//! Bounded reads: a page of rows read one by one until it holds `limit` rows or
//! about `max_bytes`, so that a page of long messages costs memory in proportion
//! to its budget, not to how long they are. A page always holds at least one
//! row, so that a reader paging on always gets somewhere.

use futures::{Stream, TryStreamExt};

/// What a page of rows costs beyond their text (their other fields, rendered).
const ROW_OVERHEAD_BYTES: usize = 128;

/// A row's text, the part of it whose length its author chose.
pub trait RowText {
    fn text_len(&self) -> usize;
}

#[derive(Debug)]
pub struct Page<T> {
    /// In the order read.
    pub rows: Vec<T>,
    /// The page is full (by rows or by bytes): more may follow.
    pub more: bool,
}

impl<T: RowText> Page<T> {
    /// Reads `rows` until the page is full or they run out.
    pub async fn collect(
        mut rows: impl Stream<Item = Result<T, sqlx::Error>> + Unpin,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Self, sqlx::Error> {
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            bytes = bytes.saturating_add(row.text_len() + ROW_OVERHEAD_BYTES);
            page.push(row);
            if page.len() as u32 >= limit || bytes >= max_bytes {
                return Ok(Self {
                    rows: page,
                    more: true,
                });
            }
        }
        Ok(Self {
            rows: page,
            more: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text(usize);

    impl RowText for Text {
        fn text_len(&self) -> usize {
            self.0
        }
    }

    async fn page(lens: &[usize], limit: u32, max_bytes: usize) -> (Vec<usize>, bool) {
        let rows = futures::stream::iter(lens.iter().map(|&n| Ok(Text(n))));
        let page = Page::collect(rows, limit, max_bytes).await.unwrap();
        (page.rows.iter().map(|t| t.0).collect(), page.more)
    }

    #[tokio::test]
    async fn a_page_stops_at_its_byte_budget_but_holds_one_row_at_least() {
        assert_eq!(
            page(&[1000, 1000, 1000], 10, 1500).await,
            (vec![1000, 1000], true)
        );
        assert_eq!(page(&[5000, 1], 10, 100).await, (vec![5000], true));
    }

    #[tokio::test]
    async fn a_page_stops_at_its_rows_and_says_whether_more_may_follow() {
        assert_eq!(page(&[1, 1], 2, usize::MAX).await, (vec![1, 1], true));
        assert_eq!(page(&[1], 2, usize::MAX).await, (vec![1], false));
        assert_eq!(page(&[], 2, usize::MAX).await, (vec![], false));
    }
}
