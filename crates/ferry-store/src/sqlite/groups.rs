//! SQLite: groups, their members, their logs and read marks ([`GroupStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::inbox::append_events;
use super::SqliteStore;
use crate::{
    Appended, GroupChange, GroupRow, GroupStore, MemberRow, NewEvent, NewMessage, Result,
    StoreError,
};

const GROUP_COLS: &str = "id, name, announcement, owner_id, share_history, last_gseq, created_ms";

fn row_group(r: &rusqlite::Row) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        announcement: r.get(2)?,
        owner_id: r.get::<_, i64>(3)? as u64,
        share_history: r.get::<_, i64>(4)? != 0,
        latest_gseq: r.get::<_, i64>(5)? as u64,
        created_ms: r.get(6)?,
    })
}

fn row_member(r: &rusqlite::Row, at: usize) -> rusqlite::Result<MemberRow> {
    Ok(MemberRow {
        group_id: r.get::<_, i64>(at)? as u64,
        user_id: r.get::<_, i64>(at + 1)? as u64,
        role: r.get(at + 2)?,
        joined_gseq: r.get::<_, i64>(at + 3)? as u64,
        read_gseq: r.get::<_, i64>(at + 4)? as u64,
    })
}

const MEMBER_COLS: &str = "group_id, user_id, role, joined_gseq, read_gseq";

/// Appends one entry to a group's log; returns its gseq.
pub(super) fn log_append(
    txn: &Transaction,
    group: u64,
    msg_id: Option<u64>,
    entry: Option<&v1::GroupEntry>,
    time_ms: i64,
) -> Result<u64> {
    let gseq: i64 = txn
        .prepare_cached(
            "UPDATE groups SET last_gseq = last_gseq + 1 WHERE id = ?1 RETURNING last_gseq",
        )?
        .query_row([group as i64], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    let payload = entry.map(|e| {
        let mut e = e.clone();
        e.gseq = 0;
        e.time_ms = 0;
        e.encode_to_vec()
    });
    txn.prepare_cached(
        "INSERT INTO group_log (group_id, gseq, msg_id, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![group as i64, gseq, msg_id.map(|m| m as i64), payload, time_ms])?;
    Ok(gseq as u64)
}

fn add_member(txn: &Transaction, group: u64, user: u64, role: i32, joined: u64) -> Result<()> {
    txn.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, role, joined_gseq, read_gseq) VALUES (?1, ?2, ?3, ?4, 0)
         ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
    )?
    .execute(params![group as i64, user as i64, role, joined as i64])?;
    Ok(())
}

/// A group (read on its own, or by a write that needs it first).
fn group(c: &Connection, id: u64) -> Result<Option<GroupRow>> {
    Ok(
        c.prepare_cached(&format!("SELECT {GROUP_COLS} FROM groups WHERE id = ?1"))?
            .query_row([id as i64], row_group)
            .optional()?,
    )
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(
        &self,
        g: GroupRow,
        members: Vec<(u64, i32)>,
        event: v1::GroupEntry,
        inbox: Vec<NewEvent>,
    ) -> Result<()> {
        self.write(move |txn, state| {
            txn.prepare_cached(
                "INSERT INTO groups (id, name, announcement, owner_id, share_history, last_gseq, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            )?
            .execute(params![
                g.id as i64,
                g.name,
                g.announcement,
                g.owner_id as i64,
                i64::from(g.share_history),
                g.created_ms
            ])?;
            for (user, role) in &members {
                add_member(txn, g.id, *user, *role, 1)?;
            }
            log_append(txn, g.id, None, Some(&event), event.time_ms)?;
            append_events(txn, state, &inbox)?;
            Ok(())
        })
        .await
    }

    async fn group(&self, id: u64) -> Result<Option<GroupRow>> {
        self.read(move |c| group(c, id)).await
    }

    async fn group_members(&self, id: u64) -> Result<Vec<MemberRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {MEMBER_COLS} FROM group_members WHERE group_id = ?1 ORDER BY role DESC, user_id"
            ))?
            .query_map([id as i64], |r| row_member(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn group_member(&self, id: u64, user: u64) -> Result<Option<MemberRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {MEMBER_COLS} FROM group_members WHERE group_id = ?1 AND user_id = ?2"
            ))?
            .query_row(params![id as i64, user as i64], |r| row_member(r, 0))
            .optional()?)
        })
        .await
    }

    async fn user_groups(&self, user: u64) -> Result<Vec<(GroupRow, MemberRow)>> {
        self.read(move |c| {
            Ok(c
                .prepare_cached(
                    "SELECT g.id, g.name, g.announcement, g.owner_id, g.share_history, g.last_gseq, g.created_ms,
                            m.group_id, m.user_id, m.role, m.joined_gseq, m.read_gseq
                     FROM group_members m JOIN groups g ON g.id = m.group_id
                     WHERE m.user_id = ?1 ORDER BY g.id",
                )?
                .query_map([user as i64], |r| Ok((row_group(r)?, row_member(r, 7)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn past_group_spans(&self, user: u64) -> Result<Vec<(u64, u64, u64)>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT group_id, from_gseq, to_gseq FROM group_spans
                     WHERE user_id = ?1 ORDER BY group_id, from_gseq",
            )?
            .query_map([user as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn change_group(&self, ch: GroupChange) -> Result<u64> {
        self.write(move |txn, state| {
            let g = group(txn, ch.group_id)?.ok_or(StoreError::NotFound)?;
            let gseq = log_append(txn, ch.group_id, None, Some(&ch.event), ch.event.time_ms)?;
            for user in &ch.remove {
                txn.prepare_cached(
                    "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                )?
                .execute(params![ch.group_id as i64, *user as i64])?;
            }
            let joined = if g.share_history { 1 } else { gseq };
            for (user, role) in &ch.add {
                add_member(txn, ch.group_id, *user, *role, joined)?;
            }
            for (user, role) in &ch.roles {
                txn.prepare_cached(
                    "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
                )?
                .execute(params![ch.group_id as i64, *user as i64, *role])?;
            }
            if let Some(name) = &ch.name {
                txn.prepare_cached("UPDATE groups SET name = ?2 WHERE id = ?1")?
                    .execute(params![ch.group_id as i64, name])?;
            }
            if let Some(text) = &ch.announcement {
                txn.prepare_cached("UPDATE groups SET announcement = ?2 WHERE id = ?1")?
                    .execute(params![ch.group_id as i64, text])?;
            }
            append_events(txn, state, &ch.inbox)?;
            Ok(gseq)
        })
        .await
    }

    async fn append_group_message(&self, group_id: u64, msg: NewMessage) -> Result<Appended> {
        self.write(move |txn, state| {
            let sender = msg.sender_id as i64;
            let cmid = msg.client_msg_id as i64;
            // A group message's row holds sender_seq 0 and its gseq as recipient_seq.
            let existing = state.stored_message(txn, msg.sender_id, msg.client_msg_id)?;
            if let Some(dup) = existing {
                return Ok(dup);
            }
            if group(txn, group_id)?.is_none() {
                return Err(StoreError::NotFound);
            }
            let msg_id = state.next_msg_id(txn)?;
            let gseq = log_append(txn, group_id, Some(msg_id), None, msg.time_ms)?;
            let mut body = msg.message;
            body.msg_id = msg_id;
            body.time_ms = msg.time_ms;
            body.group_id = group_id;
            txn.prepare_cached(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
            )?
            .execute(params![msg_id as i64, sender, cmid, gseq as i64, msg.time_ms, body.encode_to_vec()])?;
            state.stored(txn, msg.sender_id, msg.client_msg_id, msg_id)?;
            Ok(Appended {
                msg_id,
                sender_seq: 0,
                recipient_seq: gseq,
                time_ms: msg.time_ms,
                duplicate: false,
            })
        })
        .await
    }

    async fn group_log(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)> {
        self.read(move |c| {
            let txn = c.unchecked_transaction()?;
            let latest = group(&txn, group_id)?
                .ok_or(StoreError::NotFound)?
                .latest_gseq;
            let mut stmt = txn.prepare_cached(
                "SELECT l.gseq, m.body, l.payload, l.created_ms, l.msg_id FROM group_log l
                 LEFT JOIN messages m ON m.id = l.msg_id
                 WHERE l.group_id = ?1 AND l.gseq > ?2 ORDER BY l.gseq LIMIT ?3",
            )?;
            let mut rows =
                stmt.query(params![group_id as i64, after as i64, i64::from(limit) + 1])?;
            let mut out = Vec::new();
            let mut more = false;
            while let Some(r) = rows.next()? {
                if out.len() == limit as usize {
                    more = true;
                    break;
                }
                let gseq = r.get::<_, i64>(0)? as u64;
                let body: Option<Vec<u8>> = r.get(1)?;
                let payload: Option<Vec<u8>> = r.get(2)?;
                let corrupt = |e: prost::DecodeError| {
                    StoreError::Corrupt(format!("group {group_id} entry {gseq}: {e}"))
                };
                let mut entry = match (body, payload) {
                    (Some(b), _) => v1::GroupEntry {
                        kind: Some(v1::group_entry::Kind::Message(
                            v1::Message::decode(&b[..]).map_err(corrupt)?,
                        )),
                        ..Default::default()
                    },
                    (None, Some(p)) => v1::GroupEntry::decode(&p[..]).map_err(corrupt)?,
                    // A recalled message keeps its place, without content.
                    (None, None) => v1::GroupEntry::default(),
                };
                entry.gseq = gseq;
                entry.time_ms = r.get(3)?;
                out.push(entry);
            }
            Ok((out, latest, more))
        })
        .await
    }

    async fn set_group_read(&self, group_id: u64, user_id: u64, gseq: u64) -> Result<()> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "UPDATE group_members SET read_gseq = max(read_gseq, ?3) WHERE group_id = ?1 AND user_id = ?2",
            )?
            .execute(params![group_id as i64, user_id as i64, gseq as i64])?;
            Ok(())
        })
        .await
    }
}
