//! What the cluster's media stores keep in PostgreSQL, whoever keeps the bytes: the
//! `media` rows (what a media is, who may read it, how far its upload got) and the
//! chunks acknowledged (`media_chunks`). [`crate::PgMediaStore`] (bytes in a shared
//! folder) and [`crate::S3MediaStore`] (bytes in S3-compatible storage, chunks staged in
//! `media_chunks.data` until their part is uploaded) both build on [`MediaRows`].
//!
//! The tables are created at start-up (`IF NOT EXISTS`, under an advisory lock) with a
//! pool of their own, so uploads never take the connections message sends need.

use deadpool_postgres::Pool;

use super::{valid_media_id, valid_sha};
use crate::{MediaMeta, PgConfig, Result, StoreError, UploadKey};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS media (
    id            TEXT PRIMARY KEY,
    uploader      BIGINT NOT NULL,
    kind          INTEGER NOT NULL,
    size          BIGINT NOT NULL,
    declared_type TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    chunk_size    INTEGER NOT NULL,
    created_ms    BIGINT NOT NULL,
    complete      BOOLEAN NOT NULL DEFAULT FALSE,
    content_type  TEXT NOT NULL DEFAULT '',
    width         INTEGER NOT NULL DEFAULT 0,
    height        INTEGER NOT NULL DEFAULT 0,
    grant_users   BIGINT[] NOT NULL DEFAULT '{}',
    grant_groups  BIGINT[] NOT NULL DEFAULT '{}',
    grant_moments BIGINT[] NOT NULL DEFAULT '{}',
    -- Every byte before this offset has been received (uploads in progress).
    received      BIGINT NOT NULL DEFAULT 0
);
-- The upload key (32 bytes) of an upload created sealed, until it is finished. Added
-- after the table first shipped: tables made before get it here.
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_key BYTEA;
CREATE INDEX IF NOT EXISTS media_uploading ON media (created_ms) WHERE NOT complete;
CREATE TABLE IF NOT EXISTS media_chunks (
    media_id     TEXT NOT NULL,
    chunk_offset BIGINT NOT NULL,
    PRIMARY KEY (media_id, chunk_offset)
);
-- The S3 store's: the SHA-256 of a chunk (a chunk sent again is compared with it) and
-- its bytes, staged until the part they belong to is uploaded. NULL for the shared
-- folder's store, which compares with and keeps the bytes in its part file.
ALTER TABLE media_chunks ADD COLUMN IF NOT EXISTS digest BYTEA;
ALTER TABLE media_chunks ADD COLUMN IF NOT EXISTS data BYTEA;
"#;

/// Taken while creating the tables, so logic nodes starting together do not collide.
const SCHEMA_LOCK: i64 = 0x6665_7272_796d_6564; // "ferrymed"

const META_COLUMNS: &str = "id, uploader, kind, size, declared_type, sha256, chunk_size, \
     created_ms, complete, content_type, width, height, grant_users, grant_groups, \
     grant_moments, upload_key";

fn row_meta(r: &tokio_postgres::Row) -> MediaMeta {
    let ids = |i: usize| -> Vec<u64> {
        r.get::<_, Vec<i64>>(i)
            .into_iter()
            .map(|x| x as u64)
            .collect()
    };
    MediaMeta {
        id: r.get(0),
        uploader: r.get::<_, i64>(1) as u64,
        kind: r.get(2),
        size: r.get::<_, i64>(3) as u64,
        declared_type: r.get(4),
        sha256: r.get(5),
        chunk_size: r.get::<_, i32>(6) as u32,
        created_ms: r.get(7),
        complete: r.get(8),
        content_type: r.get(9),
        width: r.get::<_, i32>(10) as u32,
        height: r.get::<_, i32>(11) as u32,
        grant_users: ids(12),
        grant_groups: ids(13),
        grant_moments: ids(14),
        upload_key: r
            .get::<_, Option<Vec<u8>>>(15)
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .map(UploadKey),
    }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn i64s(xs: &[u64]) -> Vec<i64> {
    xs.iter().map(|&x| x as i64).collect()
}

/// What is recorded of one chunk offset of an upload in progress.
pub(crate) struct Held {
    /// Every byte before this offset has been received.
    pub received: u64,
    /// The chunk at the offset asked about was acknowledged (with its digest, when the
    /// store records one).
    pub chunk: Option<Option<Vec<u8>>>,
}

/// The contiguous offset before and after a chunk was recorded.
pub(crate) struct Recorded {
    pub before: u64,
    pub after: u64,
    /// The upload's size and chunk size.
    pub size: u64,
    pub chunk_size: u32,
}

/// The media rows of a cluster, in PostgreSQL.
pub(crate) struct MediaRows {
    pool: Pool,
}

impl MediaRows {
    /// Connects (a pool of `cfg.pool_size` connections) and creates the tables if
    /// needed, with `extra` (more tables of one store) under the same lock.
    pub async fn connect(cfg: &PgConfig, extra: &str) -> Result<MediaRows> {
        let pool = crate::postgres::pool(cfg, "ferry-media")?;
        {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            txn.batch_execute(SCHEMA).await?;
            if !extra.is_empty() {
                txn.batch_execute(extra).await?;
            }
            txn.commit().await?;
        }
        Ok(MediaRows { pool })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Records a new upload; [`StoreError::Conflict`] when the id exists.
    pub async fn insert(&self, meta: &MediaMeta) -> Result<()> {
        if !valid_media_id(&meta.id) || !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad media id or sha256".into()));
        }
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO media (id, uploader, kind, size, declared_type, sha256, \
                 chunk_size, created_ms, upload_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &meta.id,
                    &(meta.uploader as i64),
                    &meta.kind,
                    &(meta.size as i64),
                    &meta.declared_type,
                    &meta.sha256,
                    &(meta.chunk_size as i32),
                    &meta.created_ms,
                    &meta.upload_key.as_ref().map(|k| k.0.as_slice()),
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    pub async fn meta(&self, id: &str) -> Result<Option<MediaMeta>> {
        if !valid_media_id(id) {
            return Ok(None);
        }
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {META_COLUMNS} FROM media WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(row_meta))
    }

    pub async fn grant(
        &self,
        id: &str,
        users: &[u64],
        groups: &[u64],
        moments: &[u64],
    ) -> Result<()> {
        let client = self.client().await?;
        // Appends what is not there yet, in one statement (concurrent grants merge).
        let n = client
            .execute(
                "UPDATE media SET \
                 grant_users = grant_users || ARRAY(SELECT DISTINCT x FROM unnest($2::BIGINT[]) x \
                     WHERE x <> ALL(grant_users)), \
                 grant_groups = grant_groups || ARRAY(SELECT DISTINCT x FROM unnest($3::BIGINT[]) x \
                     WHERE x <> ALL(grant_groups)), \
                 grant_moments = grant_moments || ARRAY(SELECT DISTINCT x FROM unnest($4::BIGINT[]) x \
                     WHERE x <> ALL(grant_moments)) \
                 WHERE id = $1",
                &[&id, &i64s(users), &i64s(groups), &i64s(moments)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The contiguous offset of an upload in progress and what is recorded of the chunk
    /// at `offset`; [`StoreError::NotFound`] when there is no such upload in progress.
    pub async fn held(&self, id: &str, offset: u64) -> Result<Held> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT m.received, c.media_id IS NOT NULL, c.digest \
                 FROM media m LEFT JOIN media_chunks c \
                     ON c.media_id = m.id AND c.chunk_offset = $2 \
                 WHERE m.id = $1 AND NOT m.complete",
                &[&id, &(offset as i64)],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Held {
            received: row.get::<_, i64>(0) as u64,
            chunk: row
                .get::<_, bool>(1)
                .then(|| row.get::<_, Option<Vec<u8>>>(2)),
        })
    }

    /// Records the chunk at `offset` as received (with its digest and staged bytes, for
    /// a store that keeps them here) and advances the contiguous offset over every chunk
    /// now contiguous. One upload's chunks are recorded one at a time (its row locked
    /// first), so each walk sees every chunk recorded before it.
    pub async fn record_chunk(
        &self,
        id: &str,
        offset: u64,
        digest: Option<&[u8]>,
        data: Option<&[u8]>,
    ) -> Result<Recorded> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let before = txn
            .query_opt(
                "SELECT received FROM media WHERE id = $1 AND NOT complete FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or(StoreError::NotFound)?
            .get::<_, i64>(0) as u64;
        let inserted = txn
            .execute(
                "INSERT INTO media_chunks (media_id, chunk_offset, digest, data) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&id, &(offset as i64), &digest, &data],
            )
            .await?;
        if inserted == 0 && digest.is_some() {
            // Another node recorded this offset meanwhile (the same chunk sent to two
            // nodes at once): acknowledged again only if it holds the same bytes.
            let stored: Option<Vec<u8>> = txn
                .query_one(
                    "SELECT digest FROM media_chunks WHERE media_id = $1 AND chunk_offset = $2",
                    &[&id, &(offset as i64)],
                )
                .await?
                .get(0);
            if stored.as_deref() != digest {
                return Err(StoreError::ChunkMismatch);
            }
        }
        let row = txn
            .query_one(
                "UPDATE media m SET received = LEAST(m.size, ( \
                     WITH RECURSIVE walk(o) AS ( \
                         SELECT m.received \
                         UNION ALL \
                         SELECT walk.o + m.chunk_size FROM walk JOIN media_chunks c \
                             ON c.media_id = m.id AND c.chunk_offset = walk.o \
                     ) SELECT max(o) FROM walk)) \
                 WHERE m.id = $1 RETURNING m.received, m.size, m.chunk_size",
                &[&id],
            )
            .await?;
        txn.commit().await?;
        Ok(Recorded {
            before,
            after: row.get::<_, i64>(0) as u64,
            size: row.get::<_, i64>(1) as u64,
            chunk_size: row.get::<_, i32>(2) as u32,
        })
    }

    /// The contiguous offset of an upload in progress.
    pub async fn received(&self, id: &str) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT received FROM media WHERE id = $1 AND NOT complete",
                &[&id],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Marks an upload complete with its sniffed type, forgets its key and deletes its
    /// chunk rows, and runs each of `also` (statements taking the media id as `$1`: a
    /// store's own rows) in the same transaction.
    pub async fn complete(
        &self,
        id: &str,
        content_type: &str,
        width: u32,
        height: u32,
        also: &[&str],
    ) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        txn.execute(
            "UPDATE media SET complete = TRUE, content_type = $2, width = $3, height = $4, \
             received = size, upload_key = NULL WHERE id = $1",
            &[&id, &content_type, &(width as i32), &(height as i32)],
        )
        .await?;
        txn.execute("DELETE FROM media_chunks WHERE media_id = $1", &[&id])
            .await?;
        for sql in also {
            txn.execute(*sql, &[&id]).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Deletes an upload's row if it is not complete (a refused finish).
    pub async fn delete_unfinished(&self, id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM media WHERE id = $1 AND NOT complete", &[&id])
            .await?;
        Ok(())
    }

    /// Deletes an upload's chunk rows.
    pub async fn delete_chunks(&self, id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM media_chunks WHERE media_id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// The media `uploader` uploaded, ids > `after`, in id order.
    pub async fn uploaded_by(
        &self,
        uploader: u64,
        after: &str,
        limit: usize,
    ) -> Result<Vec<MediaMeta>> {
        let client = self.client().await?;
        Ok(client
            .query(
                &format!(
                    "SELECT {META_COLUMNS} FROM media WHERE uploader = $1 AND id > $2 \
                     ORDER BY id LIMIT $3"
                ),
                &[&(uploader as i64), &after, &(limit as i64)],
            )
            .await?
            .iter()
            .map(row_meta)
            .collect())
    }

    /// Deletes a media's row and chunk rows; its content hash when it was complete and
    /// no other complete media shares the hash (the caller deletes that blob).
    pub async fn delete(&self, id: &str) -> Result<Option<Option<String>>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let Some(row) = txn
            .query_opt(
                "DELETE FROM media WHERE id = $1 RETURNING sha256, complete",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        txn.execute("DELETE FROM media_chunks WHERE media_id = $1", &[&id])
            .await?;
        let (sha, complete): (String, bool) = (row.get(0), row.get(1));
        // Lock the other rows of this content, so a concurrent finish of the same
        // content waits for the answer.
        let shared = !txn
            .query(
                "SELECT 1 FROM media WHERE sha256 = $1 AND complete FOR UPDATE",
                &[&sha],
            )
            .await?
            .is_empty();
        txn.commit().await?;
        Ok(Some((complete && !shared).then_some(sha)))
    }

    /// Deletes the rows of the uploads created before `created_before_ms` and still not
    /// complete; their ids (their bytes are the caller's to delete).
    pub async fn delete_abandoned(&self, created_before_ms: i64) -> Result<Vec<String>> {
        let client = self.client().await?;
        Ok(client
            .query(
                "DELETE FROM media WHERE NOT complete AND created_ms < $1 RETURNING id",
                &[&created_before_ms],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
