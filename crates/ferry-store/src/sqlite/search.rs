//! SQLite: the search feed ([`SearchStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::{FeedRow, IndexedMessage, Result, SearchStore, StoreError};

/// A `messages` row as read: id, sender, time, recipient seq, body.
type Row = (i64, i64, i64, i64, Option<Vec<u8>>);

fn indexed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn decode(row: Row) -> Result<IndexedMessage> {
    let (id, sender, time, seq, body) = row;
    let body = match body {
        Some(b) => Some(
            v1::Message::decode(&b[..])
                .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?,
        ),
        None => None,
    };
    Ok(IndexedMessage {
        msg_id: id as u64,
        sender_id: sender as u64,
        time_ms: time,
        recipient_seq: seq as u64,
        body,
    })
}

#[async_trait]
impl SearchStore for SqliteStore {
    async fn search_feed(&self, after: u64, limit: u32) -> Result<Vec<FeedRow>> {
        self.read(move |c: &Connection| {
            Ok(c.prepare_cached(
                "SELECT id, msg_id, at_ms FROM search_feed WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after as i64, i64::from(limit)], |r| {
                Ok(FeedRow {
                    id: r.get::<_, i64>(0)? as u64,
                    msg_id: r.get::<_, i64>(1)? as u64,
                    at_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn search_feed_bounds(&self) -> Result<(u64, u64)> {
        self.read(move |c: &Connection| {
            let (lo, hi): (Option<i64>, Option<i64>) = c
                .prepare_cached("SELECT MIN(id), MAX(id) FROM search_feed")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((lo.unwrap_or(0) as u64, hi.unwrap_or(0) as u64))
        })
        .await
    }

    /// The writer hands out message ids in commit order (one thread, one transaction at
    /// a time; a batch that fails gives its ids back), so new messages are followed by id
    /// and storing one writes no feed row.
    fn feed_names_inserts(&self) -> bool {
        false
    }

    async fn newest_message_id(&self) -> Result<u64> {
        self.read(move |c: &Connection| {
            let hi: Option<i64> = c
                .prepare_cached("SELECT max(id) FROM messages")?
                .query_row([], |r| r.get(0))?;
            Ok(hi.unwrap_or(0) as u64)
        })
        .await
    }

    async fn messages_by_id(&self, ids: &[u64]) -> Result<Vec<IndexedMessage>> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.read(move |c: &Connection| {
            let mut stmt = c.prepare_cached(
                "SELECT id, sender_id, created_ms, recipient_seq, body FROM messages WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let mut rows = stmt.query([id as i64])?;
                if let Some(r) = rows.next()? {
                    out.push(decode(indexed(r)?)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn messages_after(&self, after: u64, limit: u32) -> Result<Vec<IndexedMessage>> {
        self.read(move |c: &Connection| {
            let rows = c
                .prepare_cached(
                    "SELECT id, sender_id, created_ms, recipient_seq, body FROM messages
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![after as i64, i64::from(limit)], indexed)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(decode).collect()
        })
        .await
    }

    async fn prune_search_feed(&self, before_ms: i64) -> Result<u64> {
        self.write(move |txn, _| {
            Ok(txn
                // In id order, up to the first row at or after the time (the feed is in
                // time order but for milliseconds: a row's time is its message's send
                // time or the time of the change); never the newest row, which holds
                // the feed's position (its ids are rowids: max + 1). No index on the
                // time: this walks only the rows it deletes.
                .prepare_cached(
                    "DELETE FROM search_feed WHERE id < (SELECT coalesce(
                        (SELECT id FROM search_feed WHERE at_ms >= ?1 ORDER BY id LIMIT 1),
                        (SELECT max(id) FROM search_feed)))",
                )?
                .execute([before_ms])? as u64)
        })
        .await
    }
}
