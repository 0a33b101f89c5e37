//! PostgreSQL: push targets, settings and the push queue ([`PushStore`]).
//!
//! * **Claims** are one statement: the due rows are picked `FOR UPDATE SKIP LOCKED` in a
//!   CTE and leased by an `UPDATE … RETURNING` joined with their targets, so claimers on
//!   several nodes never wait for each other nor get the same row. A claim moves the
//!   row's `due_ms` to the lease's end: the due-time index alone then finds every
//!   claimable row (a leased row is not due until its lease runs out), and a claimer
//!   that read an older version of a row re-checks it under the lock (READ COMMITTED
//!   re-evaluates the WHERE on the newest version) and skips it.
//! * **Queueing** a batch is one statement (`unnest` arrays; `INSERT … SELECT … JOIN
//!   push_targets … ON CONFLICT DO UPDATE`). PostgreSQL refuses to update one row twice
//!   in a statement, so the batch's entries for one device are coalesced here first,
//!   exactly as queueing them one after another would.
//! * **Finishing** a batch is one transaction: the rows finished as done are locked
//!   first (see [`LOCK_DONE`] for why), then one statement for them and one for retries.
//! * Statements touching several queue rows take them in (user, device) order, and a
//!   deadlock or serialisation failure is retried, like the message writer's.
//! * **Backlog** reads the `devices` table for synckeys, which this store writes behind
//!   (`synckeys.rs`): another node's report may be up to ~1 s late there (this node's own
//!   pending reports are applied on top), so the backlog may name a device that has just
//!   synced — the logic layer's backlog pass checks the entries anyway.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{is_retryable, now_ms, PgStore, WRITE_ATTEMPTS};
use crate::{
    PushDone, PushEnqueue, PushJob, PushPrefRow, PushStore, PushTargetRow, Result, StoreError,
};

/// A target's columns, in [`row_target`]'s order.
const TARGET_COLS: &str = "t.user_id, t.device_id, t.provider, t.token, t.endpoint, t.p256dh,
     t.auth, t.app_id, t.sandbox, t.locale, t.preview, t.dnd_start_min, t.dnd_end_min,
     t.utc_offset_min, t.registered_ms, t.pushed_seq, t.quiet_until_ms";
/// How many columns [`TARGET_COLS`] has.
const TARGET_WIDTH: usize = 17;

fn small<T: TryFrom<i32>>(r: &Row, at: usize, what: &str) -> Result<T> {
    let v: i32 = r.try_get(at)?;
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("push target {what} {v}")))
}

/// A target from [`TARGET_COLS`] starting at column `at`.
fn row_target(r: &Row, at: usize) -> Result<PushTargetRow> {
    Ok(PushTargetRow {
        user_id: r.try_get::<_, i64>(at)? as u64,
        device_id: r.try_get(at + 1)?,
        provider: r.try_get(at + 2)?,
        token: r.try_get(at + 3)?,
        endpoint: r.try_get(at + 4)?,
        p256dh: r.try_get(at + 5)?,
        auth: r.try_get(at + 6)?,
        app_id: r.try_get(at + 7)?,
        sandbox: r.try_get(at + 8)?,
        locale: r.try_get(at + 9)?,
        preview: small(r, at + 10, "preview")?,
        dnd_start_min: small(r, at + 11, "dnd_start_min")?,
        dnd_end_min: small(r, at + 12, "dnd_end_min")?,
        utc_offset_min: small(r, at + 13, "utc_offset_min")?,
        registered_ms: r.try_get(at + 14)?,
        pushed_seq: r.try_get::<_, i64>(at + 15)? as u64,
        quiet_until_ms: r.try_get(at + 16)?,
    })
}

fn rows_targets(rows: &[Row]) -> Result<Vec<PushTargetRow>> {
    rows.iter().map(|r| row_target(r, 0)).collect()
}

/// A new registration starts at the user's newest seq (`users.last_seq`, which moves in
/// the same transaction as the inbox entries); a replacement keeps its `pushed_seq`,
/// quiet window and queue row, and its `registered_ms` grows even within a millisecond.
/// No row for an unknown user.
const PUT_TARGET: &str = "INSERT INTO push_targets (user_id, device_id, provider, token, endpoint,
       p256dh, auth, app_id, sandbox, locale, preview, dnd_start_min, dnd_end_min,
       utc_offset_min, registered_ms, pushed_seq, quiet_until_ms)
     SELECT u.id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, u.last_seq, 0
     FROM users u WHERE u.id = $1
     ON CONFLICT (user_id, device_id) DO UPDATE SET
       provider = excluded.provider, token = excluded.token, endpoint = excluded.endpoint,
       p256dh = excluded.p256dh, auth = excluded.auth, app_id = excluded.app_id,
       sandbox = excluded.sandbox, locale = excluded.locale, preview = excluded.preview,
       dnd_start_min = excluded.dnd_start_min, dnd_end_min = excluded.dnd_end_min,
       utc_offset_min = excluded.utc_offset_min,
       registered_ms = greatest(excluded.registered_ms, push_targets.registered_ms + 1)
     RETURNING registered_ms, pushed_seq, quiet_until_ms";

/// Queues a batch, coalesced per device (see [`coalesce`]): a new row is due at the
/// later of its due time and the target's quiet window; an existing one keeps its due
/// time and created_ms (and its lease: entries queued while it is leased are remembered
/// by the time of the first, `late_created_ms`, for what stays after the finish).
const ENQUEUE: &str = "INSERT INTO push_queue (user_id, device_id, seq, count, summary, due_ms,
       created_ms, attempts, version, lease_owner, lease_until, late_created_ms)
     SELECT e.u, e.d, e.s, e.n, e.summary, greatest(e.due, t.quiet_until_ms), e.c, 0, e.n,
       NULL, 0, NULL
     FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[],
                 $7::int8[]) WITH ORDINALITY AS e(u, d, s, n, summary, due, c, ord)
     JOIN push_targets t ON t.user_id = e.u AND t.device_id = e.d
     ORDER BY e.ord
     ON CONFLICT (user_id, device_id) DO UPDATE SET
       count = push_queue.count + excluded.count,
       version = push_queue.version + excluded.version,
       summary = CASE WHEN excluded.seq >= push_queue.seq THEN excluded.summary
         ELSE push_queue.summary END,
       seq = greatest(push_queue.seq, excluded.seq),
       late_created_ms = CASE WHEN push_queue.lease_owner IS NOT NULL
         THEN coalesce(push_queue.late_created_ms, excluded.created_ms)
         ELSE push_queue.late_created_ms END
     RETURNING user_id, device_id";

/// Picks due, unleased rows (skipping those another claimer holds), drops any whose
/// target is gone (a target deleted while an enqueue that had read it was committing),
/// and leases the rest, answering each with its target and its due time before the claim.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH picked AS (
           SELECT q.user_id, q.device_id, q.due_ms FROM push_queue q
           WHERE q.due_ms <= $2 AND (q.lease_owner IS NULL OR q.lease_until <= $2)
           ORDER BY q.due_ms, q.user_id, q.device_id LIMIT $4
           FOR UPDATE SKIP LOCKED
         ), orphans AS (
           DELETE FROM push_queue q USING picked p
           WHERE q.user_id = p.user_id AND q.device_id = p.device_id
             AND NOT EXISTS (SELECT 1 FROM push_targets t
               WHERE t.user_id = p.user_id AND t.device_id = p.device_id)
         ), claimed AS (
           UPDATE push_queue q SET lease_owner = $1, lease_until = $3, due_ms = $3,
             late_created_ms = NULL
           FROM picked p JOIN push_targets t
             ON t.user_id = p.user_id AND t.device_id = p.device_id
           WHERE q.user_id = p.user_id AND q.device_id = p.device_id
           RETURNING {TARGET_COLS}, q.seq, q.count, q.summary, q.created_ms,
             p.due_ms AS old_due, q.attempts, q.version
         )
         SELECT * FROM claimed ORDER BY old_due, user_id, device_id"
    )
});

/// Locks the rows a finish may change, in (user, device) order, before
/// [`FINISH_DONE`] runs: its delete and its update each apply to the rows that qualified
/// in the statement's snapshot, so a row that an enqueue changed between that snapshot
/// and the lock would qualify for neither (the delete re-checks the version on the row's
/// newest version and skips it; the update never saw it qualify) and stay leased. Taken
/// in a statement of its own, the lock comes first and the next statement's snapshot sees
/// the rows as they are.
const LOCK_DONE: &str = "SELECT 1 FROM push_queue q
     JOIN unnest($2::int8[], $3::text[]) AS d(u, dev)
       ON q.user_id = d.u AND q.device_id = d.dev
     WHERE q.lease_owner = $1
     ORDER BY q.user_id, q.device_id
     FOR UPDATE OF q";

/// Done rows: deleted when nothing was queued since the claim, else kept with the rest
/// (lease released, due after the quiet window); either way the target's pushed_seq
/// and quiet window move. Only rows still leased to `$1`. Answers how many applied.
const FINISH_DONE: &str = "WITH d AS (
       SELECT * FROM unnest($3::int8[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
                            $8::int8[]) AS d(u, dev, ver, seq, claimed, quiet)
     ), gone AS (
       DELETE FROM push_queue q USING d
       WHERE q.user_id = d.u AND q.device_id = d.dev AND q.lease_owner = $1
         AND q.version = d.ver
       RETURNING q.user_id, q.device_id
     ), kept AS (
       UPDATE push_queue q SET count = greatest(q.count - d.claimed, 1), lease_owner = NULL,
         lease_until = 0, due_ms = greatest(d.quiet, $2),
         created_ms = coalesce(q.late_created_ms, q.created_ms), late_created_ms = NULL
       FROM d
       WHERE q.user_id = d.u AND q.device_id = d.dev AND q.lease_owner = $1
         AND q.version <> d.ver
       RETURNING q.user_id, q.device_id
     ), applied AS (
       SELECT * FROM gone UNION ALL SELECT * FROM kept
     ), targets AS (
       UPDATE push_targets t SET pushed_seq = greatest(t.pushed_seq, d.seq),
         quiet_until_ms = d.quiet
       FROM d JOIN applied a ON a.user_id = d.u AND a.device_id = d.dev
       WHERE t.user_id = d.u AND t.device_id = d.dev
     )
     SELECT count(*) FROM applied";

const FINISH_RETRY: &str = "UPDATE push_queue q SET attempts = q.attempts + 1, due_ms = r.due,
       lease_owner = NULL, lease_until = 0, late_created_ms = NULL
     FROM unnest($2::int8[], $3::text[], $4::int8[]) AS r(u, dev, due)
     WHERE q.user_id = r.u AND q.device_id = r.dev AND q.lease_owner = $1";

/// One device's entries of a batch, coalesced as queueing them in order would.
struct Coalesced {
    seq: u64,
    count: i32,
    summary: Vec<u8>,
    /// The first entry's: the one that would have made the row.
    due_ms: i64,
    created_ms: i64,
}

/// The batch's entries per device, in (user, device) order (the order rows are locked).
fn coalesce(entries: Vec<PushEnqueue>) -> Vec<((u64, String), Coalesced)> {
    let mut by: HashMap<(u64, String), Coalesced> = HashMap::new();
    for e in entries {
        match by.get_mut(&(e.user_id, e.device_id.clone())) {
            Some(c) => {
                c.count = c.count.saturating_add(1);
                // The newest summary: the highest seq, the later entry on a tie.
                if e.seq >= c.seq {
                    c.seq = e.seq;
                    c.summary = e.summary;
                }
            }
            None => {
                by.insert(
                    (e.user_id, e.device_id),
                    Coalesced {
                        seq: e.seq,
                        count: 1,
                        summary: e.summary,
                        due_ms: e.due_ms,
                        created_ms: e.created_ms,
                    },
                );
            }
        }
    }
    let mut out: Vec<_> = by.into_iter().collect();
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Runs `f` again when it lost a race (deadlock, serialisation, unique index); each try
/// takes its own pooled connection.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = None;
    for _ in 0..WRITE_ATTEMPTS {
        match f().await {
            Err(StoreError::Postgres(e)) if is_retryable(&e) => last = Some(e),
            other => return other,
        }
    }
    Err(last.map_or(
        StoreError::WriteFailed("too many conflicts".into()),
        StoreError::Postgres,
    ))
}

/// Deletes targets (and their queue rows) matching `cond` (on `push_targets`, with
/// `$1` the user and further parameters as given); how many targets went.
async fn delete_targets(
    client: &Object,
    cond: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let stmt = client
        .prepare_cached(&format!(
            "WITH t AS (
               DELETE FROM push_targets WHERE {cond} RETURNING user_id, device_id
             ), q AS (
               DELETE FROM push_queue q USING t
               WHERE q.user_id = t.user_id AND q.device_id = t.device_id
             )
             SELECT count(*) FROM t"
        ))
        .await?;
    Ok(client.query_one(&stmt, params).await?.get::<_, i64>(0) as u64)
}

#[async_trait]
impl PushStore for PgStore {
    async fn put_push_target(&self, t: PushTargetRow) -> Result<PushTargetRow> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(PUT_TARGET).await?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &(t.user_id as i64),
                    &t.device_id,
                    &t.provider,
                    &t.token,
                    &t.endpoint,
                    &t.p256dh,
                    &t.auth,
                    &t.app_id,
                    &t.sandbox,
                    &t.locale,
                    &i32::from(t.preview),
                    &i32::from(t.dnd_start_min),
                    &i32::from(t.dnd_end_min),
                    &i32::from(t.utc_offset_min),
                    &now_ms(),
                ],
            )
            .await?
            .ok_or(StoreError::UnknownUser(t.user_id))?;
        Ok(PushTargetRow {
            registered_ms: row.get(0),
            pushed_seq: row.get::<_, i64>(1) as u64,
            quiet_until_ms: row.get(2),
            ..t
        })
    }

    async fn delete_push_target(&self, user: u64, device: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = delete_targets(
            &client,
            "user_id = $1 AND device_id = $2",
            &[&(user as i64), &device],
        )
        .await?;
        Ok(n > 0)
    }

    async fn delete_push_targets(&self, user: u64) -> Result<u64> {
        let client = self.client().await?;
        delete_targets(&client, "user_id = $1", &[&(user as i64)]).await
    }

    async fn delete_push_target_if(
        &self,
        user: u64,
        device: &str,
        registered_ms: i64,
    ) -> Result<bool> {
        let client = self.client().await?;
        let n = delete_targets(
            &client,
            "user_id = $1 AND device_id = $2 AND registered_ms = $3",
            &[&(user as i64), &device, &registered_ms],
        )
        .await?;
        Ok(n > 0)
    }

    async fn push_targets(&self, user: u64) -> Result<Vec<PushTargetRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TARGET_COLS} FROM push_targets t WHERE t.user_id = $1
                 ORDER BY t.device_id"
            ))
            .await?;
        rows_targets(&client.query(&stmt, &[&(user as i64)]).await?)
    }

    async fn push_targets_since(
        &self,
        since_ms: i64,
        after: Option<(i64, u64, String)>,
        limit: u32,
    ) -> Result<Vec<PushTargetRow>> {
        let client = self.client().await?;
        let limit = i64::from(limit);
        let rows = match after {
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {TARGET_COLS} FROM push_targets t WHERE t.registered_ms >= $1
                         ORDER BY t.registered_ms, t.user_id, t.device_id LIMIT $2"
                    ))
                    .await?;
                client.query(&stmt, &[&since_ms, &limit]).await?
            }
            Some((reg, user, device)) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {TARGET_COLS} FROM push_targets t WHERE t.registered_ms >= $1
                           AND (t.registered_ms, t.user_id, t.device_id) > ($2, $3, $4)
                         ORDER BY t.registered_ms, t.user_id, t.device_id LIMIT $5"
                    ))
                    .await?;
                client
                    .query(&stmt, &[&since_ms, &reg, &(user as i64), &device, &limit])
                    .await?
            }
        };
        rows_targets(&rows)
    }

    async fn push_target_counts(&self) -> Result<Vec<(String, u64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT provider, count(*) FROM push_targets GROUP BY provider ORDER BY provider",
            )
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn set_push_prefs(&self, user: u64, prefs: Vec<PushPrefRow>) -> Result<()> {
        // The last setting given for a conversation wins, as if applied in order.
        let mut last: HashMap<(u64, u64), PushPrefRow> = HashMap::new();
        for p in prefs {
            last.insert((p.peer, p.group_id), p);
        }
        let mut rows: Vec<PushPrefRow> = last.into_values().collect();
        rows.sort_unstable_by_key(|p| (p.peer, p.group_id));
        let (mut put, mut gone) = (Vec::new(), Vec::new());
        for p in rows {
            if p.mode == 0 {
                gone.push(p);
            } else {
                put.push(p);
            }
        }
        let peers = |v: &[PushPrefRow]| v.iter().map(|p| p.peer as i64).collect::<Vec<_>>();
        let groups = |v: &[PushPrefRow]| v.iter().map(|p| p.group_id as i64).collect::<Vec<_>>();
        let (put_peers, put_groups) = (peers(&put), groups(&put));
        let put_modes: Vec<i32> = put.iter().map(|p| i32::from(p.mode)).collect();
        let put_until: Vec<i64> = put.iter().map(|p| p.until_ms).collect();
        let (gone_peers, gone_groups) = (peers(&gone), groups(&gone));
        let user = user as i64;
        retrying(|| {
            let (put_peers, put_groups, put_modes, put_until) =
                (&put_peers, &put_groups, &put_modes, &put_until);
            let (gone_peers, gone_groups) = (&gone_peers, &gone_groups);
            async move {
                let mut client = self.client().await?;
                let txn = client.transaction().await?;
                if !put_peers.is_empty() {
                    let stmt = txn
                        .prepare_cached(
                            "INSERT INTO push_prefs (user_id, peer, group_id, mode, until_ms)
                             SELECT $1, p, g, m, u
                             FROM unnest($2::int8[], $3::int8[], $4::int4[], $5::int8[])
                               AS x(p, g, m, u)
                             ON CONFLICT (user_id, peer, group_id) DO UPDATE
                             SET mode = excluded.mode, until_ms = excluded.until_ms",
                        )
                        .await?;
                    txn.execute(&stmt, &[&user, put_peers, put_groups, put_modes, put_until])
                        .await?;
                }
                if !gone_peers.is_empty() {
                    let stmt = txn
                        .prepare_cached(
                            "DELETE FROM push_prefs p
                             USING unnest($2::int8[], $3::int8[]) AS x(peer, g)
                             WHERE p.user_id = $1 AND p.peer = x.peer AND p.group_id = x.g",
                        )
                        .await?;
                    txn.execute(&stmt, &[&user, gone_peers, gone_groups])
                        .await?;
                }
                txn.commit().await?;
                Ok(())
            }
        })
        .await
    }

    async fn push_prefs(&self, user: u64, now_ms: i64) -> Result<Vec<PushPrefRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT peer, group_id, mode, until_ms FROM push_prefs
                 WHERE user_id = $1 AND (until_ms = 0 OR until_ms > $2)
                 ORDER BY peer, group_id",
            )
            .await?;
        client
            .query(&stmt, &[&(user as i64), &now_ms])
            .await?
            .iter()
            .map(|r| {
                let mode: i32 = r.get(2);
                Ok(PushPrefRow {
                    user_id: user,
                    peer: r.get::<_, i64>(0) as u64,
                    group_id: r.get::<_, i64>(1) as u64,
                    mode: u8::try_from(mode)
                        .map_err(|_| StoreError::Corrupt(format!("push mode {mode}")))?,
                    until_ms: r.get(3),
                })
            })
            .collect()
    }

    async fn enqueue_pushes(&self, entries: Vec<PushEnqueue>) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let devices = coalesce(entries);
        let users: Vec<i64> = devices.iter().map(|((u, _), _)| *u as i64).collect();
        let ids: Vec<&str> = devices.iter().map(|((_, d), _)| d.as_str()).collect();
        let seqs: Vec<i64> = devices.iter().map(|(_, c)| c.seq as i64).collect();
        let counts: Vec<i32> = devices.iter().map(|(_, c)| c.count).collect();
        let summaries: Vec<&[u8]> = devices.iter().map(|(_, c)| c.summary.as_slice()).collect();
        let dues: Vec<i64> = devices.iter().map(|(_, c)| c.due_ms).collect();
        let created: Vec<i64> = devices.iter().map(|(_, c)| c.created_ms).collect();
        let per_device: HashMap<(i64, &str), i32> = devices
            .iter()
            .map(|((u, d), c)| ((*u as i64, d.as_str()), c.count))
            .collect();
        let params: [&(dyn ToSql + Sync); 7] =
            [&users, &ids, &seqs, &counts, &summaries, &dues, &created];
        let rows = retrying(|| {
            let params = &params;
            async move {
                let client = self.client().await?;
                let stmt = client.prepare_cached(ENQUEUE).await?;
                Ok(client.query(&stmt, params).await?)
            }
        })
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key = (r.get::<_, i64>(0), r.get::<_, &str>(1));
                per_device.get(&key).copied().unwrap_or(0) as u64
            })
            .sum())
    }

    async fn claim_pushes(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<PushJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until = now_ms.saturating_add(lease_ms);
        let limit = i64::from(limit);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&CLAIM).await?;
        let rows = client
            .query(&stmt, &[&owner, &now_ms, &until, &limit])
            .await?;
        rows.iter()
            .map(|r| {
                let at = TARGET_WIDTH;
                Ok(PushJob {
                    target: row_target(r, 0)?,
                    seq: r.try_get::<_, i64>(at)? as u64,
                    count: small(r, at + 1, "queue count")?,
                    summary: r.try_get(at + 2)?,
                    created_ms: r.try_get(at + 3)?,
                    due_ms: r.try_get(at + 4)?,
                    attempts: small(r, at + 5, "queue attempts")?,
                    version: r.try_get::<_, i64>(at + 6)? as u64,
                })
            })
            .collect()
    }

    async fn finish_pushes(&self, owner: &str, now_ms: i64, done: Vec<PushDone>) -> Result<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        // One outcome per row (the last given), in (user, device) order.
        let mut last: HashMap<(u64, String), PushDone> = HashMap::new();
        for d in done {
            let key = match &d {
                PushDone::Done {
                    user_id, device_id, ..
                }
                | PushDone::Retry {
                    user_id, device_id, ..
                } => (*user_id, device_id.clone()),
            };
            last.insert(key, d);
        }
        let mut outcomes: Vec<_> = last.into_iter().collect();
        outcomes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (mut du, mut dd, mut dv, mut ds, mut dc, mut dq) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut ru, mut rd, mut rt) = (vec![], vec![], vec![]);
        for ((user, device), d) in outcomes {
            match d {
                PushDone::Done {
                    version,
                    seq,
                    claimed_count,
                    quiet_until_ms,
                    ..
                } => {
                    du.push(user as i64);
                    dd.push(device);
                    dv.push(version as i64);
                    ds.push(seq as i64);
                    dc.push(i64::from(claimed_count));
                    dq.push(quiet_until_ms);
                }
                PushDone::Retry { due_ms, .. } => {
                    ru.push(user as i64);
                    rd.push(device);
                    rt.push(due_ms);
                }
            }
        }
        let done_params: [&(dyn ToSql + Sync); 8] = [&owner, &now_ms, &du, &dd, &dv, &ds, &dc, &dq];
        let retry_params: [&(dyn ToSql + Sync); 4] = [&owner, &ru, &rd, &rt];
        let lock_params: [&(dyn ToSql + Sync); 3] = [&owner, &du, &dd];
        let (any_done, any_retry) = (!du.is_empty(), !ru.is_empty());
        retrying(|| {
            let (done_params, retry_params, lock_params) =
                (&done_params, &retry_params, &lock_params);
            async move {
                let mut client = self.client().await?;
                let txn = client.transaction().await?;
                let mut applied = 0u64;
                if any_done {
                    let lock = txn.prepare_cached(LOCK_DONE).await?;
                    txn.execute(&lock, lock_params).await?;
                    let stmt = txn.prepare_cached(FINISH_DONE).await?;
                    applied += txn.query_one(&stmt, done_params).await?.get::<_, i64>(0) as u64;
                }
                if any_retry {
                    let stmt = txn.prepare_cached(FINISH_RETRY).await?;
                    applied += txn.execute(&stmt, retry_params).await?;
                }
                txn.commit().await?;
                Ok(applied)
            }
        })
        .await
    }

    async fn push_backlog(&self, limit: u32) -> Result<Vec<(PushTargetRow, u64, u64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TARGET_COLS}, greatest(t.pushed_seq, coalesce(d.synckey, 0)),
                   u.last_seq
                 FROM push_targets t
                 JOIN users u ON u.id = t.user_id
                 LEFT JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id
                 WHERE u.last_seq > greatest(t.pushed_seq, coalesce(d.synckey, 0))
                   AND NOT EXISTS (SELECT 1 FROM push_queue q
                     WHERE q.user_id = t.user_id AND q.device_id = t.device_id)
                 ORDER BY t.user_id, t.device_id LIMIT $1"
            ))
            .await?;
        let rows = client.query(&stmt, &[&i64::from(limit)]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let target = row_target(r, 0)?;
            let mut from = r.try_get::<_, i64>(TARGET_WIDTH)? as u64;
            let to = r.try_get::<_, i64>(TARGET_WIDTH + 1)? as u64;
            // A synckey this node has taken but not written yet.
            if let Some(k) = self.synckeys.get(target.user_id, &target.device_id) {
                from = from.max(k);
            }
            if to > from {
                out.push((target, from, to));
            }
        }
        Ok(out)
    }

    async fn set_pushed_seq(&self, user: u64, device: &str, seq: u64) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE push_targets SET pushed_seq = greatest(pushed_seq, $3)
                 WHERE user_id = $1 AND device_id = $2",
            )
            .await?;
        client
            .execute(&stmt, &[&(user as i64), &device, &(seq as i64)])
            .await?;
        Ok(())
    }

    async fn unread_messages(&self, user: u64, after_seq: u64, cap: u32) -> Result<u32> {
        // A message entry joins its row in `messages` (events have no msg_id); a recalled
        // message has no body; a pruned one no row. The LIMIT stops the count at `cap`.
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM inbox i
                   JOIN messages m ON m.id = i.msg_id
                 WHERE i.user_id = $1 AND i.seq > $2 AND m.sender_id <> $1
                   AND m.body IS NOT NULL
                 LIMIT $3) x",
            )
            .await?;
        let n: i64 = client
            .query_one(
                &stmt,
                &[&(user as i64), &(after_seq as i64), &i64::from(cap)],
            )
            .await?
            .get(0);
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("unread count {n}")))
    }

    async fn push_queue_stats(&self, now_ms: i64) -> Result<(u64, u64, u64)> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT count(*),
                   count(*) FILTER (WHERE due_ms <= $1
                     AND (lease_owner IS NULL OR lease_until <= $1)),
                   count(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_until > $1)
                 FROM push_queue",
            )
            .await?;
        let r = client.query_one(&stmt, &[&now_ms]).await?;
        Ok((
            r.get::<_, i64>(0) as u64,
            r.get::<_, i64>(1) as u64,
            r.get::<_, i64>(2) as u64,
        ))
    }
}
