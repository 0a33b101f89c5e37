//! SQLite: webhook endpoints and their outbox ([`HookStore`]).
//!
//! Every write runs in the one writer thread, so a claim that reads the claimable
//! endpoints and leases them in the same job can never hand one endpoint to two
//! claimers. An enqueue shares the writer's batch (group commit) with the messages
//! stored at the same time.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};

use super::{now_ms, SqliteStore};
use crate::hooks::{join_events, split_events};
use crate::{HookDelivery, HookEndpoint, HookEvent, HookOutcome, HookStats, HookStore, Result};

/// An endpoint's columns, in [`row_endpoint`]'s order.
const ENDPOINT_COLS: &str = "e.id, e.url, e.events, e.description, e.secret, e.prev_secret,
     e.prev_secret_until_ms, e.owner_user_id, e.enabled, e.created_ms, e.delivered, e.failed";

/// A delivery's columns, in [`row_delivery`]'s order.
const DELIVERY_COLS: &str = "o.id, o.endpoint_id, o.event_id, o.event_type, o.payload,
     o.created_ms, o.attempts, o.next_due_ms, o.last_error, o.state, o.done_ms";

fn row_endpoint(r: &rusqlite::Row) -> rusqlite::Result<HookEndpoint> {
    Ok(HookEndpoint {
        id: r.get::<_, i64>(0)? as u64,
        url: r.get(1)?,
        events: split_events(&r.get::<_, String>(2)?),
        description: r.get(3)?,
        secret: r.get(4)?,
        prev_secret: r.get(5)?,
        prev_secret_until_ms: r.get(6)?,
        owner_user_id: r.get::<_, i64>(7)? as u64,
        enabled: r.get(8)?,
        created_ms: r.get(9)?,
        delivered: r.get::<_, i64>(10)? as u64,
        failed: r.get::<_, i64>(11)? as u64,
    })
}

fn row_delivery(r: &rusqlite::Row) -> rusqlite::Result<HookDelivery> {
    let state: i64 = r.get(9)?;
    Ok(HookDelivery {
        id: r.get::<_, i64>(0)? as u64,
        endpoint_id: r.get::<_, i64>(1)? as u64,
        event_id: r.get(2)?,
        event_type: r.get(3)?,
        payload: r.get(4)?,
        created_ms: r.get(5)?,
        attempts: r.get(6)?,
        next_due_ms: r.get(7)?,
        last_error: r.get(8)?,
        dead_ms: if state == 2 { r.get(10)? } else { 0 },
    })
}

fn enqueue(txn: &Transaction, events: &[HookEvent]) -> Result<u64> {
    let mut stmt = txn.prepare_cached(
        "INSERT INTO hook_outbox (endpoint_id, event_id, event_type, payload, created_ms,
           state, attempts, next_due_ms, last_error, done_ms)
         SELECT ?1, ?2, ?3, ?4, ?5, 0, 0, ?5, '', 0
         WHERE EXISTS (SELECT 1 FROM hook_endpoints WHERE id = ?1)
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )?;
    let mut n = 0;
    for e in events {
        n += stmt.execute(params![
            e.endpoint_id as i64,
            e.event_id,
            e.event_type,
            e.payload,
            e.created_ms
        ])? as u64;
    }
    Ok(n)
}

fn finish(
    txn: &Transaction,
    owner: &str,
    endpoint: u64,
    delivery: u64,
    outcome: &HookOutcome,
    now_ms: i64,
    lease_until: i64,
) -> Result<bool> {
    let ep = endpoint as i64;
    let held = txn
        .prepare_cached("SELECT 1 FROM hook_endpoints WHERE id = ?1 AND lease_owner = ?2")?
        .query_row(params![ep, owner], |_| Ok(()))
        .optional()?
        .is_some();
    if !held {
        return Ok(false);
    }
    let (row, counter, release) = match outcome {
        HookOutcome::Delivered => (
            txn.prepare_cached(
                "UPDATE hook_outbox SET state = 1, done_ms = ?3
                 WHERE id = ?1 AND endpoint_id = ?2 AND state = 0",
            )?
            .execute(params![delivery as i64, ep, now_ms])?,
            "delivered",
            false,
        ),
        HookOutcome::Retry { due_ms, error } => (
            txn.prepare_cached(
                "UPDATE hook_outbox SET attempts = attempts + 1, next_due_ms = ?3,
                   last_error = ?4
                 WHERE id = ?1 AND endpoint_id = ?2 AND state = 0",
            )?
            .execute(params![delivery as i64, ep, due_ms, error])?,
            "failed",
            true,
        ),
        HookOutcome::Dead { error } => (
            txn.prepare_cached(
                "UPDATE hook_outbox SET state = 2, attempts = attempts + 1, last_error = ?4,
                   done_ms = ?3
                 WHERE id = ?1 AND endpoint_id = ?2 AND state = 0",
            )?
            .execute(params![delivery as i64, ep, now_ms, error])?,
            "failed",
            false,
        ),
    };
    let (lease_owner, until): (Option<&str>, i64) = if release {
        (None, 0)
    } else {
        (Some(owner), lease_until)
    };
    txn.prepare_cached(&format!(
        "UPDATE hook_endpoints SET {counter} = {counter} + ?2, lease_owner = ?3,
           lease_until = ?4
         WHERE id = ?1"
    ))?
    .execute(params![ep, row as i64, lease_owner, until])?;
    Ok(row > 0)
}

#[async_trait]
impl HookStore for SqliteStore {
    async fn create_hook_endpoint(&self, e: HookEndpoint) -> Result<HookEndpoint> {
        self.write(move |txn, _| {
            let created = now_ms();
            let id = txn
                .prepare_cached(
                    "INSERT INTO hook_endpoints (url, events, description, secret, prev_secret,
                       prev_secret_until_ms, owner_user_id, enabled, created_ms, delivered,
                       failed, lease_owner, lease_until)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0, NULL, 0)
                     RETURNING id",
                )?
                .query_row(
                    params![
                        e.url,
                        join_events(&e.events),
                        e.description,
                        e.secret,
                        e.prev_secret,
                        e.prev_secret_until_ms,
                        e.owner_user_id as i64,
                        e.enabled,
                        created
                    ],
                    |r| r.get::<_, i64>(0),
                )?;
            Ok(HookEndpoint {
                id: id as u64,
                created_ms: created,
                delivered: 0,
                failed: 0,
                ..e
            })
        })
        .await
    }

    async fn update_hook_endpoint(&self, e: HookEndpoint) -> Result<bool> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached(
                    "UPDATE hook_endpoints SET url = ?2, events = ?3, description = ?4,
                       secret = ?5, prev_secret = ?6, prev_secret_until_ms = ?7,
                       owner_user_id = ?8, enabled = ?9
                     WHERE id = ?1",
                )?
                .execute(params![
                    e.id as i64,
                    e.url,
                    join_events(&e.events),
                    e.description,
                    e.secret,
                    e.prev_secret,
                    e.prev_secret_until_ms,
                    e.owner_user_id as i64,
                    e.enabled
                ])?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_hook_endpoint(&self, id: u64) -> Result<bool> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("DELETE FROM hook_endpoints WHERE id = ?1")?
                .execute([id as i64])?;
            txn.prepare_cached("DELETE FROM hook_outbox WHERE endpoint_id = ?1")?
                .execute([id as i64])?;
            Ok(n > 0)
        })
        .await
    }

    async fn hook_endpoints(&self) -> Result<Vec<HookEndpoint>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {ENDPOINT_COLS} FROM hook_endpoints e ORDER BY e.id"
            ))?
            .query_map([], row_endpoint)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn enqueue_hook_events(&self, events: Vec<HookEvent>) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        self.write(move |txn, _| enqueue(txn, &events)).await
    }

    async fn claim_hook_endpoints(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<HookEndpoint>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let owner = owner.to_owned();
        self.write(move |txn, _| {
            let eps = txn
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLS} FROM hook_endpoints e
                     WHERE e.enabled AND (e.lease_owner IS NULL OR e.lease_until <= ?1)
                       AND (SELECT o.next_due_ms FROM hook_outbox o
                            WHERE o.endpoint_id = e.id AND o.state = 0
                            ORDER BY o.id LIMIT 1) <= ?1
                     ORDER BY e.lease_until, e.id LIMIT ?2"
                ))?
                .query_map(params![now_ms, i64::from(limit)], row_endpoint)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut lease = txn.prepare_cached(
                "UPDATE hook_endpoints SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1",
            )?;
            for e in &eps {
                lease.execute(params![e.id as i64, owner, now_ms.saturating_add(lease_ms)])?;
            }
            Ok(eps)
        })
        .await
    }

    async fn hook_head(&self, endpoint: u64, limit: u32) -> Result<Vec<HookDelivery>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM hook_outbox o
                 WHERE o.endpoint_id = ?1 AND o.state = 0 ORDER BY o.id LIMIT ?2"
            ))?
            .query_map(params![endpoint as i64, i64::from(limit)], row_delivery)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn finish_hook_delivery(
        &self,
        owner: &str,
        endpoint: u64,
        delivery: u64,
        outcome: HookOutcome,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<bool> {
        let owner = owner.to_owned();
        self.write(move |txn, _| {
            finish(
                txn,
                &owner,
                endpoint,
                delivery,
                &outcome,
                now_ms,
                lease_until,
            )
        })
        .await
    }

    async fn release_hook_endpoint(&self, owner: &str, endpoint: u64) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached(
                "UPDATE hook_endpoints SET lease_owner = NULL, lease_until = 0
                 WHERE id = ?1 AND lease_owner = ?2",
            )?
            .execute(params![endpoint as i64, owner])?;
            Ok(())
        })
        .await
    }

    async fn hook_dead_letters(
        &self,
        endpoint: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HookDelivery>> {
        let ep = endpoint.map(|e| e as i64);
        let before = before.map_or(i64::MAX, |b| b as i64);
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM hook_outbox o
                 WHERE o.state = 2 AND (?1 IS NULL OR o.endpoint_id = ?1) AND o.id < ?2
                 ORDER BY o.id DESC LIMIT ?3"
            ))?
            .query_map(params![ep, before, i64::from(limit)], row_delivery)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn redrive_hook_dead(&self, id: u64, now_ms: i64) -> Result<bool> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached(
                    "UPDATE hook_outbox SET state = 0, attempts = 0, next_due_ms = ?2,
                       done_ms = 0
                     WHERE id = ?1 AND state = 2",
                )?
                .execute(params![id as i64, now_ms])?;
            Ok(n > 0)
        })
        .await
    }

    async fn redrive_hook_endpoint(&self, endpoint: u64, now_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached(
                    "UPDATE hook_outbox SET state = 0, attempts = 0, next_due_ms = ?2,
                       done_ms = 0
                     WHERE endpoint_id = ?1 AND state = 2",
                )?
                .execute(params![endpoint as i64, now_ms])?;
            Ok(n as u64)
        })
        .await
    }

    async fn hook_stats(&self) -> Result<Vec<HookStats>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT e.id, e.delivered, e.failed,
                   (SELECT count(*) FROM hook_outbox o WHERE o.endpoint_id = e.id
                      AND o.state = 0),
                   (SELECT count(*) FROM hook_outbox o WHERE o.endpoint_id = e.id
                      AND o.state = 2),
                   coalesce((SELECT min(o.created_ms) FROM hook_outbox o
                      WHERE o.endpoint_id = e.id AND o.state = 0), 0)
                 FROM hook_endpoints e ORDER BY e.id",
            )?
            .query_map([], |r| {
                Ok(HookStats {
                    endpoint_id: r.get::<_, i64>(0)? as u64,
                    delivered: r.get::<_, i64>(1)? as u64,
                    failed: r.get::<_, i64>(2)? as u64,
                    pending: r.get::<_, i64>(3)? as u64,
                    dead: r.get::<_, i64>(4)? as u64,
                    oldest_pending_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn prune_hook_deliveries(&self, before_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM hook_outbox WHERE state = 1 AND done_ms < ?1")?
                .execute([before_ms])? as u64)
        })
        .await
    }
}
