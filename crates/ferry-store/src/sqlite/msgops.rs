//! SQLite: edits, reactions, hidden messages, pins and replies ([`MsgOpsStore`]).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, OptionalExtension, Transaction};

use super::groups::log_append;
use super::inbox::append_events;
use super::writer::WriterState;
use super::SqliteStore;
use crate::msgops::{count_group, count_inbox, edited, scrubbed};
use crate::{
    Logged, MessageEdit, MsgOpsStore, PinChange, PinRow, Pinned, Reacted, ReactionChange,
    ReactionCount, Result, StoreError,
};

/// A message's live body; `NotFound` when there is none or it was recalled.
fn live_body(txn: &Transaction, msg_id: u64) -> Result<v1::Message> {
    let body: Option<Vec<u8>> = txn
        .prepare_cached("SELECT body FROM messages WHERE id = ?1")?
        .query_row([msg_id as i64], |r| r.get(0))
        .optional()?
        .flatten();
    let body = body.ok_or(StoreError::NotFound)?;
    v1::Message::decode(&body[..])
        .map_err(|e| StoreError::Corrupt(format!("message {msg_id}: {e}")))
}

/// Logs a change in a group's log and inboxes.
fn log(
    txn: &Transaction,
    state: &mut WriterState,
    group: Option<&(u64, v1::GroupEntry)>,
    inbox: &[crate::NewEvent],
) -> Result<Logged> {
    let gseq = match group {
        Some((g, entry)) => Some(log_append(txn, *g, None, Some(entry), entry.time_ms)?),
        None => None,
    };
    let seqs = append_events(txn, state, inbox)?;
    Ok(Logged { gseq, seqs })
}

/// Empties the quotes of `quoted` in the replies stored (inside a write).
pub(super) fn scrub_quotes(txn: &Transaction, state: &mut WriterState, quoted: u64) -> Result<u64> {
    let keys: Vec<(i64, i64)> = txn
        .prepare_cached("SELECT sender_id, client_msg_id FROM replies WHERE quoted_id = ?1")?
        .query_map([quoted as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // A reply is found by its key, merged or still in the writer's memory (writer.rs,
    // `KeyTail`); a key may name a message deleted since, and a recalled reply has no
    // quote left to empty. Each key is a message of its own (`replies` holds it once).
    let mut n = 0;
    for (sender, cmid) in keys {
        let Some(id) = state.stored_id(txn, sender as u64, cmid as u64)? else {
            continue;
        };
        let body = match live_body(txn, id) {
            Ok(body) => body,
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        if let Some(b) = scrubbed(body, quoted) {
            txn.prepare_cached("UPDATE messages SET body = ?2 WHERE id = ?1")?
                .execute(params![id as i64, b.encode_to_vec()])?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a recall deletes besides the body: the edit history (the recalled content must
/// leave the server), the reactions and pins of the message, and its quotes' snippets.
pub(super) fn forget_recalled(
    txn: &Transaction,
    state: &mut WriterState,
    msg_id: u64,
) -> Result<()> {
    for sql in [
        "DELETE FROM message_edits WHERE msg_id = ?1",
        "DELETE FROM reactions WHERE msg_id = ?1",
        "DELETE FROM pins WHERE msg_id = ?1",
    ] {
        txn.prepare_cached(sql)?.execute([msg_id as i64])?;
    }
    scrub_quotes(txn, state, msg_id)?;
    Ok(())
}

fn emoji_count(txn: &Transaction, msg_id: u64, emoji: &str) -> Result<u32> {
    Ok(txn
        .prepare_cached("SELECT count(*) FROM reactions WHERE msg_id = ?1 AND emoji = ?2")?
        .query_row(params![msg_id as i64, emoji], |r| r.get::<_, i64>(0))? as u32)
}

#[async_trait]
impl MsgOpsStore for SqliteStore {
    async fn note_reply(&self, quoted_id: u64, sender_id: u64, client_msg_id: u64) -> Result<()> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO replies (sender_id, client_msg_id, quoted_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sender_id, client_msg_id) DO NOTHING",
            )?
            .execute(params![
                sender_id as i64,
                client_msg_id as i64,
                quoted_id as i64
            ])?;
            Ok(())
        })
        .await
    }

    async fn scrub_quotes(&self, quoted_id: u64) -> Result<u64> {
        self.write(move |txn, state| scrub_quotes(txn, state, quoted_id))
            .await
    }

    async fn edit_message(&self, e: MessageEdit) -> Result<Option<Logged>> {
        self.write(move |txn, state| {
            let body = live_body(txn, e.msg_id)?;
            let before = body.text.clone();
            let Some(new) = edited(body, &e.text, e.edited_ms) else {
                return Ok(None);
            };
            txn.prepare_cached(
                "INSERT INTO message_edits (msg_id, sender_id, text, edited_ms)
                 SELECT id, sender_id, ?2, ?3 FROM messages WHERE id = ?1",
            )?
            .execute(params![e.msg_id as i64, before, e.edited_ms])?;
            txn.prepare_cached("UPDATE messages SET body = ?2 WHERE id = ?1")?
                .execute(params![e.msg_id as i64, new.encode_to_vec()])?;
            log(txn, state, e.group.as_ref(), &e.inbox).map(Some)
        })
        .await
    }

    async fn message_edits(&self, msg_id: u64) -> Result<Vec<(String, i64)>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT text, edited_ms FROM message_edits WHERE msg_id = ?1 ORDER BY edited_ms, rowid",
            )?
            .query_map([msg_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn react(&self, mut ch: ReactionChange) -> Result<Reacted> {
        self.write(move |txn, state| {
            live_body(txn, ch.msg_id)?;
            let (msg, user) = (ch.msg_id as i64, ch.user_id as i64);
            let changed = if ch.add {
                let held: i64 = txn
                    .prepare_cached(
                        "SELECT count(*) FROM reactions WHERE msg_id = ?1 AND user_id = ?2 AND emoji <> ?3",
                    )?
                    .query_row(params![msg, user, ch.emoji], |r| r.get(0))?;
                let has = txn
                    .prepare_cached(
                        "SELECT 1 FROM reactions WHERE msg_id = ?1 AND user_id = ?2 AND emoji = ?3",
                    )?
                    .exists(params![msg, user, ch.emoji])?;
                if !has && held >= i64::from(ch.max_per_user) {
                    return Ok(Reacted::TooMany);
                }
                txn.prepare_cached(
                    "INSERT INTO reactions (msg_id, user_id, emoji, time_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (msg_id, user_id, emoji) DO NOTHING",
                )?
                .execute(params![msg, user, ch.emoji, ch.time_ms])?
                    > 0
            } else {
                txn.prepare_cached(
                    "DELETE FROM reactions WHERE msg_id = ?1 AND user_id = ?2 AND emoji = ?3",
                )?
                .execute(params![msg, user, ch.emoji])?
                    > 0
            };
            let count = emoji_count(txn, ch.msg_id, &ch.emoji)?;
            if !changed {
                return Ok(Reacted::Unchanged { count });
            }
            if let Some((_, e)) = &mut ch.group {
                count_group(e, count);
            }
            for ev in &mut ch.inbox {
                count_inbox(&mut ev.entry, count);
            }
            let logged = log(txn, state, ch.group.as_ref(), &ch.inbox)?;
            Ok(Reacted::Changed { count, logged })
        })
        .await
    }

    async fn reaction_counts(
        &self,
        msg_id: u64,
        viewer: u64,
        max: u32,
    ) -> Result<Vec<ReactionCount>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT emoji, count(*) AS n, max(user_id = ?2) FROM reactions WHERE msg_id = ?1
                 GROUP BY emoji ORDER BY n DESC, emoji LIMIT ?3",
            )?
            .query_map(params![msg_id as i64, viewer as i64, i64::from(max)], |r| {
                Ok(ReactionCount {
                    emoji: r.get(0)?,
                    count: r.get::<_, i64>(1)? as u32,
                    mine: r.get::<_, i64>(2)? != 0,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn reactors(
        &self,
        msg_id: u64,
        emoji: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64)>> {
        let emoji = emoji.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT user_id, time_ms FROM reactions WHERE msg_id = ?1 AND emoji = ?2 AND user_id > ?3
                 ORDER BY user_id LIMIT ?4",
            )?
            .query_map(
                params![msg_id as i64, emoji, after as i64, i64::from(limit)],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn hide_messages(
        &self,
        user_id: u64,
        msg_ids: Vec<u64>,
        mut entry: v1::Entry,
    ) -> Result<Option<(u64, Vec<u64>)>> {
        self.write(move |txn, state| {
            let mut new = Vec::new();
            for id in msg_ids {
                let n = txn
                    .prepare_cached(
                        "INSERT INTO hidden (user_id, msg_id, time_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user_id, msg_id) DO NOTHING",
                    )?
                    .execute(params![user_id as i64, id as i64, entry.time_ms])?;
                if n > 0 {
                    new.push(id);
                }
            }
            if new.is_empty() {
                return Ok(None);
            }
            entry.kind = Some(v1::entry::Kind::Hide(v1::Hide {
                msg_ids: new.clone(),
            }));
            let seqs = append_events(txn, state, &[crate::NewEvent { user_id, entry }])?;
            Ok(Some((seqs[0], new)))
        })
        .await
    }

    async fn hidden_among(&self, user_id: u64, msg_ids: Vec<u64>) -> Result<Vec<u64>> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT 1 FROM hidden WHERE user_id = ?1 AND msg_id = ?2")?;
            let mut out = Vec::new();
            for id in msg_ids {
                if stmt.exists(params![user_id as i64, id as i64])? {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pin_message(&self, ch: PinChange) -> Result<Pinned> {
        self.write(move |txn, state| {
            let changed = if ch.pin {
                live_body(txn, ch.msg_id)?;
                let pinned = txn
                    .prepare_cached("SELECT 1 FROM pins WHERE conv = ?1 AND msg_id = ?2")?
                    .exists(params![ch.conv, ch.msg_id as i64])?;
                if pinned {
                    false
                } else {
                    let n: i64 = txn
                        .prepare_cached("SELECT count(*) FROM pins WHERE conv = ?1")?
                        .query_row([&ch.conv], |r| r.get(0))?;
                    if n >= i64::from(ch.max_pins) {
                        return Ok(Pinned::TooMany);
                    }
                    txn.prepare_cached(
                        "INSERT INTO pins (conv, msg_id, by_user_id, time_ms) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        ch.conv,
                        ch.msg_id as i64,
                        ch.by_user_id as i64,
                        ch.time_ms
                    ])?;
                    true
                }
            } else {
                txn.prepare_cached("DELETE FROM pins WHERE conv = ?1 AND msg_id = ?2")?
                    .execute(params![ch.conv, ch.msg_id as i64])?
                    > 0
            };
            if !changed {
                return Ok(Pinned::Unchanged);
            }
            Ok(Pinned::Changed(log(txn, state, ch.group.as_ref(), &ch.inbox)?))
        })
        .await
    }

    async fn pins(&self, conv: &str) -> Result<Vec<PinRow>> {
        let conv = conv.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT msg_id, by_user_id, time_ms FROM pins WHERE conv = ?1 ORDER BY time_ms DESC, msg_id DESC",
            )?
            .query_map([conv], |r| {
                Ok(PinRow {
                    msg_id: r.get::<_, i64>(0)? as u64,
                    by_user_id: r.get::<_, i64>(1)? as u64,
                    time_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}
