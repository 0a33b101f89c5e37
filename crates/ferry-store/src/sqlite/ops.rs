//! SQLite: the operations of the admin API ([`OpsStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, Connection, OptionalExtension};

use super::groups::log_append;
use super::inbox::append_events;
use super::{now_ms, SqliteStore};
use crate::{
    Dissolved, GroupRow, GroupSummary, NewEvent, OpsStore, Result, StoreError, SystemMessage,
};

/// A group with its member count and dissolution time.
const SUMMARY: &str = "SELECT g.id, g.name, g.announcement, g.owner_id, g.share_history,
        g.last_gseq, g.created_ms, g.dissolved_ms,
        (SELECT count(*) FROM group_members m WHERE m.group_id = g.id)
     FROM groups g";

fn row_summary(r: &rusqlite::Row) -> rusqlite::Result<GroupSummary> {
    Ok(GroupSummary {
        group: GroupRow {
            id: r.get::<_, i64>(0)? as u64,
            name: r.get(1)?,
            announcement: r.get(2)?,
            owner_id: r.get::<_, i64>(3)? as u64,
            share_history: r.get::<_, i64>(4)? != 0,
            latest_gseq: r.get::<_, i64>(5)? as u64,
            created_ms: r.get(6)?,
        },
        dissolved_ms: r.get(7)?,
        members: r.get::<_, i64>(8)? as u64,
    })
}

#[async_trait]
impl OpsStore for SqliteStore {
    async fn list_groups(&self, q: &str, after: u64, limit: u32) -> Result<Vec<GroupSummary>> {
        let q = q.to_ascii_lowercase();
        self.read(move |c: &Connection| {
            Ok(c.prepare_cached(&format!(
                "{SUMMARY} WHERE g.id > ?1 AND (?2 = '' OR instr(lower(g.name), ?2) > 0)
                 ORDER BY g.id LIMIT ?3"
            ))?
            .query_map(params![after as i64, q, i64::from(limit)], row_summary)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn group_summary(&self, group_id: u64) -> Result<Option<GroupSummary>> {
        self.read(move |c: &Connection| {
            Ok(c.prepare_cached(&format!("{SUMMARY} WHERE g.id = ?1"))?
                .query_row([group_id as i64], row_summary)
                .optional()?)
        })
        .await
    }

    async fn dissolve_group(
        &self,
        group_id: u64,
        event: v1::GroupEntry,
        entry: v1::Entry,
    ) -> Result<Dissolved> {
        self.write(move |txn, state| {
            let id = group_id as i64;
            let dissolved: Option<i64> = txn
                .prepare_cached("SELECT dissolved_ms FROM groups WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            if dissolved.is_none_or(|d| d != 0) {
                return Err(StoreError::NotFound);
            }
            let gseq = log_append(txn, group_id, None, Some(&event), event.time_ms)?;
            let members: Vec<u64> = txn
                .prepare_cached(
                    "SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY user_id",
                )?
                .query_map([id], |r| r.get::<_, i64>(0))?
                .map(|r| r.map(|u| u as u64))
                .collect::<rusqlite::Result<_>>()?;
            txn.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?
                .execute([id])?;
            txn.prepare_cached("UPDATE groups SET dissolved_ms = ?2 WHERE id = ?1")?
                .execute(params![id, event.time_ms.max(1)])?;
            let events: Vec<NewEvent> = members
                .iter()
                .map(|&user_id| NewEvent {
                    user_id,
                    entry: entry.clone(),
                })
                .collect();
            let seqs = append_events(txn, state, &events)?;
            Ok(Dissolved {
                gseq,
                members: members.into_iter().zip(seqs).collect(),
            })
        })
        .await
    }

    async fn users_after(&self, after: u64, limit: u32) -> Result<Vec<(u64, String)>> {
        self.read(move |c: &Connection| {
            Ok(
                c.prepare_cached("SELECT id, name FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")?
                    .query_map(params![after as i64, i64::from(limit)], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            )
        })
        .await
    }

    async fn append_system_messages(
        &self,
        msgs: Vec<SystemMessage>,
        time_ms: i64,
    ) -> Result<Vec<Option<(u64, u64)>>> {
        self.write(move |txn, state| {
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                let known = state.seqs.contains_key(&m.user_id)
                    || txn
                        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
                        .exists([m.user_id as i64])?;
                if !known {
                    out.push(None);
                    continue;
                }
                let msg_id = state.next_msg_id(txn)?;
                let seq = state.next_seq(txn, m.user_id)?;
                let mut body = m.message;
                body.msg_id = msg_id;
                body.time_ms = time_ms;
                // No sender: the sender id is 0 and the client id the message id (unique).
                txn.prepare_cached(
                    "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                     VALUES (?1, 0, ?1, 0, ?2, ?3, ?4)",
                )?
                .execute(params![msg_id as i64, seq as i64, time_ms, body.encode_to_vec()])?;
                state.stored(txn, 0, msg_id, msg_id)?;
                txn.prepare_cached(super::inbox::MESSAGE_ENTRY)?
                    .execute(params![m.user_id as i64, seq as i64, msg_id as i64])?;
                out.push(Some((msg_id, seq)));
            }
            Ok(out)
        })
        .await
    }

    async fn limit_override(&self, user_id: u64) -> Result<Option<String>> {
        self.read(move |c: &Connection| {
            Ok(
                c.prepare_cached("SELECT limits FROM limit_overrides WHERE user_id = ?1")?
                    .query_row([user_id as i64], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn limit_overrides(&self) -> Result<Vec<(u64, String)>> {
        self.read(move |c: &Connection| {
            Ok(
                c.prepare_cached("SELECT user_id, limits FROM limit_overrides ORDER BY user_id")?
                    .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            )
        })
        .await
    }

    async fn set_limit_override(&self, user_id: u64, limits: &str) -> Result<()> {
        let limits = limits.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO limit_overrides (user_id, limits, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits,
                   updated_ms = excluded.updated_ms",
            )?
            .execute(params![user_id as i64, limits, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn delete_limit_override(&self, user_id: u64) -> Result<bool> {
        self.write(move |txn, _| {
            Ok(txn
                .prepare_cached("DELETE FROM limit_overrides WHERE user_id = ?1")?
                .execute([user_id as i64])?
                > 0)
        })
        .await
    }
}
