//! SQLite: push targets, settings and the push queue ([`PushStore`]).
//!
//! Every write — queueing, claiming, finishing — runs inside the one writer thread, so
//! "concurrent claimers never get the same row" holds by construction: a claim reads the
//! due rows and leases them in the same job, and no other job runs in between.
//!
//! A claim also moves the row's `due_ms` to the lease's end: the due-time index alone then
//! finds every claimable row (a leased row is not due until its lease runs out), so a
//! claim never steps over rows that are in flight. The job hands back the due time the
//! row had before.

use async_trait::async_trait;
use rusqlite::{params, Transaction};

use super::inbox::newest_seq;
use super::{now_ms, SqliteStore};
use crate::{
    PushDone, PushEnqueue, PushJob, PushPrefRow, PushStore, PushTargetRow, Result, StoreError,
};

/// A target's columns, in [`row_target`]'s order.
const TARGET_COLS: &str = "t.user_id, t.device_id, t.provider, t.token, t.endpoint, t.p256dh,
     t.auth, t.app_id, t.sandbox, t.locale, t.preview, t.dnd_start_min, t.dnd_end_min,
     t.utc_offset_min, t.registered_ms, t.pushed_seq, t.quiet_until_ms";

/// A target from [`TARGET_COLS`] starting at column `at`.
fn row_target(r: &rusqlite::Row, at: usize) -> rusqlite::Result<PushTargetRow> {
    Ok(PushTargetRow {
        user_id: r.get::<_, i64>(at)? as u64,
        device_id: r.get(at + 1)?,
        provider: r.get(at + 2)?,
        token: r.get(at + 3)?,
        endpoint: r.get(at + 4)?,
        p256dh: r.get(at + 5)?,
        auth: r.get(at + 6)?,
        app_id: r.get(at + 7)?,
        sandbox: r.get(at + 8)?,
        locale: r.get(at + 9)?,
        // Out-of-range integers are refused by rusqlite (an error, not a wrap).
        preview: r.get(at + 10)?,
        dnd_start_min: r.get(at + 11)?,
        dnd_end_min: r.get(at + 12)?,
        utc_offset_min: r.get(at + 13)?,
        registered_ms: r.get(at + 14)?,
        pushed_seq: r.get::<_, i64>(at + 15)? as u64,
        quiet_until_ms: r.get(at + 16)?,
    })
}

/// Deletes the queue row of each (user, device) whose target was just deleted.
fn delete_queue_row(txn: &Transaction, user: u64, device: &str) -> Result<()> {
    txn.prepare_cached("DELETE FROM push_queue WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user as i64, device])?;
    Ok(())
}

/// Queues one entry (see [`PushStore::enqueue_pushes`]); 1 if the device has a target.
/// The target decides whether anything is written at all (the `SELECT … FROM
/// push_targets`): an entry for a device without one inserts no row.
const ENQUEUE: &str = "INSERT INTO push_queue (user_id, device_id, seq, count, summary, due_ms,
       created_ms, attempts, version, lease_owner, lease_until, late_created_ms)
     SELECT t.user_id, t.device_id, ?3, 1, ?4, max(?5, t.quiet_until_ms), ?6, 0, 1, NULL, 0, NULL
     FROM push_targets t WHERE t.user_id = ?1 AND t.device_id = ?2
     ON CONFLICT (user_id, device_id) DO UPDATE SET
       count = count + 1,
       version = version + 1,
       summary = CASE WHEN excluded.seq >= seq THEN excluded.summary ELSE summary END,
       seq = max(seq, excluded.seq),
       late_created_ms = CASE WHEN lease_owner IS NOT NULL
         THEN coalesce(late_created_ms, excluded.created_ms) ELSE late_created_ms END";

fn enqueue(txn: &Transaction, entries: &[PushEnqueue]) -> Result<u64> {
    let mut stmt = txn.prepare_cached(ENQUEUE)?;
    let mut queued = 0;
    for e in entries {
        queued += stmt.execute(params![
            e.user_id as i64,
            e.device_id,
            e.seq as i64,
            e.summary,
            e.due_ms,
            e.created_ms
        ])? as u64;
    }
    Ok(queued)
}

fn claim(
    txn: &Transaction,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<PushJob>> {
    let until = now_ms.saturating_add(lease_ms);
    // A row without its target (cannot happen here: a target's deletion takes its queue
    // row in the same job) would be skipped by the join and stay; the PostgreSQL store
    // deletes such rows when it meets them.
    let mut pick = txn.prepare_cached(&format!(
        "SELECT q.seq, q.count, q.summary, q.created_ms, q.due_ms, q.attempts, q.version,
           {TARGET_COLS}
         FROM push_queue q
         JOIN push_targets t ON t.user_id = q.user_id AND t.device_id = q.device_id
         WHERE q.due_ms <= ?1 AND (q.lease_owner IS NULL OR q.lease_until <= ?1)
         ORDER BY q.due_ms, q.user_id, q.device_id LIMIT ?2"
    ))?;
    let jobs = pick
        .query_map(params![now_ms, i64::from(limit)], |r| {
            Ok(PushJob {
                seq: r.get::<_, i64>(0)? as u64,
                count: r.get(1)?,
                summary: r.get(2)?,
                created_ms: r.get(3)?,
                due_ms: r.get(4)?,
                attempts: r.get(5)?,
                version: r.get::<_, i64>(6)? as u64,
                target: row_target(r, 7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut lease = txn.prepare_cached(
        "UPDATE push_queue SET lease_owner = ?3, lease_until = ?4, due_ms = ?4,
           late_created_ms = NULL
         WHERE user_id = ?1 AND device_id = ?2",
    )?;
    for j in &jobs {
        lease.execute(params![
            j.target.user_id as i64,
            j.target.device_id,
            owner,
            until
        ])?;
    }
    Ok(jobs)
}

fn finish(txn: &Transaction, owner: &str, now_ms: i64, done: &[PushDone]) -> Result<u64> {
    let mut applied = 0u64;
    for d in done {
        match d {
            PushDone::Done {
                user_id,
                device_id,
                version,
                seq,
                claimed_count,
                quiet_until_ms,
            } => {
                let (user, device) = (*user_id as i64, device_id.as_str());
                let deleted = txn
                    .prepare_cached(
                        "DELETE FROM push_queue
                         WHERE user_id = ?1 AND device_id = ?2 AND lease_owner = ?3
                           AND version = ?4",
                    )?
                    .execute(params![user, device, owner, *version as i64])?;
                // Queued into since the claim: keep what came after, sent later.
                let kept = if deleted == 0 {
                    txn.prepare_cached(
                        "UPDATE push_queue SET count = max(count - ?4, 1), lease_owner = NULL,
                           lease_until = 0, due_ms = max(?5, ?6),
                           created_ms = coalesce(late_created_ms, created_ms),
                           late_created_ms = NULL
                         WHERE user_id = ?1 AND device_id = ?2 AND lease_owner = ?3",
                    )?
                    .execute(params![
                        user,
                        device,
                        owner,
                        i64::from(*claimed_count),
                        *quiet_until_ms,
                        now_ms
                    ])?
                } else {
                    0
                };
                if deleted + kept == 0 {
                    continue; // no longer ours: left alone
                }
                txn.prepare_cached(
                    "UPDATE push_targets SET pushed_seq = max(pushed_seq, ?3),
                       quiet_until_ms = ?4
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .execute(params![user, device, *seq as i64, *quiet_until_ms])?;
                applied += 1;
            }
            PushDone::Retry {
                user_id,
                device_id,
                due_ms,
            } => {
                applied += txn
                    .prepare_cached(
                        "UPDATE push_queue SET attempts = attempts + 1, due_ms = ?4,
                           lease_owner = NULL, lease_until = 0, late_created_ms = NULL
                         WHERE user_id = ?1 AND device_id = ?2 AND lease_owner = ?3",
                    )?
                    .execute(params![*user_id as i64, device_id, owner, *due_ms])?
                    as u64;
            }
        }
    }
    Ok(applied)
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn put_push_target(&self, t: PushTargetRow) -> Result<PushTargetRow> {
        self.write(move |txn, state| {
            // A new registration pushes nothing older than what is in the inbox now (the
            // writer's own count when it has one: it includes this batch's entries).
            let newest = match state.seqs.get(&t.user_id) {
                Some(s) => *s,
                None => newest_seq(txn, t.user_id)?,
            };
            let (registered, pushed, quiet) = txn
                .prepare_cached(
                    "INSERT INTO push_targets (user_id, device_id, provider, token, endpoint,
                       p256dh, auth, app_id, sandbox, locale, preview, dnd_start_min,
                       dnd_end_min, utc_offset_min, registered_ms, pushed_seq, quiet_until_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                       ?16, 0)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET
                       provider = excluded.provider, token = excluded.token,
                       endpoint = excluded.endpoint, p256dh = excluded.p256dh,
                       auth = excluded.auth, app_id = excluded.app_id,
                       sandbox = excluded.sandbox, locale = excluded.locale,
                       preview = excluded.preview, dnd_start_min = excluded.dnd_start_min,
                       dnd_end_min = excluded.dnd_end_min,
                       utc_offset_min = excluded.utc_offset_min,
                       registered_ms = max(excluded.registered_ms, registered_ms + 1)
                     RETURNING registered_ms, pushed_seq, quiet_until_ms",
                )?
                .query_row(
                    params![
                        t.user_id as i64,
                        t.device_id,
                        t.provider,
                        t.token,
                        t.endpoint,
                        t.p256dh,
                        t.auth,
                        t.app_id,
                        t.sandbox,
                        t.locale,
                        t.preview,
                        t.dnd_start_min,
                        t.dnd_end_min,
                        t.utc_offset_min,
                        now_ms(),
                        newest as i64
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )?;
            Ok(PushTargetRow {
                registered_ms: registered,
                pushed_seq: pushed,
                quiet_until_ms: quiet,
                ..t
            })
        })
        .await
    }

    async fn delete_push_target(&self, user: u64, device: &str) -> Result<bool> {
        let device = device.to_owned();
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("DELETE FROM push_targets WHERE user_id = ?1 AND device_id = ?2")?
                .execute(params![user as i64, device])?;
            delete_queue_row(txn, user, &device)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_push_targets(&self, user: u64) -> Result<u64> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("DELETE FROM push_targets WHERE user_id = ?1")?
                .execute([user as i64])?;
            txn.prepare_cached("DELETE FROM push_queue WHERE user_id = ?1")?
                .execute([user as i64])?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_push_target_if(
        &self,
        user: u64,
        device: &str,
        registered_ms: i64,
    ) -> Result<bool> {
        let device = device.to_owned();
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached(
                    "DELETE FROM push_targets
                     WHERE user_id = ?1 AND device_id = ?2 AND registered_ms = ?3",
                )?
                .execute(params![user as i64, device, registered_ms])?;
            if n > 0 {
                delete_queue_row(txn, user, &device)?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn push_targets(&self, user: u64) -> Result<Vec<PushTargetRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TARGET_COLS} FROM push_targets t WHERE t.user_id = ?1
                 ORDER BY t.device_id"
            ))?
            .query_map([user as i64], |r| row_target(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn push_targets_since(
        &self,
        since_ms: i64,
        after: Option<(i64, u64, String)>,
        limit: u32,
    ) -> Result<Vec<PushTargetRow>> {
        self.read(move |c| {
            let rows = match after {
                None => c
                    .prepare_cached(&format!(
                        "SELECT {TARGET_COLS} FROM push_targets t WHERE t.registered_ms >= ?1
                         ORDER BY t.registered_ms, t.user_id, t.device_id LIMIT ?2"
                    ))?
                    .query_map(params![since_ms, i64::from(limit)], |r| row_target(r, 0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                Some((reg, user, device)) => c
                    .prepare_cached(&format!(
                        "SELECT {TARGET_COLS} FROM push_targets t WHERE t.registered_ms >= ?1
                           AND (t.registered_ms, t.user_id, t.device_id) > (?2, ?3, ?4)
                         ORDER BY t.registered_ms, t.user_id, t.device_id LIMIT ?5"
                    ))?
                    .query_map(
                        params![since_ms, reg, user as i64, device, i64::from(limit)],
                        |r| row_target(r, 0),
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(rows)
        })
        .await
    }

    async fn push_target_counts(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT provider, count(*) FROM push_targets GROUP BY provider ORDER BY provider",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_push_prefs(&self, user: u64, prefs: Vec<PushPrefRow>) -> Result<()> {
        self.write(move |txn, _| {
            let mut put = txn.prepare_cached(
                "INSERT INTO push_prefs (user_id, peer, group_id, mode, until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id, peer, group_id) DO UPDATE
                 SET mode = excluded.mode, until_ms = excluded.until_ms",
            )?;
            let mut remove = txn.prepare_cached(
                "DELETE FROM push_prefs WHERE user_id = ?1 AND peer = ?2 AND group_id = ?3",
            )?;
            for p in &prefs {
                let key = (user as i64, p.peer as i64, p.group_id as i64);
                if p.mode == 0 {
                    remove.execute(params![key.0, key.1, key.2])?;
                } else {
                    put.execute(params![key.0, key.1, key.2, p.mode, p.until_ms])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn push_prefs(&self, user: u64, now_ms: i64) -> Result<Vec<PushPrefRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT peer, group_id, mode, until_ms FROM push_prefs
                 WHERE user_id = ?1 AND (until_ms = 0 OR until_ms > ?2)
                 ORDER BY peer, group_id",
            )?
            .query_map(params![user as i64, now_ms], |r| {
                Ok(PushPrefRow {
                    user_id: user,
                    peer: r.get::<_, i64>(0)? as u64,
                    group_id: r.get::<_, i64>(1)? as u64,
                    mode: r.get(2)?,
                    until_ms: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// One writer job: the entries share the batch's transaction and commit with the
    /// messages they stand for, each one cached statement.
    async fn enqueue_pushes(&self, entries: Vec<PushEnqueue>) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        self.write(move |txn, _| enqueue(txn, &entries)).await
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
        let owner = owner.to_owned();
        self.write(move |txn, _| claim(txn, &owner, now_ms, lease_ms, limit))
            .await
    }

    async fn finish_pushes(&self, owner: &str, now_ms: i64, done: Vec<PushDone>) -> Result<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        let owner = owner.to_owned();
        self.write(move |txn, _| finish(txn, &owner, now_ms, &done))
            .await
    }

    async fn push_backlog(&self, limit: u32) -> Result<Vec<(PushTargetRow, u64, u64)>> {
        // The user's newest seq as `NEWEST_SEQ` reads it (the inbox's last row, or the
        // prune floor); synckeys are written synchronously here, so they are current.
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT * FROM (
                   SELECT {TARGET_COLS}, max(t.pushed_seq, coalesce(d.synckey, 0)) AS from_seq,
                     (SELECT {newest} FROM users u WHERE u.id = t.user_id) AS newest
                   FROM push_targets t
                   LEFT JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id
                   WHERE NOT EXISTS (SELECT 1 FROM push_queue q
                     WHERE q.user_id = t.user_id AND q.device_id = t.device_id))
                 WHERE newest > from_seq
                 ORDER BY user_id, device_id LIMIT ?1",
                newest = newest_seq_of_u!()
            ))?
            .query_map([i64::from(limit)], |r| {
                Ok((
                    row_target(r, 0)?,
                    r.get::<_, i64>(17)? as u64,
                    r.get::<_, i64>(18)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_pushed_seq(&self, user: u64, device: &str, seq: u64) -> Result<()> {
        let device = device.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached(
                "UPDATE push_targets SET pushed_seq = max(pushed_seq, ?3)
                 WHERE user_id = ?1 AND device_id = ?2",
            )?
            .execute(params![user as i64, device, seq as i64])?;
            Ok(())
        })
        .await
    }

    async fn unread_messages(&self, user: u64, after_seq: u64, cap: u32) -> Result<u32> {
        // A message entry joins its row in `messages` (events have no msg_id); a recalled
        // message has no body; a pruned one no row. The LIMIT stops the count at `cap`.
        self.read(move |c| {
            let n = c
                .prepare_cached(
                    "SELECT count(*) FROM (SELECT 1 FROM inbox i
                       JOIN messages m ON m.id = i.msg_id
                     WHERE i.user_id = ?1 AND i.seq > ?2 AND m.sender_id <> ?1
                       AND m.body IS NOT NULL
                     LIMIT ?3)",
                )?
                .query_row(
                    params![user as i64, after_seq as i64, i64::from(cap)],
                    |r| r.get::<_, i64>(0),
                )?;
            u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("unread count {n}")))
        })
        .await
    }

    async fn push_queue_stats(&self, now_ms: i64) -> Result<(u64, u64, u64)> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT count(*),
                   coalesce(sum(due_ms <= ?1 AND (lease_owner IS NULL OR lease_until <= ?1)), 0),
                   coalesce(sum(lease_owner IS NOT NULL AND lease_until > ?1), 0)
                 FROM push_queue",
            )?
            .query_row([now_ms], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?)
        })
        .await
    }
}
