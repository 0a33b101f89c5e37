//! Media in a local folder: [`LocalMediaStore`] keeps everything under one folder:
//!
//! ```text
//! <root>/meta/<media_id>.json      what the media is, who may read it
//! <root>/uploads/<media_id>.part   an upload's bytes, written at their offsets
//! <root>/uploads/<media_id>.state  the byte ranges on disk at the last checkpoint (JSON)
//! <root>/blobs/<sha256>            finished content, once per hash
//! ```
//!
//! **What a chunk acknowledgement promises.** A chunk is written to the upload's file
//! (the page cache) before it is acknowledged, so the acknowledged offset survives a
//! crash of the process. It is not fsync'd per chunk: every [`CHECKPOINT_BYTES`] the
//! file is `fdatasync`'d and *then* the ranges are saved (written, synced, renamed), so
//! the saved state never claims a byte that is not on disk. After a power loss the
//! upload resumes from the last checkpoint: `media/status` answers what is durable, and
//! clients resume from `media/status`, never from the acknowledgements they had. The
//! SHA-256 check at finish stands behind all of it; the finished blob is synced before
//! it is renamed into place.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use sha2::Digest;

use super::{
    older_than, promote, read_blob, remove_if_exists, valid_media_id, valid_sha, MediaMeta,
    MediaStore, Verified,
};
use crate::{Result, StoreError};

/// An upload open on this node: its file, what has been received, and the SHA-256 of
/// its bytes so far (fed as chunks arrive in order, so finishing does not read the whole
/// file again).
struct Open {
    file: File,
    /// Held shared while a chunk is written, exclusively to seal the upload before it is
    /// verified: after that no write can change the bytes the hash vouches for.
    sealed: RwLock<bool>,
    state: Mutex<Upload>,
}

/// What is known about an open upload's bytes.
struct Upload {
    /// Byte ranges received (sorted, disjoint).
    ranges: Vec<(u64, u64)>,
    /// Bytes written since the last checkpoint began.
    unsaved: u64,
    /// A checkpoint is running (one at a time per upload).
    checkpointing: bool,
    /// Committed, discarded or swept: a late checkpoint must not write its state.
    closed: bool,
    /// The SHA-256 of bytes `0..hashed`; `None` once a chunk rewrote hashed bytes (the
    /// file is then hashed whole at finish).
    hasher: Option<sha2::Sha256>,
    hashed: u64,
}

impl Upload {
    fn new(ranges: Vec<(u64, u64)>) -> Self {
        Upload {
            ranges,
            unsaved: 0,
            checkpointing: false,
            closed: false,
            hasher: Some(sha2::Sha256::new()),
            hashed: 0,
        }
    }

    /// Feeds the hash with a chunk just written at `offset`, then with whatever else is
    /// now contiguous (read back from the file, from the page cache).
    fn hash(&mut self, file: &File, offset: u64, data: &[u8]) {
        let Some(h) = self.hasher.as_mut() else {
            return;
        };
        if offset < self.hashed {
            // Hashed bytes were written again: the hash no longer vouches for the file.
            self.hasher = None;
            return;
        }
        if offset == self.hashed {
            h.update(data);
            self.hashed += data.len() as u64;
        }
        let upto = contiguous(&self.ranges);
        let mut buf = Vec::new();
        while self.hashed < upto {
            let n = (upto - self.hashed).min(256 * 1024) as usize;
            buf.resize(n, 0);
            if file.read_exact_at(&mut buf, self.hashed).is_err() {
                self.hasher = None;
                return;
            }
            h.update(&buf);
            self.hashed += n as u64;
        }
    }

    fn contiguous(&self) -> u64 {
        contiguous(&self.ranges)
    }

    fn add(&mut self, start: u64, end: u64) {
        add_range(&mut self.ranges, start, end);
    }
}

/// The end of the range that starts at 0, if any.
fn contiguous(ranges: &[(u64, u64)]) -> u64 {
    match ranges.first() {
        Some(&(0, end)) => end,
        _ => 0,
    }
}

/// Adds `[start, end)` to sorted, disjoint ranges, merging neighbours. Chunks mostly
/// arrive in order, so this is usually an extension of the last range.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let i = ranges.partition_point(|&(s, _)| s <= start);
    ranges.insert(i, (start, end));
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
}

/// A chunk written: the contiguous offset, its upload, and the ranges to checkpoint when
/// a checkpoint is due.
struct Written {
    next: u64,
    up: Arc<Open>,
    due: Option<Vec<(u64, u64)>>,
}

/// The received ranges are checkpointed (the file synced, then the ranges saved) every
/// this many bytes, and at finish. After a crash an upload resumes from the last
/// checkpoint, which never claims more than what is on disk.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

/// Writes `bytes` to `path` through a synced temporary file and a rename: after a crash
/// `path` holds the old content or the new, never a torn one.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The SHA-256 of a file and its first `head_len` bytes.
pub(crate) fn hash_file(path: &Path, head_len: usize) -> Result<Verified> {
    let mut f = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut head = Vec::with_capacity(head_len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < head_len {
            let take = (head_len - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    Ok(Verified {
        sha256: hex::encode(hasher.finalize()),
        head,
    })
}

/// Media in a local folder.
pub struct LocalMediaStore {
    root: PathBuf,
    metas: Mutex<HashMap<String, MediaMeta>>,
    uploads: Mutex<HashMap<String, Arc<Open>>>,
    received_bytes: AtomicU64,
    /// Serializes read-modify-write of metadata (grants, finish, sweep).
    meta_lock: Mutex<()>,
}

impl LocalMediaStore {
    /// Opens (creating) the folder.
    pub fn open(root: &Path) -> Result<Arc<LocalMediaStore>> {
        for sub in ["meta", "uploads", "blobs"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Arc::new(LocalMediaStore {
            root: root.to_path_buf(),
            metas: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            received_bytes: AtomicU64::new(0),
            meta_lock: Mutex::new(()),
        }))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.root.join("meta").join(format!("{id}.json"))
    }
    fn part_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.part"))
    }
    fn state_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.state"))
    }
    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(sha)
    }

    /// How many blobs are stored (for tests: nothing stored after a refusal).
    pub fn blob_count(&self) -> Result<usize> {
        Ok(fs::read_dir(self.root.join("blobs"))?.count())
    }

    /// How many uploads are in progress on disk.
    pub fn upload_count(&self) -> Result<usize> {
        Ok(fs::read_dir(self.root.join("uploads"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .count())
    }

    /// How many media ids exist (uploading or complete).
    pub fn meta_count(&self) -> Result<usize> {
        Ok(fs::read_dir(self.root.join("meta"))?.count())
    }

    fn save_meta(&self, meta: &MediaMeta) -> Result<()> {
        let json = serde_json::to_vec(meta).map_err(|e| StoreError::WriteFailed(e.to_string()))?;
        write_synced(&self.meta_path(&meta.id), &json)?;
        self.metas.lock().insert(meta.id.clone(), meta.clone());
        Ok(())
    }

    fn load_meta(&self, id: &str) -> Result<Option<MediaMeta>> {
        if !valid_media_id(id) {
            return Ok(None);
        }
        if let Some(m) = self.metas.lock().get(id) {
            return Ok(Some(m.clone()));
        }
        let bytes = match fs::read(self.meta_path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta: MediaMeta =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.metas.lock().insert(id.to_owned(), meta.clone());
        Ok(Some(meta))
    }

    /// Syncs an upload's file, then saves `ranges` (all written before the sync), unless
    /// the upload closed meanwhile.
    fn checkpoint(&self, id: &str, up: &Open, ranges: &[(u64, u64)]) -> Result<()> {
        up.file.sync_data()?;
        let json =
            serde_json::to_vec(ranges).map_err(|e| StoreError::WriteFailed(e.to_string()))?;
        let state = self.state_path(id);
        let tmp = state.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_data()?;
        }
        // Under the upload's lock, so a commit or discard cannot slip in between.
        let u = up.state.lock();
        if u.closed {
            drop(u);
            return remove_if_exists(&tmp);
        }
        fs::rename(&tmp, &state)?;
        Ok(())
    }

    /// The open upload `id`, reopened from disk (its last checkpoint) after a restart.
    fn upload(&self, id: &str) -> Result<Arc<Open>> {
        if let Some(u) = self.uploads.lock().get(id) {
            return Ok(u.clone());
        }
        let meta = self.load_meta(id)?.ok_or(StoreError::NotFound)?;
        if meta.complete {
            return Err(StoreError::NotFound);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.part_path(id))?;
        let ranges: Vec<(u64, u64)> = match fs::read(self.state_path(id)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let up = Arc::new(Open {
            file,
            sealed: RwLock::new(false),
            state: Mutex::new(Upload::new(ranges)),
        });
        Ok(self
            .uploads
            .lock()
            .entry(id.to_owned())
            .or_insert(up)
            .clone())
    }

    /// Forgets the open upload `id` (after a commit or discard).
    fn close_upload(&self, id: &str) {
        if let Some(up) = self.uploads.lock().remove(id) {
            up.state.lock().closed = true;
        }
    }

    /// Writes a chunk; returns the contiguous offset and, when one is due, the ranges
    /// to checkpoint.
    fn write_chunk_sync(&self, id: &str, offset: u64, data: &[u8]) -> Result<Written> {
        let up = self.upload(id)?;
        let sealed = up.sealed.read();
        if *sealed {
            return Err(StoreError::Conflict);
        }
        let end = offset + data.len() as u64;
        let held: Vec<(u64, u64)> = {
            let u = up.state.lock();
            u.ranges
                .iter()
                .filter(|&&(s, e)| s < end && offset < e)
                .map(|&(s, e)| (s.max(offset), e.min(end)))
                .collect()
        };
        let mut stored = Vec::new();
        for &(s, e) in &held {
            stored.resize((e - s) as usize, 0);
            up.file.read_exact_at(&mut stored, s)?;
            if stored[..] != data[(s - offset) as usize..(e - offset) as usize] {
                return Err(StoreError::ChunkMismatch);
            }
        }
        if held.first() == Some(&(offset, end)) {
            // Acknowledged already, with these very bytes: nothing to write.
            let next = up.state.lock().contiguous();
            drop(sealed);
            return Ok(Written {
                next,
                up,
                due: None,
            });
        }
        up.file.write_all_at(data, offset)?;
        self.received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut u = up.state.lock();
        if u.closed {
            return Err(StoreError::NotFound);
        }
        u.add(offset, offset + data.len() as u64);
        u.hash(&up.file, offset, data);
        u.unsaved += data.len() as u64;
        let due = (u.unsaved >= CHECKPOINT_BYTES && !u.checkpointing).then(|| {
            u.unsaved = 0;
            u.checkpointing = true;
            u.ranges.clone()
        });
        let next = u.contiguous();
        drop(u);
        drop(sealed);
        Ok(Written { next, up, due })
    }

    /// Seals an upload (no chunk may change it any more) and hashes it: from the hash
    /// fed as the chunks came when it covers every byte, else from the file.
    fn verify_sync(&self, id: &str, head_len: usize) -> Result<Verified> {
        let size = self.load_meta(id)?.ok_or(StoreError::NotFound)?.size;
        let up = self.upload(id)?;
        *up.sealed.write() = true;
        let fed = {
            let u = up.state.lock();
            u.hasher
                .as_ref()
                .filter(|_| u.hashed == size)
                .map(|h| hex::encode(h.clone().finalize()))
        };
        let Some(sha256) = fed else {
            return hash_file(&self.part_path(id), head_len);
        };
        let mut head = vec![0u8; head_len.min(size as usize)];
        up.file.read_exact_at(&mut head, 0)?;
        Ok(Verified { sha256, head })
    }

    fn commit_sync(&self, meta: &MediaMeta) -> Result<()> {
        if !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad sha256".into()));
        }
        promote(&self.part_path(&meta.id), &self.blob_path(&meta.sha256))?;
        self.close_upload(&meta.id);
        remove_if_exists(&self.state_path(&meta.id))?;
        self.save_meta(meta)
    }

    fn discard_sync(&self, id: &str) -> Result<()> {
        if !valid_media_id(id) {
            return Ok(());
        }
        self.close_upload(id);
        self.metas.lock().remove(id);
        for p in [self.part_path(id), self.state_path(id), self.meta_path(id)] {
            remove_if_exists(&p)?;
        }
        Ok(())
    }

    fn sweep_sync(&self, before_ms: i64) -> Result<Vec<String>> {
        let mut swept = Vec::new();
        for entry in fs::read_dir(self.root.join("uploads"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|x| x != "part") {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !valid_media_id(id) {
                continue;
            }
            let _g = self.meta_lock.lock();
            let abandoned = match self.load_meta(id) {
                Ok(Some(m)) => !m.complete && m.created_ms < before_ms,
                // A file whose metadata was never written (a crash inside create).
                Ok(None) => older_than(&path, before_ms),
                Err(e) => {
                    tracing::warn!(media_id = id, error = %e, "unreadable upload metadata");
                    false
                }
            };
            if abandoned {
                self.discard_sync(id)?;
                swept.push(id.to_owned());
            }
        }
        Ok(swept)
    }

    /// Every media's metadata, read from the folder (ids in order).
    fn all_metas(&self) -> Result<Vec<MediaMeta>> {
        let mut ids: Vec<String> = fs::read_dir(self.root.join("meta"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension().is_some_and(|x| x == "json"))
                    .then(|| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
                    .flatten()
            })
            .filter(|id| valid_media_id(id))
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.load_meta(&id)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Deletes a media and, when no other complete media has its content, the blob.
    /// Under the metadata lock, so no finish of the same content runs meanwhile.
    fn delete_sync(&self, id: &str) -> Result<bool> {
        let _g = self.meta_lock.lock();
        let Some(meta) = self.load_meta(id)? else {
            return Ok(false);
        };
        self.discard_sync(id)?;
        if meta.complete
            && !self
                .all_metas()?
                .iter()
                .any(|m| m.complete && m.sha256 == meta.sha256)
        {
            remove_if_exists(&self.blob_path(&meta.sha256))?;
        }
        Ok(true)
    }

    fn read_sync(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let meta = self.load_meta(id)?.ok_or(StoreError::NotFound)?;
        if !meta.complete {
            return Err(StoreError::NotFound);
        }
        read_blob(&self.blob_path(&meta.sha256), meta.size, offset, len)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::WriteFailed(e.to_string()))?
}

/// Adds new grants to `meta`; whether anything changed.
pub(crate) fn merge_grants(
    meta: &mut MediaMeta,
    users: &[u64],
    groups: &[u64],
    moments: &[u64],
) -> bool {
    let mut changed = false;
    for (have, add) in [
        (&mut meta.grant_users, users),
        (&mut meta.grant_groups, groups),
        (&mut meta.grant_moments, moments),
    ] {
        for x in add {
            if !have.contains(x) {
                have.push(*x);
                changed = true;
            }
        }
    }
    changed
}

#[async_trait]
impl MediaStore for Arc<LocalMediaStore> {
    async fn create(&self, meta: MediaMeta) -> Result<()> {
        if !valid_media_id(&meta.id) || !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad media id or sha256".into()));
        }
        let me = self.clone();
        blocking(move || {
            if me.meta_path(&meta.id).exists() {
                return Err(StoreError::Conflict);
            }
            File::create(me.part_path(&meta.id))?.set_len(meta.size)?;
            me.save_meta(&meta)
        })
        .await
    }

    async fn meta(&self, id: &str) -> Result<Option<MediaMeta>> {
        self.load_meta(id)
    }

    async fn grant(&self, id: &str, users: &[u64], groups: &[u64], moments: &[u64]) -> Result<()> {
        let me = self.clone();
        let (id, users, groups, moments) = (
            id.to_owned(),
            users.to_vec(),
            groups.to_vec(),
            moments.to_vec(),
        );
        blocking(move || {
            let _g = me.meta_lock.lock();
            let mut meta = me.load_meta(&id)?.ok_or(StoreError::NotFound)?;
            if merge_grants(&mut meta, &users, &groups, &moments) {
                me.save_meta(&meta)?;
            }
            Ok(())
        })
        .await
    }

    async fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        // A write to the page cache: cheaper inline than through a blocking thread. The
        // checkpoint (an fdatasync) runs on a blocking thread and is not waited for.
        let Written { next, up, due } = self.write_chunk_sync(id, offset, data)?;
        if let Some(ranges) = due {
            let (me, id) = (self.clone(), id.to_owned());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = me.checkpoint(&id, &up, &ranges) {
                    tracing::warn!(media_id = %id, error = %e, "upload checkpoint failed");
                }
                up.state.lock().checkpointing = false;
            });
        }
        Ok(next)
    }

    async fn received(&self, id: &str) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let up = self.upload(id)?;
        let n = up.state.lock().contiguous();
        Ok(n)
    }

    async fn verify(&self, id: &str, head: usize) -> Result<Verified> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let me = self.clone();
        let id = id.to_owned();
        blocking(move || me.verify_sync(&id, head)).await
    }

    async fn commit(&self, id: &str, content_type: &str, width: u32, height: u32) -> Result<()> {
        let me = self.clone();
        let (id, content_type) = (id.to_owned(), content_type.to_owned());
        blocking(move || {
            let _g = me.meta_lock.lock();
            let mut meta = me.load_meta(&id)?.ok_or(StoreError::NotFound)?;
            if meta.complete {
                return Ok(());
            }
            meta.complete = true;
            meta.upload_key = None;
            meta.content_type = content_type;
            meta.width = width;
            meta.height = height;
            me.commit_sync(&meta)
        })
        .await
    }

    async fn discard(&self, id: &str) -> Result<()> {
        let me = self.clone();
        let id = id.to_owned();
        blocking(move || {
            let _g = me.meta_lock.lock();
            me.discard_sync(&id)
        })
        .await
    }

    async fn read(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let me = self.clone();
        let id = id.to_owned();
        blocking(move || me.read_sync(&id, offset, len)).await
    }

    async fn sweep(&self, created_before_ms: i64) -> Result<Vec<String>> {
        let me = self.clone();
        blocking(move || me.sweep_sync(created_before_ms)).await
    }

    fn bytes_received(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Reads every metadata file: fine for an operator's export or deletion, not for a
    /// request path.
    async fn uploaded_by(
        &self,
        uploader: u64,
        after: &str,
        limit: usize,
    ) -> Result<Vec<MediaMeta>> {
        let (me, after) = (self.clone(), after.to_owned());
        blocking(move || {
            Ok(me
                .all_metas()?
                .into_iter()
                .filter(|m| m.uploader == uploader && m.id.as_str() > after.as_str())
                .take(limit)
                .collect())
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        if !valid_media_id(id) {
            return Ok(false);
        }
        let (me, id) = (self.clone(), id.to_owned());
        blocking(move || me.delete_sync(&id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UploadKey;

    fn meta(id: &str, data: &[u8]) -> MediaMeta {
        MediaMeta {
            id: id.into(),
            uploader: 1,
            size: data.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(data)),
            chunk_size: 4,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn out_of_order_chunks_resume_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalMediaStore::open(dir.path()).unwrap();
        let data = b"0123456789abcdef!";
        let a = "a".repeat(32);
        s.create(meta(&a, data)).await.unwrap();
        assert!(s.create(meta(&a, data)).await.is_err());
        assert_eq!(s.write_chunk(&a, 4, &data[4..8]).await.unwrap(), 0);
        assert_eq!(s.write_chunk(&a, 0, &data[..4]).await.unwrap(), 8);
        assert_eq!(s.write_chunk(&a, 12, &data[12..]).await.unwrap(), 8);
        // A reopened store (a restart) resumes from its last checkpoint: none yet, so
        // from 0; after one, from the contiguous part of what it saved.
        assert_eq!(
            LocalMediaStore::open(dir.path())
                .unwrap()
                .received(&a)
                .await
                .unwrap(),
            0
        );
        let up = s.upload(&a).unwrap();
        let ranges = up.state.lock().ranges.clone();
        assert_eq!(ranges, [(0, 8), (12, 17)]);
        s.checkpoint(&a, &up, &ranges).unwrap();
        let s2 = LocalMediaStore::open(dir.path()).unwrap();
        assert_eq!(s2.received(&a).await.unwrap(), 8);
        assert_eq!(s2.write_chunk(&a, 8, &data[8..12]).await.unwrap(), 17);
        let v = s2.verify(&a, 4).await.unwrap();
        assert_eq!(v.sha256, meta(&a, data).sha256);
        assert_eq!(v.head, b"0123");
        let up2 = s2.upload(&a).unwrap();
        s2.commit(&a, "text/plain", 0, 0).await.unwrap();
        s2.grant(&a, &[7, 7], &[9], &[11]).await.unwrap();
        // A checkpoint that finishes after the commit leaves no state behind.
        s2.checkpoint(&a, &up2, &[(0, 17)]).unwrap();
        assert!(!s2.state_path(&a).exists());
        let m = s2.meta(&a).await.unwrap().unwrap();
        assert!(m.complete);
        assert_eq!(
            (m.grant_users, m.grant_groups, m.grant_moments),
            (vec![7], vec![9], vec![11])
        );
        assert_eq!(s2.read(&a, 10, 100).await.unwrap(), &data[10..]);
        // The same content under another id: one blob.
        let b = "b".repeat(32);
        s2.create(meta(&b, data)).await.unwrap();
        s2.write_chunk(&b, 0, data).await.unwrap();
        s2.commit(&b, "text/plain", 0, 0).await.unwrap();
        assert_eq!(s2.blob_count().unwrap(), 1);
        assert_eq!(s2.upload_count().unwrap(), 0);
        s2.discard(&b).await.unwrap();
        assert!(s2.meta(&b).await.unwrap().is_none());
        assert!(s2.meta("../../etc/passwd").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_hash_vouches_for_the_file_as_it_is_when_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalMediaStore::open(dir.path()).unwrap();
        let data = b"0123456789abcdef";
        let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        // In order, out of order: the hash fed as chunks come matches the content.
        let a = "a".repeat(32);
        s.create(meta(&a, data)).await.unwrap();
        for off in [0, 8, 4, 12] {
            s.write_chunk(&a, off, &data[off as usize..off as usize + 4])
                .await
                .unwrap();
        }
        assert_eq!(s.upload(&a).unwrap().state.lock().hashed, 16);
        assert_eq!(s.verify(&a, 3).await.unwrap().sha256, sha(data));
        // Sealed: no chunk may change what was verified.
        assert!(matches!(
            s.write_chunk(&a, 0, b"XXXX").await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(s.verify(&a, 3).await.unwrap().head, b"012");
        // Acknowledged bytes never change: the same bytes again are acknowledged
        // without a write, other bytes are refused (and the stored ones stay).
        let b = "b".repeat(32);
        s.create(meta(&b, data)).await.unwrap();
        s.write_chunk(&b, 0, b"0123").await.unwrap();
        let written = s.bytes_received();
        assert_eq!(s.write_chunk(&b, 0, b"0123").await.unwrap(), 4);
        assert_eq!(s.bytes_received(), written);
        assert!(matches!(
            s.write_chunk(&b, 0, b"XXXX").await,
            Err(StoreError::ChunkMismatch)
        ));
        s.write_chunk(&b, 8, &data[8..12]).await.unwrap();
        // Overlapping acknowledged bytes: checked on the overlap.
        assert!(matches!(
            s.write_chunk(&b, 2, b"2X45").await,
            Err(StoreError::ChunkMismatch)
        ));
        assert_eq!(s.write_chunk(&b, 2, b"2345").await.unwrap(), 6);
        s.write_chunk(&b, 4, &data[4..8]).await.unwrap();
        s.write_chunk(&b, 12, &data[12..]).await.unwrap();
        assert_eq!(s.verify(&b, 0).await.unwrap().sha256, sha(data));
    }

    #[tokio::test]
    async fn the_upload_key_is_kept_until_the_upload_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalMediaStore::open(dir.path()).unwrap();
        let data = b"0123456789abcdef";
        let a = "a".repeat(32);
        let key = Some(UploadKey([9; 32]));
        s.create(MediaMeta {
            upload_key: key,
            ..meta(&a, data)
        })
        .await
        .unwrap();
        assert!(!format!("{:?}", s.meta(&a).await.unwrap()).contains("0909"));
        // A restart reads it back from the metadata file.
        let s = LocalMediaStore::open(dir.path()).unwrap();
        assert_eq!(s.meta(&a).await.unwrap().unwrap().upload_key, key);
        s.write_chunk(&a, 0, data).await.unwrap();
        s.verify(&a, 0).await.unwrap();
        s.commit(&a, "text/plain", 0, 0).await.unwrap();
        assert_eq!(s.meta(&a).await.unwrap().unwrap().upload_key, None);
        let s = LocalMediaStore::open(dir.path()).unwrap();
        assert_eq!(s.meta(&a).await.unwrap().unwrap().upload_key, None);
        let json = fs::read_to_string(s.meta_path(&a)).unwrap();
        assert!(json.contains("\"upload_key\":null"), "{json}");
    }

    #[tokio::test]
    async fn sweep_deletes_old_unfinished_uploads_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalMediaStore::open(dir.path()).unwrap();
        let data = b"some bytes to keep";
        let (old, new, done) = ("1".repeat(32), "2".repeat(32), "3".repeat(32));
        for (id, created_ms) in [(&old, 1_000), (&new, 5_000), (&done, 1_000)] {
            s.create(MediaMeta {
                created_ms,
                ..meta(id, data)
            })
            .await
            .unwrap();
        }
        s.write_chunk(&old, 0, &data[..4]).await.unwrap();
        s.write_chunk(&done, 0, data).await.unwrap();
        s.commit(&done, "text/plain", 0, 0).await.unwrap();
        assert_eq!(s.sweep(3_000).await.unwrap(), vec![old.clone()]);
        assert!(s.meta(&old).await.unwrap().is_none());
        assert!(s.write_chunk(&old, 4, &data[4..8]).await.is_err());
        assert_eq!(s.upload_count().unwrap(), 1);
        assert_eq!(s.meta_count().unwrap(), 2);
        assert_eq!(s.read(&done, 0, 100).await.unwrap(), data);
        assert!(s.sweep(3_000).await.unwrap().is_empty());
    }
}
