//! PostgreSQL: groups, their members, their logs and read marks ([`GroupStore`]) — the
//! same semantics as `sqlite/groups.rs`.
//!
//! A group's log is numbered by `groups.last_gseq`, bumped with `UPDATE … RETURNING` in
//! the transaction that writes the entry: gapless under any number of logic nodes.
//! Locks are always taken in the order message → group → users, so no two writers can
//! wait on each other in a cycle.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use ferry_proto::{v1, ProtoMessage};

use super::inbox::{decode_message, lock_and_append_events};
use super::{is_retryable, PgStore, WRITE_ATTEMPTS};
use crate::{
    Appended, GroupChange, GroupRow, GroupStore, MemberRow, NewEvent, NewMessage, Result,
    StoreError,
};

const GROUP_COLS: &str = "id, name, announcement, owner_id, share_history, last_gseq, created_ms";
const MEMBER_COLS: &str = "group_id, user_id, role, joined_gseq, read_gseq";

fn row_group(r: &tokio_postgres::Row) -> GroupRow {
    GroupRow {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        announcement: r.get(2),
        owner_id: r.get::<_, i64>(3) as u64,
        share_history: r.get(4),
        latest_gseq: r.get::<_, i64>(5) as u64,
        created_ms: r.get(6),
    }
}

fn row_member(r: &tokio_postgres::Row, at: usize) -> MemberRow {
    MemberRow {
        group_id: r.get::<_, i64>(at) as u64,
        user_id: r.get::<_, i64>(at + 1) as u64,
        role: r.get(at + 2),
        joined_gseq: r.get::<_, i64>(at + 3) as u64,
        read_gseq: r.get::<_, i64>(at + 4) as u64,
    }
}

/// Appends one entry to a group's log (locking the group's row); returns its gseq.
pub(super) async fn log_append(
    txn: &Transaction<'_>,
    group: u64,
    msg_id: Option<u64>,
    entry: Option<&v1::GroupEntry>,
    time_ms: i64,
) -> Result<u64> {
    let bump = txn
        .prepare_cached(
            "UPDATE groups SET last_gseq = last_gseq + 1 WHERE id = $1 RETURNING last_gseq",
        )
        .await?;
    let gseq: i64 = txn
        .query_opt(&bump, &[&(group as i64)])
        .await?
        .ok_or(StoreError::NotFound)?
        .get(0);
    let payload = entry.map(|e| {
        let mut e = e.clone();
        e.gseq = 0;
        e.time_ms = 0;
        e.encode_to_vec()
    });
    let insert = txn
        .prepare_cached(
            "INSERT INTO group_log (group_id, gseq, msg_id, payload, created_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    txn.execute(
        &insert,
        &[
            &(group as i64),
            &gseq,
            &msg_id.map(|m| m as i64),
            &payload,
            &time_ms,
        ],
    )
    .await?;
    Ok(gseq as u64)
}

async fn add_member(
    txn: &Transaction<'_>,
    group: u64,
    user: u64,
    role: i32,
    joined: u64,
) -> Result<()> {
    let stmt = txn
        .prepare_cached(
            "INSERT INTO group_members (group_id, user_id, role, joined_gseq, read_gseq)
             VALUES ($1, $2, $3, $4, 0)
             ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .await?;
    txn.execute(
        &stmt,
        &[&(group as i64), &(user as i64), &role, &(joined as i64)],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl GroupStore for PgStore {
    async fn create_group(
        &self,
        g: GroupRow,
        members: Vec<(u64, i32)>,
        event: v1::GroupEntry,
        inbox: Vec<NewEvent>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        txn.execute(
            "INSERT INTO groups (id, name, announcement, owner_id, share_history, last_gseq, created_ms)
             VALUES ($1, $2, $3, $4, $5, 0, $6)",
            &[
                &(g.id as i64),
                &g.name,
                &g.announcement,
                &(g.owner_id as i64),
                &g.share_history,
                &g.created_ms,
            ],
        )
        .await?;
        for (user, role) in &members {
            add_member(&txn, g.id, *user, *role, 1).await?;
        }
        log_append(&txn, g.id, None, Some(&event), event.time_ms).await?;
        lock_and_append_events(&txn, &inbox).await?;
        txn.commit().await?;
        Ok(())
    }

    async fn group(&self, id: u64) -> Result<Option<GroupRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {GROUP_COLS} FROM groups WHERE id = $1"))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64)])
            .await?
            .map(|r| row_group(&r)))
    }

    async fn group_members(&self, id: u64) -> Result<Vec<MemberRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MEMBER_COLS} FROM group_members WHERE group_id = $1 ORDER BY role DESC, user_id"
            ))
            .await?;
        Ok(client
            .query(&stmt, &[&(id as i64)])
            .await?
            .iter()
            .map(|r| row_member(r, 0))
            .collect())
    }

    async fn group_member(&self, id: u64, user: u64) -> Result<Option<MemberRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MEMBER_COLS} FROM group_members WHERE group_id = $1 AND user_id = $2"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64), &(user as i64)])
            .await?
            .map(|r| row_member(&r, 0)))
    }

    async fn user_groups(&self, user: u64) -> Result<Vec<(GroupRow, MemberRow)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT g.id, g.name, g.announcement, g.owner_id, g.share_history, g.last_gseq,
                        g.created_ms, m.group_id, m.user_id, m.role, m.joined_gseq, m.read_gseq
                 FROM group_members m JOIN groups g ON g.id = m.group_id
                 WHERE m.user_id = $1 ORDER BY g.id",
            )
            .await?;
        Ok(client
            .query(&stmt, &[&(user as i64)])
            .await?
            .iter()
            .map(|r| (row_group(r), row_member(r, 7)))
            .collect())
    }

    async fn past_group_spans(&self, user: u64) -> Result<Vec<(u64, u64, u64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT group_id, from_gseq, to_gseq FROM group_spans
                 WHERE user_id = $1 ORDER BY group_id, from_gseq",
            )
            .await?;
        Ok(client
            .query(&stmt, &[&(user as i64)])
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, i64>(1) as u64,
                    r.get::<_, i64>(2) as u64,
                )
            })
            .collect())
    }

    async fn change_group(&self, ch: GroupChange) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        // The log append locks the group's row: changes of one group are serialised,
        // and `share_history` is read under that lock.
        let gseq = log_append(&txn, ch.group_id, None, Some(&ch.event), ch.event.time_ms).await?;
        let share_history: bool = txn
            .query_one(
                "SELECT share_history FROM groups WHERE id = $1",
                &[&(ch.group_id as i64)],
            )
            .await?
            .get(0);
        let gid = ch.group_id as i64;
        for user in &ch.remove {
            txn.execute(
                "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                &[&gid, &(*user as i64)],
            )
            .await?;
        }
        let joined = if share_history { 1 } else { gseq };
        for (user, role) in &ch.add {
            add_member(&txn, ch.group_id, *user, *role, joined).await?;
        }
        for (user, role) in &ch.roles {
            txn.execute(
                "UPDATE group_members SET role = $3 WHERE group_id = $1 AND user_id = $2",
                &[&gid, &(*user as i64), role],
            )
            .await?;
        }
        if let Some(name) = &ch.name {
            txn.execute("UPDATE groups SET name = $2 WHERE id = $1", &[&gid, name])
                .await?;
        }
        if let Some(text) = &ch.announcement {
            txn.execute(
                "UPDATE groups SET announcement = $2 WHERE id = $1",
                &[&gid, text],
            )
            .await?;
        }
        lock_and_append_events(&txn, &ch.inbox).await?;
        txn.commit().await?;
        Ok(gseq)
    }

    async fn append_group_message(&self, group: u64, msg: NewMessage) -> Result<Appended> {
        let sender = msg.sender_id as i64;
        let cmid = msg.client_msg_id as i64;
        let mut body = msg.message.clone();
        body.msg_id = 0;
        body.time_ms = msg.time_ms;
        body.group_id = group;
        let body = body.encode_to_vec();
        let mut client = self.client().await?;
        let mut last_err = None;
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(mut dup) = PgStore::existing(&client, sender, cmid).await? {
                dup.sender_seq = 0;
                return Ok(dup);
            }
            let txn = client.transaction().await?;
            let attempt: Result<Appended> = async {
                let gseq = log_append(&txn, group, None, None, msg.time_ms).await?;
                let msg_id: i64 = txn
                    .query_one(
                        "INSERT INTO messages (sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                         VALUES ($1, $2, 0, $3, $4, $5) RETURNING id",
                        &[&sender, &cmid, &(gseq as i64), &msg.time_ms, &body],
                    )
                    .await?
                    .get(0);
                txn.execute(
                    "UPDATE group_log SET msg_id = $3 WHERE group_id = $1 AND gseq = $2",
                    &[&(group as i64), &(gseq as i64), &msg_id],
                )
                .await?;
                Ok(Appended {
                    msg_id: msg_id as u64,
                    sender_seq: 0,
                    recipient_seq: gseq,
                    time_ms: msg.time_ms,
                    duplicate: false,
                })
            }
            .await;
            match attempt {
                Ok(done) => {
                    txn.commit().await?;
                    return Ok(done);
                }
                // Another node stored the same message first: answer with the original.
                Err(StoreError::Postgres(e)) if is_retryable(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.map_or(
            StoreError::WriteFailed("too many conflicts".into()),
            Into::into,
        ))
    }

    async fn group_log(
        &self,
        group: u64,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<v1::GroupEntry>, u64, bool)> {
        let mut client = self.client().await?;
        // One snapshot for the entries and the newest gseq, so they agree (a cursor may
        // otherwise jump over an entry committed between the two reads).
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let stmt = txn
            .prepare_cached(
                "SELECT l.gseq, m.body, l.payload, l.created_ms, l.msg_id FROM group_log l
                 LEFT JOIN messages m ON m.id = l.msg_id
                 WHERE l.group_id = $1 AND l.gseq > $2 ORDER BY l.gseq LIMIT $3",
            )
            .await?;
        let rows = txn
            .query(
                &stmt,
                &[&(group as i64), &(after as i64), &(i64::from(limit) + 1)],
            )
            .await?;
        let latest = txn
            .query_opt(
                "SELECT last_gseq FROM groups WHERE id = $1",
                &[&(group as i64)],
            )
            .await?
            .ok_or(StoreError::NotFound)?
            .get::<_, i64>(0) as u64;
        txn.commit().await?;
        let mut out = Vec::new();
        let mut more = false;
        for r in rows {
            if out.len() == limit as usize {
                more = true;
                break;
            }
            let gseq = r.get::<_, i64>(0) as u64;
            let body: Option<Vec<u8>> = r.get(1);
            let payload: Option<Vec<u8>> = r.get(2);
            let msg_id: Option<i64> = r.get(4);
            let mut entry = match (body, payload) {
                (Some(b), _) => v1::GroupEntry {
                    kind: Some(v1::group_entry::Kind::Message(decode_message(
                        msg_id.unwrap_or(0),
                        &b,
                    )?)),
                    ..Default::default()
                },
                (None, Some(p)) => v1::GroupEntry::decode(&p[..])
                    .map_err(|e| StoreError::Corrupt(format!("group {group} entry {gseq}: {e}")))?,
                // A recalled message keeps its place, without content.
                (None, None) => v1::GroupEntry::default(),
            };
            entry.gseq = gseq;
            entry.time_ms = r.get(3);
            out.push(entry);
        }
        Ok((out, latest, more))
    }

    async fn set_group_read(&self, group: u64, user: u64, gseq: u64) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE group_members SET read_gseq = GREATEST(read_gseq, $3)
                 WHERE group_id = $1 AND user_id = $2",
            )
            .await?;
        client
            .execute(&stmt, &[&(group as i64), &(user as i64), &(gseq as i64)])
            .await?;
        Ok(())
    }
}
