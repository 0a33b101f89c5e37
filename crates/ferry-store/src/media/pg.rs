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
//! The rows (`media`, `media_chunks`) are [`MediaRows`]', shared with the S3 store.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::pgmeta::MediaRows;
use super::{older_than, promote, read_blob, remove_if_exists, valid_media_id, valid_sha};
use crate::{MediaMeta, MediaStore, PgConfig, Result, StoreError, Verified};

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

/// Media metadata in PostgreSQL, bytes in a shared folder.
pub struct PgMediaStore {
    rows: MediaRows,
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
        let rows = MediaRows::connect(cfg, "").await?;
        Ok(Arc::new(PgMediaStore {
            rows,
            root: root.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            received_bytes: AtomicU64::new(0),
        }))
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
        self.rows.delete_chunks(id).await?;
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
        self.rows.insert(&meta).await
    }

    async fn meta(&self, id: &str) -> Result<Option<MediaMeta>> {
        self.rows.meta(id).await
    }

    async fn grant(&self, id: &str, users: &[u64], groups: &[u64], moments: &[u64]) -> Result<()> {
        self.rows.grant(id, users, groups, moments).await
    }

    async fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let file = self.part(id)?;
        // A chunk already recorded (acknowledged) is never rewritten: the same bytes
        // again are acknowledged as they are, other bytes refused.
        let held = self.rows.held(id, offset).await?;
        if held.chunk.is_some() {
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
            return Ok(held.received);
        }
        file.write_all_at(data, offset)?;
        self.received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(self.rows.record_chunk(id, offset, None, None).await?.after)
    }

    async fn received(&self, id: &str) -> Result<u64> {
        self.rows.received(id).await
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
        if let Err(e) = promoted {
            // Another node finishing the same upload got there first.
            if self.meta(id).await?.is_some_and(|m| m.complete) {
                return Ok(());
            }
            return Err(e);
        }
        self.rows
            .complete(id, content_type, width, height, &[])
            .await
    }

    async fn discard(&self, id: &str) -> Result<()> {
        if !valid_media_id(id) {
            return Ok(());
        }
        self.rows.delete_unfinished(id).await?;
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
        let ids = self.rows.delete_abandoned(created_before_ms).await?;
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

    async fn uploaded_by(
        &self,
        uploader: u64,
        after: &str,
        limit: usize,
    ) -> Result<Vec<MediaMeta>> {
        self.rows.uploaded_by(uploader, after, limit).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        if !valid_media_id(id) {
            return Ok(false);
        }
        let Some(blob) = self.rows.delete(id).await? else {
            return Ok(false);
        };
        self.delete_upload(id).await?;
        if let Some(sha) = blob {
            let path = self.blob_path(&sha);
            tokio::task::spawn_blocking(move || remove_if_exists(&path))
                .await
                .map_err(|e| StoreError::WriteFailed(e.to_string()))??;
        }
        Ok(true)
    }
}
