//! PostgreSQL: the operations of the admin API ([`OpsStore`]) — the same semantics as
//! `sqlite/ops.rs`. Locks are taken in the order group → users, as everywhere else.

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};

use super::groups::log_append;
use super::inbox::{append_events, lock_users};
use super::{now_ms, PgStore};
use crate::{
    Dissolved, GroupRow, GroupSummary, NewEvent, OpsStore, Result, StoreError, SystemMessage,
};

/// A group with its member count and dissolution time.
const SUMMARY: &str = "SELECT g.id, g.name, g.announcement, g.owner_id, g.share_history,
        g.last_gseq, g.created_ms, g.dissolved_ms,
        (SELECT count(*) FROM group_members m WHERE m.group_id = g.id)
     FROM groups g";

fn row_summary(r: &tokio_postgres::Row) -> GroupSummary {
    GroupSummary {
        group: GroupRow {
            id: r.get::<_, i64>(0) as u64,
            name: r.get(1),
            announcement: r.get(2),
            owner_id: r.get::<_, i64>(3) as u64,
            share_history: r.get(4),
            latest_gseq: r.get::<_, i64>(5) as u64,
            created_ms: r.get(6),
        },
        dissolved_ms: r.get(7),
        members: r.get::<_, i64>(8) as u64,
    }
}

#[async_trait]
impl OpsStore for PgStore {
    async fn list_groups(&self, q: &str, after: u64, limit: u32) -> Result<Vec<GroupSummary>> {
        let q = q.to_ascii_lowercase();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{SUMMARY} WHERE g.id > $1 AND ($2 = '' OR strpos(lower(g.name), $2) > 0)
                 ORDER BY g.id LIMIT $3"
            ))
            .await?;
        Ok(client
            .query(&stmt, &[&(after as i64), &q, &i64::from(limit)])
            .await?
            .iter()
            .map(row_summary)
            .collect())
    }

    async fn group_summary(&self, group_id: u64) -> Result<Option<GroupSummary>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{SUMMARY} WHERE g.id = $1"))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(group_id as i64)])
            .await?
            .map(|r| row_summary(&r)))
    }

    async fn dissolve_group(
        &self,
        group_id: u64,
        event: v1::GroupEntry,
        entry: v1::Entry,
    ) -> Result<Dissolved> {
        let id = group_id as i64;
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let dissolved: Option<i64> = txn
            .query_opt(
                "SELECT dissolved_ms FROM groups WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .map(|r| r.get(0));
        if dissolved.is_none_or(|d| d != 0) {
            return Err(StoreError::NotFound);
        }
        let gseq = log_append(&txn, group_id, None, Some(&event), event.time_ms).await?;
        let mut members: Vec<u64> = txn
            .query(
                "DELETE FROM group_members WHERE group_id = $1 RETURNING user_id",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        members.sort_unstable();
        txn.execute(
            "UPDATE groups SET dissolved_ms = $2 WHERE id = $1",
            &[&id, &event.time_ms.max(1)],
        )
        .await?;
        let events: Vec<NewEvent> = members
            .iter()
            .map(|&user_id| NewEvent {
                user_id,
                entry: entry.clone(),
            })
            .collect();
        lock_users(&txn, &members).await?;
        let seqs = append_events(&txn, &events).await?;
        txn.commit().await?;
        Ok(Dissolved {
            gseq,
            members: members.into_iter().zip(seqs).collect(),
        })
    }

    async fn users_after(&self, after: u64, limit: u32) -> Result<Vec<(u64, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, name FROM users WHERE id > $1 ORDER BY id LIMIT $2")
            .await?;
        Ok(client
            .query(&stmt, &[&(after as i64), &i64::from(limit)])
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    async fn append_system_messages(
        &self,
        msgs: Vec<SystemMessage>,
        time_ms: i64,
    ) -> Result<Vec<Option<(u64, u64)>>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        // Lock the users that exist (ascending id order); the others are skipped.
        let mut want: Vec<i64> = msgs.iter().map(|m| m.user_id as i64).collect();
        want.sort_unstable();
        want.dedup();
        let found: std::collections::HashSet<u64> = txn
            .query(
                "SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&want],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        let seq_stmt = txn
            .prepare_cached(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            )
            .await?;
        let msg_stmt = txn
            .prepare_cached(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 SELECT n.id, 0, n.id, 0, $1, $2, $3
                 FROM (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id) n
                 RETURNING id",
            )
            .await?;
        let inbox_stmt = txn
            .prepare_cached(
                "INSERT INTO inbox (user_id, seq, msg_id, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            if !found.contains(&m.user_id) {
                out.push(None);
                continue;
            }
            let user = m.user_id as i64;
            let seq: i64 = txn.query_one(&seq_stmt, &[&user]).await?.get(0);
            // Stored without its id, as every message here: reads fill it in from the row.
            let mut body = m.message;
            body.msg_id = 0;
            body.time_ms = time_ms;
            let msg_id: i64 = txn
                .query_one(&msg_stmt, &[&seq, &time_ms, &body.encode_to_vec()])
                .await?
                .get(0);
            txn.execute(&inbox_stmt, &[&user, &seq, &msg_id, &time_ms])
                .await?;
            out.push(Some((msg_id as u64, seq as u64)));
        }
        txn.commit().await?;
        Ok(out)
    }

    async fn limit_override(&self, user_id: u64) -> Result<Option<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT limits FROM limit_overrides WHERE user_id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64)])
            .await?
            .map(|r| r.get(0)))
    }

    async fn limit_overrides(&self) -> Result<Vec<(u64, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT user_id, limits FROM limit_overrides ORDER BY user_id")
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    async fn set_limit_override(&self, user_id: u64, limits: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO limit_overrides (user_id, limits, updated_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits,
                   updated_ms = excluded.updated_ms",
                &[&(user_id as i64), &limits, &now_ms()],
            )
            .await?;
        Ok(())
    }

    async fn delete_limit_override(&self, user_id: u64) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM limit_overrides WHERE user_id = $1",
                &[&(user_id as i64)],
            )
            .await?
            > 0)
    }
}
