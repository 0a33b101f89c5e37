//! Search (issue 24): each logic node keeps a full-text index of every message
//! (crates/ferry-search) in its data directory, fed from the store's change feed
//! ([`ferry_store::SearchStore`]), and answers `SEARCH` from it.
//!
//! **Where it indexes.** In one process (`ferry serve`) the node's index covers the
//! embedded store. In a cluster each logic node keeps its own full index, fed from the
//! shared PostgreSQL feed: any node answers any search, a node restarted or added builds
//! or catches up its index by itself, and no node waits on another. The cost is that
//! every node indexes every message (see docs/benchmarks.md, *Search*).
//!
//! **The feeder** reads the feed after the cursor committed with the index, re-reads the
//! messages it names as they are now (stored → indexed; recalled or deleted → removed),
//! and commits them with the new cursor in one index commit. A node killed mid-way
//! starts again from the last commit; re-applying a change converges on the same state,
//! so nothing is missed or doubled. A fresh (or reset) index is first built from the
//! messages table, then follows the feed from where the feed stood when the build began.
//! On a store whose feed does not name stored messages (the embedded one: its message
//! ids are in commit order, [`ferry_store::SearchStore::feed_names_inserts`]) the feeder
//! follows two cursors once built, committed together: new messages by id, and the feed
//! for their later changes.
//! A hole in the feed's ids (a transaction not yet committed, on PostgreSQL) is waited for
//! up to [`GAP_WAIT_MS`]; a feed pruned past the cursor (a node down for longer than the
//! feed is kept) rebuilds the index.
//!
//! **Access.** The index answers only within the caller's scope (their 1:1 messages; the
//! groups they are in, from the gseq they may read); every hit is then re-read from the
//! store, so a message recalled a moment ago is never shown, nor one the caller deleted
//! for themself (HIDE), nor one from before the cut of a conversation they cleared for
//! themself (CONV `clear`; `total` may still count both). A group the caller has left (or was
//! removed from) is searched up to where they left, as they saw it while a member.
//!
//! It must not slow the send path: it costs a send nothing on the embedded store, and on
//! PostgreSQL the feed's row (written by a trigger in the same transaction). The feeder
//! runs on a thread of its own at the lowest CPU priority (SCHED_IDLE, nice 19), and so
//! do the index's writer and merge threads, which it starts: while senders keep the CPU
//! busy the index falls behind (`feed_behind` in `ferry admin search`) and catches up
//! when the CPU is free, in larger batches. While the feed grows fast (a burst of sends)
//! the feeder indexes nothing at all, for a bounded time ([`Hold`]); while only a few
//! messages wait, it leaves them for a larger commit, for a bounded time ([`Gather`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::{v1, ProtoMessage};
use ferry_search::{Change, Conv, Doc, GroupSpan, Index, Kind, Order, Query, Scope};
use ferry_store::IndexedMessage;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, Call, Domain, Reply, Route, Scope as ApiScope};
use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;

/// Feed rows (or messages, while building) applied per index commit, at most.
const BATCH: u32 = 10_000;
/// The least time between two commits of a feeder that is behind: each commit writes
/// (and syncs) a segment, so a busy send path is followed in a few large commits a
/// second rather than many small ones.
const COMMIT_GAP: Duration = Duration::from_millis(250);
/// How long a hole in the feed's ids is waited for before it is passed.
pub(crate) const GAP_WAIT_MS: i64 = 10_000;
/// How often an idle feeder looks at the feed (nothing on the send path wakes it).
const IDLE: Duration = Duration::from_millis(500);
/// While fewer messages than this wait to be indexed, they are left for up to
/// [`GATHER_MAX`]: a message is found within about that long (plus [`IDLE`]) of being
/// stored ([`Gather`]).
const GATHER_AT_LEAST: u64 = 5_000;
const GATHER_MAX: Duration = Duration::from_secs(2);
/// Feed rows older than this are pruned (an index further behind rebuilds).
const FEED_KEEP_MS: i64 = 7 * 24 * 3_600_000;
/// How long opening the index waits for its folder to be let go of.
const OPEN_WAIT: Duration = Duration::from_secs(5);
/// Hits per page when the request does not say.
const DEFAULT_LIMIT: u32 = 20;

/// The feed's rows one round applies ([`Search::feed_after`]).
struct FeedRows {
    /// The messages they name, in feed order.
    ids: Vec<u64>,
    /// The cursor after them.
    to: u64,
    /// A full batch: more may be waiting.
    more: bool,
    /// The feed had nothing after the cursor.
    caught_up: bool,
}

/// Where the index stands, committed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Building from the messages table: after message `after`; the feed is followed
    /// from `feed` once the build is done.
    Build { after: u64, feed: u64 },
    /// Following the feed after row `after`.
    Feed { after: u64 },
    /// Following new messages after message `msgs`, and the feed (their later changes)
    /// after row `after`: on a store whose feed does not name stored messages.
    Follow { after: u64, msgs: u64 },
}

impl Cursor {
    fn parse(s: &str) -> Option<Cursor> {
        let mut p = s.split(':');
        match (p.next()?, p.next(), p.next(), p.next()) {
            ("build", Some(a), Some(f), None) => Some(Cursor::Build {
                after: a.parse().ok()?,
                feed: f.parse().ok()?,
            }),
            ("feed", Some(a), None, None) => Some(Cursor::Feed {
                after: a.parse().ok()?,
            }),
            ("follow", Some(a), Some(m), None) => Some(Cursor::Follow {
                after: a.parse().ok()?,
                msgs: m.parse().ok()?,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cursor::Build { after, feed } => write!(f, "build:{after}:{feed}"),
            Cursor::Feed { after } => write!(f, "feed:{after}"),
            Cursor::Follow { after, msgs } => write!(f, "follow:{after}:{msgs}"),
        }
    }
}

/// The search service of one logic node.
pub(crate) struct Search {
    core: Arc<Core>,
    /// `None` once closed (the node shut down): the index's folder is free again.
    index: parking_lot::RwLock<Option<Arc<Index>>>,
    /// The feeder's thread, to wake it (a reindex was asked, the index closed).
    feeder: std::sync::OnceLock<std::thread::Thread>,
    /// A reindex was asked: the feeder clears the index at its next round.
    reset: AtomicBool,
    /// Messages indexed (upserts and removals) since start.
    applied: AtomicU64,
    /// Holes in the feed passed after waiting.
    gaps_passed: AtomicU64,
    /// When the feeder last caught up with the feed (unix ms; 0: not yet).
    caught_up_ms: AtomicI64,
    /// Whether indexing waits while the send path is busy (only the feeder uses it).
    hold: parking_lot::Mutex<Hold>,
    /// Whether a few waiting messages are left for a later, larger commit.
    gather: parking_lot::Mutex<Gather>,
    /// The feeder is holding now (for `ferry admin search`).
    holding: AtomicBool,
}

impl Search {
    /// Opens (or creates) the index in `dir`; `None` keeps it in memory. A folder
    /// another index still holds (a server of this process restarting on the same data)
    /// is waited for up to [`OPEN_WAIT`]; a folder that cannot be used then leaves the
    /// index in memory, built from the store at start, with a warning.
    ///
    /// The index is opened on a thread at the lowest CPU priority, so the writer's merge
    /// threads, which it starts, inherit that priority.
    pub async fn open(core: Arc<Core>, dir: Option<&Path>) -> Result<Arc<Search>, LogicError> {
        let dir = dir.map(Path::to_path_buf);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("ferry-search-open".into())
            .spawn(move || {
                lower_priority();
                let _ = tx.send(open_index(dir.as_deref()));
            })
            .map_err(|e| LogicError::Internal(format!("the search index: {e}")))?;
        let index = rx
            .await
            .map_err(|_| LogicError::Internal("the search index: its opener failed".into()))??;
        Ok(Arc::new(Search {
            index: parking_lot::RwLock::new(Some(Arc::new(index))),
            feeder: std::sync::OnceLock::new(),
            reset: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            gaps_passed: AtomicU64::new(0),
            caught_up_ms: AtomicI64::new(0),
            hold: parking_lot::Mutex::new(Hold::new(
                core.cfg.search_hold_above,
                Duration::from_secs(u64::from(core.cfg.search_max_hold_secs)),
            )),
            holding: AtomicBool::new(false),
            gather: parking_lot::Mutex::new(Gather::new(GATHER_AT_LEAST, GATHER_MAX)),
            core,
        }))
    }

    /// The index, unless closed.
    fn index(&self) -> Result<Arc<Index>, LogicError> {
        self.index
            .read()
            .clone()
            .ok_or_else(|| LogicError::Unavailable("search is closed on this logic node".into()))
    }

    /// Lets go of the index (the node is shutting down): its folder is free once the
    /// calls in flight end.
    pub fn close(&self) {
        self.index.write().take();
        self.wake();
    }

    /// Wakes the feeder from its idle wait.
    fn wake(&self) {
        if let Some(t) = self.feeder.get() {
            t.unpark();
        }
    }

    /// Runs the feeder until `shutdown`, on a thread of its own at the lowest CPU
    /// priority (it drives the store's futures there through the runtime's handle). The
    /// thread ends at `shutdown`, when the index is closed, or when the node is gone.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = Arc::downgrade(self);
        let handle = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("ferry-search".into())
            .spawn(move || {
                lower_priority();
                feed(me, &handle, &shutdown);
            });
        match spawned {
            Ok(t) => {
                let _ = self.feeder.set(t.thread().clone());
            }
            Err(e) => tracing::error!(error = %e, "the search feeder cannot start"),
        }
    }

    /// One round of the feeder: answers whether more is waiting.
    pub async fn round(&self) -> Result<bool, LogicError> {
        let index = self.index()?;
        if self.reset.swap(false, Ordering::AcqRel) {
            index.clear().map_err(index_error)?;
        }
        let cursor = index.cursor().as_deref().and_then(Cursor::parse);
        let by_id = !self.core.store.feed_names_inserts();
        match (cursor, by_id) {
            (None, _) => {
                // A new or reset index: build it from the messages, then follow the feed
                // from where it stands now.
                let (_, feed) = self.core.store.search_feed_bounds().await?;
                self.build(0, feed, by_id).await
            }
            (Some(Cursor::Build { after, feed }), _) => self.build(after, feed, by_id).await,
            (Some(Cursor::Feed { after }), false) => self.follow(after).await,
            (Some(Cursor::Follow { after, msgs }), true) => self.follow_by_id(after, msgs).await,
            (Some(cursor), _) => {
                // An index that followed the feed the other way (made before the embedded
                // store took new messages out of its feed): where it stands in new
                // messages is unknown, so it is built again, once.
                tracing::info!(%cursor, "the search index follows the store differently now; rebuilding it");
                self.reset.store(true, Ordering::Release);
                Ok(true)
            }
        }
    }

    /// Builds from the messages after message `after`; once they are all in, follows the
    /// feed after row `feed` (and, `by_id`, new messages after the last one built).
    async fn build(&self, after: u64, feed: u64, by_id: bool) -> Result<bool, LogicError> {
        let msgs = self.core.store.messages_after(after, BATCH).await?;
        let Some(last) = msgs.last().map(|m| m.msg_id) else {
            let built = if by_id {
                Cursor::Follow {
                    after: feed,
                    msgs: after,
                }
            } else {
                Cursor::Feed { after: feed }
            };
            self.commit(Vec::new(), built).await?;
            return Ok(true);
        };
        let changes = self.changes(&msgs, &[]).await;
        self.commit(changes, Cursor::Build { after: last, feed })
            .await?;
        Ok(true)
    }

    async fn follow(&self, after: u64) -> Result<bool, LogicError> {
        let (_, head) = self.core.store.search_feed_bounds().await?;
        if self.wait(after, head) {
            return Ok(false);
        }
        let Some(rows) = self.feed_after(after).await? else {
            return Ok(true);
        };
        if rows.ids.is_empty() {
            if rows.caught_up {
                self.caught_up_ms.store(unix_ms(), Ordering::Relaxed);
            }
            return Ok(false);
        }
        let msgs = self.core.store.messages_by_id(&rows.ids).await?;
        let changes = self.changes(&msgs, &rows.ids).await;
        self.commit(changes, Cursor::Feed { after: rows.to })
            .await?;
        Ok(rows.more)
    }

    /// [`follow`](Self::follow) for a store whose feed does not name stored messages: new
    /// messages after message `msgs`, then the feed's changes after row `after` (read
    /// before them, so a change of a new message is applied after it), in one commit.
    async fn follow_by_id(&self, after: u64, msgs: u64) -> Result<bool, LogicError> {
        // What waits is the feed's rows plus the messages not indexed yet: both cursors
        // and both heads are added up.
        let (_, head) = self.core.store.search_feed_bounds().await?;
        let newest = self.core.store.newest_message_id().await?;
        if self.wait(after + msgs, head + newest) {
            return Ok(false);
        }
        let Some(rows) = self.feed_after(after).await? else {
            return Ok(true);
        };
        let new = self.core.store.messages_after(msgs, BATCH).await?;
        if new.is_empty() && rows.ids.is_empty() {
            if rows.caught_up {
                self.caught_up_ms.store(unix_ms(), Ordering::Relaxed);
            }
            return Ok(false);
        }
        let mut changes = self.changes(&new, &[]).await;
        if !rows.ids.is_empty() {
            let changed = self.core.store.messages_by_id(&rows.ids).await?;
            changes.extend(self.changes(&changed, &rows.ids).await);
        }
        let msgs = new.last().map_or(msgs, |m| m.msg_id);
        self.commit(
            changes,
            Cursor::Follow {
                after: rows.to,
                msgs,
            },
        )
        .await?;
        Ok(rows.more || new.len() as u32 == BATCH)
    }

    /// Whether to index nothing now: the send path is busy ([`Hold`]), or too little
    /// waits to be worth a commit yet ([`Gather`]). The index stands at `at`, the store
    /// at `head`.
    fn wait(&self, at: u64, head: u64) -> bool {
        let now = std::time::Instant::now();
        let mut hold = self.hold.lock();
        if hold.active() {
            let held = hold.decide(at, head, now);
            self.holding.store(held, Ordering::Relaxed);
            if held {
                metrics::counter!("ferry_search_holds_total").increment(1);
                return true;
            }
        }
        self.gather.lock().wait(head.saturating_sub(at), now)
    }

    /// The feed's rows after `after` that may be applied now: up to the first hole that
    /// may still fill. `None`: the feed was pruned past `after`, and the index is being
    /// rebuilt.
    async fn feed_after(&self, after: u64) -> Result<Option<FeedRows>, LogicError> {
        let rows = self.core.store.search_feed(after, BATCH).await?;
        let Some(first) = rows.first() else {
            return Ok(Some(FeedRows {
                ids: Vec::new(),
                to: after,
                more: false,
                caught_up: true,
            }));
        };
        if first.id > after + 1 {
            let (lo, _) = self.core.store.search_feed_bounds().await?;
            if lo > after + 1 && after > 0 {
                // Pruned past the cursor: what changed in between is unknown.
                tracing::warn!(
                    cursor = after,
                    oldest = lo,
                    "the search feed was pruned past this index; rebuilding it"
                );
                self.reset.store(true, Ordering::Release);
                return Ok(None);
            }
        }
        let now = unix_ms();
        let mut prev = after;
        let mut take = 0;
        for r in &rows {
            if r.id != prev + 1 && now - r.at_ms < GAP_WAIT_MS {
                break;
            }
            if r.id != prev + 1 {
                self.gaps_passed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ferry_search_feed_gaps_passed_total").increment(1);
            }
            prev = r.id;
            take += 1;
        }
        Ok(Some(FeedRows {
            ids: rows[..take].iter().map(|r| r.msg_id).collect(),
            to: prev,
            more: take == rows.len() && rows.len() as u32 == BATCH,
            caught_up: false,
        }))
    }

    /// The index changes for `msgs` (as stored now) and for the ids in `named` that have
    /// no row any more.
    async fn changes(&self, msgs: &[IndexedMessage], named: &[u64]) -> Vec<Change> {
        let mut out = Vec::with_capacity(msgs.len());
        let mut seen = std::collections::HashSet::with_capacity(msgs.len());
        for m in msgs {
            seen.insert(m.msg_id);
            match self.doc(m).await {
                Some(d) => out.push(Change::Upsert(d)),
                None => out.push(Change::Remove { msg_id: m.msg_id }),
            }
        }
        for &id in named {
            if seen.insert(id) {
                out.push(Change::Remove { msg_id: id });
            }
        }
        out
    }

    /// A stored message as the index holds it (`None`: recalled, nothing to find).
    async fn doc(&self, m: &IndexedMessage) -> Option<Doc> {
        let body = m.body.as_ref()?;
        let conv = if body.group_id != 0 {
            Conv::Group {
                group_id: body.group_id,
                gseq: m.recipient_seq,
            }
        } else {
            // A recipient whose account is gone: only the sender finds it.
            let to = self.core.user_id(&body.to).await.unwrap_or(0);
            Conv::Direct {
                a: m.sender_id,
                b: to,
            }
        };
        let mut text = body.text.clone();
        let kind = match body.media.as_ref() {
            None if body.r#type == v1::MsgType::System as i32 => Kind::System,
            None => Kind::Text,
            Some(r) => {
                if !r.file_name.is_empty() {
                    text.push('\n');
                    text.push_str(&r.file_name);
                }
                match r.kind() {
                    v1::MediaKind::MediaImage | v1::MediaKind::MediaThumbnail => Kind::Image,
                    v1::MediaKind::MediaVoice => Kind::Voice,
                    v1::MediaKind::MediaVideo => Kind::Video,
                    v1::MediaKind::MediaFile | v1::MediaKind::Unspecified => Kind::File,
                }
            }
        };
        Some(Doc {
            msg_id: m.msg_id,
            conv,
            sender: m.sender_id,
            time_ms: m.time_ms,
            kind,
            text,
        })
    }

    async fn commit(&self, changes: Vec<Change>, cursor: Cursor) -> Result<(), LogicError> {
        let n = changes.len() as u64;
        let index = self.index()?;
        // On the feeder's own thread (SCHED_IDLE, nice 19): the index's writer threads, which tantivy
        // starts again at every commit, inherit its priority.
        index
            .apply(changes, &cursor.to_string())
            .map_err(index_error)?;
        self.applied.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ferry_search_indexed_total").increment(n);
        Ok(())
    }

    /// Drops the index and builds it again from the store (`ferry admin reindex`).
    pub fn reindex(&self) {
        self.reset.store(true, Ordering::Release);
        self.wake();
    }

    /// What the admin API and the dashboard show.
    pub async fn stats(&self) -> Result<Value, LogicError> {
        let index = self.index()?;
        let st = index.stats();
        let (lo, hi) = self.core.store.search_feed_bounds().await?;
        let cursor = index.cursor();
        let (building, behind) = match cursor.as_deref().and_then(Cursor::parse) {
            Some(Cursor::Feed { after }) => (false, hi.saturating_sub(after)),
            Some(Cursor::Follow { after, msgs }) => {
                let newest = self.core.store.newest_message_id().await?;
                (
                    false,
                    hi.saturating_sub(after) + newest.saturating_sub(msgs),
                )
            }
            _ => (true, hi.saturating_sub(lo)),
        };
        Ok(json!({
            "docs": st.docs,
            "bytes": st.bytes,
            "segments": st.segments,
            "cursor": cursor,
            "building": building,
            "feed_behind": behind,
            "applied": self.applied.load(Ordering::Relaxed),
            "gaps_passed": self.gaps_passed.load(Ordering::Relaxed),
            "caught_up_ms": self.caught_up_ms.load(Ordering::Relaxed),
            "holding": self.holding.load(Ordering::Relaxed),
        }))
    }

    /// `SEARCH`: the messages the caller may read that match.
    pub async fn search(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::SearchReq::decode(req.body.clone())?;
        if r.text.len() > 1024 {
            return Err(LogicError::InvalidArgument(
                "the search text is at most 1 KiB".into(),
            ));
        }
        let peer = match r.peer.as_str() {
            "" => None,
            name => Some(self.core.user_id(name).await?),
        };
        let sender = match r.sender.as_str() {
            "" => None,
            name => Some(self.core.user_id(name).await?),
        };
        // The groups they are in, from where they may read, and the spans of those they
        // were in, up to where they left.
        let mut groups: Vec<GroupSpan> = self
            .core
            .store
            .user_groups(me.user_id)
            .await?
            .into_iter()
            .map(|(g, m)| GroupSpan {
                group_id: g.id,
                from_gseq: m.joined_gseq,
                to_gseq: None,
            })
            .collect();
        groups.extend(
            self.core
                .store
                .past_group_spans(me.user_id)
                .await?
                .into_iter()
                .map(|(group_id, from_gseq, to_gseq)| GroupSpan {
                    group_id,
                    from_gseq,
                    to_gseq: Some(to_gseq),
                }),
        );
        let group = match r.group_id {
            0 => None,
            g if groups.iter().any(|s| s.group_id == g) => Some(g),
            g => {
                return Err(LogicError::PermissionDenied(format!(
                    "you were never a member of group {g}"
                )))
            }
        };
        let kinds = r
            .kinds()
            .filter_map(|k| match k {
                v1::SearchKind::Any => None,
                v1::SearchKind::Text => Some(Kind::Text),
                v1::SearchKind::Image => Some(Kind::Image),
                v1::SearchKind::File => Some(Kind::File),
                v1::SearchKind::Voice => Some(Kind::Voice),
                v1::SearchKind::Video => Some(Kind::Video),
            })
            .collect();
        let q = Query {
            text: r.text.clone(),
            scope: Scope {
                user: me.user_id,
                groups,
            },
            peer,
            group,
            sender,
            after_ms: (r.after_ms > 0).then_some(r.after_ms),
            before_ms: (r.before_ms > 0).then_some(r.before_ms),
            kinds,
            order: match r.order() {
                v1::SearchOrder::Newest => Order::Newest,
                v1::SearchOrder::Relevance => Order::Relevance,
            },
            limit: match r.limit {
                0 => DEFAULT_LIMIT,
                n => n.min(100),
            } as usize,
            page: (!r.page.is_empty()).then(|| r.page.clone()),
            highlight: r.highlight,
        };
        let index = self.index()?;
        let started = std::time::Instant::now();
        let hits = blocking(move || index.search(&q)).await?;
        metrics::histogram!("ferry_search_seconds").record(started.elapsed().as_secs_f64());
        // Every hit as stored now: a message recalled since it was indexed is left out.
        let ids: Vec<u64> = hits.hits.iter().map(|h| h.msg_id).collect();
        let stored = self.core.store.messages_by_id(&ids).await?;
        // Nor one the caller deleted for themself (HIDE).
        let hidden = self.core.store.hidden_among(me.user_id, ids).await?;
        // Nor one of a conversation they cleared for themself, from before the cut.
        let cleared: std::collections::HashMap<ferry_store::ConvKey, u64> = self
            .core
            .store
            .cleared(me.user_id)
            .await?
            .into_iter()
            .collect();
        let mut resp = v1::SearchResp {
            total: hits.total as u64,
            next: hits.next.unwrap_or_default(),
            ..Default::default()
        };
        for h in hits.hits {
            if hidden.contains(&h.msg_id) {
                continue;
            }
            let Some(m) = stored.iter().find(|m| m.msg_id == h.msg_id) else {
                continue;
            };
            let Some(body) = m.body.clone() else {
                continue;
            };
            if !cleared.is_empty() {
                let key = if body.group_id != 0 {
                    ferry_store::ConvKey::group(body.group_id)
                } else if m.sender_id == me.user_id {
                    ferry_store::ConvKey::direct(self.core.user_id(&body.to).await.unwrap_or(0))
                } else {
                    ferry_store::ConvKey::direct(m.sender_id)
                };
                if cleared.get(&key).is_some_and(|&cut| h.msg_id <= cut) {
                    continue;
                }
            }
            let (snippet, ranges) = match h.snippet {
                Some(s) => (
                    s.text,
                    s.ranges
                        .into_iter()
                        .map(|r| v1::TextRange {
                            start: r.start as u32,
                            end: r.end as u32,
                        })
                        .collect(),
                ),
                None => (String::new(), Vec::new()),
            };
            resp.hits.push(v1::SearchHit {
                gseq: if body.group_id != 0 {
                    m.recipient_seq
                } else {
                    0
                },
                message: Some(body),
                snippet,
                ranges,
            });
        }
        metrics::counter!("ferry_searches_total").increment(1);
        Ok(ok(req.cmd, &resp))
    }
}

/// Runs an index call on the blocking pool. A query the index refuses is answered
/// INVALID_ARGUMENT, anything else INTERNAL.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ferry_search::SearchError> + Send + 'static,
) -> Result<T, LogicError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(index_error),
        Err(e) => Err(LogicError::Internal(format!("the search index: {e}"))),
    }
}

fn index_error(e: ferry_search::SearchError) -> LogicError {
    match e {
        ferry_search::SearchError::BadQuery(m) => LogicError::InvalidArgument(m),
        e => LogicError::Internal(format!("the search index: {e}")),
    }
}

/// Opens the index (see [`Search::open`]); blocks.
fn open_index(dir: Option<&Path>) -> Result<Index, LogicError> {
    let opts = ferry_search::Options::default();
    let Some(d) = dir else {
        return Index::in_ram(opts).map_err(index_error);
    };
    let until = std::time::Instant::now() + OPEN_WAIT;
    loop {
        match Index::open(d, opts.clone()) {
            Ok(i) => return Ok(i),
            Err(ferry_search::SearchError::Index(ferry_search::TantivyError::LockFailure(..)))
                if std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    dir = %d.display(),
                    "the search index cannot use its folder; it is kept in memory"
                );
                return Index::in_ram(opts).map_err(index_error);
            }
        }
    }
}

/// Indexing waits while the send path is busy: while the feed grows faster than
/// `above` rows a second, the feeder indexes nothing for up to `max`, then indexes what
/// waited before it may wait again: a burst of sends is delivered with the CPU to
/// itself, and under a steady stream indexing runs in turns with waits of `max`.
/// A lower CPU priority alone did not do it: the indexer still ran in every gap the
/// senders left and cost them 3–13 % (docs/benchmarks.md, *Search*).
///
/// Pure bookkeeping: the feeder tells it the feed's head and its own cursor.
#[derive(Debug)]
struct Hold {
    /// Feed rows a second from which indexing waits (0: never).
    above: u32,
    /// The longest wait: a message is searchable at most about this long (plus the
    /// time to index what waited) after it was stored.
    max: Duration,
    /// The head seen at the last look, and when.
    last: Option<(u64, std::time::Instant)>,
    /// Since when the feeder has been waiting.
    since: Option<std::time::Instant>,
    /// A wait ran its length: index up to this feed row (the head when it ended) before
    /// waiting again.
    due: Option<u64>,
}

impl Hold {
    fn new(above: u32, max: Duration) -> Hold {
        Hold {
            above,
            max,
            last: None,
            since: None,
            due: None,
        }
    }

    fn active(&self) -> bool {
        self.above > 0 && !self.max.is_zero()
    }

    /// Whether to wait now, the feed's head being `head` and the index's cursor `after`.
    fn decide(&mut self, after: u64, head: u64, now: std::time::Instant) -> bool {
        let busy = match self.last.replace((head, now)) {
            Some((then, at)) if head > then => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (head - then) as f64 / secs >= f64::from(self.above)
            }
            _ => false,
        };
        if head <= after {
            self.since = None;
            self.due = None;
            return false;
        }
        match self.due {
            Some(due) if after < due => return false,
            // What waited is indexed: the burst (if it goes on) may be waited out again.
            _ => self.due = None,
        }
        if !busy {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= self.max {
            self.since = None;
            self.due = Some(head);
            return false;
        }
        true
    }
}

/// Small index commits are what indexing costs most per message: each is a segment of
/// its own (≈ 15 ms of CPU to write, and later merges; docs/benchmarks.md, *Fewer, larger
/// index commits*). While fewer than `at_least` messages wait, the feeder leaves them for
/// up to `max` after it first saw some waiting, so a quiet or moderate stream is indexed in
/// one commit every `max` instead of one at every look.
///
/// Pure bookkeeping: the feeder tells it how many wait.
#[derive(Debug)]
struct Gather {
    at_least: u64,
    max: Duration,
    /// Since when fewer than `at_least` have been waiting.
    since: Option<std::time::Instant>,
}

impl Gather {
    fn new(at_least: u64, max: Duration) -> Gather {
        Gather {
            at_least,
            max,
            since: None,
        }
    }

    /// Whether to leave the `waiting` messages for a later look.
    fn wait(&mut self, waiting: u64, now: std::time::Instant) -> bool {
        if waiting == 0 || waiting >= self.at_least {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= self.max {
            self.since = None;
            return false;
        }
        true
    }
}

/// The feeder's loop (see [`Search::start`]).
fn feed(me: std::sync::Weak<Search>, rt: &tokio::runtime::Handle, shutdown: &CancellationToken) {
    let mut prune_at = 0i64;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let Some(search) = me.upgrade() else { return };
        if search.index.read().is_none() {
            return;
        }
        let started = std::time::Instant::now();
        let more = match rt.block_on(search.round()) {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "search indexing failed; retrying");
                metrics::counter!("ferry_search_feed_errors_total").increment(1);
                false
            }
        };
        let now = unix_ms();
        if now >= prune_at {
            prune_at = now + 3_600_000;
            if let Err(e) = rt.block_on(search.core.store.prune_search_feed(now - FEED_KEEP_MS)) {
                tracing::warn!(error = %e, "pruning the search feed failed");
            }
        }
        drop(search);
        if !more {
            std::thread::park_timeout(IDLE);
        } else if let Some(rest) = COMMIT_GAP.checked_sub(started.elapsed()) {
            std::thread::park_timeout(rest);
        }
    }
}

/// Puts the calling thread (and the threads it starts, which inherit it) at the lowest
/// CPU priority: scheduling policy SCHED_IDLE, nice 19 (`ferry_sched`). The indexer takes
/// what the send path leaves (docs/benchmarks.md, *Search*: the send path's throughput
/// with the indexer under nice alone and under SCHED_IDLE).
fn lower_priority() {
    let lowest = ferry_sched::Priority {
        nice: 19,
        idle: true,
    };
    if let Err(e) = ferry_sched::lower_this_thread(lowest) {
        tracing::debug!(error = %e, "the search indexer keeps its CPU priority");
    }
}

/// A node's search service, once its index is open (`Logic::enable_search`).
pub(crate) type SearchSlot = Arc<std::sync::OnceLock<Arc<Search>>>;

/// The admin API's search routes.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: "search.stats",
        method: "GET",
        path: "admin/search",
        scope: ApiScope::Admin,
        domain: Domain::Search,
        summary: "This logic node's search index: documents, size, its cursor in the feed and how far behind it is.",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"docs":{"type":"integer"},"bytes":{"type":"integer"},
            "segments":{"type":"integer"},"cursor":{"type":["string","null"]},"building":{"type":"boolean"},
            "feed_behind":{"type":"integer"},"applied":{"type":"integer"},"gaps_passed":{"type":"integer"},
            "caught_up_ms":{"type":"integer"},"holding":{"type":"boolean"}}}"#,
    },
    Route {
        op: "search.reindex",
        method: "POST",
        path: "admin/search/reindex",
        scope: ApiScope::Admin,
        domain: Domain::Search,
        summary: "Drop this logic node's search index and build it again from the store (searches find less until it is done).",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"reindexing":{"type":"boolean"}}}"#,
    },
];

/// Answers one of [`ROUTES`].
pub(crate) async fn api(slot: &SearchSlot, call: &Call<'_>) -> Result<Reply, ApiError> {
    let Some(search) = slot.get() else {
        return Err(ApiError::Logic(LogicError::Unavailable(
            "search is off on this logic node".into(),
        )));
    };
    match call.route.op {
        "search.stats" => Ok(Reply::json(&search.stats().await?)),
        "search.reindex" => {
            search.reindex();
            Ok(Reply::json(&json!({"reindexing": true})))
        }
        op => Err(ApiError::Internal(format!("no handler for {op}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    /// A look every half second at a feed growing by `per_look` rows; the index (cursor)
    /// moves only when the feeder does not wait. Answers whether each look waited.
    fn looks(h: &mut Hold, t0: Instant, per_look: &[u64]) -> Vec<bool> {
        let (mut head, mut after) = (0, 0);
        per_look
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                head += n;
                let wait = h.decide(after, head, t0 + 500 * MS * i as u32);
                if !wait {
                    after = head;
                }
                wait
            })
            .collect()
    }

    #[test]
    fn a_quiet_feed_is_indexed_at_once() {
        let mut h = Hold::new(2_000, Duration::from_secs(10));
        // 1 500 rows a half second is 3 000/s, but the first look has nothing to compare
        // with; 400 a half second (800/s) is under the mark.
        let t0 = Instant::now();
        assert_eq!(looks(&mut h, t0, &[1_500, 400, 400, 0, 3]), [false; 5]);
    }

    #[test]
    fn a_burst_waits_then_is_indexed_and_the_wait_is_bounded() {
        let mut h = Hold::new(2_000, Duration::from_secs(2));
        let t0 = Instant::now();
        // 5 000/s for 6 s: waits from the second look for 2 s, then indexes what waited
        // (here in one look) and waits again.
        let got = looks(&mut h, t0, &[2_500; 12]);
        assert_eq!(
            got,
            [false, true, true, true, true, false, true, true, true, true, false, true],
            "waits at most 2 s at a time"
        );
    }

    #[test]
    fn after_a_wait_what_waited_is_indexed_before_the_next() {
        let mut h = Hold::new(2_000, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(!h.decide(0, 1_000, t0));
        assert!(h.decide(0, 3_000, t0 + 500 * MS));
        assert!(h.decide(0, 5_000, t0 + 1_000 * MS));
        // The wait ran its length: index, though the feed still grows fast …
        assert!(!h.decide(0, 7_000, t0 + 1_500 * MS));
        assert!(!h.decide(5_000, 9_000, t0 + 2_000 * MS));
        // … up to the head when the wait ended (7 000); then wait again.
        assert!(h.decide(7_000, 11_000, t0 + 2_500 * MS));
        // Caught up: nothing to wait for.
        assert!(!h.decide(11_000, 11_000, t0 + 3_000 * MS));
    }

    #[test]
    fn a_pause_in_the_burst_lets_indexing_run() {
        let mut h = Hold::new(2_000, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!h.decide(0, 1_000, t0));
        assert!(h.decide(0, 3_000, t0 + 500 * MS));
        // 100 rows in half a second: not busy, index now.
        assert!(!h.decide(0, 3_100, t0 + 1_000 * MS));
    }

    #[test]
    fn a_few_waiting_messages_are_gathered_for_at_most_the_max() {
        let mut g = Gather::new(5_000, Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(!g.wait(0, t0), "nothing waits: nothing to gather");
        // A few, then more: left until 2 s after the first look that saw any …
        assert!(g.wait(10, t0));
        assert!(g.wait(1_000, t0 + 500 * MS));
        assert!(g.wait(4_999, t0 + 1_999 * MS));
        // … then indexed, and the next few start a new wait.
        assert!(!g.wait(4_999, t0 + 2_000 * MS));
        assert!(g.wait(3, t0 + 2_500 * MS));
        // Enough for a large commit: at once, whenever.
        assert!(!g.wait(5_000, t0 + 2_600 * MS));
        assert!(g.wait(1, t0 + 2_700 * MS), "the wait started afresh");
        assert!(!g.wait(1, t0 + 4_700 * MS));
    }

    #[test]
    fn zero_turns_the_wait_off() {
        assert!(!Hold::new(0, Duration::from_secs(10)).active());
        assert!(!Hold::new(2_000, Duration::ZERO).active());
        assert!(Hold::new(2_000, Duration::from_secs(10)).active());
    }
}
