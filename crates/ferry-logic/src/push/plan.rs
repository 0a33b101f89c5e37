//! The planner: which of a user's devices should hear of a stored entry by push, and the
//! reconciler that finds entries whose planning was lost.
//!
//! The send path only asks the index whether the user has any target and hands an
//! [`Event`] to a bounded channel (a full channel drops it and counts it: the reconciler
//! finds the entry later). One task per node plans the events — conversation modes, who
//! is online, what the device's preview allows in the summary — and writes the queue
//! rows to the store in batches (up to 512 per write: whatever arrived while the last
//! write ran).

use std::sync::Arc;

use ferry_proto::v1;
use ferry_store::{PushEnqueue, PushPrefRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::summary::{self, Item, Kind};
use super::{dropped, PushService};
use crate::core::unix_ms;
use crate::error::LogicError;
use crate::presence::device_hash;

/// Rows written to the store in one call at most.
const BATCH: usize = 512;
/// The reconciler leaves entries younger than this alone: their planning may still be
/// on its way.
const GRACE_MS: i64 = 10_000;
/// Targets the reconciler looks at per round.
const BACKLOG: u32 = 1000;
/// Entries it reads per target per round.
const BACKLOG_ENTRIES: u64 = 200;

/// Something stored that may deserve a push.
pub(crate) enum Event {
    /// An entry of `user`'s inbox at `seq`.
    Inbox {
        user: u64,
        seq: u64,
        item: Item,
        created_ms: i64,
    },
    /// A group message (outside any inbox: seq 0).
    Group {
        sender: u64,
        /// The group's members when it was sent: (user, joined gseq).
        members: Arc<Vec<(u64, u64)>>,
        mentions: Vec<String>,
        item: Item,
        created_ms: i64,
    },
}

/// A conversation's mode for a user (`PushMode`), 0 when not set or expired.
fn mode_in(prefs: &[PushPrefRow], peer: u64, group: u64, now_ms: i64) -> u8 {
    prefs
        .iter()
        .find(|p| p.peer == peer && p.group_id == group)
        .filter(|p| p.until_ms == 0 || p.until_ms > now_ms)
        .map(|p| p.mode)
        .unwrap_or(0)
}

const MUTED: u8 = v1::PushMode::Muted as u8;
const MENTIONS: u8 = v1::PushMode::Mentions as u8;
const ALL: u8 = v1::PushMode::All as u8;

impl PushService {
    fn hand_over(&self, ev: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
            dropped(&self.counters, "queue_full", 1);
        }
    }

    /// Send path: `user` (not the sender) got a 1:1 message at inbox `seq`.
    pub fn message(&self, user: u64, seq: u64, m: &v1::Message) {
        if !self.cfg.enabled || !self.index.has(user) {
            return;
        }
        self.hand_over(Event::Inbox {
            user,
            seq,
            item: Item {
                kind: Kind::Message,
                from: m.from.clone(),
                group_id: 0,
                text: summary::cut(&m.text),
            },
            created_ms: m.time_ms,
        });
    }

    /// Send path: an entry stored for `user` at inbox `seq` (a friend request received,
    /// the recall of a message to them; other entries are ignored). The caller passes
    /// only entries `user` did not cause.
    pub fn entry(&self, user: u64, seq: u64, entry: &v1::Entry) {
        if !self.cfg.enabled || !self.index.has(user) {
            return;
        }
        if let Some(item) = summary::classify(entry, "") {
            self.hand_over(Event::Inbox {
                user,
                seq,
                item,
                created_ms: if entry.time_ms > 0 {
                    entry.time_ms
                } else {
                    unix_ms()
                },
            });
        }
    }

    /// Send path: a group message by `sender` to `members`.
    pub fn group_message(
        &self,
        sender: u64,
        members: Arc<Vec<(u64, u64)>>,
        m: &v1::Message,
        time_ms: i64,
    ) {
        // Which members have targets is the planner's question, not the send path's (a
        // group may have thousands of members).
        if !self.cfg.enabled || self.index.is_empty() {
            return;
        }
        self.hand_over(Event::Group {
            sender,
            members,
            mentions: m.mentions.clone(),
            item: Item {
                kind: Kind::Group,
                from: m.from.clone(),
                group_id: m.group_id,
                text: summary::cut(&m.text),
            },
            created_ms: time_ms,
        });
    }

    /// The planner task: events in, queue rows out, until `shutdown`.
    pub(super) async fn run_planner(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) {
        let mut out: Vec<PushEnqueue> = Vec::new();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            self.plan(ev, &mut out).await;
            // What arrived meanwhile rides in the same write.
            while out.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => self.plan(ev, &mut out).await,
                    Err(_) => break,
                }
            }
            self.enqueue(std::mem::take(&mut out)).await;
        }
    }

    /// Plans every event waiting now and writes the rows (tests; the task does this in
    /// its loop).
    #[cfg(test)]
    pub(crate) async fn plan_pending(&self) {
        let mut rx = self
            .rx
            .lock()
            .take()
            .expect("the planner task is not running");
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            self.plan(ev, &mut out).await;
        }
        *self.rx.lock() = Some(rx);
        self.enqueue(out).await;
    }

    /// Writes queue rows, `BATCH` at a time, and wakes the worker.
    pub(super) async fn enqueue(&self, rows: Vec<PushEnqueue>) {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<PushEnqueue> = rows.by_ref().take(BATCH).collect();
            let n = chunk.len() as u64;
            match self.core.store.enqueue_pushes(chunk).await {
                Ok(q) => {
                    self.counters
                        .enqueued
                        .fetch_add(q, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("ferry_push_enqueued_total").increment(q);
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = n, "queueing pushes failed");
                    dropped(&self.counters, "store", n);
                }
            }
        }
    }

    /// One event's queue rows: for each device of each user who should hear of it, with
    /// a target and no live link.
    async fn plan(&self, ev: Event, out: &mut Vec<PushEnqueue>) {
        let now = unix_ms();
        match ev {
            Event::Inbox {
                user,
                seq,
                item,
                created_ms,
            } => {
                if self.direct_pushes(user, &item).await {
                    self.rows_for(user, seq, &item, created_ms, now, out);
                } else {
                    dropped(&self.counters, "muted", 1);
                }
            }
            Event::Group {
                sender,
                members,
                mentions,
                item,
                created_ms,
            } => {
                let mut named = Vec::with_capacity(mentions.len());
                for n in &mentions {
                    if let Ok(id) = self.core.user_id(n).await {
                        named.push(id);
                    }
                }
                let large = members.len() > self.cfg.large_group_members;
                for &(user, _) in members.iter() {
                    if user == sender || !self.index.has(user) {
                        continue;
                    }
                    let mentioned = named.contains(&user);
                    let mode = match self.prefs_of(user).await {
                        Ok(p) => mode_in(&p, 0, item.group_id, now),
                        Err(e) => {
                            tracing::debug!(error = %e, "push settings unknown: default");
                            0
                        }
                    };
                    let push = match mode {
                        MUTED => false,
                        MENTIONS => mentioned,
                        ALL => true,
                        _ => mentioned || !large,
                    };
                    if !push {
                        dropped(&self.counters, "muted", 1);
                        continue;
                    }
                    let item = Item {
                        kind: if mentioned {
                            Kind::Mention
                        } else {
                            Kind::Group
                        },
                        ..item.clone()
                    };
                    self.rows_for(user, 0, &item, created_ms, now, out);
                }
            }
        }
    }

    /// Whether an inbox entry (a 1:1 message, a friend request, a recall) pushes to
    /// `user`: not when its conversation is MUTED (or MENTIONS); a friend request always.
    pub(super) async fn direct_pushes(&self, user: u64, item: &Item) -> bool {
        if item.kind == Kind::Friend {
            return true;
        }
        let Ok(peer) = self.core.user_id(&item.from).await else {
            return true;
        };
        match self.prefs_of(user).await {
            // A 1:1 chat has no @mentions: MENTIONS there is as quiet as MUTED.
            Ok(p) => !matches!(mode_in(&p, peer, 0, unix_ms()), MUTED | MENTIONS),
            Err(e) => {
                tracing::debug!(error = %e, "push settings unknown: default");
                true
            }
        }
    }

    /// Rows for each of `user`'s devices with a target and no live link.
    fn rows_for(
        &self,
        user: u64,
        seq: u64,
        item: &Item,
        created_ms: i64,
        now: i64,
        out: &mut Vec<PushEnqueue>,
    ) {
        for d in self.index.devices(user) {
            if self.notifier.device_online(user, d.hash) {
                continue;
            }
            out.push(PushEnqueue {
                user_id: user,
                device_id: d.id.to_string(),
                seq,
                summary: summary::encode(item, d.preview),
                due_ms: now + self.cfg.gather_ms as i64,
                created_ms,
            });
        }
    }

    /// The reconciler task: a round every 30 s, and the gauges every 5 s.
    pub(super) async fn run_reconciler(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.refresh_gauges().await;
            ticks += 1;
            if ticks == 6 {
                ticks = 0;
                match self.reconcile().await {
                    Ok(0) => {}
                    Ok(q) => tracing::info!(entries = q, "queued pushes whose planning was lost"),
                    Err(e) => tracing::debug!(error = %e, "push reconciliation failed"),
                }
            }
        }
    }

    /// Reads the queue's size and the targets per provider into gauges and stats.
    pub(super) async fn refresh_gauges(&self) {
        let store = &self.core.store;
        let (Ok(queue), Ok(targets)) = (
            store.push_queue_stats(unix_ms()).await,
            store.push_target_counts().await,
        ) else {
            return;
        };
        metrics::gauge!("ferry_push_queue", "state" => "rows").set(queue.0 as f64);
        metrics::gauge!("ferry_push_queue", "state" => "due").set(queue.1 as f64);
        metrics::gauge!("ferry_push_queue", "state" => "leased").set(queue.2 as f64);
        // Every provider this node sends through or that has targets, so one whose last
        // target went reads 0 rather than its old count (and a server that pushes
        // through nothing shows no provider).
        for p in ferry_push::Provider::ALL {
            let n = targets
                .iter()
                .find(|(name, _)| name == p.name())
                .map(|t| t.1);
            if n.is_some() || self.sender(p).is_some() {
                metrics::gauge!("ferry_push_targets", "provider" => p.name())
                    .set(n.unwrap_or(0) as f64);
            }
        }
        *self.last.lock() = super::Gauges { queue, targets };
        self.index_gauges();
    }

    /// One round: targets with inbox entries after both what was pushed and what the
    /// device synced, and no queue row. Entries older than [`GRACE_MS`] that deserve a
    /// push are queued; a target with none is marked checked. A device online now is
    /// marked checked (its link told it). Returns how many entries were queued.
    pub(crate) async fn reconcile(&self) -> Result<u64, LogicError> {
        let store = &self.core.store;
        let now = unix_ms();
        let mut out = Vec::new();
        for (t, from, to) in store.push_backlog(BACKLOG).await? {
            if to <= from {
                continue;
            }
            let (user, device) = (t.user_id, t.device_id.as_str());
            if self.notifier.device_online(user, device_hash(device)) {
                store.set_pushed_seq(user, device, to).await?;
                continue;
            }
            let name = self.core.user_name(user).await?;
            let limit = (to - from).min(BACKLOG_ENTRIES) as u32;
            let page = store.inbox(user, from, limit).await?;
            let before = out.len();
            let mut checked = from;
            let mut fresh = false;
            for e in page.entries.iter().take_while(|e| e.seq <= to) {
                let time = match &e.kind {
                    Some(v1::entry::Kind::Message(m)) => m.time_ms,
                    _ => e.time_ms,
                };
                if now - time < GRACE_MS {
                    fresh = true;
                    break;
                }
                checked = e.seq;
                let Some(item) = summary::classify(e, &name) else {
                    continue;
                };
                if self.direct_pushes(user, &item).await {
                    out.push(PushEnqueue {
                        user_id: user,
                        device_id: t.device_id.clone(),
                        seq: e.seq,
                        summary: summary::encode(&item, t.preview),
                        due_ms: now,
                        created_ms: time,
                    });
                }
            }
            if page.entries.is_empty() && !fresh {
                checked = to; // pruned past retention
            }
            if out.len() == before && checked > from {
                store.set_pushed_seq(user, device, checked).await?;
            }
        }
        let queued = out.len() as u64;
        if queued > 0 {
            metrics::counter!("ferry_push_reconciled_total").increment(queued);
        }
        self.enqueue(out).await;
        Ok(queued)
    }
}
