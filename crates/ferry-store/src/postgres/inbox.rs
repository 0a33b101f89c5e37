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
use super::{is_retryable, now_ms, PgStore, WRITE_ATTEMPTS};
use crate::{
    Appended, InboxPage, InboxStore, MessageInfo, NewEvent, NewMessage, Result, StoreError,
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

    /// One attempt at storing a new message. `Ok(None)`: an unknown user (rolled back).
    async fn try_append(
        client: &mut deadpool_postgres::Object,
        msg: &NewMessage,
        body: &[u8],
    ) -> std::result::Result<std::result::Result<Appended, StoreError>, tokio_postgres::Error> {
        let sender = msg.sender_id as i64;
        let recipient = msg.recipient_id as i64;
        let cmid = msg.client_msg_id as i64;
        let bump = client
            .prepare_cached(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            )
            .await?;
        let insert_msg = client
            .prepare_cached(
                "INSERT INTO messages (sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .await?;
        let insert_inbox = client
            .prepare_cached(
                "INSERT INTO inbox (user_id, seq, msg_id, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let txn = client.transaction().await?;
        // Lock the users' rows in ascending id order: no deadlock between two users
        // writing to each other at once.
        let mut order = [sender, recipient];
        order.sort_unstable();
        let mut sender_seq = 0i64;
        let mut recipient_seq = 0i64;
        for (i, id) in order.iter().enumerate() {
            if i == 1 && order[0] == order[1] {
                break;
            }
            let Some(row) = txn.query_opt(&bump, &[id]).await? else {
                // Dropping the transaction rolls it back: nothing written.
                return Ok(Err(StoreError::UnknownUser(*id as u64)));
            };
            let seq: i64 = row.get(0);
            if *id == sender {
                sender_seq = seq;
            }
            if *id == recipient {
                recipient_seq = seq;
            }
        }
        let msg_id: i64 = txn
            .query_one(
                &insert_msg,
                &[
                    &sender,
                    &cmid,
                    &sender_seq,
                    &recipient_seq,
                    &msg.time_ms,
                    &body,
                ],
            )
            .await?
            .get(0);
        txn.execute(
            &insert_inbox,
            &[&sender, &sender_seq, &msg_id, &msg.time_ms],
        )
        .await?;
        if recipient != sender {
            txn.execute(
                &insert_inbox,
                &[&recipient, &recipient_seq, &msg_id, &msg.time_ms],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(Ok(Appended {
            msg_id: msg_id as u64,
            sender_seq: sender_seq as u64,
            recipient_seq: recipient_seq as u64,
            time_ms: msg.time_ms,
            duplicate: false,
        }))
    }
}

#[async_trait]
impl InboxStore for PgStore {
    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        let sender = msg.sender_id as i64;
        let cmid = msg.client_msg_id as i64;
        // The body is stored without its msg_id (not known before the insert); reads
        // fill it in from the row.
        let mut body = msg.message.clone();
        body.msg_id = 0;
        body.time_ms = msg.time_ms;
        let body = body.encode_to_vec();
        let mut client = self.client().await?;
        let mut last_err = None;
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(dup) = Self::existing(&client, sender, cmid).await? {
                return Ok(dup);
            }
            match Self::try_append(&mut client, &msg, &body).await {
                Ok(done) => return done,
                Err(e) if is_retryable(&e) => last_err = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.map_or(
            StoreError::WriteFailed("too many conflicts".into()),
            Into::into,
        ))
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
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO devices (user_id, device_id, synckey, updated_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device_id) DO UPDATE
                 SET synckey = excluded.synckey, updated_ms = excluded.updated_ms",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[&(user_id as i64), &device_id, &(synckey as i64), &now_ms()],
            )
            .await?;
        Ok(())
    }

    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT synckey FROM devices WHERE user_id = $1 AND device_id = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user_id as i64), &device_id])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute("DELETE FROM inbox WHERE created_ms < $1", &[&before_ms])
            .await?;
        txn.execute("DELETE FROM messages WHERE created_ms < $1", &[&before_ms])
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let seqs = lock_and_append_events(&txn, &events).await?;
        txn.commit().await?;
        Ok(seqs)
    }

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, sender_id, created_ms, body FROM messages WHERE id = $1")
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
        let gseq = match group {
            Some((g, entry)) => Some(log_append(&txn, g, None, Some(&entry), entry.time_ms).await?),
            None => None,
        };
        let seqs = lock_and_append_events(&txn, &inbox).await?;
        txn.commit().await?;
        Ok((gseq, seqs))
    }
}
