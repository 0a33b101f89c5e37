//! PostgreSQL: webhook endpoints and their outbox ([`HookStore`]), shared by the logic
//! nodes of a cluster.
//!
//! * **Claims** are one statement: claimable endpoints are picked `FOR UPDATE SKIP
//!   LOCKED` and leased by the `UPDATE … RETURNING`, so nodes claiming at once never
//!   wait for each other nor get the same endpoint (READ COMMITTED re-checks the lease
//!   condition on the newest version of a row it locks).
//! * **Queueing** a batch is one statement (`unnest` arrays, `ON CONFLICT DO NOTHING`),
//!   its rows numbered in the order given. Two nodes queueing for one endpoint at once
//!   may commit their ids out of order (an identity is drawn before the commit): such
//!   rows are delivered in id order from the moment they are visible, so events queued
//!   concurrently on different nodes have no order between them — as they had none
//!   when they happened.
//! * **Finishing** locks the endpoint's row (`FOR UPDATE`) and checks the lease in the
//!   same transaction as the outbox row's change.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{now_ms, PgStore};
use crate::hooks::{join_events, split_events};
use crate::{
    HookDelivery, HookEndpoint, HookEvent, HookOutcome, HookStats, HookStore, Result, StoreError,
};

/// An endpoint's columns, in [`row_endpoint`]'s order.
const ENDPOINT_COLS: &str = "e.id, e.url, e.events, e.description, e.secret, e.prev_secret,
     e.prev_secret_until_ms, e.owner_user_id, e.enabled, e.created_ms, e.delivered, e.failed";

/// A delivery's columns, in [`row_delivery`]'s order.
const DELIVERY_COLS: &str = "o.id, o.endpoint_id, o.event_id, o.event_type, o.payload,
     o.created_ms, o.attempts, o.next_due_ms, o.last_error, o.state, o.done_ms";

fn row_endpoint(r: &Row) -> Result<HookEndpoint> {
    Ok(HookEndpoint {
        id: r.try_get::<_, i64>(0)? as u64,
        url: r.try_get(1)?,
        events: split_events(r.try_get::<_, &str>(2)?),
        description: r.try_get(3)?,
        secret: r.try_get(4)?,
        prev_secret: r.try_get(5)?,
        prev_secret_until_ms: r.try_get(6)?,
        owner_user_id: r.try_get::<_, i64>(7)? as u64,
        enabled: r.try_get(8)?,
        created_ms: r.try_get(9)?,
        delivered: r.try_get::<_, i64>(10)? as u64,
        failed: r.try_get::<_, i64>(11)? as u64,
    })
}

fn row_delivery(r: &Row) -> Result<HookDelivery> {
    let state: i16 = r.try_get(9)?;
    let attempts: i32 = r.try_get(6)?;
    Ok(HookDelivery {
        id: r.try_get::<_, i64>(0)? as u64,
        endpoint_id: r.try_get::<_, i64>(1)? as u64,
        event_id: r.try_get(2)?,
        event_type: r.try_get(3)?,
        payload: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("hook attempts {attempts}")))?,
        next_due_ms: r.try_get(7)?,
        last_error: r.try_get(8)?,
        dead_ms: if state == 2 { r.try_get(10)? } else { 0 },
    })
}

fn endpoints(rows: &[Row]) -> Result<Vec<HookEndpoint>> {
    rows.iter().map(row_endpoint).collect()
}

fn deliveries(rows: &[Row]) -> Result<Vec<HookDelivery>> {
    rows.iter().map(row_delivery).collect()
}

#[async_trait]
impl HookStore for PgStore {
    async fn create_hook_endpoint(&self, e: HookEndpoint) -> Result<HookEndpoint> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO hook_endpoints (url, events, description, secret, prev_secret,
                   prev_secret_until_ms, owner_user_id, enabled, created_ms, delivered,
                   failed, lease_owner, lease_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, NULL, 0)
                 RETURNING id",
            )
            .await?;
        let created = now_ms();
        let row = client
            .query_one(
                &stmt,
                &[
                    &e.url,
                    &join_events(&e.events),
                    &e.description,
                    &e.secret,
                    &e.prev_secret,
                    &e.prev_secret_until_ms,
                    &(e.owner_user_id as i64),
                    &e.enabled,
                    &created,
                ],
            )
            .await?;
        Ok(HookEndpoint {
            id: row.get::<_, i64>(0) as u64,
            created_ms: created,
            delivered: 0,
            failed: 0,
            ..e
        })
    }

    async fn update_hook_endpoint(&self, e: HookEndpoint) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE hook_endpoints SET url = $2, events = $3, description = $4,
                   secret = $5, prev_secret = $6, prev_secret_until_ms = $7,
                   owner_user_id = $8, enabled = $9
                 WHERE id = $1",
            )
            .await?;
        let n = client
            .execute(
                &stmt,
                &[
                    &(e.id as i64),
                    &e.url,
                    &join_events(&e.events),
                    &e.description,
                    &e.secret,
                    &e.prev_secret,
                    &e.prev_secret_until_ms,
                    &(e.owner_user_id as i64),
                    &e.enabled,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_hook_endpoint(&self, id: u64) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH e AS (DELETE FROM hook_endpoints WHERE id = $1 RETURNING id),
                   o AS (DELETE FROM hook_outbox WHERE endpoint_id = $1)
                 SELECT count(*) FROM e",
            )
            .await?;
        let n: i64 = client.query_one(&stmt, &[&(id as i64)]).await?.get(0);
        Ok(n > 0)
    }

    async fn hook_endpoints(&self) -> Result<Vec<HookEndpoint>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ENDPOINT_COLS} FROM hook_endpoints e ORDER BY e.id"
            ))
            .await?;
        endpoints(&client.query(&stmt, &[]).await?)
    }

    async fn enqueue_hook_events(&self, events: Vec<HookEvent>) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let eps: Vec<i64> = events.iter().map(|e| e.endpoint_id as i64).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
        let created: Vec<i64> = events.iter().map(|e| e.created_ms).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO hook_outbox (endpoint_id, event_id, event_type, payload,
                   created_ms, state, attempts, next_due_ms, last_error, done_ms)
                 SELECT x.ep, x.id, x.t, x.p, x.c, 0, 0, x.c, '', 0
                 FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[], $5::int8[])
                   WITH ORDINALITY AS x(ep, id, t, p, c, ord)
                 WHERE EXISTS (SELECT 1 FROM hook_endpoints e WHERE e.id = x.ep)
                 ORDER BY x.ord
                 ON CONFLICT (endpoint_id, event_id) DO NOTHING",
            )
            .await?;
        Ok(client
            .execute(&stmt, &[&eps, &ids, &types, &payloads, &created])
            .await?)
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
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "WITH picked AS (
                   SELECT e.id FROM hook_endpoints e
                   WHERE e.enabled AND (e.lease_owner IS NULL OR e.lease_until <= $2)
                     AND (SELECT o.next_due_ms FROM hook_outbox o
                          WHERE o.endpoint_id = e.id AND o.state = 0
                          ORDER BY o.id LIMIT 1) <= $2
                   ORDER BY e.lease_until, e.id LIMIT $4
                   FOR UPDATE SKIP LOCKED
                 )
                 UPDATE hook_endpoints e SET lease_owner = $1, lease_until = $3
                 FROM picked p WHERE e.id = p.id
                 RETURNING {ENDPOINT_COLS}"
            ))
            .await?;
        let until = now_ms.saturating_add(lease_ms);
        endpoints(
            &client
                .query(&stmt, &[&owner, &now_ms, &until, &i64::from(limit)])
                .await?,
        )
    }

    async fn hook_head(&self, endpoint: u64, limit: u32) -> Result<Vec<HookDelivery>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM hook_outbox o
                 WHERE o.endpoint_id = $1 AND o.state = 0 ORDER BY o.id LIMIT $2"
            ))
            .await?;
        deliveries(
            &client
                .query(&stmt, &[&(endpoint as i64), &i64::from(limit)])
                .await?,
        )
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
        let ep = endpoint as i64;
        let id = delivery as i64;
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let lock = txn
            .prepare_cached(
                "SELECT 1 FROM hook_endpoints WHERE id = $1 AND lease_owner = $2 FOR UPDATE",
            )
            .await?;
        if txn.query_opt(&lock, &[&ep, &owner]).await?.is_none() {
            return Ok(false);
        }
        let (row, counter, release) = match &outcome {
            HookOutcome::Delivered => {
                let s = txn
                    .prepare_cached(
                        "UPDATE hook_outbox SET state = 1, done_ms = $3
                         WHERE id = $1 AND endpoint_id = $2 AND state = 0",
                    )
                    .await?;
                (
                    txn.execute(&s, &[&id, &ep, &now_ms]).await?,
                    "delivered",
                    false,
                )
            }
            HookOutcome::Retry { due_ms, error } => {
                let s = txn
                    .prepare_cached(
                        "UPDATE hook_outbox SET attempts = attempts + 1, next_due_ms = $3,
                           last_error = $4
                         WHERE id = $1 AND endpoint_id = $2 AND state = 0",
                    )
                    .await?;
                (
                    txn.execute(&s, &[&id, &ep, due_ms, error]).await?,
                    "failed",
                    true,
                )
            }
            HookOutcome::Dead { error } => {
                let s = txn
                    .prepare_cached(
                        "UPDATE hook_outbox SET state = 2, attempts = attempts + 1,
                           last_error = $4, done_ms = $3
                         WHERE id = $1 AND endpoint_id = $2 AND state = 0",
                    )
                    .await?;
                (
                    txn.execute(&s, &[&id, &ep, &now_ms, error]).await?,
                    "failed",
                    false,
                )
            }
        };
        let (lease_owner, until): (Option<&str>, i64) = if release {
            (None, 0)
        } else {
            (Some(owner), lease_until)
        };
        let s = txn
            .prepare_cached(&format!(
                "UPDATE hook_endpoints SET {counter} = {counter} + $2, lease_owner = $3,
                   lease_until = $4
                 WHERE id = $1"
            ))
            .await?;
        txn.execute(&s, &[&ep, &(row as i64), &lease_owner, &until])
            .await?;
        txn.commit().await?;
        Ok(row > 0)
    }

    async fn release_hook_endpoint(&self, owner: &str, endpoint: u64) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE hook_endpoints SET lease_owner = NULL, lease_until = 0
                 WHERE id = $1 AND lease_owner = $2",
            )
            .await?;
        client.execute(&stmt, &[&(endpoint as i64), &owner]).await?;
        Ok(())
    }

    async fn hook_dead_letters(
        &self,
        endpoint: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HookDelivery>> {
        let ep = endpoint.map(|e| e as i64);
        let before = before.map_or(i64::MAX, |b| b as i64);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM hook_outbox o
                 WHERE o.state = 2 AND ($1::int8 IS NULL OR o.endpoint_id = $1) AND o.id < $2
                 ORDER BY o.id DESC LIMIT $3"
            ))
            .await?;
        deliveries(
            &client
                .query(&stmt, &[&ep, &before, &i64::from(limit)])
                .await?,
        )
    }

    async fn redrive_hook_dead(&self, id: u64, now_ms: i64) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE hook_outbox SET state = 0, attempts = 0, next_due_ms = $2, done_ms = 0
                 WHERE id = $1 AND state = 2",
            )
            .await?;
        Ok(client.execute(&stmt, &[&(id as i64), &now_ms]).await? > 0)
    }

    async fn redrive_hook_endpoint(&self, endpoint: u64, now_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE hook_outbox SET state = 0, attempts = 0, next_due_ms = $2, done_ms = 0
                 WHERE endpoint_id = $1 AND state = 2",
            )
            .await?;
        Ok(client
            .execute(&stmt, &[&(endpoint as i64), &now_ms])
            .await?)
    }

    async fn hook_stats(&self) -> Result<Vec<HookStats>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT e.id, e.delivered, e.failed,
                   (SELECT count(*) FROM hook_outbox o WHERE o.endpoint_id = e.id
                      AND o.state = 0),
                   (SELECT count(*) FROM hook_outbox o WHERE o.endpoint_id = e.id
                      AND o.state = 2),
                   coalesce((SELECT min(o.created_ms) FROM hook_outbox o
                      WHERE o.endpoint_id = e.id AND o.state = 0), 0)
                 FROM hook_endpoints e ORDER BY e.id",
            )
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| HookStats {
                endpoint_id: r.get::<_, i64>(0) as u64,
                delivered: r.get::<_, i64>(1) as u64,
                failed: r.get::<_, i64>(2) as u64,
                pending: r.get::<_, i64>(3) as u64,
                dead: r.get::<_, i64>(4) as u64,
                oldest_pending_ms: r.get(5),
            })
            .collect())
    }

    async fn prune_hook_deliveries(&self, before_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM hook_outbox WHERE state = 1 AND done_ms < $1")
            .await?;
        Ok(client.execute(&stmt, &[&before_ms]).await?)
    }
}
