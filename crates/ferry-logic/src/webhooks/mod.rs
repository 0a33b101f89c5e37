//! Webhooks (issue 23, docs/webhooks.md): operators' endpoints hear what happens —
//! messages sent and recalled, users registered and deleted, friendships, groups,
//! moments, presence, failed pushes — and a bot's own endpoint hears its updates.
//!
//! - The [`Emitter`] (held by [`Core`], so every domain reaches it): an in-memory copy of
//!   the endpoints (refreshed from the store every second, so every logic node sees a
//!   change within about a second), which answers "does anyone want this event type?"
//!   without touching the store, and queues an event for each subscribed endpoint in
//!   the store's durable outbox — one transaction for a whole batch of events.
//! - The worker ([`worker`]): every logic node claims endpoints whose head is due under
//!   a lease, delivers their outbox in order (signed, [`sign::sign`]), retries with
//!   exponential back-off and jitter up to `max_age_secs`, then leaves a dead letter.
//! - The admin API ([`api`]): endpoints, rotation, dead letters and redrive, stats.
//!
//! Message events are at least once: a SEND is acknowledged only after its events are
//! in the outbox, and their ids come from the message id, so a retried SEND (the dedup
//! path) queues the same ids again, which the store ignores.

pub(crate) mod api;
pub(crate) mod events;
pub(crate) mod routes;
pub mod sign;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{HookEndpoint, HookEvent, Store, StoreError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::core::{unix_ms, Core};
use crate::error::LogicError;

pub use sign::sign;

/// `[logic.webhooks]`: delivery of webhook events (docs/webhooks.md).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliver on this node. Off: this node still queues the events it makes (another
    /// node delivers them) but runs no delivery worker.
    pub enabled: bool,
    /// Endpoints this node delivers to at once (each in order, one event at a time).
    pub workers: u32,
    /// An event not delivered this many seconds after it was made becomes a dead letter.
    pub max_age_secs: u64,
    /// The first retry's delay, in milliseconds; each next one doubles (with jitter).
    pub base_backoff_ms: u64,
    /// The longest delay between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// How long one delivery may take before it counts as failed, in milliseconds.
    pub timeout_ms: u64,
    /// How long a node holds an endpoint it delivers to without news; a node that dies
    /// mid-delivery leaves it to another after this.
    pub lease_ms: u64,
    /// After a rotation the old secret still signs (beside the new one) this long.
    pub grace_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            enabled: true,
            workers: 16,
            max_age_secs: 86_400,
            base_backoff_ms: 1_000,
            max_backoff_ms: 3_600_000,
            timeout_ms: 10_000,
            lease_ms: 30_000,
            grace_secs: 86_400,
        }
    }
}

/// How often the in-memory endpoints are read again from the store.
const REFRESH: Duration = Duration::from_secs(1);
/// Delivered rows are kept this long after delivery (a repeat of their event within it
/// is recognised and not queued again), then pruned.
const KEEP_DELIVERED_MS: i64 = 86_400_000;

/// One event to queue.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub event_type: &'static str,
    /// Stable across retries of what made it (see the module doc).
    pub id: String,
    pub time_ms: i64,
    pub data: Value,
}

impl Event {
    pub fn new(event_type: &'static str, id: String, data: Value) -> Event {
        Event {
            event_type,
            id,
            time_ms: unix_ms(),
            data,
        }
    }
}

/// The endpoints as this node knows them.
#[derive(Default)]
pub(crate) struct Registry {
    pub by_id: HashMap<u64, Arc<HookEndpoint>>,
    /// Operator endpoints per event type they hear (`*` ones under every type).
    by_type: HashMap<&'static str, Vec<u64>>,
    /// A bot's own endpoint, by the bot's user id.
    owners: HashMap<u64, u64>,
}

impl Registry {
    fn build(endpoints: Vec<HookEndpoint>) -> Registry {
        let mut r = Registry::default();
        for e in endpoints {
            if e.owner_user_id != 0 {
                r.owners.insert(e.owner_user_id, e.id);
            } else {
                for t in events::EVENT_TYPES {
                    if e.events.iter().any(|x| x == "*" || x == t) {
                        r.by_type.entry(t).or_default().push(e.id);
                    }
                }
            }
            r.by_id.insert(e.id, Arc::new(e));
        }
        r
    }
}

/// Queues events for the endpoints that hear them (see the module doc).
pub(crate) struct Emitter {
    store: Arc<dyn Store>,
    registry: parking_lot::RwLock<Arc<Registry>>,
    /// Any endpoint at all: the one load a send pays when there is none.
    any: AtomicBool,
    /// Some bot has an endpoint of its own: the one load a group message pays when none
    /// has (set with the registry, like `any`).
    any_owner: AtomicBool,
    /// Wakes this node's worker when it queued something.
    pub(crate) wake: tokio::sync::Notify,
    /// Rows queued by this node since start.
    pub(crate) enqueued: AtomicU64,
}

impl Emitter {
    pub fn new(store: Arc<dyn Store>) -> Emitter {
        Emitter {
            store,
            registry: Default::default(),
            any: AtomicBool::new(false),
            any_owner: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            enqueued: AtomicU64::new(0),
        }
    }

    /// Replaces the known endpoints.
    pub fn set(&self, endpoints: Vec<HookEndpoint>) {
        let any = !endpoints.is_empty();
        *self.registry.write() = Arc::new(Registry::build(endpoints));
        self.any.store(any, Ordering::Release);
        let owners = !self.registry.read().owners.is_empty();
        self.any_owner.store(owners, Ordering::Release);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    /// Whether some endpoint hears `event_type` (no store access: build an event only
    /// when this says yes).
    pub fn wants(&self, event_type: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.registry.read().by_type.contains_key(event_type)
    }

    /// Whether some bot has an endpoint of its own.
    pub fn any_owner(&self) -> bool {
        self.any_owner.load(Ordering::Acquire)
    }

    /// Whether `user` (a bot) has an endpoint of its own.
    pub fn has_owner(&self, user: u64) -> bool {
        self.any.load(Ordering::Acquire) && self.registry.read().owners.contains_key(&user)
    }

    /// Queues each event for every endpoint that hears its type, in one store
    /// transaction; returns how many rows were queued (0 at once when nobody listens).
    /// When this returns Ok, the rows are durable.
    pub async fn emit(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        if !self.any.load(Ordering::Acquire) || events.is_empty() {
            return Ok(0);
        }
        let rows: Vec<HookEvent> = {
            let reg = self.registry.read();
            let mut rows = Vec::new();
            for e in events {
                let Some(eps) = reg.by_type.get(e.event_type) else {
                    continue;
                };
                let payload = events::envelope(&e.id, e.event_type, e.time_ms, e.data);
                for ep in eps {
                    rows.push(HookEvent {
                        endpoint_id: *ep,
                        event_id: e.id.clone(),
                        event_type: e.event_type.to_owned(),
                        payload: payload.clone(),
                        created_ms: e.time_ms,
                    });
                }
            }
            rows
        };
        self.queue(rows).await
    }

    /// [`Self::emit`] for one event, a failure logged (events other than messages: the
    /// action stands whether or not its event could be queued).
    pub async fn emit_logged(&self, e: Event) {
        let t = e.event_type;
        if let Err(err) = self.emit(vec![e]).await {
            metrics::counter!("ferry_webhook_enqueue_failed_total").increment(1);
            tracing::warn!(event = t, error = %err, "queueing a webhook event failed");
        }
    }

    /// Queues `bot.update` events for `user`'s own endpoint, if it has one: `updates`
    /// are inbox entries or entries of its groups' logs as JSON (`api::json`), the bot's
    /// own doings left out. The idempotency id is `bot-<user>-<seq>` for an inbox entry,
    /// `bot-<user>-g<group>-<gseq>` for a group's.
    pub async fn bot_updates(&self, user: u64, updates: Vec<Value>) {
        let Some(ep) = self.registry.read().owners.get(&user).copied() else {
            return;
        };
        let me = match self.store.user_by_id(user).await {
            Ok(Some(u)) => u.name,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(user_id = user, error = %e, "queueing a bot update failed");
                return;
            }
        };
        let now = unix_ms();
        let rows = updates
            .into_iter()
            .filter(|u| !crate::api::json::is_own_update(u, &me))
            .map(|data| {
                let id = match (data["group_id"].as_str(), data["gseq"].as_u64()) {
                    (Some(g), Some(gseq)) => format!("bot-{user}-g{g}-{gseq}"),
                    _ => format!("bot-{user}-{}", data["seq"].as_u64().unwrap_or(0)),
                };
                HookEvent {
                    endpoint_id: ep,
                    payload: events::envelope(&id, "bot.update", now, data),
                    event_id: id,
                    event_type: "bot.update".into(),
                    created_ms: now,
                }
            })
            .collect();
        if let Err(e) = self.queue(rows).await {
            metrics::counter!("ferry_webhook_enqueue_failed_total").increment(1);
            tracing::warn!(user_id = user, error = %e, "queueing a bot update failed");
        }
    }

    async fn queue(&self, rows: Vec<HookEvent>) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = self.store.enqueue_hook_events(rows).await?;
        if n > 0 {
            metrics::counter!("ferry_webhook_enqueued_total").increment(n);
            self.enqueued.fetch_add(n, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(n)
    }
}

/// The webhooks domain service: the registry's refresh, the delivery worker, endpoint
/// management (admin API, bots' own endpoints).
pub(crate) struct Webhooks {
    core: Arc<Core>,
    cfg: WebhookSettings,
    http: reqwest::Client,
    /// This node's name as a lease owner.
    node_id: String,
    /// Deliveries since start on this node: delivered, failed attempts, dead letters.
    delivered: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
}

impl Webhooks {
    pub fn new(core: Arc<Core>) -> Webhooks {
        let cfg = core.cfg.webhooks.clone();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(cfg.timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.clamp(1, 5_000)))
            .user_agent("Ferry-Webhooks/1")
            .build()
            .unwrap_or_default();
        Webhooks {
            core,
            cfg,
            http,
            node_id: format!("logic-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead: AtomicU64::new(0),
        }
    }

    fn hooks(&self) -> &Emitter {
        &self.core.hooks
    }

    /// Reads the endpoints again (after a change made here: at once, not within a
    /// second).
    pub async fn refresh(&self) -> Result<(), LogicError> {
        let all = self.core.store.hook_endpoints().await?;
        self.hooks().set(all);
        Ok(())
    }

    /// Starts the registry's refresh, the worker (when enabled) and the pruning of old
    /// delivered rows, until `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = me.refresh().await {
                    tracing::debug!(error = %e, "reading webhook endpoints failed");
                }
                let now = unix_ms();
                if now - last_prune > 3_600_000 {
                    last_prune = now;
                    let keep = KEEP_DELIVERED_MS.max(me.cfg.max_age_secs as i64 * 1000);
                    if let Err(e) = me.core.store.prune_hook_deliveries(now - keep).await {
                        tracing::debug!(error = %e, "pruning delivered webhooks failed");
                    }
                }
            }
        });
        if self.cfg.enabled {
            tokio::spawn(self.clone().run_worker(shutdown));
        }
    }

    /// Deliveries since start on this node: (delivered, failed attempts, dead letters).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dead.load(Ordering::Relaxed),
        )
    }

    /// Sets `user`'s (a bot's) own endpoint: its updates are POSTed there, signed with the
    /// answered secret (kept when the endpoint existed already). Answers (id, secret).
    pub async fn set_owner_endpoint(
        &self,
        user: u64,
        url: &str,
    ) -> Result<(u64, String), LogicError> {
        api::check_url(url)?;
        let existing = self.owner_endpoint(user).await?;
        let out = match existing {
            Some(e) => {
                let (id, secret) = (e.id, e.secret.clone());
                self.core
                    .store
                    .update_hook_endpoint(HookEndpoint {
                        url: url.to_owned(),
                        enabled: true,
                        ..e
                    })
                    .await?;
                (id, secret)
            }
            None => {
                let e = self
                    .core
                    .store
                    .create_hook_endpoint(HookEndpoint {
                        url: url.to_owned(),
                        events: vec!["bot.update".into()],
                        description: format!("bot {user}"),
                        secret: sign::new_secret(),
                        owner_user_id: user,
                        enabled: true,
                        ..Default::default()
                    })
                    .await?;
                (e.id, e.secret)
            }
        };
        self.refresh().await?;
        Ok(out)
    }

    /// `user`'s own endpoint, if any.
    pub async fn owner_endpoint(&self, user: u64) -> Result<Option<HookEndpoint>, LogicError> {
        Ok(self
            .core
            .store
            .hook_endpoints()
            .await?
            .into_iter()
            .find(|e| e.owner_user_id == user && user != 0))
    }

    /// Removes `user`'s own endpoint (and what is queued for it). Returns whether there
    /// was one.
    pub async fn delete_owner_endpoint(&self, user: u64) -> Result<bool, LogicError> {
        let Some(e) = self.owner_endpoint(user).await? else {
            return Ok(false);
        };
        let gone = self.core.store.delete_hook_endpoint(e.id).await?;
        self.refresh().await?;
        Ok(gone)
    }
}

/// Queues `user.deleted` for `name` (id `id`): the admin-users domain calls it once the
/// user and their data are gone.
pub(crate) async fn deleted_event(core: &Core, name: &str, id: u64) {
    if core.hooks.wants("user.deleted") {
        core.hooks
            .emit_logged(Event::new(
                "user.deleted",
                format!("user-{id}-deleted"),
                serde_json::json!({"user": {"id": id.to_string(), "name": name}}),
            ))
            .await;
    }
}

/// Queues `user.online` (the user's first live link came up) or `user.offline` (the
/// last one went). Every logic node hears every link event: the id comes from the link
/// (gateway, connection), so the nodes queue one event between them.
pub(crate) async fn presence_event(core: &Core, user: u64, online: bool, gateway: &str, conn: u64) {
    let t = if online {
        "user.online"
    } else {
        "user.offline"
    };
    if !core.hooks.wants(t) {
        return;
    }
    let Ok(name) = core.user_name(user).await else {
        return;
    };
    core.hooks
        .emit_logged(Event::new(
            t,
            format!("{t}-{user}-{gateway}-{conn}"),
            serde_json::json!({"user": {"id": user.to_string(), "name": &*name}}),
        ))
        .await;
}

/// `message.sent` for a stored message (its `msg_id` and stored time set): the id comes
/// from the message id, so a retried SEND makes the same event.
pub(crate) fn message_sent(m: &ferry_proto::v1::Message) -> Event {
    Event {
        event_type: "message.sent",
        id: format!("msg-{}", m.msg_id),
        time_ms: m.time_ms,
        data: serde_json::json!({"message": crate::api::json::message_json(m)}),
    }
}

/// `message.recalled`: message `msg_id` (of group `group_id`, 0 for 1:1, sent by
/// `sender`) recalled by `by`.
pub(crate) fn message_recalled(msg_id: u64, group_id: u64, sender: &str, by: &str) -> Event {
    Event::new(
        "message.recalled",
        format!("recall-{msg_id}"),
        serde_json::json!({
            "msg_id": msg_id.to_string(),
            "group_id": group_id.to_string(),
            "from": sender,
            "by": by,
        }),
    )
}

/// `message.edited`: a message's text replaced by its sender (`before`: the text it
/// had). The id names the edit (message and time), the same on every retry.
pub(crate) fn message_edited(e: &ferry_proto::v1::Edit, before: &str) -> Event {
    Event::new(
        "message.edited",
        format!("edit-{}-{}", e.msg_id, e.edited_ms),
        serde_json::json!({
            "msg_id": e.msg_id.to_string(),
            "group_id": e.group_id.to_string(),
            "by": e.by,
            "text": e.text,
            "before": before,
            "edited_ms": e.edited_ms,
        }),
    )
}

/// `push.failed`: a platform push given up (rejected by the provider, or out of
/// attempts). The id names the queue row's claim (user, device, version), the same on
/// whichever node gives up.
pub(crate) async fn push_failed(
    core: &Core,
    job: &ferry_store::PushJob,
    provider: &str,
    reason: &str,
) {
    if !core.hooks.wants("push.failed") {
        return;
    }
    let t = &job.target;
    let Ok(name) = core.user_name(t.user_id).await else {
        return;
    };
    core.hooks
        .emit_logged(Event::new(
            "push.failed",
            format!(
                "push-{}-{}-{}-{}",
                t.user_id, t.device_id, job.created_ms, job.version
            ),
            serde_json::json!({
                "user": {"id": t.user_id.to_string(), "name": &*name},
                "device_id": t.device_id,
                "provider": provider,
                "reason": reason,
                "seq": job.seq,
            }),
        ))
        .await;
}
