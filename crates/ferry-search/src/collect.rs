//! The top-k collector: keeps the best `keep` matches by (time or score, msg_id),
//! descending, below the page cursor, and counts every match.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use std::sync::Arc;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use crate::columns::{get, Cols, ColumnCache};
use crate::{Order, SearchError};

/// What a hit is sorted by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Key {
    Time(i64),
    Score(f32),
}

/// A hit's place in the order: `primary`, then `msg_id`, both descending.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SortKey {
    pub primary: Key,
    pub msg_id: u64,
}

/// `i64` → `u64` keeping the order.
fn time_ord(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

fn time_from(o: u64) -> i64 {
    (o ^ (1 << 63)) as i64
}

/// `f32` → `u64` keeping the order (for the finite scores BM25 gives).
fn score_ord(s: Score) -> u64 {
    let b = s.to_bits();
    u64::from(if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    })
}

fn score_from(o: u64) -> Score {
    let b = o as u32;
    f32::from_bits(if b & 0x8000_0000 != 0 {
        b & 0x7fff_ffff
    } else {
        !b
    })
}

impl SortKey {
    fn from_ord((p, msg_id): (u64, u64), relevance: bool) -> SortKey {
        SortKey {
            primary: if relevance {
                Key::Score(score_from(p))
            } else {
                Key::Time(time_from(p))
            },
            msg_id,
        }
    }

    /// The page cursor that continues after this key.
    pub fn cursor(&self) -> String {
        match self.primary {
            Key::Time(t) => format!("n:{t}:{}", self.msg_id),
            Key::Score(s) => format!("r:{:x}:{}", score_ord(s), self.msg_id),
        }
    }
}

/// Parses a page cursor made by [`SortKey::cursor`] for `order` into the key bound.
pub(crate) fn parse_cursor(page: &str, order: Order) -> Result<(u64, u64), SearchError> {
    let bad = || SearchError::BadQuery(format!("bad page cursor {page:?}"));
    let mut parts = page.split(':');
    let (Some(tag), Some(p), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let msg_id: u64 = id.parse().map_err(|_| bad())?;
    let primary = match (tag, order) {
        ("n", Order::Newest) => time_ord(p.parse::<i64>().map_err(|_| bad())?),
        ("r", Order::Relevance) => u64::from_str_radix(p, 16).map_err(|_| bad())?,
        ("n", Order::Relevance) | ("r", Order::Newest) => {
            return Err(SearchError::BadQuery(format!(
                "page cursor {page:?} is for the other order"
            )))
        }
        _ => return Err(bad()),
    };
    if tag == "r" && primary > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok((primary, msg_id))
}

/// One match kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub key: SortKey,
    pub addr: DocAddress,
}

/// The collector. Its fruit: the best matches, best first, and the count of all matches.
pub(crate) struct TopKeys {
    pub keep: usize,
    /// Only keys strictly below this one.
    pub after: Option<(u64, u64)>,
    pub relevance: bool,
    pub cache: Arc<ColumnCache>,
}

type Entry = Reverse<((u64, u64), DocAddress)>;

pub(crate) struct SegmentTop {
    segment: SegmentOrdinal,
    cols: Arc<Cols>,
    relevance: bool,
    keep: usize,
    after: Option<(u64, u64)>,
    /// A min-heap of the best keys so far.
    heap: BinaryHeap<Entry>,
    count: usize,
}

impl Collector for TopKeys {
    type Fruit = (Vec<Found>, usize);
    type Child = SegmentTop;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentTop> {
        Ok(SegmentTop {
            segment,
            cols: self.cache.get(reader)?,
            relevance: self.relevance,
            keep: self.keep,
            after: self.after,
            heap: BinaryHeap::with_capacity(self.keep + 1),
            count: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.relevance
    }

    fn merge_fruits(
        &self,
        fruits: Vec<(Vec<((u64, u64), DocAddress)>, usize)>,
    ) -> tantivy::Result<(Vec<Found>, usize)> {
        let total = fruits.iter().map(|f| f.1).sum();
        let mut all: Vec<_> = fruits.into_iter().flat_map(|f| f.0).collect();
        all.sort_unstable_by_key(|e| Reverse(e.0));
        all.truncate(self.keep);
        let found = all
            .into_iter()
            .map(|(k, addr)| Found {
                key: SortKey::from_ord(k, self.relevance),
                addr,
            })
            .collect();
        Ok((found, total))
    }
}

impl SegmentCollector for SegmentTop {
    type Fruit = (Vec<((u64, u64), DocAddress)>, usize);

    fn collect(&mut self, doc: DocId, score: Score) {
        self.count += 1;
        let primary = if self.relevance {
            score_ord(score)
        } else {
            time_ord(get(&self.cols.time, doc).unwrap_or(i64::MIN))
        };
        let full = self.heap.len() >= self.keep;
        if full {
            if let Some(Reverse((min, _))) = self.heap.peek() {
                if primary < min.0 {
                    return;
                }
            }
        }
        let key = (primary, get(&self.cols.msg_id, doc).unwrap_or(0));
        if self.after.is_some_and(|a| key >= a) {
            return;
        }
        let entry = Reverse((key, DocAddress::new(self.segment, doc)));
        if !full {
            self.heap.push(entry);
        } else if let Some(mut min) = self.heap.peek_mut() {
            if key > min.0 .0 {
                *min = entry;
            }
        }
    }

    fn harvest(self) -> Self::Fruit {
        (
            self.heap.into_iter().map(|Reverse(e)| e).collect(),
            self.count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_kept() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in times.windows(2) {
            assert!(time_ord(w[0]) < time_ord(w[1]));
            assert_eq!(time_from(time_ord(w[0])), w[0]);
        }
        let scores = [-3.5f32, -0.0, 0.0, 0.1, 1.0, 7.25, 1e9];
        for w in scores.windows(2) {
            assert!(score_ord(w[0]) <= score_ord(w[1]), "{w:?}");
            assert_eq!(score_from(score_ord(w[1])), w[1]);
        }
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let k = SortKey {
            primary: Key::Time(-42),
            msg_id: 9,
        };
        assert_eq!(
            parse_cursor(&k.cursor(), Order::Newest).unwrap(),
            (time_ord(-42), 9)
        );
        let k = SortKey {
            primary: Key::Score(2.5),
            msg_id: 3,
        };
        assert_eq!(
            parse_cursor(&k.cursor(), Order::Relevance).unwrap(),
            (score_ord(2.5), 3)
        );
        for bad in [
            "", "n", "n:1", "n:1:2:3", "x:1:2", "n:a:2", "n:1:-2", "r:zz:1",
        ] {
            assert!(
                matches!(
                    parse_cursor(bad, Order::Newest),
                    Err(SearchError::BadQuery(_))
                ),
                "{bad}"
            );
        }
        assert!(parse_cursor("r:ff:1", Order::Newest).is_err());
        assert!(parse_cursor("n:1:1", Order::Relevance).is_err());
        assert!(parse_cursor("r:1ffffffff:1", Order::Relevance).is_err());
    }
}
