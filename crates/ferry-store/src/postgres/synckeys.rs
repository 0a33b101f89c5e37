//! Synckeys, written behind: what devices report (at login, resume, sync, and in
//! heartbeats) is kept in memory and written at most once per [`FLUSH_EVERY`] — one
//! statement for everything reported meanwhile — and when asked
//! ([`InboxStore::flush_synckeys`](crate::InboxStore::flush_synckeys)) or when the store
//! is dropped.
//!
//! Why that loses nothing a client relies on: a stored synckey is only a record of what a
//! device said it had received. Delivery never reads it — a device syncs from the
//! synckey *it* sends, and the server answers every entry after that — so a synckey
//! written late (or lost with a node that died within the second) changes no answer; at
//! worst the record is a second old. This store's `synckey` reads the buffer first, so
//! its own readers see what was reported at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::now_ms;
use crate::Result;

/// How often buffered synckeys are written.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Not for users deleted meanwhile (a link's last report, after a kick).
const UPSERT: &str = "INSERT INTO devices (user_id, device_id, synckey, updated_ms)
     SELECT t.* FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[]) AS t(u, d, k, m)
     WHERE EXISTS (SELECT 1 FROM users WHERE id = t.u)
     ON CONFLICT (user_id, device_id) DO UPDATE
     SET synckey = excluded.synckey, updated_ms = excluded.updated_ms";

type Pending = HashMap<(u64, String), (u64, i64)>;

struct Shared {
    pool: Pool,
    /// (user, device) → (synckey, reported at, unix ms), not yet written.
    pending: Mutex<Pending>,
    /// One flush at a time (so an older batch never overwrites a newer one).
    flushing: tokio::sync::Mutex<()>,
}

/// The buffer and its flusher task; dropping it flushes what is left, once.
pub(super) struct Synckeys {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Synckeys {
    pub(super) fn start(pool: Pool) -> Self {
        let shared = Arc::new(Shared {
            pool,
            pending: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        tokio::spawn(async move {
            // The first write a whole period after start: nothing is pending before.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = s.flush().await {
                            tracing::debug!(error = %e, "writing synckeys failed; kept for the next try");
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            if let Err(e) = s.flush().await {
                tracing::warn!(error = %e, "writing the last synckeys failed");
            }
        });
        Synckeys {
            shared,
            _stop: stop,
        }
    }

    pub(super) fn set(&self, user: u64, device: &str, synckey: u64) {
        self.shared
            .pending
            .lock()
            .insert((user, device.to_owned()), (synckey, now_ms()));
    }

    /// A synckey reported but not written yet.
    pub(super) fn get(&self, user: u64, device: &str) -> Option<u64> {
        self.shared
            .pending
            .lock()
            .get(&(user, device.to_owned()))
            .map(|(k, _)| *k)
    }

    pub(super) async fn flush(&self) -> Result<()> {
        self.shared.flush().await
    }

    /// Drops what a user's devices reported and holds further flushes until the guard
    /// is dropped (a user being deleted: no flush may write their rows back after).
    pub(super) async fn forget_user(&self, user: u64) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.shared.flushing.lock().await;
        self.shared.pending.lock().retain(|(u, _), _| *u != user);
        guard
    }
}

impl Shared {
    async fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let written = self.write(&taken).await;
        if written.is_err() {
            // Keep them for the next flush, unless a newer report came in meanwhile.
            let mut pending = self.pending.lock();
            for (k, v) in taken {
                pending.entry(k).or_insert(v);
            }
        }
        written
    }

    async fn write(&self, taken: &Pending) -> Result<()> {
        // Sorted, so two nodes writing overlapping rows take their locks in one order.
        let mut rows: Vec<_> = taken.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let users: Vec<i64> = rows.iter().map(|((u, _), _)| *u as i64).collect();
        let devices: Vec<&str> = rows.iter().map(|((_, d), _)| d.as_str()).collect();
        let keys: Vec<i64> = rows.iter().map(|(_, (k, _))| *k as i64).collect();
        let times: Vec<i64> = rows.iter().map(|(_, (_, t))| *t).collect();
        let client = self.pool.get().await.map_err(super::pool_err)?;
        let stmt = client.prepare_cached(UPSERT).await?;
        client
            .execute(&stmt, &[&users, &devices, &keys, &times])
            .await?;
        metrics::counter!("ferry_store_synckeys_written_total").increment(rows.len() as u64);
        Ok(())
    }
}
