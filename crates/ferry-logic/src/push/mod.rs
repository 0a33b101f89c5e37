//! Platform push: wake-ups through APNs, FCM, Web Push and UnifiedPush for devices
//! without a live long link (docs/protocol.md, Push).
//!
//! - Registration (`push/register`, `push/unregister`, `push/list`, `push/prefs`): a
//!   device's target, checked ([`validate`]) and stored; conversations' push modes.
//!   A target dies with its session (logout, password change, an expired token) and
//!   when the provider says it is gone.
//! - The planner ([`plan`]): when an entry a user should hear of is stored, each of the
//!   user's devices with a target and no live link gets a row in the store's push queue
//!   — handed to a batching task, so the send path only does a map lookup and a
//!   `try_send`.
//! - The worker ([`worker`], one per logic node): claims due rows under a lease, decides
//!   (online now? synced? stale?), builds the notification, sends it with the provider's
//!   [`Sender`], and finishes the row (coalescing window, retry with back-off, target
//!   removal).
//! - The reconciler: every 30 s, entries whose enqueue was lost (a node died between
//!   storing and queueing) are found in the store and queued.
//!
//! This module must not speak to a provider itself (ferry-push does), nor keep anything
//! that cannot be rebuilt from the store (the index and the prefs cache are caches).

mod index;
mod plan;
mod summary;
mod validate;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::{v1, ProtoMessage};
use ferry_push::{Provider, Sender};
use ferry_store::{PushPrefRow, PushTargetRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::PushSettings;
use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;
use crate::notify::Notifier;

pub(crate) use plan::Event;

/// Most conversation settings in one `push/prefs` request.
pub(crate) const MAX_PREFS: usize = 256;
/// How long a node trusts a user's cached push settings that another node may change.
const PREFS_TTL: Duration = Duration::from_secs(5);
/// Cached users' settings at most; past it the cache starts over.
const PREFS_MAX: usize = 100_000;
/// Planner events waiting at most; past it new ones are dropped (and counted): the
/// reconciler finds their entries later.
const QUEUE: usize = 16_384;

/// What the dashboard shows of push on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    pub enabled: bool,
    /// Providers this node can send through.
    pub providers: Vec<String>,
    /// Devices in this node's index.
    pub indexed: usize,
    /// The index's memory, estimated.
    pub index_bytes: usize,
    /// Targets per provider (the store's count, refreshed every 30 s).
    pub targets: Vec<(String, u64)>,
    /// The queue: rows, rows due, rows leased (refreshed every few seconds).
    pub queue: (u64, u64, u64),
    /// Since start, on this node: entries queued, pushes sent, failed, dropped.
    pub enqueued: u64,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// Counters behind [`PushStats`].
#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Counts a push dropped for `reason` (metric and stats).
fn dropped(counters: &Counters, reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("ferry_push_dropped_total", "reason" => reason).increment(n);
        counters.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// The push domain service.
pub(crate) struct PushService {
    core: Arc<Core>,
    /// Presence: which devices have a live link now.
    notifier: Arc<Notifier>,
    cfg: PushSettings,
    /// Who has targets ([`index`]).
    index: index::Index,
    /// Users' conversation settings, read through (short-lived: another node may change
    /// them; this node forgets its own changes at once).
    prefs: DashMap<u64, (Arc<[PushPrefRow]>, Instant)>,
    /// The providers this node sends through (set once at wiring).
    senders: OnceLock<HashMap<Provider, Arc<dyn Sender>>>,
    /// To the planner task.
    tx: mpsc::Sender<Event>,
    /// The planner task's end, taken when it starts.
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Event>>>,
    /// Wakes the worker when this node queued something.
    wake: tokio::sync::Notify,
    /// This node's name as a lease owner.
    node_id: String,
    counters: Counters,
    /// The last queue stats and target counts read from the store.
    last: parking_lot::Mutex<Gauges>,
}

/// What the store said of the queue and the targets at the last look.
#[derive(Clone, Default)]
struct Gauges {
    /// Rows, rows due, rows leased.
    queue: (u64, u64, u64),
    /// Targets per provider.
    targets: Vec<(String, u64)>,
}

impl PushService {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>) -> PushService {
        let (tx, rx) = mpsc::channel(QUEUE);
        PushService {
            cfg: core.cfg.push.clone(),
            core,
            notifier,
            index: index::Index::default(),
            prefs: DashMap::new(),
            senders: OnceLock::new(),
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            wake: tokio::sync::Notify::new(),
            node_id: format!("logic-{:016x}", rand::random::<u64>()),
            counters: Counters::default(),
            last: Default::default(),
        }
    }

    /// Gives this node its senders (once; later calls are ignored).
    pub fn set_senders(&self, senders: impl IntoIterator<Item = Arc<dyn Sender>>) {
        let map = senders.into_iter().map(|s| (s.provider(), s)).collect();
        let _ = self.senders.set(map);
    }

    fn sender(&self, p: Provider) -> Option<&Arc<dyn Sender>> {
        self.senders.get().and_then(|m| m.get(&p))
    }

    /// Starts the index refresh, the planner, the worker and the reconciler (when push
    /// is enabled), until `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        if !self.cfg.enabled {
            return;
        }
        let Some(rx) = self.rx.lock().take() else {
            return; // started already
        };
        tokio::spawn(self.clone().run_index(shutdown.clone()));
        tokio::spawn(self.clone().run_planner(rx, shutdown.clone()));
        for _ in 0..self.cfg.workers.max(1) {
            tokio::spawn(self.clone().run_worker(shutdown.clone()));
        }
        tokio::spawn(self.clone().run_reconciler(shutdown));
    }

    /// Loads the index, then refreshes it every second with the targets registered since
    /// 2 s before the previous refresh began (a registration committed a little late on
    /// another node is not missed; one later than that is found by the reconciler). The
    /// window moves with the clock, so once registrations stop a refresh reads nothing
    /// (it used to start 2 s before the newest registration seen, and so re-read the last
    /// 2 s of a burst every second until the next registration).
    async fn run_index(self: Arc<Self>, shutdown: CancellationToken) {
        let mut since = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = unix_ms();
            match self.refresh_index(since).await {
                Ok(read) => {
                    if read > 0 || since == 0 {
                        self.index_gauges();
                    }
                    since = (started - 2_000).max(0);
                }
                Err(e) => tracing::debug!(error = %e, "refreshing the push index failed"),
            }
        }
    }

    /// The index's size and memory as gauges (`ferry bench push` reads the bytes).
    fn index_gauges(&self) {
        metrics::gauge!("ferry_push_index_bytes").set(self.index.bytes() as f64);
        metrics::gauge!("ferry_push_index_devices").set(self.index.len() as f64);
    }

    /// Reads every target registered at or after `since` into the index; returns how
    /// many rows it read.
    async fn refresh_index(&self, since: i64) -> Result<usize, LogicError> {
        const PAGE: u32 = 1000;
        let mut after = None;
        let mut read = 0;
        loop {
            let rows = self
                .core
                .store
                .push_targets_since(since, after.take(), PAGE)
                .await?;
            read += rows.len();
            for r in &rows {
                self.index.put(r);
            }
            match rows.last() {
                Some(r) if rows.len() == PAGE as usize => {
                    after = Some((r.registered_ms, r.user_id, r.device_id.clone()))
                }
                _ => return Ok(read),
            }
        }
    }

    /// The index's memory, estimated (for `ferry bench` and the dashboard).
    pub fn index_bytes(&self) -> usize {
        self.index.bytes()
    }

    pub fn stats(&self) -> PushStats {
        let Gauges { queue, targets } = self.last.lock().clone();
        let c = &self.counters;
        let mut providers: Vec<String> = self
            .senders
            .get()
            .map(|m| m.keys().map(|p| p.name().to_owned()).collect())
            .unwrap_or_default();
        providers.sort();
        PushStats {
            enabled: self.cfg.enabled,
            providers,
            indexed: self.index.len(),
            index_bytes: self.index.bytes(),
            targets,
            queue,
            enqueued: c.enqueued.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    // ---- registration -----------------------------------------------------------

    /// `push/register`: the calling device's target, checked, stored, answered alone.
    pub async fn register(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PushRegisterReq::decode(req.body.clone())?;
        let t = r
            .target
            .ok_or_else(|| LogicError::BadRequest("target is required".into()))?;
        let provider = validate::target(&t)?;
        if !self.cfg.enabled || self.sender(provider).is_none() {
            return Err(LogicError::InvalidArgument(format!(
                "this server does not push through {} (not configured)",
                provider.name()
            )));
        }
        let stored = self
            .core
            .store
            .put_push_target(PushTargetRow {
                user_id: me.user_id,
                device_id: me.device_id.to_string(),
                provider: provider.name().to_owned(),
                token: t.token,
                endpoint: t.endpoint,
                p256dh: t.p256dh,
                auth: t.auth,
                app_id: t.app_id,
                sandbox: t.sandbox,
                locale: t.locale,
                preview: t.preview as u8,
                dnd_start_min: t.dnd_start_min as u16,
                dnd_end_min: t.dnd_end_min as u16,
                utc_offset_min: t.utc_offset_min as i16,
                ..Default::default()
            })
            .await?;
        self.index.put(&stored);
        metrics::counter!("ferry_push_registrations_total", "provider" => provider.name())
            .increment(1);
        Ok(ok(
            req.cmd,
            &v1::PushListResp {
                targets: vec![target_view(stored)],
            },
        ))
    }

    /// `push/unregister`: the caller's device's target, or another device's of theirs.
    pub async fn unregister(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PushUnregisterReq::decode(req.body.clone())?;
        let device = if r.device_id.is_empty() {
            me.device_id.to_string()
        } else {
            r.device_id
        };
        self.forget_device(me.user_id, &device).await?;
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    /// `push/list`: the caller's targets.
    pub async fn list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let targets = self.core.store.push_targets(me.user_id).await?;
        Ok(ok(
            req.cmd,
            &v1::PushListResp {
                targets: targets.into_iter().map(target_view).collect(),
            },
        ))
    }

    /// `push/prefs`: changes conversations' modes, answers with all of them.
    pub async fn prefs(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PushPrefsReq::decode(req.body.clone())?;
        if r.set.len() > MAX_PREFS {
            return Err(LogicError::TooLarge(format!(
                "at most {MAX_PREFS} conversations in one request"
            )));
        }
        let mut rows = Vec::with_capacity(r.set.len());
        for c in &r.set {
            let mode = v1::PushMode::try_from(c.mode).map_err(|_| {
                LogicError::BadRequest("mode: DEFAULT, MUTED, MENTIONS or ALL".into())
            })?;
            if c.until_ms < 0 {
                return Err(LogicError::BadRequest("until_ms: unix ms, or 0".into()));
            }
            let (peer, group_id) = match (c.peer.is_empty(), c.group_id) {
                (false, 0) => (self.core.user_id(&c.peer).await?, 0),
                (true, g) if g != 0 => {
                    self.core
                        .store
                        .group_member(g, me.user_id)
                        .await?
                        .ok_or_else(|| LogicError::NotFound("no such group".into()))?;
                    (0, g)
                }
                _ => {
                    return Err(LogicError::BadRequest(
                        "each conversation names a peer or a group, not both".into(),
                    ))
                }
            };
            rows.push(PushPrefRow {
                user_id: me.user_id,
                peer,
                group_id,
                mode: mode as u8,
                until_ms: c.until_ms,
            });
        }
        if !rows.is_empty() {
            self.core.store.set_push_prefs(me.user_id, rows).await?;
        }
        self.prefs.remove(&me.user_id);
        let mut conversations = Vec::new();
        for p in self.core.store.push_prefs(me.user_id, unix_ms()).await? {
            let peer = match p.peer {
                0 => String::new(),
                id => self.core.user_name(id).await?.to_string(),
            };
            conversations.push(v1::ConversationPush {
                peer,
                group_id: p.group_id,
                mode: i32::from(p.mode),
                until_ms: p.until_ms,
            });
        }
        Ok(ok(req.cmd, &v1::PushPrefsResp { conversations }))
    }

    // ---- targets die with the session -------------------------------------------

    /// A device's session ended (logout, an expired token): its target goes.
    pub async fn forget_device(&self, user: u64, device: &str) -> Result<(), LogicError> {
        self.core.store.delete_push_target(user, device).await?;
        self.index.remove(user, Some(device));
        Ok(())
    }

    /// Every session of the user ended (password change, logout of all devices).
    pub async fn forget_user(&self, user: u64) -> Result<(), LogicError> {
        self.core.store.delete_push_targets(user).await?;
        self.index.remove(user, None);
        Ok(())
    }

    /// Forgets this node's cached settings of `user` (changed through CONV: a mute).
    pub fn forget_prefs(&self, user: u64) {
        self.prefs.remove(&user);
    }

    /// A user's conversation settings, from the cache or the store.
    async fn prefs_of(&self, user: u64) -> Result<Arc<[PushPrefRow]>, LogicError> {
        if let Some(p) = self.prefs.get(&user) {
            if p.1.elapsed() < PREFS_TTL {
                return Ok(p.0.clone());
            }
        }
        let rows: Arc<[PushPrefRow]> = self.core.store.push_prefs(user, unix_ms()).await?.into();
        if self.prefs.len() >= PREFS_MAX {
            self.prefs.clear();
        }
        self.prefs.insert(user, (rows.clone(), Instant::now()));
        Ok(rows)
    }
}

/// A stored target as the client sees it.
fn target_view(t: PushTargetRow) -> v1::PushTarget {
    let provider = Provider::from_name(&t.provider)
        .map(|p| validate::provider_value(p) as i32)
        .unwrap_or(0);
    v1::PushTarget {
        provider,
        token: t.token,
        endpoint: t.endpoint,
        p256dh: t.p256dh,
        auth: t.auth,
        app_id: t.app_id,
        sandbox: t.sandbox,
        locale: t.locale,
        preview: i32::from(t.preview),
        dnd_start_min: u32::from(t.dnd_start_min),
        dnd_end_min: u32::from(t.dnd_end_min),
        utc_offset_min: i32::from(t.utc_offset_min),
        device_id: t.device_id,
        created_ms: t.registered_ms,
    }
}
