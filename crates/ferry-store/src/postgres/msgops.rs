//! PostgreSQL: edits, reactions, hidden messages, pins and replies ([`MsgOpsStore`]).
//!
//! A change to a message locks the message's row first (`FOR UPDATE`), so concurrent
//! reactions on one message count in one order (each entry's `count` is the count
//! after exactly its change); pins lock their conversation (an advisory lock on its
//! key) for the limit. Then, like a recall, the group's row (its log) and the users'
//! rows (their inboxes), in that order.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use ferry_proto::{v1, ProtoMessage};

use super::groups::log_append;
use super::inbox::{decode_message, lock_and_append_events};
use super::PgStore;
use crate::msgops::{count_group, count_inbox, edited, scrubbed};
use crate::{
    Logged, MessageEdit, MsgOpsStore, NewEvent, PinChange, PinRow, Pinned, Reacted, ReactionChange,
    ReactionCount, Result, StoreError,
};

/// A message's live body, its row locked; `NotFound` when there is none or it was
/// recalled.
async fn lock_live(txn: &Transaction<'_>, msg_id: u64) -> Result<v1::Message> {
    let row = txn
        .query_opt(
            "SELECT body FROM messages WHERE id = $1 FOR UPDATE",
            &[&(msg_id as i64)],
        )
        .await?;
    let body: Option<Vec<u8>> = row.and_then(|r| r.get(0));
    decode_message(msg_id as i64, &body.ok_or(StoreError::NotFound)?)
}

async fn log(
    txn: &Transaction<'_>,
    group: Option<&(u64, v1::GroupEntry)>,
    inbox: &[NewEvent],
) -> Result<Logged> {
    let gseq = match group {
        Some((g, entry)) => Some(log_append(txn, *g, None, Some(entry), entry.time_ms).await?),
        None => None,
    };
    let seqs = lock_and_append_events(txn, inbox).await?;
    Ok(Logged { gseq, seqs })
}

/// Empties the quotes of `quoted` in the replies stored (inside a transaction).
pub(super) async fn scrub_quotes(txn: &Transaction<'_>, quoted: u64) -> Result<u64> {
    let rows = txn
        .query(
            "SELECT m.id, m.body FROM replies r JOIN messages m
               ON m.sender_id = r.sender_id AND m.client_msg_id = r.client_msg_id
             WHERE r.quoted_id = $1 AND m.body IS NOT NULL ORDER BY m.id FOR UPDATE OF m",
            &[&(quoted as i64)],
        )
        .await?;
    let mut n = 0;
    for r in rows {
        let id: i64 = r.get(0);
        let body: Vec<u8> = r.get(1);
        let mut body = decode_message(id, &body)?;
        body.msg_id = 0;
        if let Some(b) = scrubbed(body, quoted) {
            txn.execute(
                "UPDATE messages SET body = $2 WHERE id = $1",
                &[&id, &b.encode_to_vec()],
            )
            .await?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a recall deletes besides the body: the edit history, the reactions and pins of
/// the message, and its quotes' snippets.
pub(super) async fn forget_recalled(txn: &Transaction<'_>, msg_id: u64) -> Result<()> {
    for sql in [
        "DELETE FROM message_edits WHERE msg_id = $1",
        "DELETE FROM reactions WHERE msg_id = $1",
        "DELETE FROM pins WHERE msg_id = $1",
    ] {
        txn.execute(sql, &[&(msg_id as i64)]).await?;
    }
    scrub_quotes(txn, msg_id).await?;
    Ok(())
}

#[async_trait]
impl MsgOpsStore for PgStore {
    async fn note_reply(&self, quoted_id: u64, sender_id: u64, client_msg_id: u64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO replies (sender_id, client_msg_id, quoted_id) VALUES ($1, $2, $3)
                 ON CONFLICT (sender_id, client_msg_id) DO NOTHING",
                &[
                    &(sender_id as i64),
                    &(client_msg_id as i64),
                    &(quoted_id as i64),
                ],
            )
            .await?;
        Ok(())
    }

    async fn scrub_quotes(&self, quoted_id: u64) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = scrub_quotes(&txn, quoted_id).await?;
        txn.commit().await?;
        Ok(n)
    }

    async fn edit_message(&self, e: MessageEdit) -> Result<Option<Logged>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let mut body = lock_live(&txn, e.msg_id).await?;
        // The id is the row's; the stored body does not carry it.
        body.msg_id = 0;
        let before = body.text.clone();
        let Some(new) = edited(body, &e.text, e.edited_ms) else {
            return Ok(None);
        };
        txn.execute(
            "INSERT INTO message_edits (msg_id, sender_id, text, edited_ms)
             SELECT id, sender_id, $2, $3 FROM messages WHERE id = $1",
            &[&(e.msg_id as i64), &before, &e.edited_ms],
        )
        .await?;
        txn.execute(
            "UPDATE messages SET body = $2 WHERE id = $1",
            &[&(e.msg_id as i64), &new.encode_to_vec()],
        )
        .await?;
        let logged = log(&txn, e.group.as_ref(), &e.inbox).await?;
        txn.commit().await?;
        Ok(Some(logged))
    }

    async fn message_edits(&self, msg_id: u64) -> Result<Vec<(String, i64)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT text, edited_ms FROM message_edits WHERE msg_id = $1 ORDER BY edited_ms, ctid",
                &[&(msg_id as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn react(&self, mut ch: ReactionChange) -> Result<Reacted> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        lock_live(&txn, ch.msg_id).await?;
        let (msg, user) = (ch.msg_id as i64, ch.user_id as i64);
        let changed = if ch.add {
            let held: i64 = txn
                .query_one(
                    "SELECT count(*) FROM reactions WHERE msg_id = $1 AND user_id = $2 AND emoji <> $3",
                    &[&msg, &user, &ch.emoji],
                )
                .await?
                .get(0);
            let has = txn
                .query_opt(
                    "SELECT 1 FROM reactions WHERE msg_id = $1 AND user_id = $2 AND emoji = $3",
                    &[&msg, &user, &ch.emoji],
                )
                .await?
                .is_some();
            if !has && held >= i64::from(ch.max_per_user) {
                return Ok(Reacted::TooMany);
            }
            txn.execute(
                "INSERT INTO reactions (msg_id, user_id, emoji, time_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (msg_id, user_id, emoji) DO NOTHING",
                &[&msg, &user, &ch.emoji, &ch.time_ms],
            )
            .await?
                > 0
        } else {
            txn.execute(
                "DELETE FROM reactions WHERE msg_id = $1 AND user_id = $2 AND emoji = $3",
                &[&msg, &user, &ch.emoji],
            )
            .await?
                > 0
        };
        let count: i64 = txn
            .query_one(
                "SELECT count(*) FROM reactions WHERE msg_id = $1 AND emoji = $2",
                &[&msg, &ch.emoji],
            )
            .await?
            .get(0);
        let count = count as u32;
        if !changed {
            return Ok(Reacted::Unchanged { count });
        }
        if let Some((_, e)) = &mut ch.group {
            count_group(e, count);
        }
        for ev in &mut ch.inbox {
            count_inbox(&mut ev.entry, count);
        }
        let logged = log(&txn, ch.group.as_ref(), &ch.inbox).await?;
        txn.commit().await?;
        Ok(Reacted::Changed { count, logged })
    }

    async fn reaction_counts(
        &self,
        msg_id: u64,
        viewer: u64,
        max: u32,
    ) -> Result<Vec<ReactionCount>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT emoji, count(*) AS n, bool_or(user_id = $2) FROM reactions WHERE msg_id = $1
                 GROUP BY emoji ORDER BY n DESC, emoji COLLATE \"C\" LIMIT $3",
                &[&(msg_id as i64), &(viewer as i64), &i64::from(max)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReactionCount {
                emoji: r.get(0),
                count: r.get::<_, i64>(1) as u32,
                mine: r.get(2),
            })
            .collect())
    }

    async fn reactors(
        &self,
        msg_id: u64,
        emoji: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT user_id, time_ms FROM reactions WHERE msg_id = $1 AND emoji = $2 AND user_id > $3
                 ORDER BY user_id LIMIT $4",
                &[&(msg_id as i64), &emoji, &(after as i64), &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    async fn hide_messages(
        &self,
        user_id: u64,
        msg_ids: Vec<u64>,
        mut entry: v1::Entry,
    ) -> Result<Option<(u64, Vec<u64>)>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        // The user's row first, as every inbox write: concurrent hides of one user
        // queue here.
        super::inbox::lock_users(&txn, &[user_id]).await?;
        let mut new = Vec::new();
        for id in msg_ids {
            let n = txn
                .execute(
                    "INSERT INTO hidden (user_id, msg_id, time_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, msg_id) DO NOTHING",
                    &[&(user_id as i64), &(id as i64), &entry.time_ms],
                )
                .await?;
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
        let seqs = super::inbox::append_events(&txn, &[NewEvent { user_id, entry }]).await?;
        txn.commit().await?;
        Ok(Some((seqs[0], new)))
    }

    async fn hidden_among(&self, user_id: u64, msg_ids: Vec<u64>) -> Result<Vec<u64>> {
        let client = self.client().await?;
        let ids: Vec<i64> = msg_ids.iter().map(|&i| i as i64).collect();
        let rows = client
            .query(
                "SELECT msg_id FROM hidden WHERE user_id = $1 AND msg_id = ANY($2)",
                &[&(user_id as i64), &ids],
            )
            .await?;
        let found: std::collections::HashSet<u64> =
            rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        Ok(msg_ids.into_iter().filter(|i| found.contains(i)).collect())
    }

    async fn pin_message(&self, ch: PinChange) -> Result<Pinned> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        if ch.pin {
            lock_live(&txn, ch.msg_id).await?;
        }
        txn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&ch.conv])
            .await?;
        let (conv, msg) = (&ch.conv, ch.msg_id as i64);
        let changed = if ch.pin {
            let pinned = txn
                .query_opt(
                    "SELECT 1 FROM pins WHERE conv = $1 AND msg_id = $2",
                    &[conv, &msg],
                )
                .await?
                .is_some();
            if pinned {
                false
            } else {
                let n: i64 = txn
                    .query_one("SELECT count(*) FROM pins WHERE conv = $1", &[conv])
                    .await?
                    .get(0);
                if n >= i64::from(ch.max_pins) {
                    return Ok(Pinned::TooMany);
                }
                txn.execute(
                    "INSERT INTO pins (conv, msg_id, by_user_id, time_ms) VALUES ($1, $2, $3, $4)",
                    &[conv, &msg, &(ch.by_user_id as i64), &ch.time_ms],
                )
                .await?;
                true
            }
        } else {
            txn.execute(
                "DELETE FROM pins WHERE conv = $1 AND msg_id = $2",
                &[conv, &msg],
            )
            .await?
                > 0
        };
        if !changed {
            return Ok(Pinned::Unchanged);
        }
        let logged = log(&txn, ch.group.as_ref(), &ch.inbox).await?;
        txn.commit().await?;
        Ok(Pinned::Changed(logged))
    }

    async fn pins(&self, conv: &str) -> Result<Vec<PinRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT msg_id, by_user_id, time_ms FROM pins WHERE conv = $1
                 ORDER BY time_ms DESC, msg_id DESC",
                &[&conv],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PinRow {
                msg_id: r.get::<_, i64>(0) as u64,
                by_user_id: r.get::<_, i64>(1) as u64,
                time_ms: r.get(2),
            })
            .collect())
    }
}
