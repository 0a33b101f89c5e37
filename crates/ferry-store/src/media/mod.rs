//! Media storage: uploads received in chunks at their offsets, then kept once per
//! SHA-256 (identical content is stored once, whoever uploads it).
//!
//! [`MediaStore`] is separate from [`crate::Store`]: media bytes live beside the
//! database, not in it. [`LocalMediaStore`] (`local.rs`) keeps everything under one
//! folder; [`PgMediaStore`] (`pg.rs`) keeps the metadata in PostgreSQL and the bytes in a
//! folder every logic node mounts; [`S3MediaStore`] (`s3.rs`) keeps the metadata in
//! PostgreSQL too (`pgmeta.rs`, shared with `pg.rs`) and the bytes in S3-compatible
//! storage. This module holds the contract and the file helpers.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use async_trait::async_trait;

use crate::Result;

mod local;
mod pg;
mod pgmeta;
mod s3;

pub use local::LocalMediaStore;
pub use pg::PgMediaStore;
pub use s3::{S3Config, S3MediaStore};

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
    /// Moments that show it: their audience (checked when reading) may read it.
    pub grant_moments: Vec<u64>,
    /// The key chunks sent unsealed are encrypted under (an upload created sealed); kept
    /// while the upload is in progress so it resumes after a restart, forgotten when it
    /// is finished (and deleted with it when refused or swept).
    pub upload_key: Option<UploadKey>,
}

/// An upload's 32-byte key. Hex in a metadata file; never printed (`Debug` hides it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UploadKey(pub [u8; 32]);

impl std::fmt::Debug for UploadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadKey(..)")
    }
}

impl serde::Serialize for UploadKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for UploadKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut k = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut k).map_err(serde::de::Error::custom)?;
        Ok(UploadKey(k))
    }
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
    /// Lets more users, groups and moments' audiences read a media (merged with the
    /// grants it has).
    async fn grant(&self, id: &str, users: &[u64], groups: &[u64], moments: &[u64]) -> Result<()>;
    /// Writes `data` at `offset` of an upload. Returns the offset up to which every
    /// byte has been received. Bytes already acknowledged are never changed: the same
    /// bytes again are acknowledged without a write, other bytes are refused with
    /// [`StoreError::ChunkMismatch`].
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
    /// Deletes the uploads created before `created_before_ms` and still not complete
    /// (abandoned), with their bytes; returns their ids.
    async fn sweep(&self, created_before_ms: i64) -> Result<Vec<String>>;
    /// Chunk bytes written since the store opened (for tests and stats).
    fn bytes_received(&self) -> u64;
    /// The media `uploader` uploaded (complete or still uploading), ids > `after` in id
    /// order, at most `limit` (exports, deleting a user).
    async fn uploaded_by(&self, uploader: u64, after: &str, limit: usize)
        -> Result<Vec<MediaMeta>>;
    /// Deletes a media: its metadata, an upload in progress, and its blob unless another
    /// media holds the same content (blobs are shared by hash). True when it existed.
    async fn delete(&self, id: &str) -> Result<bool>;
}

/// A media id is 32 lowercase hex digits; anything else never reaches the file system.
pub fn valid_media_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes a verified upload's file the blob of its hash: synced, then renamed into
/// place, or dropped when that content is stored already.
pub(crate) fn promote(part: &Path, blob: &Path) -> Result<()> {
    if blob.exists() {
        remove_if_exists(part)
    } else {
        File::open(part)?.sync_all()?;
        fs::rename(part, blob)?;
        Ok(())
    }
}

/// Up to `len` bytes of a blob of `size` bytes from `offset`.
pub(crate) fn read_blob(path: &Path, size: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = File::open(path)?;
    let len = len.min(size.saturating_sub(offset) as usize);
    let mut out = vec![0u8; len];
    f.read_exact_at(&mut out, offset)?;
    Ok(out)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a file was last changed before `before_ms` (Unix milliseconds).
pub(crate) fn older_than(path: &Path, before_ms: i64) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|d| (d.as_millis() as i64) < before_ms)
}
