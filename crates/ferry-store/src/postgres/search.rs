//! PostgreSQL: the search feed ([`SearchStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};

use super::PgStore;
use crate::{FeedRow, IndexedMessage, Result, SearchStore, StoreError};

fn decode(r: &tokio_postgres::Row) -> Result<IndexedMessage> {
    let id: i64 = r.get(0);
    let body = match r.get::<_, Option<Vec<u8>>>(4) {
        Some(b) => Some(
            v1::Message::decode(&b[..])
                .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?,
        ),
        None => None,
    };
    Ok(IndexedMessage {
        msg_id: id as u64,
        sender_id: r.get::<_, i64>(1) as u64,
        time_ms: r.get(2),
        recipient_seq: r.get::<_, i64>(3) as u64,
        body,
    })
}

#[async_trait]
impl SearchStore for PgStore {
    async fn search_feed(&self, after: u64, limit: u32) -> Result<Vec<FeedRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, msg_id, at_ms FROM search_feed WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .await?;
        Ok(client
            .query(&stmt, &[&(after as i64), &i64::from(limit)])
            .await?
            .iter()
            .map(|r| FeedRow {
                id: r.get::<_, i64>(0) as u64,
                msg_id: r.get::<_, i64>(1) as u64,
                at_ms: r.get(2),
            })
            .collect())
    }

    async fn search_feed_bounds(&self) -> Result<(u64, u64)> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT MIN(id), MAX(id) FROM search_feed")
            .await?;
        let r = client.query_one(&stmt, &[]).await?;
        let lo: Option<i64> = r.get(0);
        let hi: Option<i64> = r.get(1);
        Ok((lo.unwrap_or(0) as u64, hi.unwrap_or(0) as u64))
    }

    async fn newest_message_id(&self) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT MAX(id) FROM messages")
            .await?;
        let hi: Option<i64> = client.query_one(&stmt, &[]).await?.get(0);
        Ok(hi.unwrap_or(0) as u64)
    }

    async fn messages_by_id(&self, ids: &[u64]) -> Result<Vec<IndexedMessage>> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, sender_id, created_ms, recipient_seq, body FROM messages
                 WHERE id = ANY($1) ORDER BY id",
            )
            .await?;
        client
            .query(&stmt, &[&ids])
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn messages_after(&self, after: u64, limit: u32) -> Result<Vec<IndexedMessage>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, sender_id, created_ms, recipient_seq, body FROM messages
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .await?;
        client
            .query(&stmt, &[&(after as i64), &i64::from(limit)])
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn prune_search_feed(&self, before_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            // Never the newest row, as in SQLite (the contract: `SearchStore`).
            .prepare_cached(
                "DELETE FROM search_feed WHERE at_ms < $1
                 AND id < (SELECT max(id) FROM search_feed)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&before_ms]).await?)
    }
}
