//! The delivery worker: claims endpoints whose head is due (under a lease, so one node
//! at a time delivers an endpoint), and delivers each one's outbox in order — the next
//! event only after the one before was delivered or given up. Endpoints are delivered
//! in parallel, up to `workers` at once per node.
//!
//! A node that dies mid-delivery leaves its leases to run out (`lease_ms`); another
//! node then claims the endpoint and delivers the same head again, with the same
//! `Ferry-Webhook-Id`, so the receiver can drop the repeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{HookDelivery, HookEndpoint, HookOutcome};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{sign, Webhooks};
use crate::core::unix_ms;

/// How often a node looks for due endpoints when nothing woke it.
const POLL: Duration = Duration::from_millis(200);
/// Outbox rows read at a time.
const HEAD: u32 = 64;
/// An error text kept with a failed row, at most.
const ERROR_MAX: usize = 200;

/// What one attempt came to.
pub(crate) enum Attempt {
    Delivered,
    Failed(String),
}

impl Webhooks {
    /// The claim loop: while slots are free, claims due endpoints and drains each in a
    /// task of its own, until `shutdown`.
    pub(super) async fn run_worker(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.cfg.workers.max(1) as usize));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.core.hooks.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let claimed = self
                .core
                .store
                .claim_hook_endpoints(
                    &self.node_id,
                    unix_ms(),
                    self.cfg.lease_ms as i64,
                    free as u32,
                )
                .await;
            let endpoints = match claimed {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "claiming webhook endpoints failed");
                    continue;
                }
            };
            for ep in endpoints {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (me, stop) = (self.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let id = ep.id;
                    me.drain(ep, &stop).await;
                    // Whatever stopped the drain, the lease goes (a no-op when it is
                    // gone already).
                    let _ = me.core.store.release_hook_endpoint(&me.node_id, id).await;
                    drop(permit);
                });
            }
        }
    }

    /// Delivers `ep`'s due outbox in order while this node holds its lease.
    async fn drain(&self, claimed: HookEndpoint, shutdown: &CancellationToken) {
        let store = &self.core.store;
        let id = claimed.id;
        loop {
            let head = match store.hook_head(id, HEAD).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(error = %e, "reading a webhook outbox failed");
                    return;
                }
            };
            if head.is_empty() {
                return;
            }
            for d in head {
                if shutdown.is_cancelled() || d.next_due_ms > unix_ms() {
                    return;
                }
                // The endpoint as this node knows it now (a rotation, a new URL, a pause
                // take effect within the registry's refresh); as claimed if unknown yet.
                let ep = match self.core.hooks.registry().by_id.get(&id) {
                    Some(e) if !e.enabled => return,
                    Some(e) => e.clone(),
                    None => Arc::new(claimed.clone()),
                };
                let attempt = self.attempt(&ep, &d).await;
                let now = unix_ms();
                let outcome = self.outcome(&d, attempt, now);
                let retry = matches!(outcome, HookOutcome::Retry { .. });
                match &outcome {
                    HookOutcome::Delivered => {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ferry_webhook_delivered_total").increment(1);
                        metrics::histogram!("ferry_webhook_latency_seconds")
                            .record((now - d.created_ms).max(0) as f64 / 1000.0);
                    }
                    HookOutcome::Retry { .. } => {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ferry_webhook_failed_total").increment(1);
                    }
                    HookOutcome::Dead { error } => {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        self.dead.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ferry_webhook_failed_total").increment(1);
                        metrics::counter!("ferry_webhook_dead_total").increment(1);
                        tracing::warn!(endpoint = id, event = %d.event_id, error = %error,
                            "webhook event given up (dead letter)");
                    }
                }
                let applied = store
                    .finish_hook_delivery(
                        &self.node_id,
                        id,
                        d.id,
                        outcome,
                        now,
                        now + self.cfg.lease_ms as i64,
                    )
                    .await;
                match applied {
                    Ok(true) if !retry => {}
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "finishing a webhook delivery failed");
                        return;
                    }
                }
            }
        }
    }

    /// What becomes of a row after an attempt at `now`: delivered; retried after the
    /// back-off (never past its max age: the last try is at it); or dead once it is
    /// `max_age_secs` old.
    pub(crate) fn outcome(&self, d: &HookDelivery, attempt: Attempt, now: i64) -> HookOutcome {
        let error = match attempt {
            Attempt::Delivered => return HookOutcome::Delivered,
            Attempt::Failed(e) => e,
        };
        let deadline = d
            .created_ms
            .saturating_add((self.cfg.max_age_secs as i64).saturating_mul(1000));
        if now >= deadline {
            return HookOutcome::Dead { error };
        }
        let wait = sign::backoff(
            d.attempts,
            Duration::from_millis(self.cfg.base_backoff_ms),
            Duration::from_millis(self.cfg.max_backoff_ms),
            rand::random::<f64>(),
        );
        HookOutcome::Retry {
            due_ms: now.saturating_add(wait.as_millis() as i64).min(deadline),
            error,
        }
    }

    /// One POST of `d` to `ep`, signed with its live secrets.
    pub(crate) async fn attempt(&self, ep: &HookEndpoint, d: &HookDelivery) -> Attempt {
        let now = unix_ms();
        let mut secrets: Vec<&[u8]> = vec![ep.secret.as_bytes()];
        if !ep.prev_secret.is_empty() && ep.prev_secret_until_ms > now {
            secrets.push(ep.prev_secret.as_bytes());
        }
        let ts = (now / 1000) as u64;
        let signature = sign::sign(&secrets, ts, &d.payload);
        let sent = self
            .http
            .post(&ep.url)
            .header("content-type", "application/json")
            .header("ferry-webhook-id", &d.event_id)
            .header("ferry-webhook-timestamp", ts.to_string())
            .header("ferry-webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) => Attempt::Failed(format!("HTTP {}", r.status().as_u16())),
            Err(e) => {
                let mut s = if e.is_timeout() {
                    "timed out".to_owned()
                } else if e.is_connect() {
                    format!("connect: {e}")
                } else {
                    e.to_string()
                };
                if s.len() > ERROR_MAX {
                    let mut cut = ERROR_MAX;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                }
                Attempt::Failed(s)
            }
        }
    }
}
