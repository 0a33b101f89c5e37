//! SQLite: sessions of a user, inbox events, friendships, avatars, reports and moments.
//! Plain functions over a connection or the writer's transaction; `SqliteStore`'s trait
//! methods run them on the writer thread or the read pool.

use ferry_proto::ProtoMessage;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use super::WriterState;
use crate::{
    Avatar, FriendChange, FriendList, FriendRow, MomentRow, NewEvent, Reaction, ReportInfo, Result,
    StoreError,
};

pub(super) fn delete_user_sessions(txn: &Transaction, user: u64) -> Result<Vec<String>> {
    let devices = txn
        .prepare_cached("SELECT device_id FROM sessions WHERE user_id = ?1")?
        .query_map([user as i64], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    txn.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
        .execute([user as i64])?;
    Ok(devices)
}

/// Appends events to inboxes. Fails before writing anything when a user is unknown.
pub(in crate::sqlite) fn append_events(
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

fn row_friend(r: &rusqlite::Row) -> rusqlite::Result<FriendRow> {
    Ok(FriendRow {
        user_id: r.get::<_, i64>(0)? as u64,
        peer_id: r.get::<_, i64>(1)? as u64,
        state: r.get(2)?,
        greeting: r.get(3)?,
        version: r.get::<_, i64>(4)? as u64,
        updated_ms: r.get(5)?,
    })
}

const FRIEND_COLS: &str = "user_id, peer_id, state, greeting, version, updated_ms";

pub(super) fn friendship(c: &Connection, user: u64, peer: u64) -> Result<Option<FriendRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = ?1 AND peer_id = ?2"
    ))?
    .query_row(params![user as i64, peer as i64], row_friend)
    .optional()?)
}

pub(super) fn change_friends(
    txn: &Transaction,
    state: &mut WriterState,
    change: FriendChange,
) -> Result<Vec<u64>> {
    for (user, peer, want) in &change.expect {
        let have = friendship(txn, *user, *peer)?.map(|r| r.state).unwrap_or(0);
        if have != *want {
            return Err(StoreError::Conflict);
        }
    }
    for row in &change.rows {
        let version: i64 = txn
            .prepare_cached(
                "UPDATE users SET friend_version = friend_version + 1 WHERE id = ?1 RETURNING friend_version",
            )?
            .query_row([row.user_id as i64], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::UnknownUser(row.user_id))?;
        txn.prepare_cached(
            "INSERT INTO friendships (user_id, peer_id, state, greeting, version, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user_id, peer_id) DO UPDATE SET state = excluded.state,
             greeting = excluded.greeting, version = excluded.version, updated_ms = excluded.updated_ms",
        )?
        .execute(params![
            row.user_id as i64,
            row.peer_id as i64,
            row.state,
            row.greeting,
            version,
            change.time_ms
        ])?;
    }
    append_events(txn, state, &change.events)
}

pub(super) fn friends(c: &Connection, user: u64, since: u64) -> Result<FriendList> {
    let txn = c.unchecked_transaction()?;
    let version: i64 = txn
        .prepare_cached("SELECT friend_version FROM users WHERE id = ?1")?
        .query_row([user as i64], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::UnknownUser(user))?;
    let removed = ferry_proto::v1::FriendState::Removed as i32;
    let rows = if since == 0 {
        txn.prepare_cached(&format!(
            "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = ?1 AND state != ?2 ORDER BY peer_id"
        ))?
        .query_map(params![user as i64, removed], row_friend)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        txn.prepare_cached(&format!(
            "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = ?1 AND version > ?2 ORDER BY version"
        ))?
        .query_map(params![user as i64, since as i64], row_friend)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(FriendList {
        version: version as u64,
        rows,
    })
}

pub(super) fn set_avatar(txn: &Transaction, user: u64, a: Avatar) -> Result<()> {
    txn.prepare_cached(
        "INSERT INTO avatars (user_id, etag, content_type, image, thumb, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id) DO UPDATE SET etag = excluded.etag, content_type = excluded.content_type,
         image = excluded.image, thumb = excluded.thumb, updated_ms = excluded.updated_ms",
    )?
    .execute(params![user as i64, a.etag, a.content_type, a.image, a.thumb, a.updated_ms])?;
    Ok(())
}

pub(super) fn avatar(c: &Connection, user: u64) -> Result<Option<Avatar>> {
    Ok(c.prepare_cached(
        "SELECT etag, content_type, image, thumb, updated_ms FROM avatars WHERE user_id = ?1",
    )?
    .query_row([user as i64], |r| {
        Ok(Avatar {
            etag: r.get(0)?,
            content_type: r.get(1)?,
            image: r.get(2)?,
            thumb: r.get(3)?,
            updated_ms: r.get(4)?,
        })
    })
    .optional()?)
}

const REPORT_COLS: &str =
    "id, user_id, device_id, client_version, kind, file_name, length, md5, created_ms";

fn row_report(r: &rusqlite::Row) -> rusqlite::Result<ReportInfo> {
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
}

pub(super) fn add_report(txn: &Transaction, r: ReportInfo, data: Vec<u8>) -> Result<u64> {
    txn.prepare_cached(
        "INSERT INTO reports (user_id, device_id, client_version, kind, file_name, length, md5, created_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        r.user_id as i64,
        r.device_id,
        r.client_version,
        r.kind,
        r.file_name,
        r.length as i64,
        r.md5,
        r.created_ms,
        data
    ])?;
    Ok(txn.last_insert_rowid() as u64)
}

pub(super) fn reports(c: &Connection, before: u64, limit: u32) -> Result<Vec<ReportInfo>> {
    let before = if before == 0 { i64::MAX } else { before as i64 };
    Ok(c.prepare_cached(&format!(
        "SELECT {REPORT_COLS} FROM reports WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
    ))?
    .query_map(params![before, i64::from(limit)], row_report)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn report(c: &Connection, id: u64) -> Result<Option<(ReportInfo, Vec<u8>)>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {REPORT_COLS}, data FROM reports WHERE id = ?1"
    ))?
    .query_row([id as i64], |r| {
        Ok((row_report(r)?, r.get::<_, Vec<u8>>(9)?))
    })
    .optional()?)
}

fn row_moment(r: &rusqlite::Row) -> rusqlite::Result<MomentRow> {
    let media: String = r.get(3)?;
    Ok(MomentRow {
        id: r.get::<_, i64>(0)? as u64,
        author_id: r.get::<_, i64>(1)? as u64,
        text: r.get(2)?,
        media_ids: media
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        time_ms: r.get(4)?,
    })
}

pub(super) fn add_moment(
    txn: &Transaction,
    state: &mut WriterState,
    m: MomentRow,
    events: &[NewEvent],
) -> Result<Vec<u64>> {
    txn.prepare_cached(
        "INSERT INTO moments (id, author_id, text, media_ids, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        m.id as i64,
        m.author_id as i64,
        m.text,
        m.media_ids.join("\n"),
        m.time_ms
    ])?;
    append_events(txn, state, events)
}

pub(super) fn moment(c: &Connection, id: u64) -> Result<Option<MomentRow>> {
    Ok(c.prepare_cached(
        "SELECT id, author_id, text, media_ids, created_ms FROM moments WHERE id = ?1",
    )?
    .query_row([id as i64], row_moment)
    .optional()?)
}

pub(super) fn delete_moment(txn: &Transaction, id: u64) -> Result<bool> {
    let n = txn
        .prepare_cached("DELETE FROM moments WHERE id = ?1")?
        .execute([id as i64])?;
    txn.prepare_cached("DELETE FROM moment_likes WHERE moment_id = ?1")?
        .execute([id as i64])?;
    txn.prepare_cached("DELETE FROM moment_comments WHERE moment_id = ?1")?
        .execute([id as i64])?;
    Ok(n > 0)
}

pub(super) fn timeline(
    c: &Connection,
    authors: &[u64],
    before: u64,
    limit: u32,
) -> Result<Vec<MomentRow>> {
    if authors.is_empty() {
        return Ok(Vec::new());
    }
    let before = if before == 0 { i64::MAX } else { before as i64 };
    let marks = vec!["?"; authors.len()].join(",");
    let sql = format!(
        "SELECT id, author_id, text, media_ids, created_ms FROM moments
         WHERE author_id IN ({marks}) AND id < ? ORDER BY id DESC LIMIT ?"
    );
    let mut args: Vec<i64> = authors.iter().map(|a| *a as i64).collect();
    args.push(before);
    args.push(i64::from(limit));
    Ok(c.prepare(&sql)?
        .query_map(params_from_iter(args), row_moment)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

fn require_moment(txn: &Transaction, id: u64) -> Result<()> {
    if txn
        .prepare_cached("SELECT 1 FROM moments WHERE id = ?1")?
        .exists([id as i64])?
    {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

pub(super) fn set_like(
    txn: &Transaction,
    state: &mut WriterState,
    moment: u64,
    user: u64,
    on: bool,
    time_ms: i64,
    event: Option<NewEvent>,
) -> Result<bool> {
    require_moment(txn, moment)?;
    let changed = if on {
        txn.prepare_cached(
            "INSERT INTO moment_likes (moment_id, user_id, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![moment as i64, user as i64, time_ms])?
    } else {
        txn.prepare_cached("DELETE FROM moment_likes WHERE moment_id = ?1 AND user_id = ?2")?
            .execute(params![moment as i64, user as i64])?
    };
    if changed > 0 {
        if let Some(ev) = event {
            append_events(txn, state, &[ev])?;
        }
    }
    Ok(changed > 0)
}

pub(super) fn add_comment(
    txn: &Transaction,
    state: &mut WriterState,
    moment: u64,
    user: u64,
    text: &str,
    time_ms: i64,
    event: Option<NewEvent>,
) -> Result<u64> {
    require_moment(txn, moment)?;
    txn.prepare_cached(
        "INSERT INTO moment_comments (moment_id, user_id, text, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![moment as i64, user as i64, text, time_ms])?;
    let id = txn.last_insert_rowid() as u64;
    if let Some(ev) = event {
        append_events(txn, state, &[ev])?;
    }
    Ok(id)
}

pub(super) fn reactions(c: &Connection, moments: &[u64]) -> Result<Vec<Reaction>> {
    if moments.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; moments.len()].join(",");
    let sql = format!(
        "SELECT moment_id, user_id, 0, '', created_ms FROM moment_likes WHERE moment_id IN ({marks})
         UNION ALL
         SELECT moment_id, user_id, id, text, created_ms FROM moment_comments WHERE moment_id IN ({marks})
         ORDER BY 5, 3"
    );
    let args: Vec<i64> = moments
        .iter()
        .chain(moments.iter())
        .map(|m| *m as i64)
        .collect();
    Ok(c.prepare(&sql)?
        .query_map(params_from_iter(args), |r| {
            Ok(Reaction {
                moment_id: r.get::<_, i64>(0)? as u64,
                user_id: r.get::<_, i64>(1)? as u64,
                comment_id: r.get::<_, i64>(2)? as u64,
                text: r.get(3)?,
                time_ms: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
