//! PostgreSQL: user administration ([`UserAdminStore`]): listing, disabling, devices,
//! the paged reads of an export, and deleting a user with all their data (see
//! `user_admin.rs` for what a deletion does).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;

use super::groups::log_append;
use super::inbox::{append_events, decode_message, lock_users};
use super::{is_retryable, PgStore, WRITE_ATTEMPTS};
use crate::user_admin::{entries, like_pattern};
use crate::{
    is_user_column, Deleted, DeviceInfo, Leftover, MessageInfo, NewEvent, ReportInfo, Result,
    StoreError, UserAdminStore, UserDeletion, UserInfo,
};

const USER_COLS: &str = "id, name, created_ms, disabled_reason, bot";

fn row_info(r: &tokio_postgres::Row) -> UserInfo {
    let reason: Option<String> = r.get(3);
    UserInfo {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        created_ms: r.get(2),
        disabled: reason.is_some(),
        disabled_reason: reason.unwrap_or_default(),
        bot: r.get(4),
    }
}

/// Every (table, column) of the current schema whose integer column holds user ids, by
/// name.
async fn user_columns(c: &impl GenericClient) -> Result<Vec<(String, String)>> {
    let rows = c
        .query(
            "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c
             JOIN information_schema.tables t
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
               AND c.data_type IN ('bigint', 'integer', 'smallint', 'numeric')
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, c)| is_user_column(c))
        .collect())
}

fn count(rows: &mut BTreeMap<String, u64>, table: &str, n: u64) {
    if n > 0 {
        *rows.entry(table.to_owned()).or_default() += n;
    }
}

async fn pairs(txn: &Transaction<'_>, sql: &str, uid: i64) -> Result<Vec<(i64, i64)>> {
    Ok(txn
        .query(sql, &[&uid])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The deletion, in one transaction.
async fn delete_user(txn: &Transaction<'_>, del: &UserDeletion) -> Result<Deleted> {
    let uid = del.user_id as i64;
    let (name, t) = (del.name.as_str(), del.time_ms);
    let mut out = Deleted::default();

    // Who gets inbox entries: the recipients of their 1:1 messages and their peers.
    let recipients = pairs(
        txn,
        "SELECT i.user_id, i.msg_id FROM inbox i JOIN messages m ON m.id = i.msg_id
         WHERE m.sender_id = $1 AND i.user_id <> $1 AND m.body IS NOT NULL ORDER BY i.msg_id",
        uid,
    )
    .await?;
    let peers = pairs(
        txn,
        &format!(
            "SELECT user_id, state::bigint FROM friendships WHERE peer_id = $1 AND user_id <> $1
             AND state NOT IN (0, {}) ORDER BY user_id",
            entries::FRIEND_REMOVED
        ),
        uid,
    )
    .await?;
    // Lock the user and everyone written to, in id order (as the writer does).
    let mut users: Vec<u64> = vec![del.user_id];
    users.extend(recipients.iter().map(|(u, _)| *u as u64));
    users.extend(peers.iter().map(|(u, _)| *u as u64));
    match lock_users(txn, &users).await {
        Err(StoreError::UnknownUser(u)) if u == del.user_id => return Err(StoreError::NotFound),
        r => r?,
    }

    // Groups: leave each (the heir takes an owned group), dissolve those left empty.
    let memberships = pairs(
        txn,
        "SELECT group_id, role::bigint FROM group_members WHERE user_id = $1 ORDER BY group_id",
        uid,
    )
    .await?;
    let mut gseqs: HashMap<u64, u64> = HashMap::new();
    for (g, _) in memberships {
        let owner: i64 = txn
            .query_one(
                "SELECT owner_id FROM groups WHERE id = $1 FOR UPDATE",
                &[&g],
            )
            .await?
            .get(0);
        let heir: Option<i64> = txn
            .query_opt(
                "SELECT user_id FROM group_members WHERE group_id = $1 AND user_id <> $2
                 ORDER BY role DESC, joined_gseq, user_id LIMIT 1",
                &[&g, &uid],
            )
            .await?
            .map(|r| r.get(0));
        let n = txn
            .execute(
                "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                &[&g, &uid],
            )
            .await?;
        count(&mut out.rows, "group_members", n);
        match heir {
            None => {
                let n = txn
                    .execute("DELETE FROM group_log WHERE group_id = $1", &[&g])
                    .await?;
                count(&mut out.rows, "group_log", n);
                let n = txn
                    .execute("DELETE FROM groups WHERE id = $1", &[&g])
                    .await?;
                count(&mut out.rows, "groups", n);
                out.dissolved.push(g as u64);
            }
            Some(heir) => {
                if owner == uid {
                    txn.execute(
                        "UPDATE group_members SET role = $3 WHERE group_id = $1 AND user_id = $2",
                        &[&g, &heir, &entries::OWNER],
                    )
                    .await?;
                    txn.execute(
                        "UPDATE groups SET owner_id = $2 WHERE id = $1",
                        &[&g, &heir],
                    )
                    .await?;
                }
                let entry = entries::group_left(g as u64, name, t);
                let gseq = log_append(txn, g as u64, None, Some(&entry), t).await?;
                gseqs.insert(g as u64, gseq);
            }
        }
    }

    // Their past memberships (written by the trigger as the rows above went), and those
    // of the groups that are gone.
    let n = txn
        .execute("DELETE FROM group_spans WHERE user_id = $1", &[&uid])
        .await?;
    count(&mut out.rows, "group_spans", n);
    for &g in &out.dissolved {
        txn.execute(
            "DELETE FROM group_spans WHERE group_id = $1",
            &[&(g as i64)],
        )
        .await?;
    }

    // Messages they sent: recalled, then deleted.
    for (g, msg) in pairs(
        txn,
        "SELECT l.group_id, l.msg_id FROM group_log l JOIN messages m ON m.id = l.msg_id
         WHERE m.sender_id = $1 AND m.body IS NOT NULL ORDER BY l.group_id, l.gseq",
        uid,
    )
    .await?
    {
        let entry = entries::group_recall(g as u64, msg as u64, name, t);
        let gseq = log_append(txn, g as u64, None, Some(&entry), t).await?;
        gseqs.insert(g as u64, gseq);
    }
    let mut events: Vec<NewEvent> = recipients
        .iter()
        .map(|(to, msg)| NewEvent {
            user_id: *to as u64,
            entry: entries::recall(*msg as u64, name, t),
        })
        .collect();
    events.extend(peers.iter().map(|(peer, _)| NewEvent {
        user_id: *peer as u64,
        entry: entries::friend_removed(name, t),
    }));
    let seqs = append_events(txn, &events).await?;
    let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
    for (ev, seq) in events.iter().zip(seqs) {
        let e = newest.entry(ev.user_id).or_default();
        *e = (*e).max(seq);
    }
    out.inboxes = newest.into_iter().collect();
    let mut groups: Vec<(u64, u64)> = gseqs.into_iter().collect();
    groups.sort_unstable();
    out.groups = groups;

    let deletes: &[(&str, &str)] = &[
        ("messages", "DELETE FROM messages WHERE sender_id = $1"),
        (
            "moment_likes",
            "DELETE FROM moment_likes WHERE user_id = $1
             OR moment_id IN (SELECT id FROM moments WHERE author_id = $1)",
        ),
        (
            "moment_comments",
            "DELETE FROM moment_comments WHERE user_id = $1
             OR moment_id IN (SELECT id FROM moments WHERE author_id = $1)",
        ),
        ("moments", "DELETE FROM moments WHERE author_id = $1"),
        (
            "friendships",
            "DELETE FROM friendships WHERE user_id = $1 OR peer_id = $1",
        ),
        (
            "push_prefs",
            "DELETE FROM push_prefs WHERE user_id = $1 OR peer = $1",
        ),
        ("users", "DELETE FROM users WHERE id = $1"),
    ];
    for (table, sql) in deletes {
        let n = txn.execute(*sql, &[&uid]).await?;
        count(&mut out.rows, table, n);
    }
    for (table, col) in user_columns(txn).await? {
        let n = txn
            .execute(
                &format!("DELETE FROM \"{table}\" WHERE \"{col}\" = $1::bigint"),
                &[&uid],
            )
            .await?;
        count(&mut out.rows, &table, n);
    }
    Ok(out)
}

#[async_trait]
impl UserAdminStore for PgStore {
    async fn list_users(&self, q: &str, after: u64, limit: u32) -> Result<Vec<UserInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {USER_COLS} FROM users WHERE id > $1 AND lower(name) LIKE $2 ESCAPE '\\'
                     ORDER BY id LIMIT $3"
                ),
                &[&(after as i64), &like_pattern(q), &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(row_info).collect())
    }

    async fn user_info(&self, id: u64) -> Result<Option<UserInfo>> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
                &[&(id as i64)],
            )
            .await?
            .as_ref()
            .map(row_info))
    }

    async fn disabled(&self, id: u64) -> Result<Option<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT disabled_reason FROM users WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64)])
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0)))
    }

    async fn set_disabled(&self, id: u64, reason: Option<&str>) -> Result<Vec<String>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute(
                "UPDATE users SET disabled_reason = $2 WHERE id = $1",
                &[&(id as i64), &reason],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let devices = if reason.is_some() {
            txn.query(
                "DELETE FROM sessions WHERE user_id = $1 RETURNING device_id",
                &[&(id as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
        } else {
            Vec::new()
        };
        txn.commit().await?;
        Ok(devices)
    }

    async fn user_devices(&self, id: u64) -> Result<Vec<DeviceInfo>> {
        // Buffered synckeys first, so what was just reported shows.
        self.synckeys.flush().await?;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT d, max(k), max(seen), max(s) FROM (
                   SELECT device_id AS d, synckey AS k, updated_ms AS seen, 0::bigint AS s
                     FROM devices WHERE user_id = $1
                   UNION ALL
                   SELECT device_id, 0, 0, created_ms FROM sessions WHERE user_id = $1
                 ) x GROUP BY d ORDER BY d",
                &[&(id as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeviceInfo {
                device_id: r.get(0),
                synckey: r.get::<_, i64>(1) as u64,
                seen_ms: r.get(2),
                session_ms: r.get(3),
            })
            .collect())
    }

    async fn user_messages(&self, id: u64, after: u64, limit: u32) -> Result<Vec<MessageInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, sender_id, created_ms, body, recipient_seq FROM messages
                 WHERE id > $2 AND body IS NOT NULL AND (sender_id = $1 OR id IN
                   (SELECT msg_id FROM inbox WHERE user_id = $1 AND msg_id > $2))
                 ORDER BY id LIMIT $3",
                &[&(id as i64), &(after as i64), &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let mid: i64 = r.get(0);
                let body: Vec<u8> = r.get(3);
                Ok(MessageInfo {
                    msg_id: mid as u64,
                    sender_id: r.get::<_, i64>(1) as u64,
                    time_ms: r.get(2),
                    seq: r.get::<_, i64>(4) as u64,
                    body: Some(decode_message(mid, &body)?),
                })
            })
            .collect()
    }

    async fn user_reports(&self, id: u64, after: u64, limit: u32) -> Result<Vec<ReportInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, user_id, device_id, client_version, kind, file_name, length, md5, created_ms
                 FROM reports WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&(id as i64), &(after as i64), &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReportInfo {
                id: r.get::<_, i64>(0) as u64,
                user_id: r.get::<_, i64>(1) as u64,
                device_id: r.get(2),
                client_version: r.get(3),
                kind: r.get(4),
                file_name: r.get(5),
                length: r.get::<_, i64>(6) as u64,
                md5: r.get(7),
                created_ms: r.get(8),
            })
            .collect())
    }

    async fn delete_user(&self, deletion: UserDeletion) -> Result<Deleted> {
        // No synckey of theirs may be written back after the rows are gone.
        let _held = self.synckeys.forget_user(deletion.user_id).await;
        let mut last_err = None;
        for _ in 0..WRITE_ATTEMPTS {
            let mut client = self.client().await?;
            let txn = client.transaction().await?;
            match delete_user(&txn, &deletion).await {
                Ok(done) => {
                    txn.commit().await?;
                    return Ok(done);
                }
                // A deadlock with a concurrent writer: try again.
                Err(StoreError::Postgres(e)) if is_retryable(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.map_or(
            StoreError::WriteFailed("too many conflicts".into()),
            Into::into,
        ))
    }

    async fn leftover_rows(&self, id: u64) -> Result<Vec<Leftover>> {
        let client = self.client().await?;
        let mut out = Vec::new();
        let mut cols = vec![("users".to_owned(), "id".to_owned())];
        cols.extend(user_columns(&client).await?);
        for (table, column) in cols {
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM \"{table}\" WHERE \"{column}\" = $1::bigint"),
                    &[&(id as i64)],
                )
                .await?
                .get(0);
            if n > 0 {
                out.push(Leftover {
                    table,
                    column,
                    rows: n as u64,
                });
            }
        }
        Ok(out)
    }
}
