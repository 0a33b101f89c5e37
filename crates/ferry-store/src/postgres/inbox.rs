//! PostgreSQL: users' inboxes — messages and events appended with per-user seqs, pages
//! read by seq, synckeys, pruning — and the stored messages behind them (receipts,
//! recall) ([`InboxStore`]).
//!
//! Every write that bumps a user's seq or friend-list version first locks the users'
//! rows in ascending id order ([`lock_users`]), so concurrent writers touching the same
//! users queue up instead of deadlocking, and conditional changes (friendships) read
//! their preconditions under those locks.

use std::collections::HashSet;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use ferry_proto::{v1, ProtoMessage};

use super::groups::log_append;
use super::PgStore;
use crate::{
    Appended, AppendedBatch, InboxPage, InboxStore, MessageInfo, NewEvent, NewMessage, Result,
    StoreError,
};

/// Locks the rows of `ids` (ascending order); [`StoreError::UnknownUser`] for the first
/// id that does not exist.
pub(super) async fn lock_users(txn: &Transaction<'_>, ids: &[u64]) -> Result<()> {
    let mut want: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    want.sort_unstable();
    want.dedup();
    if want.is_empty() {
        return Ok(());
    }
    let stmt = txn
        .prepare_cached("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await?;
    let rows = txn.query(&stmt, &[&want]).await?;
    if rows.len() != want.len() {
        let found: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let missing = want
            .iter()
            .find(|id| !found.contains(id))
            .copied()
            .unwrap_or(0);
        return Err(StoreError::UnknownUser(missing as u64));
    }
    Ok(())
}

/// The next seq of a user whose row this transaction has locked.
async fn next_seq(txn: &Transaction<'_>, user: u64) -> Result<u64> {
    let stmt = txn
        .prepare_cached("UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
        .await?;
    Ok(txn
        .query_opt(&stmt, &[&(user as i64)])
        .await?
        .ok_or(StoreError::UnknownUser(user))?
        .get::<_, i64>(0) as u64)
}

/// Appends events to inboxes; the users must be locked already.
pub(super) async fn append_events(txn: &Transaction<'_>, events: &[NewEvent]) -> Result<Vec<u64>> {
    let insert = txn
        .prepare_cached(
            "INSERT INTO inbox (user_id, seq, msg_id, created_ms, payload) VALUES ($1, $2, NULL, $3, $4)",
        )
        .await?;
    let mut seqs = Vec::with_capacity(events.len());
    for ev in events {
        let seq = next_seq(txn, ev.user_id).await?;
        let mut entry = ev.entry.clone();
        entry.seq = 0;
        let time = entry.time_ms;
        entry.time_ms = 0;
        txn.execute(
            &insert,
            &[
                &(ev.user_id as i64),
                &(seq as i64),
                &time,
                &entry.encode_to_vec(),
            ],
        )
        .await?;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Locks the events' users, then appends the events to their inboxes.
pub(super) async fn lock_and_append_events(
    txn: &Transaction<'_>,
    events: &[NewEvent],
) -> Result<Vec<u64>> {
    lock_users(txn, &event_users(events)).await?;
    append_events(txn, events).await
}

pub(super) fn event_users(events: &[NewEvent]) -> Vec<u64> {
    events.iter().map(|e| e.user_id).collect()
}

/// A message body as stored, with its id filled in from the row.
pub(super) fn decode_message(id: i64, body: &[u8]) -> Result<v1::Message> {
    let mut m =
        v1::Message::decode(body).map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?;
    m.msg_id = id as u64;
    Ok(m)
}

impl PgStore {
    /// The stored original of `(sender, client_msg_id)`, if any.
    pub(super) async fn existing(
        client: &deadpool_postgres::Object,
        sender: i64,
        cmid: i64,
    ) -> Result<Option<Appended>> {
        let stmt = client
            .prepare_cached(
                "SELECT id, sender_seq, recipient_seq, created_ms FROM messages
                 WHERE sender_id = $1 AND client_msg_id = $2",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&sender, &cmid])
            .await?
            .map(|r| Appended {
                msg_id: r.get::<_, i64>(0) as u64,
                sender_seq: r.get::<_, i64>(1) as u64,
                recipient_seq: r.get::<_, i64>(2) as u64,
                time_ms: r.get(3),
                duplicate: true,
            }))
    }
}

#[async_trait]
impl InboxStore for PgStore {
    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        self.writer.messages(vec![msg]).await?.pop().map_or_else(
            || Err(StoreError::WriteFailed("no answer".into())),
            |(_, r)| r,
        )
    }

    /// One write of the queue (see `writer.rs`): the messages and whatever else is
    /// waiting share one transaction and one commit.
    async fn append_messages(&self, msgs: Vec<NewMessage>) -> Result<AppendedBatch> {
        self.writer.messages(msgs).await
    }

    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage> {
        let client = self.client().await?;
        // One statement, so one snapshot: the newest seq and the entries agree. (With two,
        // an empty page read before a commit and a newest seq read after it would let a
        // device's synckey jump over the new entry.)
        let stmt = client
            .prepare_cached(
                "SELECT u.last_seq, e.seq, e.msg_id, e.body, e.payload, e.created_ms
                 FROM users u
                 LEFT JOIN LATERAL (
                     SELECT i.seq, i.msg_id, m.body, i.payload, i.created_ms FROM inbox i
                     LEFT JOIN messages m ON m.id = i.msg_id
                     WHERE i.user_id = u.id AND i.seq > $2 ORDER BY i.seq LIMIT $3
                 ) e ON true
                 WHERE u.id = $1
                 ORDER BY e.seq",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[&(user_id as i64), &(after as i64), &(i64::from(limit) + 1)],
            )
            .await?;
        let latest_seq = rows
            .first()
            .ok_or(StoreError::UnknownUser(user_id))?
            .get::<_, i64>(0) as u64;
        let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
        let mut more = false;
        for row in rows {
            let Some(seq) = row.get::<_, Option<i64>>(1) else {
                break; // no entries: the one row carries only the newest seq
            };
            if entries.len() == limit as usize {
                more = true;
                break;
            }
            let seq = seq as u64;
            let msg_id: Option<i64> = row.get(2);
            let body: Option<Vec<u8>> = row.get(3);
            let payload: Option<Vec<u8>> = row.get(4);
            let time_ms: i64 = row.get(5);
            let corrupt =
                |e: prost::DecodeError| StoreError::Corrupt(format!("inbox entry {seq}: {e}"));
            // A message (joined from `messages`), an event (its payload), or an entry
            // whose message was pruned: its seq with no kind — as in SQLite.
            let mut entry = match (body, payload) {
                (Some(b), _) => {
                    let mut m = v1::Message::decode(&b[..]).map_err(corrupt)?;
                    m.msg_id = msg_id.unwrap_or(0) as u64;
                    v1::Entry {
                        kind: Some(v1::entry::Kind::Message(m)),
                        ..Default::default()
                    }
                }
                (None, Some(p)) => v1::Entry::decode(&p[..]).map_err(corrupt)?,
                (None, None) => v1::Entry::default(),
            };
            entry.seq = seq;
            entry.time_ms = time_ms;
            entries.push(entry);
        }
        Ok(InboxPage {
            entries,
            latest_seq,
            more,
        })
    }

    async fn latest_seq(&self, user_id: u64) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT last_seq FROM users WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64)])
            .await?
            .ok_or(StoreError::UnknownUser(user_id))?
            .get::<_, i64>(0) as u64)
    }

    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()> {
        // Written behind, at most once a second (see `synckeys.rs`).
        self.synckeys.set(user_id, device_id, synckey);
        Ok(())
    }

    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>> {
        if let Some(k) = self.synckeys.get(user_id, device_id) {
            return Ok(Some(k));
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT synckey FROM devices WHERE user_id = $1 AND device_id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64), &device_id])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn flush_synckeys(&self) -> Result<()> {
        self.synckeys.flush().await
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute("DELETE FROM inbox WHERE created_ms < $1", &[&before_ms])
            .await?;
        // What goes with the messages: their edits' history, reactions, pins, hides and
        // reply records.
        for sql in [
            "DELETE FROM message_edits WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < $1)",
            "DELETE FROM reactions WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < $1)",
            "DELETE FROM pins WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < $1)",
            "DELETE FROM hidden WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < $1)",
            "DELETE FROM replies WHERE quoted_id IN (SELECT id FROM messages WHERE created_ms < $1)",
            "DELETE FROM replies WHERE (sender_id, client_msg_id) IN
               (SELECT sender_id, client_msg_id FROM messages WHERE created_ms < $1)",
        ] {
            txn.execute(sql, &[&before_ms]).await?;
        }
        txn.execute("DELETE FROM messages WHERE created_ms < $1", &[&before_ms])
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.writer.events(events).await
    }

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, sender_id, created_ms, body, recipient_seq FROM messages WHERE id = $1",
            )
            .await?;
        let Some(r) = client.query_opt(&stmt, &[&(msg_id as i64)]).await? else {
            return Ok(None);
        };
        let id: i64 = r.get(0);
        let body: Option<Vec<u8>> = r.get(3);
        Ok(Some(MessageInfo {
            msg_id: id as u64,
            sender_id: r.get::<_, i64>(1) as u64,
            time_ms: r.get(2),
            seq: r.get::<_, i64>(4) as u64,
            body: body.map(|b| decode_message(id, &b)).transpose()?,
        }))
    }

    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute(
                "UPDATE messages SET body = NULL WHERE id = $1 AND body IS NOT NULL",
                &[&(msg_id as i64)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        super::msgops::forget_recalled(&txn, msg_id).await?;
        let gseq = match group {
            Some((g, entry)) => Some(log_append(&txn, g, None, Some(&entry), entry.time_ms).await?),
            None => None,
        };
        let seqs = lock_and_append_events(&txn, &inbox).await?;
        txn.commit().await?;
        Ok((gseq, seqs))
    }
}
