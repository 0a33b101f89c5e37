//! SQLite: friendships, avatars, and moments with their likes and comments
//! ([`SocialStore`]).

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use super::inbox::append_events;
use super::SqliteStore;
use crate::{
    Avatar, FriendChange, FriendList, FriendRow, MomentRow, NewEvent, Reaction, Result,
    SocialStore, StoreError,
};

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

/// `user`'s relation to `peer` (read on its own, or as a precondition in the writer).
fn friendship(c: &Connection, user: u64, peer: u64) -> Result<Option<FriendRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = ?1 AND peer_id = ?2"
    ))?
    .query_row(params![user as i64, peer as i64], row_friend)
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

#[async_trait]
impl SocialStore for SqliteStore {
    async fn friendship(&self, user: u64, peer: u64) -> Result<Option<FriendRow>> {
        self.read(move |c| friendship(c, user, peer)).await
    }

    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>> {
        self.write(move |txn, state| {
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
        })
        .await
    }

    async fn friends(&self, user: u64, since: u64) -> Result<FriendList> {
        self.read(move |c| {
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
        })
        .await
    }

    async fn set_avatar(&self, user: u64, a: Avatar) -> Result<()> {
        self.write(move |txn, _| {
            txn.prepare_cached(
                "INSERT INTO avatars (user_id, etag, content_type, image, thumb, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id) DO UPDATE SET etag = excluded.etag, content_type = excluded.content_type,
                 image = excluded.image, thumb = excluded.thumb, updated_ms = excluded.updated_ms",
            )?
            .execute(params![user as i64, a.etag, a.content_type, a.image, a.thumb, a.updated_ms])?;
            Ok(())
        })
        .await
    }

    async fn avatar(&self, user: u64) -> Result<Option<Avatar>> {
        self.read(move |c| {
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
        })
        .await
    }

    async fn add_moment(&self, m: MomentRow, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        self.write(move |txn, state| {
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
            append_events(txn, state, &events)
        })
        .await
    }

    async fn moment(&self, id: u64) -> Result<Option<MomentRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, author_id, text, media_ids, created_ms FROM moments WHERE id = ?1",
            )?
            .query_row([id as i64], row_moment)
            .optional()?)
        })
        .await
    }

    async fn delete_moment(&self, id: u64) -> Result<bool> {
        self.write(move |txn, _| {
            let n = txn
                .prepare_cached("DELETE FROM moments WHERE id = ?1")?
                .execute([id as i64])?;
            txn.prepare_cached("DELETE FROM moment_likes WHERE moment_id = ?1")?
                .execute([id as i64])?;
            txn.prepare_cached("DELETE FROM moment_comments WHERE moment_id = ?1")?
                .execute([id as i64])?;
            Ok(n > 0)
        })
        .await
    }

    async fn timeline(&self, authors: &[u64], before: u64, limit: u32) -> Result<Vec<MomentRow>> {
        let authors = authors.to_vec();
        self.read(move |c| {
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
        })
        .await
    }

    async fn set_like(
        &self,
        moment: u64,
        user: u64,
        on: bool,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<bool> {
        self.write(move |txn, state| {
            require_moment(txn, moment)?;
            let changed = if on {
                txn.prepare_cached(
                    "INSERT INTO moment_likes (moment_id, user_id, created_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![moment as i64, user as i64, time_ms])?
            } else {
                txn.prepare_cached(
                    "DELETE FROM moment_likes WHERE moment_id = ?1 AND user_id = ?2",
                )?
                .execute(params![moment as i64, user as i64])?
            };
            if changed > 0 {
                if let Some(ev) = event {
                    append_events(txn, state, &[ev])?;
                }
            }
            Ok(changed > 0)
        })
        .await
    }

    async fn add_comment(
        &self,
        moment: u64,
        user: u64,
        text: &str,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<u64> {
        let text = text.to_owned();
        self.write(move |txn, state| {
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
        })
        .await
    }

    async fn reactions(&self, moments: &[u64]) -> Result<Vec<Reaction>> {
        let moments = moments.to_vec();
        self.read(move |c| {
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
        })
        .await
    }
}
