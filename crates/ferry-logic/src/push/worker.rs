//! The worker: claims due rows of the push queue under a lease, decides whether each
//! still deserves a push, sends it with the provider's sender, and finishes it.
//!
//! Every logic node runs one. A row is claimed by one node at a time; a node that dies
//! mid-send leaves its rows leased, and after the lease another node claims and sends
//! them again with the same [`PushId`] and collapse id, so the provider and the OS
//! replace the first copy (if it got through) instead of showing two.
//!
//! "Online" is a live long link of that very device, on any gateway (presence is built
//! from every gateway's link events on every logic node).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_push::uuid_like::PushId;
use ferry_push::{Notification, Outcome, Provider, PushData, Target};
use ferry_store::{PushDone, PushJob, PushTargetRow};
use tokio_util::sync::CancellationToken;

use super::summary::{self, Item, Kind};
use super::{dropped, PushService};
use crate::core::unix_ms;
use crate::error::LogicError;
use crate::presence::device_hash;

/// How often the worker looks for due rows when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The badge counts at most this many unread messages.
const BADGE_CAP: u32 = 999;

/// The delay before attempt `attempts + 1` (after `attempts` failures).
pub(super) fn backoff(attempts: u32, after: Option<Duration>) -> Duration {
    let d = BACKOFF
        .saturating_mul(1u32 << attempts.min(16))
        .min(MAX_BACKOFF);
    after.map_or(d, |a| a.max(d))
}

/// Whether unix time `now_ms` falls in the target's do-not-disturb window (its local
/// minutes; a window may wrap past midnight; start == end: off).
pub(super) fn in_dnd(t: &PushTargetRow, now_ms: i64) -> bool {
    let (start, end) = (i64::from(t.dnd_start_min), i64::from(t.dnd_end_min));
    if start == end {
        return false;
    }
    let minute = (now_ms.div_euclid(60_000) + i64::from(t.utc_offset_min)).rem_euclid(1440);
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// The collapse id of a device's pushes: one per device (`ferry-` and 16 hex digits).
pub(super) fn collapse_id(device: &str) -> String {
    format!("ferry-{:016x}", device_hash(device))
}

/// The id of a claimed row's push: from the newest seq it covers, or — for a row of
/// group messages only (seq 0) — from when it was made and its version, with the top
/// bit set so it never equals an inbox seq's. Both are the same when the row is
/// claimed again after a lease ran out, so a re-send carries the same id.
pub(super) fn push_id(job: &PushJob) -> PushId {
    let t = &job.target;
    let n = if job.seq > 0 {
        job.seq
    } else {
        (1 << 63) | ((job.created_ms as u64) << 20 ^ job.version) & !(1 << 63)
    };
    PushId::new(t.user_id, &t.device_id, n)
}

fn target(t: &PushTargetRow, provider: Provider) -> Target {
    Target {
        provider,
        token: t.token.clone(),
        endpoint: t.endpoint.clone(),
        p256dh: t.p256dh.clone(),
        auth: t.auth.clone(),
        app_id: t.app_id.clone(),
        sandbox: t.sandbox,
    }
}

impl PushService {
    /// One worker loop (a node runs `workers` of them): a round when this node queued
    /// something or every [`POLL`], rounds back to back while they come back full —
    /// waking a sibling loop to claim beside it — until `shutdown`.
    pub(super) async fn run_worker(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            loop {
                match self.work_once().await {
                    Ok(n) if n >= self.cfg.batch as usize => {
                        // More is due than one round takes: another loop claims too.
                        self.wake.notify_one();
                        continue;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "push round failed");
                        break;
                    }
                }
            }
        }
    }

    /// One round: claims due rows, handles them concurrently (each sender bounds its
    /// own requests in flight), finishes them. Returns how many were claimed.
    pub(crate) async fn work_once(&self) -> Result<usize, LogicError> {
        let store = &self.core.store;
        let jobs = store
            .claim_pushes(
                &self.node_id,
                unix_ms(),
                self.cfg.lease_ms as i64,
                self.cfg.batch.max(1),
            )
            .await?;
        let n = jobs.len();
        if n == 0 {
            return Ok(0);
        }
        let done: Vec<PushDone> =
            futures_util::future::join_all(jobs.into_iter().map(|j| self.handle(j)))
                .await
                .into_iter()
                .collect();
        store.finish_pushes(&self.node_id, unix_ms(), done).await?;
        Ok(n)
    }

    /// What becomes of one claimed row.
    async fn handle(&self, job: PushJob) -> PushDone {
        let t = &job.target;
        let (user, device) = (t.user_id, t.device_id.as_str());
        let done = |quiet_until_ms: i64| PushDone::Done {
            user_id: user,
            device_id: device.to_owned(),
            version: job.version,
            seq: job.seq,
            claimed_count: job.count,
            quiet_until_ms,
        };
        // Not sent: the device's quiet window stays as it was.
        let skip = |reason: &'static str| {
            dropped(&self.counters, reason, 1);
            done(t.quiet_until_ms)
        };
        let now = unix_ms();
        if self.notifier.device_online(user, device_hash(device)) {
            return skip("online");
        }
        let synckey = self.synckey(user, device).await;
        if job.seq > 0 && synckey >= job.seq {
            return skip("synced");
        }
        let ttl_ms = (self.cfg.ttl_secs as i64).saturating_mul(1000);
        if now - job.created_ms > ttl_ms {
            return skip("expired");
        }
        let Some(provider) = Provider::from_name(&t.provider) else {
            return skip("provider");
        };
        let Some(sender) = self.sender(provider).cloned() else {
            return skip("no_sender");
        };
        let note = self.notification(&job, synckey, now, ttl_ms).await;
        let outcome = sender.send(&target(t, provider), &note).await;
        let p = provider.name();
        match outcome {
            Outcome::Accepted => {
                let now = unix_ms();
                metrics::counter!("ferry_push_sent_total", "provider" => p).increment(1);
                metrics::histogram!("ferry_push_latency_seconds")
                    .record((now - job.created_ms).max(0) as f64 / 1000.0);
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                done(now + self.cfg.quiet_ms as i64)
            }
            Outcome::Retry { after, reason } => {
                metrics::counter!("ferry_push_failed_total", "provider" => p, "reason" => "retry")
                    .increment(1);
                tracing::debug!(
                    provider = p,
                    reason,
                    attempts = job.attempts,
                    "push to retry"
                );
                if job.attempts + 1 >= self.cfg.max_attempts {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    crate::webhooks::push_failed(&self.core, &job, p, &reason).await;
                    return skip("attempts");
                }
                PushDone::Retry {
                    user_id: user,
                    device_id: device.to_owned(),
                    due_ms: now + backoff(job.attempts, after).as_millis() as i64,
                }
            }
            Outcome::Gone { reason } => {
                metrics::counter!("ferry_push_failed_total", "provider" => p, "reason" => "gone")
                    .increment(1);
                tracing::info!(provider = p, reason, user_id = user, "push target gone");
                match self
                    .core
                    .store
                    .delete_push_target_if(user, device, t.registered_ms)
                    .await
                {
                    Ok(_) => self.index.remove_if(user, device, t.registered_ms),
                    Err(e) => tracing::warn!(error = %e, "removing a gone push target failed"),
                }
                skip("gone")
            }
            Outcome::Rejected { reason } => {
                metrics::counter!("ferry_push_failed_total", "provider" => p, "reason" => "rejected")
                    .increment(1);
                tracing::warn!(provider = p, reason, "push rejected");
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                crate::webhooks::push_failed(&self.core, &job, p, &reason).await;
                done(t.quiet_until_ms)
            }
        }
    }

    /// The device's synckey: what this node last heard from it, or the store's.
    async fn synckey(&self, user: u64, device: &str) -> u64 {
        let local = self.core.known_synckey(user, device);
        let stored = self
            .core
            .store
            .synckey(user, device)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        local.max(stored)
    }

    /// The notification for a claimed row.
    async fn notification(
        &self,
        job: &PushJob,
        synckey: u64,
        now: i64,
        ttl_ms: i64,
    ) -> Notification {
        let t = &job.target;
        let item = summary::decode(&job.summary).unwrap_or(Item {
            kind: Kind::Message,
            from: String::new(),
            group_id: 0,
            text: String::new(),
        });
        let silent = item.kind == Kind::Recall || in_dnd(t, now);
        let badge = self
            .core
            .store
            .unread_messages(t.user_id, synckey, BADGE_CAP)
            .await
            .ok();
        let alert = (!silent).then(|| summary::alert(&item, job.count, t.preview, &t.locale));
        let data = PushData {
            v: 1,
            seq: job.seq,
            count: job.count,
            kind: item.kind.name().to_owned(),
            from: if t.preview >= 1 {
                item.from
            } else {
                String::new()
            },
            group_id: if t.preview >= 1 { item.group_id } else { 0 },
            text: if t.preview >= 2 {
                summary::cut(&item.text)
            } else {
                String::new()
            },
        };
        Notification {
            id: push_id(job),
            collapse_id: collapse_id(&t.device_id),
            data,
            alert,
            badge,
            ttl: Duration::from_millis((ttl_ms - (now - job.created_ms)).max(0) as u64),
            created_ms: job.created_ms,
            urgent: !silent,
        }
    }
}
