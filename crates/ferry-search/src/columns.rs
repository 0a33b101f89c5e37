//! The fast-field columns of each segment, opened once per segment and shared by the
//! searches (opening a column reads its block metadata: too slow to do per query).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::{Searcher, SegmentReader};

use crate::index::{F_GROUP, F_GSEQ, F_KIND, F_MSG_ID, F_PA, F_PB, F_SENDER, F_TIME};

/// One segment's columns; `None` when no document of the segment has the field.
pub(crate) struct Cols {
    pub msg_id: Option<Column<u64>>,
    pub time: Option<Column<i64>>,
    pub pa: Option<Column<u64>>,
    pub pb: Option<Column<u64>>,
    pub group: Option<Column<u64>>,
    pub gseq: Option<Column<u64>>,
    pub sender: Option<Column<u64>>,
    pub kind: Option<Column<u64>>,
}

/// The value of `col` for `doc`.
pub(crate) fn get<T: PartialOrd + Copy + Send + Sync + std::fmt::Debug + 'static>(
    col: &Option<Column<T>>,
    doc: u32,
) -> Option<T> {
    col.as_ref().and_then(|c| c.first(doc))
}

/// Segments are immutable, so their columns are cached by segment id until the segment
/// leaves the searcher (merged away or cleared).
#[derive(Default)]
pub(crate) struct ColumnCache {
    map: Mutex<HashMap<SegmentId, Arc<Cols>>>,
}

impl ColumnCache {
    pub fn get(&self, reader: &SegmentReader) -> tantivy::Result<Arc<Cols>> {
        let id = reader.segment_id();
        if let Some(c) = self.map.lock().get(&id) {
            return Ok(c.clone());
        }
        let ff = reader.fast_fields();
        let cols = Arc::new(Cols {
            msg_id: ff.column_opt(F_MSG_ID)?,
            time: ff.column_opt(F_TIME)?,
            pa: ff.column_opt(F_PA)?,
            pb: ff.column_opt(F_PB)?,
            group: ff.column_opt(F_GROUP)?,
            gseq: ff.column_opt(F_GSEQ)?,
            sender: ff.column_opt(F_SENDER)?,
            kind: ff.column_opt(F_KIND)?,
        });
        self.map.lock().insert(id, cols.clone());
        Ok(cols)
    }

    /// Forgets the segments `searcher` no longer has.
    pub fn retain(&self, searcher: &Searcher) {
        let live: Vec<SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(|r| r.segment_id())
            .collect();
        self.map.lock().retain(|id, _| live.contains(id));
    }
}
