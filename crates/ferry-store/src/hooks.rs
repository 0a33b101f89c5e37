//! The webhook contract (issue 23, docs/webhooks.md): operators' (and bots') webhook
//! endpoints, and the durable outbox from which any logic node delivers to them.
//!
//! * **Endpoints**: a URL, the event types it hears, a signing secret (and, during a
//!   rotation, the previous one until `prev_secret_until_ms`), an owner (a bot's own
//!   endpoint, 0 for an operator's), enabled or not; plus two counters the deliverers
//!   bump (delivered, failed attempts) and a lease (see below).
//! * **Outbox**: one row per (endpoint, event). The row id is the delivery order of its
//!   endpoint. `(endpoint_id, event_id)` is unique: queueing the same event again (a
//!   retried SEND, whose event id comes from its message id) changes nothing, also after
//!   it was delivered — delivered rows stay (state 1) until
//!   [`HookStore::prune_hook_deliveries`] removes them.
//! * **Leases**: a node delivers an endpoint's head only while it holds the endpoint's
//!   lease ([`HookStore::claim_hook_endpoints`]); every finish is conditional on still
//!   holding it and extends it. A node that dies mid-delivery leaves the lease to run
//!   out; another node then claims the endpoint and delivers the same head again (at
//!   least once; the receiver drops the repeat by its id).
//! * **Dead letters**: rows given up (state 2), listed and re-driven (back to pending,
//!   attempts 0, due now — at the head again, since its id is old).
//!
//! The store keeps what it is given: signing, back-off, which events exist and who
//! subscribes are the logic layer's business.

use async_trait::async_trait;

use crate::Result;

/// Event types as stored: one text, comma separated.
pub(crate) fn join_events(events: &[String]) -> String {
    events.join(",")
}

pub(crate) fn split_events(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookEndpoint {
    /// Set by the store on create (the value given is ignored).
    pub id: u64,
    pub url: String,
    /// Event types it hears (`message.sent` …); `*` for all.
    pub events: Vec<String>,
    pub description: String,
    pub secret: String,
    /// The previous secret during a rotation ("" none), valid until
    /// `prev_secret_until_ms`.
    pub prev_secret: String,
    pub prev_secret_until_ms: i64,
    /// A bot's own endpoint (its updates): the bot's user id; 0 for an operator's.
    pub owner_user_id: u64,
    pub enabled: bool,
    /// Set by the store on create.
    pub created_ms: i64,
    /// Deliveries that succeeded, and attempts that failed, since created. Kept by the
    /// store (ignored on create and update).
    pub delivered: u64,
    pub failed: u64,
}

/// An event to queue for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookEvent {
    pub endpoint_id: u64,
    /// Unique per endpoint; the same id again is ignored.
    pub event_id: String,
    pub event_type: String,
    /// The body POSTed (the signed envelope, JSON).
    pub payload: Vec<u8>,
    pub created_ms: i64,
}

/// A queued (or dead) delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookDelivery {
    /// Its place in the endpoint's order.
    pub id: u64,
    pub endpoint_id: u64,
    pub event_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub created_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it is due (again).
    pub next_due_ms: i64,
    /// What the last failed attempt got ("" none).
    pub last_error: String,
    /// When it was given up (dead letters; 0 otherwise).
    pub dead_ms: i64,
}

/// What became of an endpoint's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Delivered: the row is done, the endpoint's `delivered` + 1.
    Delivered,
    /// Failed; try again at `due_ms` (attempts + 1, `failed` + 1). The endpoint's lease
    /// is released: nothing behind the head goes before it.
    Retry { due_ms: i64, error: String },
    /// Failed and given up: a dead letter (attempts + 1, `failed` + 1).
    Dead { error: String },
}

/// One endpoint's queue in numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookStats {
    pub endpoint_id: u64,
    pub pending: u64,
    pub dead: u64,
    pub delivered: u64,
    pub failed: u64,
    /// When the oldest pending row was queued (0: none).
    pub oldest_pending_ms: i64,
}

/// Webhook endpoints and their outbox.
#[async_trait]
pub trait HookStore: Send + Sync + 'static {
    /// Stores a new endpoint; answers it with its id and created_ms.
    async fn create_hook_endpoint(&self, e: HookEndpoint) -> Result<HookEndpoint>;
    /// Replaces the endpoint's url, events, description, secrets, owner and enabled
    /// (`e.id` names it). Returns whether it exists.
    async fn update_hook_endpoint(&self, e: HookEndpoint) -> Result<bool>;
    /// Deletes the endpoint and every row of its outbox. Returns whether it existed.
    async fn delete_hook_endpoint(&self, id: u64) -> Result<bool>;
    /// Every endpoint, by id.
    async fn hook_endpoints(&self) -> Result<Vec<HookEndpoint>>;

    /// Queues events in one transaction; an event whose (endpoint, event id) is queued
    /// already (pending, delivered or dead), or whose endpoint is gone, is ignored.
    /// Rows get ids in the order given. Returns how many were queued.
    async fn enqueue_hook_events(&self, events: Vec<HookEvent>) -> Result<u64>;
    /// Leases up to `limit` enabled endpoints whose head (oldest pending row) is due at
    /// `now_ms` and that nobody holds (or whose lease ran out), to `owner` until
    /// `now_ms + lease_ms`. Concurrent claimers never get the same endpoint while its
    /// lease holds. Answers the endpoints as stored.
    async fn claim_hook_endpoints(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<HookEndpoint>>;
    /// The endpoint's first `limit` pending rows, in order.
    async fn hook_head(&self, endpoint: u64, limit: u32) -> Result<Vec<HookDelivery>>;
    /// Applies the outcome of delivering row `delivery` of `endpoint`, if `owner` still
    /// holds the endpoint's lease (and the row is still pending); a Delivered or Dead
    /// outcome extends the lease to `lease_until`, a Retry releases it. Returns whether
    /// it was applied (false: the lease was lost, stop).
    async fn finish_hook_delivery(
        &self,
        owner: &str,
        endpoint: u64,
        delivery: u64,
        outcome: HookOutcome,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<bool>;
    /// Releases the endpoint's lease if `owner` holds it.
    async fn release_hook_endpoint(&self, owner: &str, endpoint: u64) -> Result<()>;

    /// Dead letters, newest first, of one endpoint or all, with ids below `before`
    /// (None: from the newest), at most `limit`.
    async fn hook_dead_letters(
        &self,
        endpoint: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HookDelivery>>;
    /// Queues dead letter `id` again (pending, attempts 0, due at `now_ms`). Returns
    /// whether there was such a dead letter.
    async fn redrive_hook_dead(&self, id: u64, now_ms: i64) -> Result<bool>;
    /// Queues every dead letter of the endpoint again. Returns how many.
    async fn redrive_hook_endpoint(&self, endpoint: u64, now_ms: i64) -> Result<u64>;
    /// Per endpoint (by id): pending and dead rows, delivered and failed counters.
    async fn hook_stats(&self) -> Result<Vec<HookStats>>;
    /// Deletes delivered rows delivered before `before_ms` (the window in which a
    /// repeated event is still recognised). Returns how many.
    async fn prune_hook_deliveries(&self, before_ms: i64) -> Result<u64>;
}
