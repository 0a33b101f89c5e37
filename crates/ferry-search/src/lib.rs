//! Ferry's full-text message index: what lets a user search the messages they may read,
//! in any language. It is a [tantivy] index of one document per message (its text, a
//! file's name, and the fields a search filters on: conversation, sender, time, kind),
//! fed by the logic layer in batches ([`Index::apply`]) that commit together with the
//! feeder's cursor, so a crash loses nothing and a replay doubles nothing.
//!
//! # Tokenizing any language
//! The "ferry" tokenizer ([`tokenizer`]) cuts the scripts that put spaces between words
//! (Latin, Cyrillic, Greek, …) into lower-cased, accent-folded words, and cuts every run
//! of Chinese, Japanese or Korean characters into overlapping bigrams ("一二三" → "一二",
//! "二三"; a lone character stays a unigram). A CJK run in a query is a phrase of its
//! bigrams, so "星巴克" matches exactly the messages containing "星巴克". This is what
//! Lucene's `CJKAnalyzer` does, chosen over a dictionary segmenter (jieba, lindera,
//! MeCab) because:
//! - it needs no dictionary: nothing to download at build time, nothing to ship or keep
//!   up to date, no memory spent on a lexicon;
//! - one rule serves Chinese, Japanese (kanji and kana) and Korean, and mixed text
//!   ("去Café吃饭") alike, where a Chinese segmenter would mangle Japanese;
//! - chat is full of names, slang and new words no dictionary has (restaurant names,
//!   nicknames): a segmenter that cuts "海底捞" wrongly never finds it, bigrams always
//!   do. Search in a chat app wants recall over precision; the cost is an occasional hit
//!   where the bigrams line up across a word boundary, and a bigger index.
//!
//! A run also ends with its last character alone, at the last bigram's position (so it
//! never breaks a phrase): a one-character query ("饭") then finds every occurrence by
//! looking up that unigram and the bigrams that start with it, a prefix walk of the term
//! dictionary, never a scan of all of it.
//!
//! # Size
//! Measured with `ferry bench search` (1 000 000 synthetic chat messages, 43 bytes
//! of text on average, English, Chinese and Japanese): 78 bytes per message on disk, of
//! which the stored text (lz4, kept for highlights) is 33, postings 25, positions 8, fast
//! fields 8, terms 3.5, norms 1. A message's text counts once however often it is edited:
//! an edit replaces the document.
//!
//! # Who may read what
//! Every [`Query`] carries a [`Scope`]: the user's 1:1 conversations and, per group, the
//! span of group sequence numbers they were a member for. The scope is part of the
//! tantivy query itself (a term-set on the user and their groups, intersected with a
//! fast-field predicate on the span), so a message outside it is never returned nor
//! counted.
//!
//! # What it must not do
//! It decides nothing about access: the [`Scope`] is computed by the logic layer, and this
//! crate enforces exactly that. It keeps no message bodies beyond what a highlight needs
//! (the stored text), is not the source of truth (it can be cleared and rebuilt from the
//! store, `ferry admin reindex`), knows nothing of connections, frames or storage
//! backends, and never blocks on anything but its own files: its calls are synchronous
//! and meant to run on a blocking thread (`spawn_blocking`).

mod collect;
mod columns;
mod highlight;
mod index;
mod onechar;
mod query;
pub mod tokenizer;

pub use index::Index;
/// tantivy's error, inside [`SearchError::Index`] (a caller tells a busy folder, `LockFailure`, from the rest).
pub use tantivy::TantivyError;

use std::ops::Range;

/// A message's conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conv {
    /// A 1:1 conversation between users `a` and `b` (in any order).
    Direct { a: u64, b: u64 },
    /// A group conversation; `gseq` is the message's sequence number in the group.
    Group { group_id: u64, gseq: u64 },
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Text,
    Image,
    File,
    Voice,
    Video,
    System,
}

impl Kind {
    pub(crate) fn code(self) -> u64 {
        match self {
            Kind::Text => 0,
            Kind::Image => 1,
            Kind::File => 2,
            Kind::Voice => 3,
            Kind::Video => 4,
            Kind::System => 5,
        }
    }

    pub(crate) fn from_code(code: u64) -> Option<Kind> {
        Some(match code {
            0 => Kind::Text,
            1 => Kind::Image,
            2 => Kind::File,
            3 => Kind::Voice,
            4 => Kind::Video,
            5 => Kind::System,
            _ => return None,
        })
    }
}

/// One message as indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub msg_id: u64,
    pub conv: Conv,
    pub sender: u64,
    pub time_ms: i64,
    pub kind: Kind,
    /// The searchable text: a message's text, plus a file's name.
    pub text: String,
}

/// One change to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds a message, or replaces the one with the same `msg_id` (an edit).
    Upsert(Doc),
    /// Removes a message (recalled or deleted); unknown ids are ignored.
    Remove { msg_id: u64 },
}

/// How an [`Index`] is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// The writer's memory budget, all threads together (at least 15 MB per thread).
    pub writer_memory: usize,
    /// Indexing threads (each builds its own segment per commit).
    pub writer_threads: usize,
    /// Background merge threads.
    pub merge_threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            writer_memory: 64 << 20,
            writer_threads: 1,
            merge_threads: 1,
        }
    }
}

/// What one user may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every 1:1 conversation this user is a party of.
    pub user: u64,
    /// The groups, each with the span of its messages the user may read.
    pub groups: Vec<GroupSpan>,
}

/// The messages of one group a user may read: `from_gseq <= gseq <= to_gseq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSpan {
    pub group_id: u64,
    pub from_gseq: u64,
    /// `None`: no end (still a member).
    pub to_gseq: Option<u64>,
}

/// The order of the hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// By `time_ms` descending, ties by `msg_id` descending.
    #[default]
    Newest,
    /// By BM25 score descending, ties by `msg_id` descending.
    Relevance,
}

/// The longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// The most hits one page returns.
pub const MAX_LIMIT: usize = 100;

/// A search.
///
/// Text: every term must match; each CJK run is a phrase of its bigrams; a `"quoted"`
/// part is a phrase; empty text lists the messages the filters let through. Text made of
/// nothing searchable (punctuation only) matches nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub text: String,
    pub scope: Scope,
    /// Only the 1:1 conversation with this user.
    pub peer: Option<u64>,
    /// Only this group.
    pub group: Option<u64>,
    pub sender: Option<u64>,
    /// `time_ms >= after_ms`.
    pub after_ms: Option<i64>,
    /// `time_ms < before_ms`.
    pub before_ms: Option<i64>,
    /// Empty: any kind.
    pub kinds: Vec<Kind>,
    pub order: Order,
    /// 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// [`Hits::next`] of the previous page. For [`Order::Newest`] paging is stable: new
    /// messages never shift the pages still to come. For [`Order::Relevance`] it is
    /// stable while the index does not change (scores move with the statistics).
    pub page: Option<String>,
    pub highlight: bool,
}

impl Default for Query {
    fn default() -> Query {
        Query {
            text: String::new(),
            scope: Scope::default(),
            peer: None,
            group: None,
            sender: None,
            after_ms: None,
            before_ms: None,
            kinds: Vec::new(),
            order: Order::Newest,
            limit: 20,
            page: None,
            highlight: false,
        }
    }
}

/// One message found.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub msg_id: u64,
    pub conv: Conv,
    pub sender: u64,
    pub time_ms: i64,
    pub kind: Kind,
    /// BM25 score for [`Order::Relevance`], 0 for [`Order::Newest`].
    pub score: f32,
    /// With [`Query::highlight`] and a text query.
    pub snippet: Option<Snippet>,
}

/// A piece of a message's text with the matches marked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snippet {
    pub text: String,
    /// Byte ranges of the matches in `text`, sorted, not overlapping, on char boundaries.
    pub ranges: Vec<Range<usize>>,
}

/// One page of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct Hits {
    pub hits: Vec<Hit>,
    /// Matches in scope, all pages together.
    pub total: usize,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// The index's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live documents (messages).
    pub docs: u64,
    pub segments: usize,
    /// Bytes of the index's files (0 in RAM).
    pub bytes: u64,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A query the index refuses: too long, bad page cursor, limit out of range.
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("index directory: {0}")]
    Dir(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
