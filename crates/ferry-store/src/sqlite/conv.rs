//! SQLite: per-user conversation state, conversations' retention, and pruning by it
//! ([`ConvStore`]). A mute is the `push_prefs` row (see `crate::conv`).

use async_trait::async_trait;
use ferry_proto::{v1, ProtoMessage};
use rusqlite::{params, Connection, OptionalExtension};

use super::groups::log_append;
use super::inbox::append_events;
use super::SqliteStore;
use crate::conv::{apply, changed, fill, mute_of, mute_write};
use crate::{
    ConvChange, ConvDone, ConvKey, ConvRow, ConvStore, Logged, NewEvent, Pruned, Result,
    RetentionChange, SharedConv, StoreError,
};

const MUTED: u8 = v1::PushMode::Muted as u8;

/// The retention of the conversation `key` is, seen by `user`.
fn shared(user: u64, key: ConvKey) -> SharedConv {
    if key.group_id != 0 {
        SharedConv::Group(key.group_id)
    } else {
        SharedConv::direct(user, key.peer)
    }
}

/// `(a_user_id, b_user_id, group_id)` of a shared conversation.
fn shared_cols(c: SharedConv) -> (i64, i64, i64) {
    match c {
        SharedConv::Direct(a, b) => (a as i64, b as i64, 0),
        SharedConv::Group(g) => (0, 0, g as i64),
    }
}

fn retention(c: &Connection, conv: SharedConv) -> Result<u32> {
    let (a, b, g) = shared_cols(conv);
    Ok(c.prepare_cached(
        "SELECT retention_secs FROM conv_retention WHERE a_user_id = ?1 AND b_user_id = ?2 AND group_id = ?3",
    )?
    .query_row(params![a, b, g], |r| r.get::<_, i64>(0))
    .optional()?
    .unwrap_or(0) as u32)
}

/// The user's state of one conversation, in a read or inside a write.
fn state(c: &Connection, user: u64, key: ConvKey, now_ms: i64) -> Result<ConvRow> {
    let (u, p, g) = (user as i64, key.peer as i64, key.group_id as i64);
    let mut row = c
        .prepare_cached(
            "SELECT archived, unread, draft, draft_ms, cleared_before, updated_ms FROM conv_state
             WHERE user_id = ?1 AND peer = ?2 AND group_id = ?3",
        )?
        .query_row(params![u, p, g], |r| {
            Ok(ConvRow {
                key,
                archived: r.get::<_, i64>(0)? != 0,
                unread: r.get::<_, i64>(1)? != 0,
                draft: r.get(2)?,
                draft_ms: r.get(3)?,
                cleared_before_msg_id: r.get::<_, i64>(4)? as u64,
                updated_ms: r.get(5)?,
                ..Default::default()
            })
        })
        .optional()?
        .unwrap_or(ConvRow {
            key,
            ..Default::default()
        });
    let mode = c
        .prepare_cached(
            "SELECT mode, until_ms FROM push_prefs WHERE user_id = ?1 AND peer = ?2 AND group_id = ?3",
        )?
        .query_row(params![u, p, g], |r| Ok((r.get::<_, u8>(0)?, r.get(1)?)))
        .optional()?;
    row.muted_until_ms = mute_of(mode, now_ms);
    row.retention_secs = retention(c, shared(user, key))?;
    Ok(row)
}

/// Stores the user's own fields of a state (mute and retention live elsewhere).
fn put_state(c: &Connection, user: u64, row: &ConvRow) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO conv_state (user_id, peer, group_id, archived, unread, draft, draft_ms,
                                 cleared_before, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (user_id, peer, group_id) DO UPDATE SET archived = excluded.archived,
           unread = excluded.unread, draft = excluded.draft, draft_ms = excluded.draft_ms,
           cleared_before = excluded.cleared_before, updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        user as i64,
        row.key.peer as i64,
        row.key.group_id as i64,
        row.archived as i64,
        row.unread as i64,
        row.draft,
        row.draft_ms,
        row.cleared_before_msg_id as i64,
        row.updated_ms
    ])?;
    Ok(())
}

/// The conversation's newest message as `user` sees it: a group's newest logged
/// message; a 1:1's newest message between the two in the user's inbox (a message of
/// the user's is the peer's when the peer's inbox holds it at its `recipient_seq`); for
/// notes to oneself, the newest message of the user's inbox (at or above the newest
/// note). 0: none.
fn newest(c: &Connection, user: u64, key: ConvKey) -> Result<u64> {
    let id: Option<i64> = if key.group_id != 0 {
        c.prepare_cached("SELECT max(msg_id) FROM group_log WHERE group_id = ?1")?
            .query_row([key.group_id as i64], |r| r.get(0))?
    } else if key.peer == user {
        c.prepare_cached("SELECT max(msg_id) FROM inbox WHERE user_id = ?1")?
            .query_row([user as i64], |r| r.get(0))?
    } else {
        c.prepare_cached(
            "SELECT i.msg_id FROM inbox i JOIN messages m ON m.id = i.msg_id
             WHERE i.user_id = ?1 AND (m.sender_id = ?2 OR (m.sender_id = ?1 AND EXISTS (
               SELECT 1 FROM inbox j WHERE j.user_id = ?2 AND j.seq = m.recipient_seq
                 AND j.msg_id = m.id)))
             ORDER BY i.seq DESC LIMIT 1",
        )?
        .query_row(params![user as i64, key.peer as i64], |r| r.get(0))
        .optional()?
    };
    Ok(id.unwrap_or(0) as u64)
}

/// The ids (with sender, seqs and body) of a conversation's messages stored before
/// `before_ms`.
type Doomed = Vec<(i64, i64, i64, i64, Option<Vec<u8>>)>;

fn doomed(c: &Connection, conv: SharedConv, before_ms: i64) -> Result<Doomed> {
    let map = |r: &rusqlite::Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
    Ok(match conv {
        SharedConv::Group(g) => c
            .prepare_cached(
                "SELECT m.id, m.sender_id, m.sender_seq, m.recipient_seq, m.body FROM group_log l
                 JOIN messages m ON m.id = l.msg_id
                 WHERE l.group_id = ?1 AND m.created_ms < ?2",
            )?
            .query_map(params![g as i64, before_ms], map)?
            .collect::<rusqlite::Result<_>>()?,
        SharedConv::Direct(a, b) => c
            .prepare_cached(
                "SELECT m.id, m.sender_id, m.sender_seq, m.recipient_seq, m.body FROM inbox i
                 JOIN messages m ON m.id = i.msg_id
                 WHERE i.user_id = ?1 AND m.created_ms < ?3 AND (
                   (?1 = ?2 AND m.sender_id = ?1 AND m.sender_seq = m.recipient_seq)
                   OR (?1 <> ?2 AND (m.sender_id = ?2 OR (m.sender_id = ?1 AND EXISTS (
                     SELECT 1 FROM inbox j WHERE j.user_id = ?2 AND j.seq = m.recipient_seq
                       AND j.msg_id = m.id)))))",
            )?
            .query_map(params![a as i64, b as i64, before_ms], map)?
            .collect::<rusqlite::Result<_>>()?,
    })
}

/// The media ids a stored body refers to.
pub(super) fn media_of(body: &[u8]) -> Vec<String> {
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

/// What goes with a deleted message: its edits' history, reactions, pins, hides, and
/// the reply records naming it (as the reply or the quoted message).
pub(super) fn forget_messages(c: &Connection, ids: &[i64]) -> Result<()> {
    for &id in ids {
        for sql in [
            "DELETE FROM message_edits WHERE msg_id = ?1",
            "DELETE FROM reactions WHERE msg_id = ?1",
            "DELETE FROM pins WHERE msg_id = ?1",
            "DELETE FROM hidden WHERE msg_id = ?1",
            "DELETE FROM replies WHERE quoted_id = ?1",
            "DELETE FROM replies WHERE (sender_id, client_msg_id) IN
               (SELECT sender_id, client_msg_id FROM messages WHERE id = ?1)",
        ] {
            c.prepare_cached(sql)?.execute([id])?;
        }
    }
    Ok(())
}

#[async_trait]
impl ConvStore for SqliteStore {
    async fn set_conv(&self, ch: ConvChange) -> Result<ConvDone> {
        self.write(move |txn, state_| {
            let before = state(txn, ch.user_id, ch.key, ch.time_ms)?;
            let newest = if ch.clear {
                newest(txn, ch.user_id, ch.key)?
            } else {
                0
            };
            let after = apply(before.clone(), &ch, newest);
            if !changed(&before, &after) && !ch.log_anyway {
                return Ok(ConvDone::Unchanged(before));
            }
            put_state(txn, ch.user_id, &after)?;
            if after.muted_until_ms != before.muted_until_ms {
                let (u, p, g) = (
                    ch.user_id as i64,
                    ch.key.peer as i64,
                    ch.key.group_id as i64,
                );
                match mute_write(Some(after.muted_until_ms)) {
                    Some(Some((mode, until))) => {
                        txn.prepare_cached(
                            "INSERT INTO push_prefs (user_id, peer, group_id, mode, until_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (user_id, peer, group_id) DO UPDATE
                             SET mode = excluded.mode, until_ms = excluded.until_ms",
                        )?
                        .execute(params![u, p, g, mode, until])?;
                    }
                    _ => {
                        txn.prepare_cached(
                            "DELETE FROM push_prefs WHERE user_id = ?1 AND peer = ?2
                               AND group_id = ?3 AND mode = ?4",
                        )?
                        .execute(params![u, p, g, MUTED])?;
                    }
                }
            }
            let mut entry = ch.entry.clone();
            fill(&mut entry, &after);
            let seqs = append_events(
                txn,
                state_,
                &[NewEvent {
                    user_id: ch.user_id,
                    entry: entry.clone(),
                }],
            )?;
            Ok(ConvDone::Changed {
                row: after,
                seq: seqs[0],
                entry: Box::new(entry),
            })
        })
        .await
    }

    async fn conv_state(&self, user_id: u64, key: ConvKey, now_ms: i64) -> Result<ConvRow> {
        self.read(move |c| state(c, user_id, key, now_ms)).await
    }

    async fn conv_states(&self, user_id: u64, now_ms: i64) -> Result<Vec<ConvRow>> {
        self.read(move |c| {
            let u = user_id as i64;
            let mut keys: Vec<ConvKey> = c
                .prepare_cached(
                    "SELECT peer, group_id FROM conv_state WHERE user_id = ?1
                     UNION SELECT peer, group_id FROM push_prefs
                       WHERE user_id = ?1 AND mode = ?2 AND (until_ms = 0 OR until_ms > ?3)
                     UNION SELECT CASE WHEN a_user_id = ?1 THEN b_user_id ELSE a_user_id END, 0
                       FROM conv_retention WHERE group_id = 0 AND (a_user_id = ?1 OR b_user_id = ?1)
                     UNION SELECT 0, r.group_id FROM conv_retention r
                       JOIN group_members gm ON gm.group_id = r.group_id AND gm.user_id = ?1
                       WHERE r.group_id <> 0",
                )?
                .query_map(params![u, MUTED, now_ms], |r| {
                    Ok(ConvKey {
                        peer: r.get::<_, i64>(0)? as u64,
                        group_id: r.get::<_, i64>(1)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| state(c, user_id, k, now_ms))
                .collect()
        })
        .await
    }

    async fn cleared(&self, user_id: u64) -> Result<Vec<(ConvKey, u64)>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT peer, group_id, cleared_before FROM conv_state
                 WHERE user_id = ?1 AND cleared_before > 0 ORDER BY peer, group_id",
            )?
            .query_map([user_id as i64], |r| {
                Ok((
                    ConvKey {
                        peer: r.get::<_, i64>(0)? as u64,
                        group_id: r.get::<_, i64>(1)? as u64,
                    },
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_retention(&self, ch: RetentionChange) -> Result<Option<(Logged, Vec<NewEvent>)>> {
        self.write(move |txn, state_| {
            if retention(txn, ch.conv)? == ch.retention_secs {
                return Ok(None);
            }
            let (a, b, g) = shared_cols(ch.conv);
            if ch.retention_secs == 0 {
                txn.prepare_cached(
                    "DELETE FROM conv_retention WHERE a_user_id = ?1 AND b_user_id = ?2 AND group_id = ?3",
                )?
                .execute(params![a, b, g])?;
            } else {
                txn.prepare_cached(
                    "INSERT INTO conv_retention (a_user_id, b_user_id, group_id, retention_secs, set_by, time_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (a_user_id, b_user_id, group_id) DO UPDATE SET
                       retention_secs = excluded.retention_secs, set_by = excluded.set_by,
                       time_ms = excluded.time_ms",
                )?
                .execute(params![
                    a,
                    b,
                    g,
                    i64::from(ch.retention_secs),
                    ch.by_user_id as i64,
                    ch.time_ms
                ])?;
            }
            let gseq = match &ch.group {
                Some((g, entry)) => Some(log_append(txn, *g, None, Some(entry), entry.time_ms)?),
                None => None,
            };
            let mut events = Vec::with_capacity(ch.inbox.len());
            for (key, mut ev) in ch.inbox {
                let row = state(txn, ev.user_id, key, ch.time_ms)?;
                fill(&mut ev.entry, &row);
                events.push(ev);
            }
            let seqs = append_events(txn, state_, &events)?;
            Ok(Some((Logged { gseq, seqs }, events)))
        })
        .await
    }

    async fn retentions(&self) -> Result<Vec<(SharedConv, u32)>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT a_user_id, b_user_id, group_id, retention_secs FROM conv_retention
                 ORDER BY group_id, a_user_id, b_user_id",
            )?
            .query_map([], |r| {
                let (a, b, g) = (
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                );
                let conv = if g != 0 {
                    SharedConv::Group(g)
                } else {
                    SharedConv::Direct(a, b)
                };
                Ok((conv, r.get::<_, i64>(3)? as u32))
            })?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn prune_conversation(&self, conv: SharedConv, before_ms: i64) -> Result<Pruned> {
        self.write(move |txn, _| {
            let rows = doomed(txn, conv, before_ms)?;
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
            forget_messages(txn, &ids)?;
            if let SharedConv::Direct(a, b) = conv {
                // Keep each party's newest seq as the floor of the next one.
                txn.prepare_cached(
                    "UPDATE users SET last_seq = max(last_seq, coalesce((SELECT max(i.seq)
                       FROM inbox i WHERE i.user_id = users.id), 0))
                     WHERE id IN (?1, ?2)",
                )?
                .execute(params![a as i64, b as i64])?;
                let recipient = |sender: i64| if sender == a as i64 { b } else { a } as i64;
                for (id, sender, sseq, rseq, _) in &rows {
                    let mut del = txn.prepare_cached(
                        "DELETE FROM inbox WHERE user_id = ?1 AND seq = ?2 AND msg_id = ?3",
                    )?;
                    del.execute(params![sender, sseq, id])?;
                    del.execute(params![recipient(*sender), rseq, id])?;
                }
            }
            let mut del = txn.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
            for id in &ids {
                del.execute([id])?;
            }
            Ok(Pruned {
                messages: ids.len() as u64,
                media,
            })
        })
        .await
    }

    async fn media_referenced(&self, media_id: &str, since_ms: i64) -> Result<bool> {
        if media_id.is_empty() {
            return Err(StoreError::NotFound);
        }
        let needle = media_id.as_bytes().to_vec();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM messages WHERE created_ms >= ?1 AND body IS NOT NULL
                   AND instr(body, ?2) > 0 LIMIT 1",
            )?
            .exists(params![since_ms, needle])?)
        })
        .await
    }
}
