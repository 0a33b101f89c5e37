//! The push contract: devices' push targets, users' per-conversation push settings, and
//! the durable push queue from which any logic node sends (docs/protocol.md, Push;
//! crates/ferry-logic's push domain decides what to queue and sends it).
//!
//! The queue holds at most ONE row per device: a device's entries coalesce into it
//! (count, newest seq, newest summary). A row is due at `due_ms`; a node claims due rows
//! under a lease ([`PushStore::claim_pushes`]), sends, and finishes them
//! ([`PushStore::finish_pushes`]). A node that dies mid-send leaves its rows leased; when
//! the lease runs out another node claims them. Finishing is conditional on still
//! holding the lease, so a node that was merely slow cannot undo another's work.
//!
//! The store keeps what it is given; which entries deserve a push, mutes, do-not-
//! disturb and who is online are the logic layer's business.

use async_trait::async_trait;

use crate::Result;

/// A device's push target (one per (user, device)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushTargetRow {
    pub user_id: u64,
    pub device_id: String,
    /// `apns`, `fcm`, `webpush`, `unifiedpush`.
    pub provider: String,
    pub token: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub app_id: String,
    pub sandbox: bool,
    pub locale: String,
    /// 0 none, 1 sender, 2 full (`PushPreview`).
    pub preview: u8,
    pub dnd_start_min: u16,
    pub dnd_end_min: u16,
    pub utc_offset_min: i16,
    /// When it was (last) registered, unix ms. Set by the store on
    /// [`PushStore::put_push_target`] (the value given is ignored); a registration's
    /// version: a provider's "gone" removes the target only if it was not registered
    /// again since ([`PushStore::delete_push_target_if`]).
    pub registered_ms: i64,
    /// The newest inbox seq this device was pushed for or checked up to (see
    /// [`PushStore::push_backlog`]). Set by the store, ignored on put.
    pub pushed_seq: u64,
    /// No new push before this time, unix ms (the coalescing window after a push). Set by
    /// the store, ignored on put.
    pub quiet_until_ms: i64,
}

/// One conversation's push setting for a user (`ConversationPush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushPrefRow {
    pub user_id: u64,
    /// The peer of a 1:1 chat (0 for a group).
    pub peer: u64,
    /// The group (0 for a 1:1 chat).
    pub group_id: u64,
    /// `PushMode` (1 muted, 2 mentions, 3 all; 0 removes the setting).
    pub mode: u8,
    /// When the setting ends, unix ms (0: never).
    pub until_ms: i64,
}

/// An entry a device should hear of, to be queued (coalesced into the device's row).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushEnqueue {
    pub user_id: u64,
    pub device_id: String,
    /// The entry's inbox seq (0 for an entry outside the inbox: a group message).
    pub seq: u64,
    /// What the newest entry is, in the logic layer's encoding (kind, sender, group,
    /// text …): opaque to the store, kept from the enqueue with the highest `seq` (or the
    /// latest enqueue when seqs tie, e.g. group messages with seq 0).
    pub summary: Vec<u8>,
    /// When a new row is due (now + the gathering delay); pushed back to the device's
    /// `quiet_until_ms` when that is later. An existing row keeps its due time.
    pub due_ms: i64,
    /// When the entry was written, unix ms (a new row's `created_ms`: the latency of the
    /// oldest entry a push stands for).
    pub created_ms: i64,
}

/// A claimed queue row, with the target it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushJob {
    pub target: PushTargetRow,
    /// The highest inbox seq queued (0: only entries outside the inbox).
    pub seq: u64,
    /// Entries coalesced into the row since it was made (or last partly finished).
    pub count: u32,
    pub summary: Vec<u8>,
    /// When the oldest entry the row stands for was written.
    pub created_ms: i64,
    pub due_ms: i64,
    /// Failed attempts so far (see [`PushDone::Retry`]).
    pub attempts: u32,
    /// The row's version at claim time: a counter bumped by every enqueue into it.
    /// Finishing with it removes the row only if nothing was queued since the claim.
    pub version: u64,
}

/// What became of a claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDone {
    /// Sent, or decided against (online, muted, expired, rejected): the row as claimed is
    /// done. If entries were queued into it after the claim (`version` grew) the row
    /// stays with only those (`count` less the claimed count, the newest summary), due at
    /// `quiet_until_ms` (or now if that is past), lease released; otherwise it is
    /// deleted. The target's `pushed_seq` becomes at least `job.seq`, its
    /// `quiet_until_ms` the one given.
    Done {
        user_id: u64,
        device_id: String,
        version: u64,
        seq: u64,
        claimed_count: u32,
        quiet_until_ms: i64,
    },
    /// Try again at `due_ms`: attempts + 1, lease released.
    Retry {
        user_id: u64,
        device_id: String,
        due_ms: i64,
    },
}

/// Push targets, settings and the push queue.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Registers or replaces `target.user_id`'s target for `target.device_id` (a device
    /// has at most one). A new registration starts with `pushed_seq` = the user's newest
    /// inbox seq (nothing older is pushed) and no quiet window; a replaced one keeps its
    /// queue row. Returns the row as stored.
    async fn put_push_target(&self, target: PushTargetRow) -> Result<PushTargetRow>;
    /// Removes the device's target and its queue row. Returns whether there was one.
    async fn delete_push_target(&self, user: u64, device: &str) -> Result<bool>;
    /// Removes every target (and queue row) of the user: password change, logout of all
    /// devices. Returns how many.
    async fn delete_push_targets(&self, user: u64) -> Result<u64>;
    /// Removes the device's target (and queue row) only if it is still the registration
    /// made at `registered_ms` (a provider said it is gone; a newer registration
    /// stays). Returns whether it was removed.
    async fn delete_push_target_if(
        &self,
        user: u64,
        device: &str,
        registered_ms: i64,
    ) -> Result<bool>;
    /// The user's targets, by device id.
    async fn push_targets(&self, user: u64) -> Result<Vec<PushTargetRow>>;
    /// Targets registered at or after `since_ms`, in (registered_ms, user, device) order
    /// after `after` (the last row of the previous page: its registered_ms, user and
    /// device; None from the start), at most `limit`: how a node builds and refreshes its
    /// in-memory index of who has targets.
    async fn push_targets_since(
        &self,
        since_ms: i64,
        after: Option<(i64, u64, String)>,
        limit: u32,
    ) -> Result<Vec<PushTargetRow>>;
    /// How many targets are registered, per provider name.
    async fn push_target_counts(&self) -> Result<Vec<(String, u64)>>;

    /// Sets (mode ≠ 0) or removes (mode 0) conversation settings of `user` (rows'
    /// user_id is ignored), in one transaction.
    async fn set_push_prefs(&self, user: u64, prefs: Vec<PushPrefRow>) -> Result<()>;
    /// The user's settings, expired ones (until_ms in the past, ≠ 0) left out.
    async fn push_prefs(&self, user: u64, now_ms: i64) -> Result<Vec<PushPrefRow>>;

    /// Queues entries, in one transaction. An entry for a device without a target is
    /// ignored. Into an existing row: count + 1, version + 1, seq = max, summary of the
    /// newest (see [`PushEnqueue::summary`]), due time and created_ms unchanged (a leased
    /// row stays leased). A new row: count 1, due at max(due_ms, the target's
    /// quiet_until_ms). Returns how many entries were queued.
    async fn enqueue_pushes(&self, entries: Vec<PushEnqueue>) -> Result<u64>;
    /// Claims up to `limit` rows due at `now_ms` and not leased (or whose lease ran out),
    /// oldest due first, leasing them to `owner` until `now_ms + lease_ms`. Concurrent
    /// claimers (other nodes) never get the same row while its lease holds.
    async fn claim_pushes(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<PushJob>>;
    /// Finishes claimed rows (see [`PushDone`]), in one transaction; a row no longer
    /// leased to `owner` is left alone. Returns how many were applied.
    async fn finish_pushes(&self, owner: &str, now_ms: i64, done: Vec<PushDone>) -> Result<u64>;
    /// Targets whose user's newest inbox seq is above both the target's `pushed_seq` and
    /// the device's synckey, with no queue row: entries that may have missed their
    /// enqueue (a node died between storing and queueing). Each as (target, from_seq, to_seq):
    /// the inbox entries `from_seq+1 ..= to_seq` are unpushed. At most `limit`, in
    /// (user, device) order. A store that writes synckeys behind (PostgreSQL) may read
    /// another node's report up to ~1 s late, naming a device that has just synced.
    async fn push_backlog(&self, limit: u32) -> Result<Vec<(PushTargetRow, u64, u64)>>;
    /// Marks the device checked up to `seq` (its `pushed_seq` becomes at least `seq`).
    async fn set_pushed_seq(&self, user: u64, device: &str, seq: u64) -> Result<()>;
    /// Message entries in `user`'s inbox after `after_seq` not sent by the user
    /// (unrecalled), counted up to `cap`: the badge.
    async fn unread_messages(&self, user: u64, after_seq: u64, cap: u32) -> Result<u32>;
    /// The queue: (rows, rows due at `now_ms`, rows leased).
    async fn push_queue_stats(&self, now_ms: i64) -> Result<(u64, u64, u64)>;
}
