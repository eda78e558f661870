//! Pages that stop at a byte budget.
//!
//! A page read from the database holds at most `limit` items and stops early when the
//! next item would take the response past its byte budget (the first item always comes,
//! however large). `has_more` is exact: it is true only when an item past the page was
//! actually seen — the row after the `limit`-th (the query asks for `limit + 1`), or the
//! row that did not fit. Rows are read as a stream and the stream is dropped at the first
//! item that is not kept, so a request holds about one budget of rows, never `limit` of
//! them.

use futures_util::{Stream, TryStreamExt};

use crate::error::Result;

/// What is left of a page's byte budget, and how many bytes an item takes in the
/// response (the caller knows the wire format; the store does not).
#[derive(Debug, Clone, Copy)]
pub struct Budget<T> {
    left: usize,
    size: fn(&T) -> usize,
    taken: bool,
}

impl<T> Budget<T> {
    /// A budget of `bytes` for the items, each weighing `size(item)` bytes.
    pub fn new(bytes: usize, size: fn(&T) -> usize) -> Self {
        Budget {
            left: bytes,
            size,
            taken: false,
        }
    }

    /// The bytes still free. A backend may use it to stop reading rows early in SQL: an
    /// item that starts past it never fits, except as the first one of a page.
    pub fn bytes_left(&self) -> usize {
        self.left
    }

    /// Takes `item` into the page if it fits. The first item always fits.
    pub fn take(&mut self, item: &T) -> bool {
        let size = (self.size)(item);
        if self.taken && size > self.left {
            return false;
        }
        self.taken = true;
        self.left = self.left.saturating_sub(size);
        true
    }
}

/// A page of items and whether more exist in the paging direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    /// The items, in the order they were read.
    pub items: Vec<T>,
    /// True iff at least one more item follows the page.
    pub has_more: bool,
}

impl<T> Default for Paged<T> {
    fn default() -> Self {
        Paged {
            items: Vec::new(),
            has_more: false,
        }
    }
}

/// Collects a page from `rows` (in paging order, at most `limit + 1` of them): at most
/// `limit` items within `budget`. Stops reading, and drops the stream, at the first item
/// it does not keep.
pub async fn collect<T>(
    rows: impl Stream<Item = Result<T>>,
    limit: usize,
    mut budget: Budget<T>,
) -> Result<Paged<T>> {
    let mut rows = std::pin::pin!(rows);
    let mut items = Vec::new();
    while let Some(item) = rows.try_next().await? {
        if !fits(&items, &item, limit, &mut budget) {
            return Ok(Paged {
                items,
                has_more: true,
            });
        }
        items.push(item);
    }
    Ok(Paged {
        items,
        has_more: false,
    })
}

/// [`collect`] over rows already read (at most `limit + 1` of them, as a page's query
/// asks for).
pub fn collect_read<T>(rows: Vec<T>, limit: usize, mut budget: Budget<T>) -> Paged<T> {
    let mut items = Vec::new();
    for item in rows {
        if !fits(&items, &item, limit, &mut budget) {
            return Paged {
                items,
                has_more: true,
            };
        }
        items.push(item);
    }
    Paged {
        items,
        has_more: false,
    }
}

/// Whether `item` joins a page holding `items`, taking its bytes from `budget` if so.
fn fits<T>(items: &[T], item: &T, limit: usize, budget: &mut Budget<T>) -> bool {
    items.len() < limit && budget.take(item)
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    fn page(sizes: &[usize], limit: usize, bytes: usize) -> Paged<usize> {
        let rows = stream::iter(sizes.iter().copied().map(Ok));
        let budget = Budget::new(bytes, |s: &usize| *s);
        let streamed = futures_util::FutureExt::now_or_never(collect(rows, limit, budget))
            .expect("ready")
            .expect("no error");
        // Rows already read page the same way.
        assert_eq!(collect_read(sizes.to_vec(), limit, budget), streamed);
        streamed
    }

    #[test]
    fn stops_at_the_limit_or_the_budget_and_knows_if_more_exist() {
        assert_eq!(page(&[], 3, 10), Paged::default());
        // Limit: the row after the limit says there is more.
        assert_eq!(page(&[1, 1, 1], 3, 10).items.len(), 3);
        assert!(!page(&[1, 1, 1], 3, 10).has_more);
        assert!(page(&[1, 1, 1, 1], 3, 10).has_more);
        // Budget: exactly full is not "more"; one byte over is.
        assert_eq!(
            page(&[4, 6], 9, 10),
            Paged {
                items: vec![4, 6],
                has_more: false
            }
        );
        assert_eq!(
            page(&[4, 6, 1], 9, 10),
            Paged {
                items: vec![4, 6],
                has_more: true
            }
        );
        assert_eq!(
            page(&[4, 7], 9, 10),
            Paged {
                items: vec![4],
                has_more: true
            }
        );
        // The first item always comes, however large.
        assert_eq!(
            page(&[50], 9, 10),
            Paged {
                items: vec![50],
                has_more: false
            }
        );
        assert_eq!(
            page(&[50, 1], 9, 10),
            Paged {
                items: vec![50],
                has_more: true
            }
        );
    }

    #[test]
    fn an_item_that_does_not_fit_stops_the_page_even_if_a_later_one_would() {
        assert_eq!(
            page(&[5, 6, 1], 9, 10),
            Paged {
                items: vec![5],
                has_more: true
            }
        );
    }
}
