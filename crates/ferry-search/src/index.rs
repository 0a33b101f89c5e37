//! The index itself: schema, writer, reader, and the search entry point.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::{DocAddress, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::collect::{Key, TopKeys};
use crate::columns::{get, ColumnCache};
use crate::highlight::snippet;
use crate::query::{build, Built};
use crate::tokenizer::{analyzer, TOKENIZER_NAME};
use crate::{Change, Conv, Doc, Hit, Hits, Kind, Options, Order, SearchError, Stats};

/// The index's fields.
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    /// Fast (sorting, hits) and indexed (delete by term).
    pub msg_id: Field,
    /// Both users of a 1:1 message (indexed, multi-valued); absent for group messages.
    pub parties: Field,
    /// The two users of a 1:1 message, as given (fast): the hit's [`Conv`].
    pub pa: Field,
    pub pb: Field,
    /// Indexed (scope term-set) and fast.
    pub group_id: Field,
    /// Fast: the span check.
    pub gseq: Field,
    /// Indexed and fast.
    pub sender: Field,
    /// Fast: sorting and ranges.
    pub time_ms: Field,
    /// Fast.
    pub kind: Field,
    /// Tokenized by "ferry" with positions; stored for highlights.
    pub text: Field,
}

pub(crate) const F_MSG_ID: &str = "msg_id";
pub(crate) const F_PA: &str = "pa";
pub(crate) const F_PB: &str = "pb";
pub(crate) const F_GROUP: &str = "group_id";
pub(crate) const F_GSEQ: &str = "gseq";
pub(crate) const F_SENDER: &str = "sender";
pub(crate) const F_TIME: &str = "time_ms";
pub(crate) const F_KIND: &str = "kind";

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fast = NumericOptions::default().set_fast();
    let indexed = NumericOptions::default().set_indexed();
    let both = NumericOptions::default().set_fast().set_indexed();
    let text = TextOptions::default().set_stored().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER_NAME)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        msg_id: b.add_u64_field(F_MSG_ID, both.clone()),
        parties: b.add_u64_field("parties", indexed),
        pa: b.add_u64_field(F_PA, fast.clone()),
        pb: b.add_u64_field(F_PB, fast.clone()),
        group_id: b.add_u64_field(F_GROUP, both.clone()),
        gseq: b.add_u64_field(F_GSEQ, fast.clone()),
        sender: b.add_u64_field(F_SENDER, both),
        time_ms: b.add_i64_field(F_TIME, fast.clone()),
        kind: b.add_u64_field(F_KIND, fast),
        text: b.add_text_field("text", text),
    };
    (b.build(), fields)
}

/// A full-text index of messages. `Send + Sync`; every call blocks (run it on a blocking
/// thread). One `Index` per directory: a second one on the same directory, in this
/// process or another, fails to open (tantivy's writer lock).
pub struct Index {
    fields: Fields,
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
    cursor: Mutex<Option<String>>,
    dir: Option<PathBuf>,
    columns: Arc<ColumnCache>,
}

impl Index {
    /// Opens the index in `dir`, creating it (and the directory) if needed.
    pub fn open(dir: &Path, opts: Options) -> Result<Index, SearchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SearchError::Dir(format!("{}: {e}", dir.display())))?;
        let mmap = MmapDirectory::open(dir)
            .map_err(|e| SearchError::Dir(format!("{}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let index = tantivy::Index::open_or_create(mmap, schema)?;
        Index::start(index, fields, opts, Some(dir.to_path_buf()))
    }

    /// An index in memory (tests).
    pub fn in_ram(opts: Options) -> Result<Index, SearchError> {
        let (schema, fields) = schema();
        let index = tantivy::Index::create_in_ram(schema);
        Index::start(index, fields, opts, None)
    }

    fn start(
        index: tantivy::Index,
        fields: Fields,
        opts: Options,
        dir: Option<PathBuf>,
    ) -> Result<Index, SearchError> {
        index.tokenizers().register(TOKENIZER_NAME, analyzer());
        let threads = opts.writer_threads.max(1);
        let writer = index.writer_with_options(
            IndexWriterOptions::builder()
                .num_worker_threads(threads)
                .memory_budget_per_thread(opts.writer_memory / threads)
                .num_merge_threads(opts.merge_threads.max(1))
                .build(),
        )?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let cursor = index.load_metas()?.payload;
        Ok(Index {
            fields,
            writer: Mutex::new(writer),
            reader,
            cursor: Mutex::new(cursor),
            dir,
            columns: Arc::default(),
        })
    }

    /// Applies `changes` in order and commits them with `cursor` (where in its feed the
    /// feeder is once this batch is in) atomically: after a crash the index holds either
    /// the whole batch and its cursor or neither. An upsert deletes the message's id
    /// first, so replaying a batch never doubles a message. The next search sees it.
    pub fn apply(&self, changes: Vec<Change>, cursor: &str) -> Result<(), SearchError> {
        let mut writer = self.writer.lock();
        let result = self.write(&writer, changes).and_then(|()| {
            let mut commit = writer.prepare_commit()?;
            commit.set_payload(cursor);
            commit.commit()?;
            Ok(())
        });
        if let Err(e) = result {
            // Nothing of the batch stays buffered for the next commit.
            let _ = writer.rollback();
            return Err(e);
        }
        *self.cursor.lock() = Some(cursor.to_string());
        drop(writer);
        self.reload()
    }

    fn write(&self, writer: &IndexWriter, changes: Vec<Change>) -> Result<(), SearchError> {
        let f = &self.fields;
        for change in changes {
            match change {
                Change::Upsert(doc) => {
                    writer.delete_term(Term::from_field_u64(f.msg_id, doc.msg_id));
                    writer.add_document(self.to_tantivy(doc))?;
                }
                Change::Remove { msg_id } => {
                    writer.delete_term(Term::from_field_u64(f.msg_id, msg_id));
                }
            }
        }
        Ok(())
    }

    fn to_tantivy(&self, doc: Doc) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_u64(f.msg_id, doc.msg_id);
        match doc.conv {
            Conv::Direct { a, b } => {
                d.add_u64(f.parties, a);
                if b != a {
                    d.add_u64(f.parties, b);
                }
                d.add_u64(f.pa, a);
                d.add_u64(f.pb, b);
            }
            Conv::Group { group_id, gseq } => {
                d.add_u64(f.group_id, group_id);
                d.add_u64(f.gseq, gseq);
            }
        }
        d.add_u64(f.sender, doc.sender);
        d.add_i64(f.time_ms, doc.time_ms);
        d.add_u64(f.kind, doc.kind.code());
        d.add_text(f.text, doc.text);
        d
    }

    /// Makes the last commit visible to searches.
    fn reload(&self) -> Result<(), SearchError> {
        self.reader.reload()?;
        self.columns.retain(&self.reader.searcher());
        Ok(())
    }

    /// The cursor of the last commit; `None` for a new or cleared index.
    pub fn cursor(&self) -> Option<String> {
        self.cursor.lock().clone()
    }

    /// Removes every message and the cursor (for a rebuild).
    pub fn clear(&self) -> Result<(), SearchError> {
        let mut writer = self.writer.lock();
        let result = writer
            .delete_all_documents()
            .and_then(|_| writer.commit())
            .map_err(SearchError::from);
        if let Err(e) = result {
            let _ = writer.rollback();
            return Err(e);
        }
        *self.cursor.lock() = None;
        drop(writer);
        self.reload()
    }

    /// The index's size.
    pub fn stats(&self) -> Stats {
        let searcher = self.reader.searcher();
        Stats {
            docs: searcher.num_docs(),
            segments: searcher.segment_readers().len(),
            bytes: self.dir.as_deref().map(dir_bytes).unwrap_or(0),
        }
    }

    /// Runs a search. See [`crate::Query`].
    pub fn search(&self, q: &crate::Query) -> Result<Hits, SearchError> {
        let searcher = self.reader.searcher();
        let built = match build(q, &self.fields, &self.columns)? {
            Built::Nothing => {
                return Ok(Hits {
                    hits: Vec::new(),
                    total: 0,
                    next: None,
                })
            }
            Built::Query(b) => b,
        };
        let limit = q.limit.min(crate::MAX_LIMIT);
        let collector = TopKeys {
            // One more tells whether there is a next page.
            keep: limit + 1,
            after: built.after,
            relevance: q.order == Order::Relevance,
            cache: self.columns.clone(),
        };
        let (mut top, total) = searcher.search(&*built.query, &collector)?;
        let more = top.len() > limit;
        top.truncate(limit);
        let next = if more {
            top.last().map(|k| k.key.cursor())
        } else {
            None
        };
        let mut hits = Vec::with_capacity(top.len());
        for k in &top {
            hits.push(self.hit(&searcher, k, q, &built.needles)?);
        }
        Ok(Hits { hits, total, next })
    }

    fn hit(
        &self,
        searcher: &tantivy::Searcher,
        k: &crate::collect::Found,
        q: &crate::Query,
        needles: &crate::highlight::Needles,
    ) -> Result<Hit, SearchError> {
        let DocAddress {
            segment_ord,
            doc_id,
        } = k.addr;
        let c = self.columns.get(searcher.segment_reader(segment_ord))?;
        let conv = match get(&c.group, doc_id) {
            Some(group_id) => Conv::Group {
                group_id,
                gseq: get(&c.gseq, doc_id).unwrap_or(0),
            },
            None => Conv::Direct {
                a: get(&c.pa, doc_id).unwrap_or(0),
                b: get(&c.pb, doc_id).unwrap_or(0),
            },
        };
        let time_ms = get(&c.time, doc_id).unwrap_or(0);
        let kind = get(&c.kind, doc_id)
            .and_then(Kind::from_code)
            .unwrap_or(Kind::Text);
        let snippet = if q.highlight && !needles.is_empty() {
            let doc: TantivyDocument = searcher.doc(k.addr)?;
            let text = doc
                .get_first(self.fields.text)
                .and_then(|v| v.as_str())
                .unwrap_or("");
            Some(snippet(text, needles))
        } else {
            None
        };
        Ok(Hit {
            msg_id: k.key.msg_id,
            conv,
            sender: get(&c.sender, doc_id).unwrap_or(0),
            time_ms,
            kind,
            score: match k.key.primary {
                Key::Score(s) => s,
                Key::Time(_) => 0.0,
            },
            snippet,
        })
    }
}

/// Sum of the sizes of the files in `dir` (not recursive: tantivy's directory is flat).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
