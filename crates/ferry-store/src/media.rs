//! Media storage: uploads received in chunks at their offsets, then kept once per
//! SHA-256 (identical content is stored once, whoever uploads it).
//!
//! [`MediaStore`] is separate from [`crate::Store`]: media bytes live beside the
//! database, not in it. [`LocalMediaStore`] keeps everything under one folder:
//!
//! ```text
//! <root>/meta/<media_id>.json      what the media is, who may read it
//! <root>/uploads/<media_id>.part   an upload's bytes, written at their offsets
//! <root>/uploads/<media_id>.state  the byte ranges received so far (JSON)
//! <root>/blobs/<sha256>            finished content, once per hash
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sha2::Digest;

use crate::{Result, StoreError};

/// What a media id names. Grants are filled in when a message references the media.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MediaMeta {
    /// 32 lowercase hex digits (128 random bits).
    pub id: String,
    pub uploader: u64,
    /// `v1::MediaKind` as a number.
    pub kind: i32,
    pub size: u64,
    /// What the uploader said it is.
    pub declared_type: String,
    /// The SHA-256 the uploader announced (lowercase hex); verified at finish.
    pub sha256: String,
    /// Chunk size told to the uploader.
    pub chunk_size: u32,
    pub created_ms: i64,
    /// Set once the content is verified and stored as a blob.
    pub complete: bool,
    /// Sniffed from the bytes at finish.
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    /// Users who may read it (besides the uploader).
    pub grant_users: Vec<u64>,
    /// Groups whose members (checked when reading) may read it.
    pub grant_groups: Vec<u64>,
}

/// A finished upload's hash and first bytes (for sniffing its type).
#[derive(Debug, Clone)]
pub struct Verified {
    pub sha256: String,
    pub head: Vec<u8>,
}

/// Where media lives.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Records a new upload. Fails if the id exists.
    async fn create(&self, meta: MediaMeta) -> Result<()>;
    /// The media named `id`, uploading or complete.
    async fn meta(&self, id: &str) -> Result<Option<MediaMeta>>;
    /// Lets more users and groups read a media (merged with the grants it has).
    async fn grant(&self, id: &str, users: &[u64], groups: &[u64]) -> Result<()>;
    /// Writes `data` at `offset` of an upload. Returns the offset up to which every
    /// byte has been received.
    async fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> Result<u64>;
    /// The offset up to which every byte of an upload has been received.
    async fn received(&self, id: &str) -> Result<u64>;
    /// The SHA-256 and the first `head` bytes of a fully received upload.
    async fn verify(&self, id: &str, head: usize) -> Result<Verified>;
    /// Stores a verified upload as the blob of its SHA-256 and marks it complete with
    /// its sniffed type and dimensions.
    async fn commit(&self, id: &str, content_type: &str, width: u32, height: u32) -> Result<()>;
    /// Forgets an upload and its metadata (a refused finish).
    async fn discard(&self, id: &str) -> Result<()>;
    /// Up to `len` bytes of complete media from `offset`.
    async fn read(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Chunk bytes written since the store opened (for tests and stats).
    fn bytes_received(&self) -> u64;
}

/// A media id is 32 lowercase hex digits; anything else never reaches the file system.
pub fn valid_media_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An upload in progress: its file and the byte ranges received (sorted, disjoint).
struct Upload {
    file: Arc<File>,
    ranges: Vec<(u64, u64)>,
    unsaved: u32,
}

impl Upload {
    fn contiguous(&self) -> u64 {
        match self.ranges.first() {
            Some(&(0, end)) => end,
            _ => 0,
        }
    }

    fn add(&mut self, start: u64, end: u64) {
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }
}

/// Received ranges are saved every this many chunks (and at finish); after a restart an
/// upload resumes from what was saved, which is never more than what was written.
const SAVE_EVERY: u32 = 16;

/// Media in a local folder.
pub struct LocalMediaStore {
    root: PathBuf,
    metas: Mutex<HashMap<String, MediaMeta>>,
    uploads: Mutex<HashMap<String, Arc<Mutex<Upload>>>>,
    received_bytes: AtomicU64,
    /// Serializes read-modify-write of metadata (grants, finish).
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

    fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
        }
        fs::rename(&tmp, path)?;
        Ok(())
    }

    fn save_meta(&self, meta: &MediaMeta) -> Result<()> {
        let json = serde_json::to_vec(meta).map_err(|e| StoreError::WriteFailed(e.to_string()))?;
        Self::write_atomic(&self.meta_path(&meta.id), &json)?;
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

    fn save_state(&self, id: &str, up: &Upload) -> Result<()> {
        let json =
            serde_json::to_vec(&up.ranges).map_err(|e| StoreError::WriteFailed(e.to_string()))?;
        Self::write_atomic(&self.state_path(id), &json)
    }

    /// The open upload `id`, reopened from disk after a restart.
    fn upload(&self, id: &str) -> Result<Arc<Mutex<Upload>>> {
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
        let up = Arc::new(Mutex::new(Upload {
            file: Arc::new(file),
            ranges,
            unsaved: 0,
        }));
        Ok(self
            .uploads
            .lock()
            .entry(id.to_owned())
            .or_insert(up)
            .clone())
    }

    fn write_chunk_sync(&self, id: &str, offset: u64, data: &[u8]) -> Result<u64> {
        let up = self.upload(id)?;
        let file = up.lock().file.clone();
        file.write_all_at(data, offset)?;
        self.received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut u = up.lock();
        u.add(offset, offset + data.len() as u64);
        u.unsaved += 1;
        if u.unsaved >= SAVE_EVERY {
            u.unsaved = 0;
            self.save_state(id, &u)?;
        }
        Ok(u.contiguous())
    }

    fn verify_sync(&self, id: &str, head_len: usize) -> Result<Verified> {
        let mut f = File::open(self.part_path(id))?;
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

    fn commit_sync(&self, meta: &MediaMeta) -> Result<()> {
        if !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad sha256".into()));
        }
        let blob = self.blob_path(&meta.sha256);
        let part = self.part_path(&meta.id);
        if blob.exists() {
            fs::remove_file(&part)?;
        } else {
            File::open(&part)?.sync_all()?;
            fs::rename(&part, &blob)?;
        }
        let _ = fs::remove_file(self.state_path(&meta.id));
        self.uploads.lock().remove(&meta.id);
        self.save_meta(meta)
    }

    fn discard_sync(&self, id: &str) -> Result<()> {
        if !valid_media_id(id) {
            return Ok(());
        }
        self.uploads.lock().remove(id);
        self.metas.lock().remove(id);
        for p in [self.part_path(id), self.state_path(id), self.meta_path(id)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_sync(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let meta = self.load_meta(id)?.ok_or(StoreError::NotFound)?;
        if !meta.complete {
            return Err(StoreError::NotFound);
        }
        let f = File::open(self.blob_path(&meta.sha256))?;
        let len = len.min(meta.size.saturating_sub(offset) as usize);
        let mut out = vec![0u8; len];
        f.read_exact_at(&mut out, offset)?;
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::WriteFailed(e.to_string()))?
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

    async fn grant(&self, id: &str, users: &[u64], groups: &[u64]) -> Result<()> {
        let me = self.clone();
        let (id, users, groups) = (id.to_owned(), users.to_vec(), groups.to_vec());
        blocking(move || {
            let _g = me.meta_lock.lock();
            let mut meta = me.load_meta(&id)?.ok_or(StoreError::NotFound)?;
            let before = (meta.grant_users.len(), meta.grant_groups.len());
            for u in users {
                if !meta.grant_users.contains(&u) {
                    meta.grant_users.push(u);
                }
            }
            for g in groups {
                if !meta.grant_groups.contains(&g) {
                    meta.grant_groups.push(g);
                }
            }
            if before != (meta.grant_users.len(), meta.grant_groups.len()) {
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
        // Small writes to the page cache: cheaper inline than through a blocking thread.
        self.write_chunk_sync(id, offset, data)
    }

    async fn received(&self, id: &str) -> Result<u64> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let up = self.upload(id)?;
        let n = up.lock().contiguous();
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
            meta.complete = true;
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
        blocking(move || me.discard_sync(&id)).await
    }

    async fn read(&self, id: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if !valid_media_id(id) {
            return Err(StoreError::NotFound);
        }
        let me = self.clone();
        let id = id.to_owned();
        blocking(move || me.read_sync(&id, offset, len)).await
    }

    fn bytes_received(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A reopened store (a restart) resumes from what it saved: never beyond 8.
        let up = s.upload(&a).unwrap();
        s.save_state(&a, &up.lock()).unwrap();
        let s2 = LocalMediaStore::open(dir.path()).unwrap();
        assert_eq!(s2.received(&a).await.unwrap(), 8);
        assert_eq!(s2.write_chunk(&a, 8, &data[8..12]).await.unwrap(), 17);
        let v = s2.verify(&a, 4).await.unwrap();
        assert_eq!(v.sha256, meta(&a, data).sha256);
        assert_eq!(v.head, b"0123");
        s2.commit(&a, "text/plain", 0, 0).await.unwrap();
        s2.grant(&a, &[7, 7], &[9]).await.unwrap();
        let m = s2.meta(&a).await.unwrap().unwrap();
        assert!(m.complete);
        assert_eq!((m.grant_users, m.grant_groups), (vec![7], vec![9]));
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
}
