//! PostgreSQL: per-user conversation state, conversations' retention, and pruning by it
//! ([`ConvStore`]). A mute is the `push_prefs` row (see `crate::conv`).
//!
//! A state change locks the user's row first (as an inbox append does), so two changes of
//! one user's conversations apply one after the other, each reading the other's result.
//! A retention change locks its group's row (the log) or the two parties' rows.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use ferry_proto::{v1, ProtoMessage};

use super::groups::log_append;
use super::inbox::{lock_and_append_events, lock_users};
use super::PgStore;
use crate::conv::{apply, changed, fill, mute_of, mute_write};
use crate::{
    ConvChange, ConvDone, ConvKey, ConvRow, ConvStore, Logged, NewEvent, Pruned, Result,
    RetentionChange, SharedConv, StoreError,
};

const MUTED: i32 = v1::PushMode::Muted as i32;

fn shared(user: u64, key: ConvKey) -> SharedConv {
    if key.group_id != 0 {
        SharedConv::Group(key.group_id)
    } else {
        SharedConv::direct(user, key.peer)
    }
}

fn shared_cols(c: SharedConv) -> (i64, i64, i64) {
    match c {
        SharedConv::Direct(a, b) => (a as i64, b as i64, 0),
        SharedConv::Group(g) => (0, 0, g as i64),
    }
}

async fn retention(txn: &Transaction<'_>, conv: SharedConv) -> Result<u32> {
    let (a, b, g) = shared_cols(conv);
    Ok(txn
        .query_opt(
            "SELECT retention_secs FROM conv_retention
             WHERE a_user_id = $1 AND b_user_id = $2 AND group_id = $3",
            &[&a, &b, &g],
        )
        .await?
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0) as u32)
}

async fn state(txn: &Transaction<'_>, user: u64, key: ConvKey, now_ms: i64) -> Result<ConvRow> {
    let (u, p, g) = (user as i64, key.peer as i64, key.group_id as i64);
    let mut row = match txn
        .query_opt(
            "SELECT archived, unread, draft, draft_ms, cleared_before, updated_ms FROM conv_state
             WHERE user_id = $1 AND peer = $2 AND group_id = $3",
            &[&u, &p, &g],
        )
        .await?
    {
        Some(r) => ConvRow {
            key,
            archived: r.get(0),
            unread: r.get(1),
            draft: r.get(2),
            draft_ms: r.get(3),
            cleared_before_msg_id: r.get::<_, i64>(4) as u64,
            updated_ms: r.get(5),
            ..Default::default()
        },
        None => ConvRow {
            key,
            ..Default::default()
        },
    };
    let mode = txn
        .query_opt(
            "SELECT mode, until_ms FROM push_prefs WHERE user_id = $1 AND peer = $2 AND group_id = $3",
            &[&u, &p, &g],
        )
        .await?
        .map(|r| {
            let mode: i32 = r.get(0);
            (u8::try_from(mode).unwrap_or(0), r.get::<_, i64>(1))
        });
    row.muted_until_ms = mute_of(mode, now_ms);
    row.retention_secs = retention(txn, shared(user, key)).await?;
    Ok(row)
}

async fn put_state(txn: &Transaction<'_>, user: u64, row: &ConvRow) -> Result<()> {
    txn.execute(
        "INSERT INTO conv_state (user_id, peer, group_id, archived, unread, draft, draft_ms,
                                 cleared_before, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (user_id, peer, group_id) DO UPDATE SET archived = excluded.archived,
           unread = excluded.unread, draft = excluded.draft, draft_ms = excluded.draft_ms,
           cleared_before = excluded.cleared_before, updated_ms = excluded.updated_ms",
        &[
            &(user as i64),
            &(row.key.peer as i64),
            &(row.key.group_id as i64),
            &row.archived,
            &row.unread,
            &row.draft,
            &row.draft_ms,
            &(row.cleared_before_msg_id as i64),
            &row.updated_ms,
        ],
    )
    .await?;
    Ok(())
}

/// The conversation's newest message as `user` sees it (see the SQLite store's).
async fn newest(txn: &Transaction<'_>, user: u64, key: ConvKey) -> Result<u64> {
    let row = if key.group_id != 0 {
        txn.query_opt(
            "SELECT max(msg_id) FROM group_log WHERE group_id = $1",
            &[&(key.group_id as i64)],
        )
        .await?
    } else if key.peer == user {
        txn.query_opt(
            "SELECT max(msg_id) FROM inbox WHERE user_id = $1",
            &[&(user as i64)],
        )
        .await?
    } else {
        txn.query_opt(
            "SELECT i.msg_id FROM inbox i JOIN messages m ON m.id = i.msg_id
             WHERE i.user_id = $1 AND (m.sender_id = $2 OR (m.sender_id = $1 AND EXISTS (
               SELECT 1 FROM inbox j WHERE j.user_id = $2 AND j.seq = m.recipient_seq
                 AND j.msg_id = m.id)))
             ORDER BY i.seq DESC LIMIT 1",
            &[&(user as i64), &(key.peer as i64)],
        )
        .await?
    };
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64)
}

type Doomed = Vec<(i64, i64, i64, i64, Option<Vec<u8>>)>;

async fn doomed(txn: &Transaction<'_>, conv: SharedConv, before_ms: i64) -> Result<Doomed> {
    let rows = match conv {
        SharedConv::Group(g) => {
            txn.query(
                "SELECT m.id, m.sender_id, m.sender_seq, m.recipient_seq, m.body FROM group_log l
                 JOIN messages m ON m.id = l.msg_id
                 WHERE l.group_id = $1 AND m.created_ms < $2 ORDER BY m.id FOR UPDATE OF m",
                &[&(g as i64), &before_ms],
            )
            .await?
        }
        SharedConv::Direct(a, b) => {
            txn.query(
                "SELECT m.id, m.sender_id, m.sender_seq, m.recipient_seq, m.body FROM inbox i
                 JOIN messages m ON m.id = i.msg_id
                 WHERE i.user_id = $1 AND m.created_ms < $3 AND (
                   ($1 = $2 AND m.sender_id = $1 AND m.sender_seq = m.recipient_seq)
                   OR ($1 <> $2 AND (m.sender_id = $2 OR (m.sender_id = $1 AND EXISTS (
                     SELECT 1 FROM inbox j WHERE j.user_id = $2 AND j.seq = m.recipient_seq
                       AND j.msg_id = m.id)))))
                 ORDER BY m.id FOR UPDATE OF m",
                &[&(a as i64), &(b as i64), &before_ms],
            )
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}

fn media_of(body: &[u8]) -> Vec<String> {
    let Ok(m) = v1::Message::decode(body) else {
        return Vec::new();
    };
    let Some(r) = m.media else {
        return Vec::new();
    };
    [r.media_id, r.thumb_id]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
}

async fn forget_messages(txn: &Transaction<'_>, ids: &[i64]) -> Result<()> {
    for sql in [
        "DELETE FROM message_edits WHERE msg_id = ANY($1)",
        "DELETE FROM reactions WHERE msg_id = ANY($1)",
        "DELETE FROM pins WHERE msg_id = ANY($1)",
        "DELETE FROM hidden WHERE msg_id = ANY($1)",
        "DELETE FROM replies WHERE quoted_id = ANY($1)",
        "DELETE FROM replies WHERE (sender_id, client_msg_id) IN
           (SELECT sender_id, client_msg_id FROM messages WHERE id = ANY($1))",
    ] {
        txn.execute(sql, &[&ids]).await?;
    }
    Ok(())
}

#[async_trait]
impl ConvStore for PgStore {
    async fn set_conv(&self, ch: ConvChange) -> Result<ConvDone> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        lock_users(&txn, &[ch.user_id]).await?;
        let before = state(&txn, ch.user_id, ch.key, ch.time_ms).await?;
        let newest = if ch.clear {
            newest(&txn, ch.user_id, ch.key).await?
        } else {
            0
        };
        let after = apply(before.clone(), &ch, newest);
        if !changed(&before, &after) && !ch.log_anyway {
            return Ok(ConvDone::Unchanged(before));
        }
        put_state(&txn, ch.user_id, &after).await?;
        if after.muted_until_ms != before.muted_until_ms {
            let (u, p, g) = (
                ch.user_id as i64,
                ch.key.peer as i64,
                ch.key.group_id as i64,
            );
            match mute_write(Some(after.muted_until_ms)) {
                Some(Some((mode, until))) => {
                    txn.execute(
                        "INSERT INTO push_prefs (user_id, peer, group_id, mode, until_ms)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (user_id, peer, group_id) DO UPDATE
                         SET mode = excluded.mode, until_ms = excluded.until_ms",
                        &[&u, &p, &g, &i32::from(mode), &until],
                    )
                    .await?;
                }
                _ => {
                    txn.execute(
                        "DELETE FROM push_prefs WHERE user_id = $1 AND peer = $2
                           AND group_id = $3 AND mode = $4",
                        &[&u, &p, &g, &MUTED],
                    )
                    .await?;
                }
            }
        }
        let mut entry = ch.entry.clone();
        fill(&mut entry, &after);
        let seqs = lock_and_append_events(
            &txn,
            &[NewEvent {
                user_id: ch.user_id,
                entry: entry.clone(),
            }],
        )
        .await?;
        txn.commit().await?;
        Ok(ConvDone::Changed {
            row: after,
            seq: seqs[0],
            entry: Box::new(entry),
        })
    }

    async fn conv_state(&self, user_id: u64, key: ConvKey, now_ms: i64) -> Result<ConvRow> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        state(&txn, user_id, key, now_ms).await
    }

    async fn conv_states(&self, user_id: u64, now_ms: i64) -> Result<Vec<ConvRow>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let u = user_id as i64;
        let mut keys: Vec<ConvKey> = txn
            .query(
                "SELECT peer, group_id FROM conv_state WHERE user_id = $1
                 UNION SELECT peer, group_id FROM push_prefs
                   WHERE user_id = $1 AND mode = $2 AND (until_ms = 0 OR until_ms > $3)
                 UNION SELECT CASE WHEN a_user_id = $1 THEN b_user_id ELSE a_user_id END, 0
                   FROM conv_retention WHERE group_id = 0 AND (a_user_id = $1 OR b_user_id = $1)
                 UNION SELECT 0, r.group_id FROM conv_retention r
                   JOIN group_members gm ON gm.group_id = r.group_id AND gm.user_id = $1
                   WHERE r.group_id <> 0",
                &[&u, &MUTED, &now_ms],
            )
            .await?
            .iter()
            .map(|r| ConvKey {
                peer: r.get::<_, i64>(0) as u64,
                group_id: r.get::<_, i64>(1) as u64,
            })
            .collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(state(&txn, user_id, k, now_ms).await?);
        }
        Ok(out)
    }

    async fn cleared(&self, user_id: u64) -> Result<Vec<(ConvKey, u64)>> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT peer, group_id, cleared_before FROM conv_state
                 WHERE user_id = $1 AND cleared_before > 0 ORDER BY peer, group_id",
                &[&(user_id as i64)],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    ConvKey {
                        peer: r.get::<_, i64>(0) as u64,
                        group_id: r.get::<_, i64>(1) as u64,
                    },
                    r.get::<_, i64>(2) as u64,
                )
            })
            .collect())
    }

    async fn set_retention(&self, ch: RetentionChange) -> Result<Option<(Logged, Vec<NewEvent>)>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        // The group's row (its log) or the parties' rows first: changes of one
        // conversation's retention apply one after the other.
        match ch.conv {
            SharedConv::Group(g) => {
                txn.query_opt(
                    "SELECT 1 FROM groups WHERE id = $1 FOR UPDATE",
                    &[&(g as i64)],
                )
                .await?
                .ok_or(StoreError::NotFound)?;
            }
            SharedConv::Direct(a, b) => lock_users(&txn, &[a, b]).await?,
        }
        if retention(&txn, ch.conv).await? == ch.retention_secs {
            return Ok(None);
        }
        let (a, b, g) = shared_cols(ch.conv);
        if ch.retention_secs == 0 {
            txn.execute(
                "DELETE FROM conv_retention WHERE a_user_id = $1 AND b_user_id = $2 AND group_id = $3",
                &[&a, &b, &g],
            )
            .await?;
        } else {
            txn.execute(
                "INSERT INTO conv_retention (a_user_id, b_user_id, group_id, retention_secs, set_by, time_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (a_user_id, b_user_id, group_id) DO UPDATE SET
                   retention_secs = excluded.retention_secs, set_by = excluded.set_by,
                   time_ms = excluded.time_ms",
                &[
                    &a,
                    &b,
                    &g,
                    &i64::from(ch.retention_secs),
                    &(ch.by_user_id as i64),
                    &ch.time_ms,
                ],
            )
            .await?;
        }
        let gseq = match &ch.group {
            Some((g, entry)) => Some(log_append(&txn, *g, None, Some(entry), entry.time_ms).await?),
            None => None,
        };
        let mut events = Vec::with_capacity(ch.inbox.len());
        for (key, mut ev) in ch.inbox {
            let row = state(&txn, ev.user_id, key, ch.time_ms).await?;
            fill(&mut ev.entry, &row);
            events.push(ev);
        }
        let seqs = lock_and_append_events(&txn, &events).await?;
        txn.commit().await?;
        Ok(Some((Logged { gseq, seqs }, events)))
    }

    async fn retentions(&self) -> Result<Vec<(SharedConv, u32)>> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT a_user_id, b_user_id, group_id, retention_secs FROM conv_retention
                 ORDER BY group_id, a_user_id, b_user_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                let (a, b, g) = (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, i64>(1) as u64,
                    r.get::<_, i64>(2) as u64,
                );
                let conv = if g != 0 {
                    SharedConv::Group(g)
                } else {
                    SharedConv::Direct(a, b)
                };
                (conv, r.get::<_, i64>(3) as u32)
            })
            .collect())
    }

    async fn prune_conversation(&self, conv: SharedConv, before_ms: i64) -> Result<Pruned> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let rows = doomed(&txn, conv, before_ms).await?;
        if rows.is_empty() {
            return Ok(Pruned::default());
        }
        let mut media = Vec::new();
        for (_, _, _, _, body) in &rows {
            if let Some(b) = body {
                media.extend(media_of(b));
            }
        }
        media.sort();
        media.dedup();
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        forget_messages(&txn, &ids).await?;
        if let SharedConv::Direct(a, b) = conv {
            let recipient = |sender: i64| if sender == a as i64 { b } else { a } as i64;
            let del = txn
                .prepare_cached("DELETE FROM inbox WHERE user_id = $1 AND seq = $2 AND msg_id = $3")
                .await?;
            for (id, sender, sseq, rseq, _) in &rows {
                txn.execute(&del, &[sender, sseq, id]).await?;
                txn.execute(&del, &[&recipient(*sender), rseq, id]).await?;
            }
        }
        txn.execute("DELETE FROM messages WHERE id = ANY($1)", &[&ids])
            .await?;
        txn.commit().await?;
        Ok(Pruned {
            messages: ids.len() as u64,
            media,
        })
    }

    async fn media_referenced(&self, media_id: &str, since_ms: i64) -> Result<bool> {
        if media_id.is_empty() {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM messages WHERE created_ms >= $1 AND body IS NOT NULL
                   AND position($2::bytea in body) > 0 LIMIT 1",
                &[&since_ms, &media_id.as_bytes()],
            )
            .await?
            .is_some())
    }
}
