//! SQLite: user administration ([`UserAdminStore`]): listing, disabling, devices, the
//! paged reads of an export, and deleting a user with all their data (see
//! `user_admin.rs` for what a deletion does).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::groups::log_append;
use super::inbox::append_events;
use super::SqliteStore;
use crate::user_admin::{entries, like_pattern};
use crate::{
    is_user_column, Deleted, DeviceInfo, Leftover, MessageInfo, NewEvent, ReportInfo, Result,
    StoreError, UserAdminStore, UserDeletion, UserInfo,
};

const USER_COLS: &str = "id, name, created_ms, disabled_reason, bot";

fn row_info(r: &rusqlite::Row) -> rusqlite::Result<UserInfo> {
    let reason: Option<String> = r.get(3)?;
    Ok(UserInfo {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        created_ms: r.get(2)?,
        disabled: reason.is_some(),
        disabled_reason: reason.unwrap_or_default(),
        bot: r.get::<_, i64>(4)? != 0,
    })
}

/// Every (table, column) of the database whose integer column holds user ids, by name
/// (a text column such as the audit log's `peer`, an address, is not one).
fn user_columns(c: &Connection) -> Result<Vec<(String, String)>> {
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for t in tables {
        let cols: Vec<String> = c
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{t}') WHERE upper(type) LIKE '%INT%'"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for col in cols {
            if is_user_column(&col) {
                out.push((t.clone(), col));
            }
        }
    }
    Ok(out)
}

fn count(rows: &mut BTreeMap<String, u64>, table: &str, n: usize) {
    if n > 0 {
        *rows.entry(table.to_owned()).or_default() += n as u64;
    }
}

fn ids(txn: &Transaction, sql: &str, uid: i64) -> Result<Vec<(i64, i64)>> {
    Ok(txn
        .prepare(sql)?
        .query_map([uid], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// The deletion, inside the writer's transaction.
fn delete_user(
    txn: &Transaction,
    state: &mut super::writer::WriterState,
    del: &UserDeletion,
) -> Result<Deleted> {
    let uid = del.user_id as i64;
    let (name, t) = (del.name.as_str(), del.time_ms);
    if !txn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
        .exists([uid])?
    {
        return Err(StoreError::NotFound);
    }
    let mut out = Deleted::default();
    let mut events: Vec<NewEvent> = Vec::new();

    // Groups: leave each (the heir takes an owned group), dissolve those left empty.
    let memberships = ids(
        txn,
        "SELECT group_id, role FROM group_members WHERE user_id = ?1 ORDER BY group_id",
        uid,
    )?;
    let mut gseqs: HashMap<u64, u64> = HashMap::new();
    let mut dissolved = Vec::new();
    for (g, _role) in memberships {
        let heir: Option<i64> = txn
            .prepare(
                "SELECT user_id FROM group_members WHERE group_id = ?1 AND user_id <> ?2
                 ORDER BY role DESC, joined_gseq, user_id LIMIT 1",
            )?
            .query_row(params![g, uid], |r| r.get(0))
            .optional()?;
        match heir {
            None => dissolved.push(g),
            Some(heir) => {
                let owner: i64 = txn
                    .prepare("SELECT owner_id FROM groups WHERE id = ?1")?
                    .query_row([g], |r| r.get(0))?;
                if owner == uid {
                    txn.execute(
                        "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
                        params![g, heir, entries::OWNER],
                    )?;
                    txn.execute(
                        "UPDATE groups SET owner_id = ?2 WHERE id = ?1",
                        params![g, heir],
                    )?;
                }
                let entry = entries::group_left(g as u64, name, t);
                let gseq = log_append(txn, g as u64, None, Some(&entry), t)?;
                gseqs.insert(g as u64, gseq);
            }
        }
        count(
            &mut out.rows,
            "group_members",
            txn.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                params![g, uid],
            )?,
        );
    }
    for &g in &dissolved {
        count(
            &mut out.rows,
            "group_log",
            txn.execute("DELETE FROM group_log WHERE group_id = ?1", [g])?,
        );
        count(
            &mut out.rows,
            "groups",
            txn.execute("DELETE FROM groups WHERE id = ?1", [g])?,
        );
        out.dissolved.push(g as u64);
    }

    // Their past memberships (written by the trigger as the rows above went), and those
    // of the groups that are gone.
    count(
        &mut out.rows,
        "group_spans",
        txn.execute("DELETE FROM group_spans WHERE user_id = ?1", [uid])?,
    );
    for &g in &dissolved {
        txn.execute("DELETE FROM group_spans WHERE group_id = ?1", [g])?;
    }

    // Messages they sent: recalled (group messages in their group's log, 1:1 ones in
    // the recipient's inbox), then deleted.
    for (g, msg) in ids(
        txn,
        "SELECT l.group_id, l.msg_id FROM group_log l JOIN messages m ON m.id = l.msg_id
         WHERE m.sender_id = ?1 AND m.body IS NOT NULL ORDER BY l.group_id, l.gseq",
        uid,
    )? {
        let entry = entries::group_recall(g as u64, msg as u64, name, t);
        let gseq = log_append(txn, g as u64, None, Some(&entry), t)?;
        gseqs.insert(g as u64, gseq);
    }
    for (to, msg) in ids(
        txn,
        "SELECT i.user_id, i.msg_id FROM inbox i JOIN messages m ON m.id = i.msg_id
         WHERE m.sender_id = ?1 AND i.user_id <> ?1 AND m.body IS NOT NULL ORDER BY i.msg_id",
        uid,
    )? {
        events.push(NewEvent {
            user_id: to as u64,
            entry: entries::recall(msg as u64, name, t),
        });
    }
    // Friendships: each peer hears the relation is gone.
    for (peer, _) in ids(
        txn,
        &format!(
            "SELECT user_id, state FROM friendships WHERE peer_id = ?1 AND user_id <> ?1
             AND state NOT IN (0, {}) ORDER BY user_id",
            entries::FRIEND_REMOVED
        ),
        uid,
    )? {
        events.push(NewEvent {
            user_id: peer as u64,
            entry: entries::friend_removed(name, t),
        });
    }
    let seqs = append_events(txn, state, &events)?;
    let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
    for (ev, seq) in events.iter().zip(seqs) {
        let e = newest.entry(ev.user_id).or_default();
        *e = (*e).max(seq);
    }
    out.inboxes = newest.into_iter().collect();
    let mut groups: Vec<(u64, u64)> = gseqs.into_iter().collect();
    groups.sort_unstable();
    out.groups = groups;

    // Their rows, table by table, then whatever else names them. Messages by their keys
    // (`messages` has no index on the sender): merged, or held by the writer (writer.rs,
    // `KeyTail`); a key may name a message deleted already.
    let mut gone = 0;
    let mut delete = txn.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    for id in state.sent_ids(txn, del.user_id)? {
        gone += delete.execute([id as i64])?;
    }
    drop(delete);
    count(&mut out.rows, "messages", gone);
    let deletes: &[(&str, &str)] = &[
        (
            "moment_likes",
            "DELETE FROM moment_likes WHERE user_id = ?1
             OR moment_id IN (SELECT id FROM moments WHERE author_id = ?1)",
        ),
        (
            "moment_comments",
            "DELETE FROM moment_comments WHERE user_id = ?1
             OR moment_id IN (SELECT id FROM moments WHERE author_id = ?1)",
        ),
        ("moments", "DELETE FROM moments WHERE author_id = ?1"),
        (
            "friendships",
            "DELETE FROM friendships WHERE user_id = ?1 OR peer_id = ?1",
        ),
        (
            "push_prefs",
            "DELETE FROM push_prefs WHERE user_id = ?1 OR peer = ?1",
        ),
        ("users", "DELETE FROM users WHERE id = ?1"),
    ];
    for (table, sql) in deletes {
        count(&mut out.rows, table, txn.execute(sql, [uid])?);
    }
    for (table, col) in user_columns(txn)? {
        let n = txn.execute(
            &format!("DELETE FROM \"{table}\" WHERE \"{col}\" = ?1"),
            [uid],
        )?;
        count(&mut out.rows, &table, n);
    }
    // Ids are never given again (a cached name, a stale reference must not find a new
    // user under the old id): SQLite would reuse the highest one.
    txn.execute(
        "INSERT INTO ferry_meta (key, value) VALUES ('user_id_floor', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        [uid],
    )?;
    state.seqs.remove(&del.user_id);
    Ok(out)
}

#[async_trait]
impl UserAdminStore for SqliteStore {
    async fn list_users(&self, q: &str, after: u64, limit: u32) -> Result<Vec<UserInfo>> {
        let pattern = like_pattern(q);
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLS} FROM users WHERE id > ?1 AND lower(name) LIKE ?2 ESCAPE '\\'
                 ORDER BY id LIMIT ?3"
            ))?
            .query_map(params![after as i64, pattern, i64::from(limit)], row_info)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn user_info(&self, id: u64) -> Result<Option<UserInfo>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))?
                    .query_row([id as i64], row_info)
                    .optional()?,
            )
        })
        .await
    }

    async fn disabled(&self, id: u64) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT disabled_reason FROM users WHERE id = ?1")?
                    .query_row([id as i64], |r| r.get::<_, Option<String>>(0))
                    .optional()?
                    .flatten(),
            )
        })
        .await
    }

    async fn set_disabled(&self, id: u64, reason: Option<&str>) -> Result<Vec<String>> {
        let reason = reason.map(str::to_owned);
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("UPDATE users SET disabled_reason = ?2 WHERE id = ?1")?
                .execute(params![id as i64, reason])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if reason.is_none() {
                return Ok(Vec::new());
            }
            let devices = txn
                .prepare_cached("SELECT device_id FROM sessions WHERE user_id = ?1")?
                .query_map([id as i64], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            txn.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
                .execute([id as i64])?;
            Ok(devices)
        })
        .await
    }

    async fn user_devices(&self, id: u64) -> Result<Vec<DeviceInfo>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT d, max(k), max(seen), max(s) FROM (
                   SELECT device_id AS d, synckey AS k, updated_ms AS seen, 0 AS s
                     FROM devices WHERE user_id = ?1
                   UNION ALL
                   SELECT device_id, 0, 0, created_ms FROM sessions WHERE user_id = ?1
                 ) GROUP BY d ORDER BY d",
            )?
            .query_map([id as i64], |r| {
                Ok(DeviceInfo {
                    device_id: r.get(0)?,
                    synckey: r.get::<_, i64>(1)? as u64,
                    seen_ms: r.get(2)?,
                    session_ms: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn user_messages(&self, id: u64, after: u64, limit: u32) -> Result<Vec<MessageInfo>> {
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, sender_id, created_ms, body, recipient_seq FROM messages
                     WHERE id > ?2 AND body IS NOT NULL AND (sender_id = ?1 OR id IN
                       (SELECT msg_id FROM inbox WHERE user_id = ?1 AND msg_id > ?2))
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![id as i64, after as i64, i64::from(limit)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, i64>(4)? as u64,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(mid, sender, time, body, seq)| {
                    let mut m = v1::Message::decode(&body[..])
                        .map_err(|e| StoreError::Corrupt(format!("message {mid}: {e}")))?;
                    m.msg_id = mid as u64;
                    Ok(MessageInfo {
                        msg_id: mid as u64,
                        sender_id: sender,
                        time_ms: time,
                        seq,
                        body: Some(m),
                    })
                })
                .collect()
        })
        .await
    }

    async fn user_reports(&self, id: u64, after: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, user_id, device_id, client_version, kind, file_name, length, md5, created_ms
                 FROM reports WHERE user_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?
            .query_map(params![id as i64, after as i64, i64::from(limit)], |r| {
                Ok(ReportInfo {
                    id: r.get::<_, i64>(0)? as u64,
                    user_id: r.get::<_, i64>(1)? as u64,
                    device_id: r.get(2)?,
                    client_version: r.get(3)?,
                    kind: r.get(4)?,
                    file_name: r.get(5)?,
                    length: r.get::<_, i64>(6)? as u64,
                    md5: r.get(7)?,
                    created_ms: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_user(&self, deletion: UserDeletion) -> Result<Deleted> {
        self.write(move |txn, state| delete_user(txn, state, &deletion))
            .await
    }

    async fn leftover_rows(&self, id: u64) -> Result<Vec<Leftover>> {
        self.read(move |c| {
            let mut out = Vec::new();
            let mut check = |table: &str, column: &str| -> Result<()> {
                let n: i64 = c.query_row(
                    &format!("SELECT count(*) FROM \"{table}\" WHERE \"{column}\" = ?1"),
                    [id as i64],
                    |r| r.get(0),
                )?;
                if n > 0 {
                    out.push(Leftover {
                        table: table.to_owned(),
                        column: column.to_owned(),
                        rows: n as u64,
                    });
                }
                Ok(())
            };
            check("users", "id")?;
            for (table, col) in user_columns(c)? {
                check(&table, &col)?;
            }
            Ok(out)
        })
        .await
    }
}
