//! Media in a cluster: metadata and the chunks received in PostgreSQL, bytes in a
//! folder every logic node mounts (NFS, CephFS, a shared disk …).
//!
//! Any logic node may take any request of an upload (NATS queue groups spread them), so
//! nothing about an upload lives in one node's memory: a chunk is written at its offset
//! in the shared `<root>/uploads/<id>.part`, then recorded in `media_chunks`, and the
//! contiguous offset in `media.received` is advanced in the same statement that any
//! node's later chunk runs. Finished content becomes `<root>/blobs/<sha256>`, once per
//! hash, as in [`crate::LocalMediaStore`]. Finishing copies the part file while hashing
//! it (`<id>.verified`), and that copy becomes the blob: a chunk some node still writes
//! into the part file late cannot change content already vouched for.
//!
//! **What an acknowledgement promises.** A chunk is recorded after its bytes were
//! written to the shared folder, so a logic node that dies loses nothing acknowledged.
//! The part file is not synced per chunk: the blob is synced when the upload finishes.
//! If the file server itself loses power mid-upload, rows may name bytes it lost; the
//! SHA-256 check at finish then refuses the upload (nothing corrupt is ever served) and
//! the client uploads it again.
//!
//! The tables are created at start-up (`IF NOT EXISTS`, under an advisory lock) with a
//! pool of their own, so uploads never take the connections message sends need.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use parking_lot::Mutex;

use super::{older_than, promote, read_blob, remove_if_exists, valid_media_id, valid_sha};
use crate::{MediaMeta, MediaStore, PgConfig, Result, StoreError, UploadKey, Verified};

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

/// Copies `part` to `copy` while hashing it; the hash and first `head_len` bytes are
/// those of the copy.
fn copy_and_hash(part: &Path, copy: &Path, head_len: usize) -> Result<Verified> {
    use sha2::Digest;
    use std::io::{Read, Write};
    let mut src = File::open(part)?;
    let mut dst = File::create(copy)?;
    let mut hasher = sha2::Sha256::new();
    let mut head = Vec::with_capacity(head_len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let b = &buf[..n];
        if head.len() < head_len {
            head.extend_from_slice(&b[..(head_len - head.len()).min(n)]);
        }
        hasher.update(b);
        dst.write_all(b)?;
    }
    Ok(Verified {
        sha256: hex::encode(hasher.finalize()),
        head,
    })
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn i64s(xs: &[u64]) -> Vec<i64> {
    xs.iter().map(|&x| x as i64).collect()
}

/// Media metadata in PostgreSQL, bytes in a shared folder.
pub struct PgMediaStore {
    pool: Pool,
    root: PathBuf,
    /// Part files this node has open, so a chunk costs no `open`.
    files: Mutex<HashMap<String, Arc<File>>>,
    received_bytes: AtomicU64,
}

impl PgMediaStore {
    /// Connects (a pool of `cfg.pool_size` connections), creates the tables if needed
    /// and the folder's `uploads` and `blobs`.
    pub async fn connect(cfg: &PgConfig, root: &Path) -> Result<Arc<PgMediaStore>> {
        for sub in ["uploads", "blobs"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let pool = crate::postgres::pool(cfg, "ferry-media")?;
        {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            txn.batch_execute(SCHEMA).await?;
            txn.commit().await?;
        }
        Ok(Arc::new(PgMediaStore {
            pool,
            root: root.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            received_bytes: AtomicU64::new(0),
        }))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.part"))
    }
    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(sha)
    }
    fn verified_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.verified"))
    }

    /// The part file of an upload, opened once per node.
    fn part(&self, id: &str) -> Result<Arc<File>> {
        if let Some(f) = self.files.lock().get(id) {
            return Ok(f.clone());
        }
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.part_path(id))
        {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        Ok(self.files.lock().entry(id.to_owned()).or_insert(f).clone())
    }

    fn forget_file(&self, id: &str) {
        self.files.lock().remove(id);
    }

    /// Deletes an upload's rows and file (a refused finish, a sweep).
    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.forget_file(id);
        let client = self.client().await?;
        client
            .execute("DELETE FROM media_chunks WHERE media_id = $1", &[&id])
            .await?;
        remove_if_exists(&self.verified_path(id))?;
        remove_if_exists(&self.part_path(id))
    }
}

#[async_trait]
impl MediaStore for Arc<PgMediaStore> {
    async fn create(&self, meta: MediaMeta) -> Result<()> {
        if !valid_media_id(&meta.id) || !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad media id or sha256".into()));
        }
        // The file first: a row never names an upload without one.
        let (path, size) = (self.part_path(&meta.id), meta.size);
        tokio::task::spawn_blocking(move || -> Result<()> {
            File::create(path)?.set_len(size)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::WriteFailed(e.to_string()))??;
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

    async fn meta(&self, id: &str) -> Result<Option<MediaMeta>> {
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

    async fn grant(&self, id: &str, users: &[u64], groups: &[u64], moments: &[u64]) -> Result<()> {
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

    async fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let file = self.part(id)?;
        // A chunk already recorded (acknowledged) is never rewritten: the same bytes
        // again are acknowledged as they are, other bytes refused.
        let held = {
            let client = self.client().await?;
            client
                .query_opt(
                    "SELECT m.received, EXISTS (SELECT 1 FROM media_chunks c \
                         WHERE c.media_id = m.id AND c.chunk_offset = $2) \
                     FROM media m WHERE m.id = $1 AND NOT m.complete",
                    &[&id, &(offset as i64)],
                )
                .await?
                .ok_or(StoreError::NotFound)?
        };
        if held.get::<_, bool>(1) {
            let (f, len) = (file.clone(), data.len());
            let stored = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let mut b = vec![0u8; len];
                f.read_exact_at(&mut b, offset)?;
                Ok(b)
            })
            .await
            .map_err(|e| StoreError::WriteFailed(e.to_string()))??;
            if stored != data {
                return Err(StoreError::ChunkMismatch);
            }
            return Ok(held.get::<_, i64>(0) as u64);
        }
        file.write_all_at(data, offset)?;
        self.received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // One upload's chunks are recorded one at a time (its row locked first), so
        // each walk sees every chunk recorded before it.
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        txn.query_opt(
            "SELECT 1 FROM media WHERE id = $1 AND NOT complete FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        txn.execute(
            "INSERT INTO media_chunks (media_id, chunk_offset) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[&id, &(offset as i64)],
        )
        .await?;
        let row = txn
            .query_one(
                "UPDATE media m SET received = LEAST(m.size, ( \
                     WITH RECURSIVE walk(o) AS ( \
                         SELECT m.received \
                         UNION ALL \
                         SELECT walk.o + m.chunk_size FROM walk JOIN media_chunks c \
                             ON c.media_id = m.id AND c.chunk_offset = walk.o \
                     ) SELECT max(o) FROM walk)) \
                 WHERE m.id = $1 RETURNING m.received",
                &[&id],
            )
            .await?;
        txn.commit().await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn received(&self, id: &str) -> Result<u64> {
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

    async fn verify(&self, id: &str, head: usize) -> Result<Verified> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let (part, copy) = (self.part_path(id), self.verified_path(id));
        tokio::task::spawn_blocking(move || copy_and_hash(&part, &copy, head))
            .await
            .map_err(|e| StoreError::WriteFailed(e.to_string()))?
    }

    async fn commit(&self, id: &str, content_type: &str, width: u32, height: u32) -> Result<()> {
        let meta = self.meta(id).await?.ok_or(StoreError::NotFound)?;
        if meta.complete {
            return Ok(());
        }
        if !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad sha256".into()));
        }
        self.forget_file(id);
        let (copy, blob) = (self.verified_path(id), self.blob_path(&meta.sha256));
        let part = self.part_path(id);
        let promoted = tokio::task::spawn_blocking(move || {
            promote(&copy, &blob)?;
            remove_if_exists(&part)
        })
        .await
        .map_err(|e| StoreError::WriteFailed(e.to_string()))?;
        let mut client = self.client().await?;
        if let Err(e) = promoted {
            // Another node finishing the same upload got there first.
            if self.meta(id).await?.is_some_and(|m| m.complete) {
                return Ok(());
            }
            return Err(e);
        }
        let txn = client.transaction().await?;
        txn.execute(
            "UPDATE media SET complete = TRUE, content_type = $2, width = $3, height = $4, \
             received = size, upload_key = NULL WHERE id = $1",
            &[&id, &content_type, &(width as i32), &(height as i32)],
        )
        .await?;
        txn.execute("DELETE FROM media_chunks WHERE media_id = $1", &[&id])
            .await?;
        txn.commit().await?;
        Ok(())
    }

    async fn discard(&self, id: &str) -> Result<()> {
        if !valid_media_id(id) {
            return Ok(());
        }
        {
            let client = self.client().await?;
            client
                .execute("DELETE FROM media WHERE id = $1 AND NOT complete", &[&id])
                .await?;
        }
        self.delete_upload(id).await
    }

    async fn read(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let meta = self.meta(id).await?.ok_or(StoreError::NotFound)?;
        if !meta.complete {
            return Err(StoreError::NotFound);
        }
        let path = self.blob_path(&meta.sha256);
        tokio::task::spawn_blocking(move || read_blob(&path, meta.size, offset, len))
            .await
            .map_err(|e| StoreError::WriteFailed(e.to_string()))?
    }

    async fn sweep(&self, created_before_ms: i64) -> Result<Vec<String>> {
        let ids: Vec<String> = {
            let client = self.client().await?;
            client
                .query(
                    "DELETE FROM media WHERE NOT complete AND created_ms < $1 RETURNING id",
                    &[&created_before_ms],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        for id in &ids {
            self.delete_upload(id).await?;
        }
        // Files whose row was never written (a node died inside create).
        let dir = self.root.join("uploads");
        let orphans = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let mut out = Vec::new();
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let id = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| valid_media_id(s) && path.extension().is_some_and(|x| x == "part"));
                if let Some(id) = id {
                    if older_than(&path, created_before_ms) {
                        out.push(id.to_owned());
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::WriteFailed(e.to_string()))??;
        for id in orphans {
            if self.meta(&id).await?.is_none() {
                self.delete_upload(&id).await?;
            }
        }
        Ok(ids)
    }

    fn bytes_received(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }
}
