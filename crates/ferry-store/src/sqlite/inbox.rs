//! SQLite: users' inboxes — messages and events appended with per-user seqs, pages
//! read by seq, synckeys, pruning — and the stored messages behind them (receipts,
//! recall) ([`InboxStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Transaction};

use super::groups::log_append;
use super::writer::WriterState;
use super::{now_ms, SqliteStore};
use crate::{
    Appended, AppendedBatch, InboxPage, InboxStore, MessageInfo, NewEvent, NewMessage, Result,
    StoreError,
};

/// A user's newest inbox seq: the inbox's last row, or `users.last_seq` when that is
/// higher. `last_seq` is a floor, written only by [`InboxStore::prune`] before it deletes
/// entries (a user whose every entry was pruned must not get seq 1 again); sends never
/// write it. Updating it for both users of every message dirtied a page of the `users`
/// table each, for a value the inbox already holds (its primary key is `(user_id,
/// seq)`: one seek finds the last); without those updates the writer thread took 0.46 /
/// 0.42 cores instead of 0.57 / 0.50 at 10 000 msgs/s (`ferry bench p2p --rate 10000`).
pub(super) const NEWEST_SEQ: &str = concat!(
    "SELECT ",
    newest_seq_of_u!(),
    " FROM users u WHERE u.id = ?1"
);

/// An inbox entry's time, in a query over `inbox i LEFT JOIN messages m ON m.id =
/// i.msg_id`. A message's entries are written without it (`created_ms` 0, which SQLite
/// stores in no bytes at all): it is the message's own `created_ms`, and each 1:1 message
/// writes two entries into inboxes scattered over the B-tree, where a smaller row is a
/// smaller share of every page split. Entries written before kept theirs, and events
/// (no message) keep theirs; an entry whose message is gone reads 0.
macro_rules! entry_time {
    () => {
        "CASE WHEN i.created_ms <> 0 THEN i.created_ms ELSE coalesce(m.created_ms, 0) END"
    };
}

/// A message's entry in a user's inbox: `(user, seq, msg_id)`, without a time of its own
/// (`entry_time!`).
pub(super) const MESSAGE_ENTRY: &str =
    "INSERT INTO inbox (user_id, seq, msg_id, created_ms) VALUES (?1, ?2, ?3, 0)";

/// A page of a user's inbox after a seq (the read behind every SYNC).
pub(super) const INBOX_PAGE: &str = concat!(
    "SELECT i.seq, m.body, i.payload, ",
    entry_time!(),
    " FROM inbox i
     LEFT JOIN messages m ON m.id = i.msg_id
     WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3"
);

pub(super) fn newest_seq(c: &Connection, user: u64) -> Result<u64> {
    Ok(c.prepare_cached(NEWEST_SEQ)?
        .query_row([user as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .ok_or(StoreError::UnknownUser(user))? as u64)
}

/// Builds an inbox entry from a message body (joined from `messages`) or an event
/// payload. An entry whose message was deleted keeps its seq with no kind.
fn decode_entry(
    seq: u64,
    time_ms: i64,
    body: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
) -> Result<v1::Entry> {
    let corrupt = |e: prost::DecodeError| StoreError::Corrupt(format!("inbox entry {seq}: {e}"));
    let mut entry = match (body, payload) {
        (Some(b), _) => v1::Entry {
            kind: Some(v1::entry::Kind::Message(
                v1::Message::decode(&b[..]).map_err(corrupt)?,
            )),
            ..Default::default()
        },
        (None, Some(p)) => v1::Entry::decode(&p[..]).map_err(corrupt)?,
        (None, None) => v1::Entry::default(),
    };
    entry.seq = seq;
    entry.time_ms = time_ms;
    Ok(entry)
}

/// Appends events to inboxes. Fails before writing anything when a user is unknown.
pub(super) fn append_events(
    txn: &Transaction,
    state: &mut WriterState,
    events: &[NewEvent],
) -> Result<Vec<u64>> {
    for ev in events {
        if !state.seqs.contains_key(&ev.user_id)
            && !txn
                .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
                .exists([ev.user_id as i64])?
        {
            return Err(StoreError::UnknownUser(ev.user_id));
        }
    }
    let mut seqs = Vec::with_capacity(events.len());
    let mut insert = txn.prepare_cached(
        "INSERT INTO inbox (user_id, seq, msg_id, created_ms, payload) VALUES (?1, ?2, NULL, ?3, ?4)",
    )?;
    for ev in events {
        let seq = state.next_seq(txn, ev.user_id)?;
        let mut entry = ev.entry.clone();
        entry.seq = 0;
        let time = entry.time_ms;
        entry.time_ms = 0;
        insert.execute(params![
            ev.user_id as i64,
            seq as i64,
            time,
            entry.encode_to_vec()
        ])?;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// The two statements every stored message runs, prepared once for a whole batch: taking
/// them from rusqlite's statement cache for each message (a hash of the SQL text, and the
/// statement put back) was ≈ 1 % of the server's CPU in a closed-loop `ferry bench p2p`.
struct AppendStatements<'t> {
    message: CachedStatement<'t>,
    inbox: CachedStatement<'t>,
}

impl<'t> AppendStatements<'t> {
    fn prepare(txn: &'t Transaction) -> Result<Self> {
        Ok(AppendStatements {
            // The idempotency check is the writer's ([`WriterState::stored_id`]), before
            // any id is taken; `messages` has no index on the client id.
            message: txn.prepare_cached(
                "INSERT INTO messages (id, sender_id, client_msg_id, sender_seq, recipient_seq, created_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            inbox: txn.prepare_cached(MESSAGE_ENTRY)?,
        })
    }
}

/// One inbox entry of a stored message, with [`AppendStatements::inbox`].
fn entry(inbox: &mut CachedStatement, user: u64, seq: u64, msg_id: u64) -> Result<()> {
    inbox.raw_bind_parameter(1, user as i64)?;
    inbox.raw_bind_parameter(2, seq as i64)?;
    inbox.raw_bind_parameter(3, msg_id as i64)?;
    inbox.raw_execute()?;
    Ok(())
}

/// Stores one message inside the writer's transaction. Fails before writing anything
/// when a user is unknown; any other error may leave partial writes (the caller fails
/// the batch).
fn append_one(
    txn: &Transaction,
    state: &mut WriterState,
    statements: &mut AppendStatements,
    msg: &mut NewMessage,
) -> Result<Appended> {
    let sender = msg.sender_id as i64;
    let cmid = msg.client_msg_id as i64;
    // Check the recipient before touching anything, so an unknown one leaves no
    // partial write behind.
    let recipient_seq_probe = state.seqs.contains_key(&msg.recipient_id)
        || txn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
            .exists([msg.recipient_id as i64])?;
    if !recipient_seq_probe {
        return Err(StoreError::UnknownUser(msg.recipient_id));
    }
    if let Some(stored) = state.stored_message(txn, msg.sender_id, msg.client_msg_id)? {
        // A retry of a stored message: answered with the stored one.
        return Ok(stored);
    }
    let msg_id = state.next_msg_id(txn)?;
    let sender_seq = state.next_seq(txn, msg.sender_id)?;
    let recipient_seq = if msg.recipient_id == msg.sender_id {
        sender_seq
    } else {
        state.next_seq(txn, msg.recipient_id)?
    };
    let message = &mut msg.message;
    message.msg_id = msg_id;
    message.time_ms = msg.time_ms;
    // Bound one by one: `execute(params![…])` passes each through a `dyn ToSql` and asks
    // SQLite for the statement's parameter count, for every message.
    let body = &mut state.body;
    body.clear();
    body.reserve(message.encoded_len());
    message.encode_raw(body);
    let m = &mut statements.message;
    m.raw_bind_parameter(1, msg_id as i64)?;
    m.raw_bind_parameter(2, sender)?;
    m.raw_bind_parameter(3, cmid)?;
    m.raw_bind_parameter(4, sender_seq as i64)?;
    m.raw_bind_parameter(5, recipient_seq as i64)?;
    m.raw_bind_parameter(6, msg.time_ms)?;
    m.raw_bind_parameter(7, body.as_slice())?;
    m.raw_execute()?;
    state.stored(txn, msg.sender_id, msg.client_msg_id, msg_id)?;
    let inbox = &mut statements.inbox;
    entry(inbox, msg.sender_id, sender_seq, msg_id)?;
    if msg.recipient_id != msg.sender_id {
        entry(inbox, msg.recipient_id, recipient_seq, msg_id)?;
    }
    Ok(Appended {
        msg_id,
        sender_seq,
        recipient_seq,
        time_ms: msg.time_ms,
        duplicate: false,
    })
}

/// Users whose inboxes one writer job of [`InboxStore::prune`] walks.
const PRUNE_USERS: usize = 512;

/// Prunes the inboxes of the next [`PRUNE_USERS`] users after user id `after`: returns
/// how many entries went and the last user walked (`None`: no user was left).
fn prune_inboxes(txn: &Transaction, after: i64, before_ms: i64) -> Result<(u64, Option<i64>)> {
    let users: Vec<i64> = txn
        .prepare_cached("SELECT id FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![after, PRUNE_USERS as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut gone = 0;
    for &user in &users {
        // The primary key walks the user's entries in seq order and stops at the first
        // one to keep.
        let keep_from: Option<i64> = txn
            .prepare_cached(concat!(
                "SELECT i.seq FROM inbox i LEFT JOIN messages m ON m.id = i.msg_id
                 WHERE i.user_id = ?1 AND ",
                entry_time!(),
                " >= ?2 ORDER BY i.seq LIMIT 1"
            ))?
            .query_row(params![user, before_ms], |r| r.get(0))
            .optional()?;
        gone += match keep_from {
            Some(seq) => txn
                .prepare_cached("DELETE FROM inbox WHERE user_id = ?1 AND seq < ?2")?
                .execute(params![user, seq])?,
            None => {
                // Every entry goes: keep the newest seq as the floor of the next one.
                txn.prepare_cached(
                    "UPDATE users SET last_seq = max(last_seq, (SELECT max(seq) FROM inbox
                       WHERE user_id = ?1)) WHERE id = ?1 AND EXISTS
                       (SELECT 1 FROM inbox WHERE user_id = ?1)",
                )?
                .execute([user])?;
                txn.prepare_cached("DELETE FROM inbox WHERE user_id = ?1")?
                    .execute([user])?
            }
        } as u64;
    }
    Ok((gone, users.last().copied()))
}

/// An error after which the transaction may hold partial writes.
fn partial(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(_) | StoreError::Io(_))
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        self.write(move |txn, state| {
            let mut msg = msg;
            append_one(txn, state, &mut AppendStatements::prepare(txn)?, &mut msg)
        })
        .await
    }

    /// One writer job: the messages share a transaction and a commit with whatever else
    /// the writer takes. An unknown user refuses its message only (nothing of it is
    /// written); any other error fails the whole batch.
    async fn append_messages(&self, msgs: Vec<NewMessage>) -> Result<AppendedBatch> {
        self.write(move |txn, state| {
            let mut out = Vec::with_capacity(msgs.len());
            let mut statements = AppendStatements::prepare(txn)?;
            for mut m in msgs {
                match append_one(txn, state, &mut statements, &mut m) {
                    // Maybe partly written: the whole batch rolls back.
                    Err(e) if partial(&e) => return Err(e),
                    r => out.push((m, r)),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage> {
        self.read(move |c| {
            let txn = c.unchecked_transaction()?;
            let latest_seq = newest_seq(&txn, user_id)?;
            let mut stmt = txn.prepare_cached(INBOX_PAGE)?;
            let mut rows =
                stmt.query(params![user_id as i64, after as i64, i64::from(limit) + 1])?;
            let mut entries = Vec::new();
            let mut more = false;
            while let Some(row) = rows.next()? {
                if entries.len() == limit as usize {
                    more = true;
                    break;
                }
                let seq = row.get::<_, i64>(0)? as u64;
                let body: Option<Vec<u8>> = row.get(1)?;
                let payload: Option<Vec<u8>> = row.get(2)?;
                let time_ms: i64 = row.get(3)?;
                entries.push(decode_entry(seq, time_ms, body, payload)?);
            }
            Ok(InboxPage {
                entries,
                latest_seq,
                more,
            })
        })
        .await
    }

    async fn latest_seq(&self, user_id: u64) -> Result<u64> {
        self.read(move |c| newest_seq(c, user_id)).await
    }

    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()> {
        let device_id = device_id.to_owned();
        self.write(move |txn, _| {
            txn.prepare_cached(
                // Not for a user deleted meanwhile (a link's last report, after a kick).
                "INSERT INTO devices (user_id, device_id, synckey, updated_ms)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM users WHERE id = ?1)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET synckey = excluded.synckey,
                 updated_ms = excluded.updated_ms",
            )?
            .execute(params![user_id as i64, device_id, synckey as i64, now_ms()])?;
            Ok(())
        })
        .await
    }

    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>> {
        let device_id = device_id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT synckey FROM devices WHERE user_id = ?1 AND device_id = ?2",
            )?
            .query_row(params![user_id as i64, device_id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
        })
        .await
    }

    /// Walks each user's inbox from its oldest seq (the inbox has no index on
    /// `created_ms`: two entries of it per 1:1 message cost the writer more than an
    /// hourly walk costs), [`PRUNE_USERS`] users per writer job, so sends go on between
    /// the jobs. Per user it finds the first entry written at or after `before_ms` and
    /// deletes every one before it: an older entry behind a newer one (times of
    /// concurrent writes cross by a few ms) waits for the next prune, and reads as an
    /// entry without kind if its message went now (messages go by their own time).
    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let mut after = 0i64;
        let mut gone = 0u64;
        loop {
            let (n, last) = self
                .write(move |txn, _| prune_inboxes(txn, after, before_ms))
                .await?;
            gone += n;
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
        self.write(move |txn, _| {
            // What goes with the messages: their edits' history, reactions, pins, hides
            // and reply records.
            for sql in [
                "DELETE FROM message_edits WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < ?1)",
                "DELETE FROM reactions WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < ?1)",
                "DELETE FROM pins WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < ?1)",
                "DELETE FROM hidden WHERE msg_id IN (SELECT id FROM messages WHERE created_ms < ?1)",
                "DELETE FROM replies WHERE quoted_id IN (SELECT id FROM messages WHERE created_ms < ?1)",
                "DELETE FROM replies WHERE (sender_id, client_msg_id) IN
                   (SELECT sender_id, client_msg_id FROM messages WHERE created_ms < ?1)",
            ] {
                txn.prepare_cached(sql)?.execute([before_ms])?;
            }
            txn.prepare_cached("DELETE FROM messages WHERE created_ms < ?1")?
                .execute([before_ms])?;
            // Runs of keys whose messages are all gone (a run keeps the keys of messages
            // deleted one by one: look-ups read the message).
            txn.prepare_cached(
                "DELETE FROM key_runs WHERE max_id <
                   coalesce((SELECT min(id) FROM messages), (SELECT upto FROM message_keys_merged) + 1)",
            )?
            .execute([])?;
            Ok(())
        })
        .await?;
        Ok(gone)
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.write(move |txn, state| append_events(txn, state, &events))
            .await
    }

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>> {
        self.read(move |c: &Connection| {
            let row = c
                .prepare_cached(
                    "SELECT id, sender_id, created_ms, body, recipient_seq FROM messages WHERE id = ?1",
                )?
                .query_row([msg_id as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, i64>(4)? as u64,
                    ))
                })
                .optional()?;
            let Some((id, sender, time, body, seq)) = row else {
                return Ok(None);
            };
            let body = match body {
                Some(b) => Some(
                    v1::Message::decode(&b[..])
                        .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?,
                ),
                None => None,
            };
            Ok(Some(MessageInfo {
                msg_id: id,
                sender_id: sender,
                time_ms: time,
                seq,
                body,
            }))
        })
        .await
    }

    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)> {
        self.write(move |txn, state| {
            let n = txn
                .prepare_cached(
                    "UPDATE messages SET body = NULL WHERE id = ?1 AND body IS NOT NULL",
                )?
                .execute([msg_id as i64])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            super::msgops::forget_recalled(txn, state, msg_id)?;
            let gseq = match group {
                Some((g, entry)) => Some(log_append(txn, g, None, Some(&entry), entry.time_ms)?),
                None => None,
            };
            let seqs = append_events(txn, state, &inbox)?;
            Ok((gseq, seqs))
        })
        .await
    }
}
