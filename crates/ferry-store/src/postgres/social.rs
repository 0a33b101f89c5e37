//! PostgreSQL: friendships, avatars, and moments with their likes and comments
//! ([`SocialStore`]) — the same semantics as `sqlite/social.rs`.
//!
//! Writes that append inbox events lock the users' rows first
//! ([`lock_users`](super::inbox::lock_users)), and conditional changes (friendships)
//! read their preconditions under those locks.

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::inbox::{append_events, event_users, lock_users};
use super::PgStore;
use crate::{
    Avatar, FriendChange, FriendList, FriendRow, MomentRow, NewEvent, Reaction, Result,
    SocialStore, StoreError,
};

const FRIEND_COLS: &str = "user_id, peer_id, state, greeting, version, updated_ms";

fn row_friend(r: &tokio_postgres::Row) -> FriendRow {
    FriendRow {
        user_id: r.get::<_, i64>(0) as u64,
        peer_id: r.get::<_, i64>(1) as u64,
        state: r.get(2),
        greeting: r.get(3),
        version: r.get::<_, i64>(4) as u64,
        updated_ms: r.get(5),
    }
}

fn row_moment(r: &tokio_postgres::Row) -> MomentRow {
    MomentRow {
        id: r.get::<_, i64>(0) as u64,
        author_id: r.get::<_, i64>(1) as u64,
        text: r.get(2),
        media_ids: r.get(3),
        time_ms: r.get(4),
    }
}

/// Locks the moment's row (so a concurrent delete waits); NotFound when it is gone.
async fn require_moment(txn: &Transaction<'_>, id: u64) -> Result<()> {
    let stmt = txn
        .prepare_cached("SELECT 1 FROM moments WHERE id = $1 FOR SHARE")
        .await?;
    match txn.query_opt(&stmt, &[&(id as i64)]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

#[async_trait]
impl SocialStore for PgStore {
    async fn friendship(&self, user: u64, peer: u64) -> Result<Option<FriendRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = $1 AND peer_id = $2"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user as i64), &(peer as i64)])
            .await?
            .map(|r| row_friend(&r)))
    }

    async fn change_friends(&self, change: FriendChange) -> Result<Vec<u64>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let mut users: Vec<u64> = event_users(&change.events);
        users.extend(change.expect.iter().flat_map(|(u, p, _)| [*u, *p]));
        users.extend(change.rows.iter().flat_map(|r| [r.user_id, r.peer_id]));
        // Every precondition is read under the locks of both users of the pair.
        lock_users(&txn, &users).await?;
        let state = txn
            .prepare_cached("SELECT state FROM friendships WHERE user_id = $1 AND peer_id = $2")
            .await?;
        for (user, peer, want) in &change.expect {
            let have: i32 = txn
                .query_opt(&state, &[&(*user as i64), &(*peer as i64)])
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0);
            if have != *want {
                return Err(StoreError::Conflict);
            }
        }
        let bump = txn
            .prepare_cached(
                "UPDATE users SET friend_version = friend_version + 1 WHERE id = $1 RETURNING friend_version",
            )
            .await?;
        let upsert = txn
            .prepare_cached(
                "INSERT INTO friendships (user_id, peer_id, state, greeting, version, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (user_id, peer_id) DO UPDATE SET state = excluded.state,
                 greeting = excluded.greeting, version = excluded.version, updated_ms = excluded.updated_ms",
            )
            .await?;
        for row in &change.rows {
            let version: i64 = txn
                .query_opt(&bump, &[&(row.user_id as i64)])
                .await?
                .ok_or(StoreError::UnknownUser(row.user_id))?
                .get(0);
            txn.execute(
                &upsert,
                &[
                    &(row.user_id as i64),
                    &(row.peer_id as i64),
                    &row.state,
                    &row.greeting,
                    &version,
                    &change.time_ms,
                ],
            )
            .await?;
        }
        let seqs = append_events(&txn, &change.events).await?;
        txn.commit().await?;
        Ok(seqs)
    }

    async fn friends(&self, user: u64, since: u64) -> Result<FriendList> {
        let mut client = self.client().await?;
        // One snapshot for the version and the rows.
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let version: i64 = txn
            .query_opt(
                "SELECT friend_version FROM users WHERE id = $1",
                &[&(user as i64)],
            )
            .await?
            .ok_or(StoreError::UnknownUser(user))?
            .get(0);
        let removed = ferry_proto::v1::FriendState::Removed as i32;
        let rows = if since == 0 {
            let stmt = txn
                .prepare_cached(&format!(
                    "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = $1 AND state != $2 ORDER BY peer_id"
                ))
                .await?;
            txn.query(&stmt, &[&(user as i64), &removed]).await?
        } else {
            let stmt = txn
                .prepare_cached(&format!(
                    "SELECT {FRIEND_COLS} FROM friendships WHERE user_id = $1 AND version > $2 ORDER BY version"
                ))
                .await?;
            txn.query(&stmt, &[&(user as i64), &(since as i64)]).await?
        };
        txn.commit().await?;
        Ok(FriendList {
            version: version as u64,
            rows: rows.iter().map(row_friend).collect(),
        })
    }

    async fn set_avatar(&self, user: u64, a: Avatar) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO avatars (user_id, etag, content_type, image, thumb, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (user_id) DO UPDATE SET etag = excluded.etag,
                 content_type = excluded.content_type, image = excluded.image,
                 thumb = excluded.thumb, updated_ms = excluded.updated_ms",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &(user as i64),
                    &a.etag,
                    &a.content_type,
                    &a.image,
                    &a.thumb,
                    &a.updated_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn avatar(&self, user: u64) -> Result<Option<Avatar>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT etag, content_type, image, thumb, updated_ms FROM avatars WHERE user_id = $1",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(user as i64)])
            .await?
            .map(|r| Avatar {
                etag: r.get(0),
                content_type: r.get(1),
                image: r.get(2),
                thumb: r.get(3),
                updated_ms: r.get(4),
            }))
    }

    async fn add_moment(&self, m: MomentRow, events: Vec<NewEvent>) -> Result<Vec<u64>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        lock_users(&txn, &event_users(&events)).await?;
        let stmt = txn
            .prepare_cached(
                "INSERT INTO moments (id, author_id, text, media_ids, created_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        txn.execute(
            &stmt,
            &[
                &(m.id as i64),
                &(m.author_id as i64),
                &m.text,
                &m.media_ids,
                &m.time_ms,
            ],
        )
        .await?;
        let seqs = append_events(&txn, &events).await?;
        txn.commit().await?;
        Ok(seqs)
    }

    async fn moment(&self, id: u64) -> Result<Option<MomentRow>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, author_id, text, media_ids, created_ms FROM moments WHERE id = $1",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&(id as i64)])
            .await?
            .map(|r| row_moment(&r)))
    }

    async fn delete_moment(&self, id: u64) -> Result<bool> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let n = txn
            .execute("DELETE FROM moments WHERE id = $1", &[&(id as i64)])
            .await?;
        txn.execute(
            "DELETE FROM moment_likes WHERE moment_id = $1",
            &[&(id as i64)],
        )
        .await?;
        txn.execute(
            "DELETE FROM moment_comments WHERE moment_id = $1",
            &[&(id as i64)],
        )
        .await?;
        txn.commit().await?;
        Ok(n > 0)
    }

    async fn timeline(&self, authors: &[u64], before: u64, limit: u32) -> Result<Vec<MomentRow>> {
        if authors.is_empty() {
            return Ok(Vec::new());
        }
        let before = if before == 0 { i64::MAX } else { before as i64 };
        let authors: Vec<i64> = authors.iter().map(|&a| a as i64).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, author_id, text, media_ids, created_ms FROM moments
                 WHERE author_id = ANY($1) AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .await?;
        Ok(client
            .query(&stmt, &[&authors, &before, &i64::from(limit)])
            .await?
            .iter()
            .map(row_moment)
            .collect())
    }

    async fn set_like(
        &self,
        moment: u64,
        user: u64,
        on: bool,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        if let Some(ev) = &event {
            lock_users(&txn, &[ev.user_id]).await?;
        }
        require_moment(&txn, moment).await?;
        let changed = if on {
            txn.execute(
                "INSERT INTO moment_likes (moment_id, user_id, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&(moment as i64), &(user as i64), &time_ms],
            )
            .await?
        } else {
            txn.execute(
                "DELETE FROM moment_likes WHERE moment_id = $1 AND user_id = $2",
                &[&(moment as i64), &(user as i64)],
            )
            .await?
        };
        if changed > 0 {
            if let Some(ev) = event {
                append_events(&txn, &[ev]).await?;
            }
        }
        txn.commit().await?;
        Ok(changed > 0)
    }

    async fn add_comment(
        &self,
        moment: u64,
        user: u64,
        text: &str,
        time_ms: i64,
        event: Option<NewEvent>,
    ) -> Result<u64> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        if let Some(ev) = &event {
            lock_users(&txn, &[ev.user_id]).await?;
        }
        require_moment(&txn, moment).await?;
        let id: i64 = txn
            .query_one(
                "INSERT INTO moment_comments (moment_id, user_id, text, created_ms)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&(moment as i64), &(user as i64), &text, &time_ms],
            )
            .await?
            .get(0);
        if let Some(ev) = event {
            append_events(&txn, &[ev]).await?;
        }
        txn.commit().await?;
        Ok(id as u64)
    }

    async fn reactions(&self, moments: &[u64]) -> Result<Vec<Reaction>> {
        if moments.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = moments.iter().map(|&m| m as i64).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT moment_id, user_id, 0::BIGINT AS comment_id, '' AS text, created_ms
                   FROM moment_likes WHERE moment_id = ANY($1)
                 UNION ALL
                 SELECT moment_id, user_id, id, text, created_ms
                   FROM moment_comments WHERE moment_id = ANY($1)
                 ORDER BY 5, 3",
            )
            .await?;
        Ok(client
            .query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| Reaction {
                moment_id: r.get::<_, i64>(0) as u64,
                user_id: r.get::<_, i64>(1) as u64,
                comment_id: r.get::<_, i64>(2) as u64,
                text: r.get(3),
                time_ms: r.get(4),
            })
            .collect())
    }
}
