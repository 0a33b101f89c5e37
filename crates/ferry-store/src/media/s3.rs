//! Media in a cluster on S3-compatible storage (AWS S3, MinIO, Ceph RGW, R2, …):
//! metadata and acknowledgements in PostgreSQL ([`MediaRows`], as the shared folder's
//! store keeps them), bytes in a bucket.
//!
//! ```text
//! <prefix>/uploads/<media_id>   an upload, assembled (verified from here)
//! <prefix>/blobs/<sha256>       finished content, once per hash
//! ```
//!
//! **Chunks.** A chunk (8 KiB by default) is far too small for an object or a multipart
//! part (S3 wants ≥ 5 MiB but for the last). So a chunk is staged in PostgreSQL
//! (`media_chunks.data`, with its SHA-256 in `digest`) and acknowledged once that row is
//! committed: a logic node that dies loses nothing acknowledged, and any node resumes
//! the upload. The chunks then go to the bucket by parts of `part_size` (8 MiB by
//! default, rounded up to whole chunks): the node whose chunk makes a part contiguous
//! uploads it as a multipart part in the background, under a lease of
//! [`S3Config::lease`] (30 s) in `media_s3_parts` (the multipart upload itself is created
//! with the upload, `media_s3_uploads`), so two nodes never upload one part
//! at once and a node that dies while uploading leaves it to another once the lease
//! runs out. An uploaded part's staged bytes are dropped from PostgreSQL (its digests
//! stay, to answer a chunk sent again).
//!
//! **Finishing.** `verify` makes sure every part is uploaded (uploading those no node
//! holds, waiting for those another node holds), completes the multipart upload — or,
//! for media of one part or less, puts the object in one request — then reads the object
//! back to hash it: what is vouched for is what the bucket holds. `commit` copies it to
//! `blobs/<sha256>` unless that content is stored already (dedup), deletes the upload's
//! object and marks the media complete. Reads are ranged GETs of the blob.
//!
//! **Abandoned uploads.** The sweep deletes them with their staged chunks and aborts
//! their multipart uploads (parts left in a bucket are billed and invisible). A node
//! that dies between creating a multipart upload and recording its id in PostgreSQL
//! leaves one the sweep cannot know of: a bucket lifecycle rule that aborts incomplete
//! multipart uploads after a day or two covers that (docs/operations.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use sha2::Digest;

use super::pgmeta::MediaRows;
use super::{valid_media_id, valid_sha};
use crate::{MediaMeta, MediaStore, PgConfig, Result, StoreError, Verified};

/// The S3 store's own rows: the multipart upload of each large upload, and who uploads
/// (or uploaded) which part. Part 0 is the assembly (the multipart upload completed, or
/// the single object put); parts 1.. are S3's part numbers.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS media_s3_uploads (
    media_id  TEXT PRIMARY KEY,
    upload_id TEXT
);
CREATE TABLE IF NOT EXISTS media_s3_parts (
    media_id    TEXT NOT NULL,
    part_no     INTEGER NOT NULL,
    e_tag       TEXT,
    lease_until TIMESTAMPTZ NOT NULL,
    lease_token TEXT NOT NULL,
    PRIMARY KEY (media_id, part_no)
);
"#;

/// What [`MediaRows::complete`] also deletes when an upload is finished.
const FINISHED: &[&str] = &[
    "DELETE FROM media_s3_parts WHERE media_id = $1",
    "DELETE FROM media_s3_uploads WHERE media_id = $1",
];

/// S3 wants every part but the last to be at least this big.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// …and at most this big.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Where the bucket is and how to reach it. Empty strings leave a setting to the
/// standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`, …), then to
/// the instance's credentials.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; empty: AWS.
    pub endpoint: String,
    pub region: String,
    /// Object keys start with it (`ferry/` → `ferry/blobs/<sha256>`); empty: none.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow an `http://` endpoint (a server on a private network, tests).
    pub allow_http: bool,
    /// `https://<bucket>.<endpoint>` instead of `https://<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// Bytes per multipart part (rounded up to whole chunks), 5 MiB to 5 GiB.
    pub part_size: u64,
    /// How long a node owns a part it uploads before another may take it over.
    pub lease: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            endpoint: String::new(),
            region: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
            part_size: 8 * 1024 * 1024,
            lease: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"..")
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("part_size", &self.part_size)
            .field("lease", &self.lease)
            .finish()
    }
}

impl S3Config {
    /// The client for the bucket (no request is made yet).
    fn client(&self) -> Result<AmazonS3> {
        if self.bucket.is_empty() {
            return Err(StoreError::Corrupt(
                "media S3 store: no bucket named".into(),
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(StoreError::Corrupt(format!(
                "media S3 part size {} is outside S3's {MIN_PART_SIZE}..={MAX_PART_SIZE}",
                self.part_size
            )));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if !self.endpoint.is_empty() {
            b = b.with_endpoint(&self.endpoint);
        }
        if !self.region.is_empty() {
            b = b.with_region(&self.region);
        }
        if !self.access_key_id.is_empty() {
            b = b.with_access_key_id(&self.access_key_id);
        }
        if !self.secret_access_key.is_empty() {
            b = b.with_secret_access_key(&self.secret_access_key);
        }
        if self.allow_http {
            b = b.with_allow_http(true);
        }
        if self.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(true);
        }
        b.build()
            .map_err(|e| StoreError::Corrupt(format!("media S3 settings: {e}")))
    }
}

fn s3_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        e => StoreError::Unavailable(format!("S3: {e}")),
    }
}

/// Deleting what is already gone is done.
fn gone_is_ok(r: object_store::Result<()>) -> Result<()> {
    match r {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(s3_err(e)),
    }
}

/// The parts of an upload of `size` bytes: the part length (`part_size` rounded up to
/// whole chunks) and how many (0 for media stored in one put).
fn layout(part_size: u64, meta: &MediaMeta) -> (u64, u64) {
    let chunk = u64::from(meta.chunk_size.max(1));
    let len = part_size.div_ceil(chunk) * chunk;
    if meta.size <= len {
        (len, 0)
    } else {
        (len, meta.size.div_ceil(len))
    }
}

/// A part's state as PostgreSQL has it.
struct PartState {
    e_tag: Option<String>,
    leased: bool,
}

/// Media metadata in PostgreSQL, bytes in S3-compatible storage.
pub struct S3MediaStore {
    rows: MediaRows,
    s3: Arc<AmazonS3>,
    prefix: String,
    part_size: u64,
    lease: Duration,
    received_bytes: AtomicU64,
}

impl S3MediaStore {
    /// Connects to PostgreSQL (a pool of `pg.pool_size` connections) and creates the
    /// tables if needed, then checks that the bucket answers.
    pub async fn connect(pg: &PgConfig, s3: &S3Config) -> Result<Arc<S3MediaStore>> {
        let client = s3.client()?;
        let rows = MediaRows::connect(pg, SCHEMA).await?;
        let store = Arc::new(S3MediaStore {
            rows,
            s3: Arc::new(client),
            prefix: s3.prefix.trim_matches('/').to_owned(),
            part_size: s3.part_size,
            lease: s3.lease,
            received_bytes: AtomicU64::new(0),
        });
        // A wrong bucket, endpoint or key shows at start-up, not at the first upload.
        match store.s3.head(&store.path("blobs/ferry-check")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(store),
            Err(e) => Err(StoreError::Unavailable(format!(
                "S3 bucket {:?}: {e}",
                s3.bucket
            ))),
        }
    }

    fn path(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }
    fn upload_path(&self, id: &str) -> Path {
        self.path(&format!("uploads/{id}"))
    }
    fn blob_path(&self, sha: &str) -> Path {
        self.path(&format!("blobs/{sha}"))
    }

    /// Takes the lease on part `part_no` of an upload unless the part is uploaded or
    /// another node holds it; the lease's token.
    async fn lease(&self, id: &str, part_no: i32) -> Result<Option<String>> {
        let client = self.rows.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO media_s3_parts (media_id, part_no, lease_until, lease_token) \
                 VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3), \
                     md5(random()::text || clock_timestamp()::text)) \
                 ON CONFLICT (media_id, part_no) DO UPDATE \
                     SET lease_until = EXCLUDED.lease_until, lease_token = EXCLUDED.lease_token \
                     WHERE media_s3_parts.e_tag IS NULL \
                         AND media_s3_parts.lease_until < clock_timestamp() \
                 RETURNING lease_token",
                &[&id, &part_no, &self.lease.as_secs_f64()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Gives a lease up (an upload that failed): another try may take it at once.
    async fn release(&self, id: &str, part_no: i32, token: &str) {
        let released = async {
            let client = self.rows.client().await?;
            client
                .execute(
                    "UPDATE media_s3_parts SET lease_until = '-infinity' \
                     WHERE media_id = $1 AND part_no = $2 AND lease_token = $3",
                    &[&id, &part_no, &token],
                )
                .await?;
            Ok::<_, StoreError>(())
        };
        if let Err(e) = released.await {
            tracing::warn!(media_id = id, part_no, error = %e, "releasing a part's lease failed (it runs out by itself)");
        }
    }

    /// Records a part as uploaded, if the lease is still ours; whether it was.
    async fn record_part(&self, id: &str, part_no: i32, token: &str, e_tag: &str) -> Result<bool> {
        let client = self.rows.client().await?;
        let n = client
            .execute(
                "UPDATE media_s3_parts SET e_tag = $4 \
                 WHERE media_id = $1 AND part_no = $2 AND lease_token = $3 AND e_tag IS NULL",
                &[&id, &part_no, &token, &e_tag],
            )
            .await?;
        Ok(n == 1)
    }

    async fn parts(&self, id: &str) -> Result<HashMap<i32, PartState>> {
        let client = self.rows.client().await?;
        Ok(client
            .query(
                "SELECT part_no, e_tag, lease_until > clock_timestamp() \
                 FROM media_s3_parts WHERE media_id = $1",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    PartState {
                        e_tag: r.get(1),
                        leased: r.get(2),
                    },
                )
            })
            .collect())
    }

    /// The upload's multipart upload id (created with the upload).
    async fn multipart_id(&self, id: &str) -> Result<String> {
        let client = self.rows.client().await?;
        client
            .query_opt(
                "SELECT upload_id FROM media_s3_uploads WHERE media_id = $1",
                &[&id],
            )
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0))
            .ok_or_else(|| StoreError::Corrupt(format!("upload {id} has no multipart upload")))
    }

    /// The staged bytes of `start..end` (whole chunks), or why they are not all there.
    async fn staged(&self, id: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        let client = self.rows.client().await?;
        let rows = client
            .query(
                "SELECT chunk_offset, data FROM media_chunks \
                 WHERE media_id = $1 AND chunk_offset >= $2 AND chunk_offset < $3 \
                 ORDER BY chunk_offset",
                &[&id, &(start as i64), &(end as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for r in &rows {
            let at = start + out.len() as u64;
            let data: Option<Vec<u8>> = r.get(1);
            match data {
                Some(d) if r.get::<_, i64>(0) as u64 == at => out.extend_from_slice(&d),
                _ => {
                    return Err(StoreError::Conflict);
                }
            }
        }
        if out.len() as u64 != end - start {
            return Err(StoreError::Conflict);
        }
        Ok(out)
    }

    /// Uploads part `part_no` (from 1) of a multipart upload if no node did or does;
    /// whether this call uploaded it.
    async fn upload_part(&self, meta: &MediaMeta, part_no: u64) -> Result<bool> {
        let id = meta.id.as_str();
        let Some(token) = self.lease(id, part_no as i32).await? else {
            return Ok(false);
        };
        let (len, _) = layout(self.part_size, meta);
        let start = (part_no - 1) * len;
        let end = (start + len).min(meta.size);
        let uploaded = async {
            let upload_id = self.multipart_id(id).await?;
            let data = self.staged(id, start, end).await?;
            let part = self
                .s3
                .put_part(
                    &self.upload_path(id),
                    &upload_id,
                    (part_no - 1) as usize,
                    PutPayload::from(data),
                )
                .await
                .map_err(s3_err)?;
            if self
                .record_part(id, part_no as i32, &token, &part.content_id)
                .await?
            {
                // Its bytes are in the bucket: PostgreSQL keeps only their digests.
                let client = self.rows.client().await?;
                client
                    .execute(
                        "UPDATE media_chunks SET data = NULL WHERE media_id = $1 \
                         AND chunk_offset >= $2 AND chunk_offset < $3",
                        &[&id, &(start as i64), &(end as i64)],
                    )
                    .await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match uploaded {
            Ok(()) => {
                metrics::counter!("ferry_media_s3_parts_total").increment(1);
                Ok(true)
            }
            Err(e) => {
                self.release(id, part_no as i32, &token).await;
                Err(e)
            }
        }
    }

    /// Every part uploaded (by this node or others), in order.
    async fn all_parts(&self, meta: &MediaMeta, count: u64) -> Result<Vec<PartId>> {
        let deadline = Instant::now() + self.lease * 2;
        loop {
            let states = self.parts(&meta.id).await?;
            let mut tags = Vec::with_capacity(count as usize);
            let mut pending = false;
            for part_no in 1..=count {
                match states.get(&(part_no as i32)) {
                    Some(PartState { e_tag: Some(t), .. }) => tags.push(PartId {
                        content_id: t.clone(),
                    }),
                    Some(PartState { leased: true, .. }) => pending = true,
                    _ => {
                        // Nobody's (never started, or its node died): ours.
                        self.upload_part(meta, part_no).await?;
                        pending = true;
                    }
                }
            }
            if !pending {
                return Ok(tags);
            }
            if Instant::now() > deadline {
                return Err(StoreError::Unavailable(
                    "parts of this upload are still being uploaded by another node".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the upload's object: the multipart upload completed, or for media of one
    /// part or less, one put of the staged chunks. Done once, by one node.
    async fn assemble(&self, meta: &MediaMeta) -> Result<()> {
        let id = meta.id.as_str();
        let (_, count) = layout(self.part_size, meta);
        let parts = if count > 0 {
            Some(self.all_parts(meta, count).await?)
        } else {
            None
        };
        let deadline = Instant::now() + self.lease * 2;
        loop {
            match self.parts(id).await?.get(&0) {
                Some(PartState { e_tag: Some(_), .. }) => return Ok(()),
                Some(PartState { leased: true, .. }) => {
                    if Instant::now() > deadline {
                        return Err(StoreError::Unavailable(
                            "this upload is being finished by another node".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                _ => {}
            }
            let Some(token) = self.lease(id, 0).await? else {
                continue;
            };
            let path = self.upload_path(id);
            let made = async {
                let e_tag = match &parts {
                    None => {
                        let data = self.staged(id, 0, meta.size).await?;
                        self.s3
                            .put(&path, PutPayload::from(data))
                            .await
                            .map_err(s3_err)?
                            .e_tag
                    }
                    Some(parts) => {
                        let upload_id = self.multipart_id(id).await?;
                        match self
                            .s3
                            .complete_multipart(&path, &upload_id, parts.clone())
                            .await
                        {
                            Ok(r) => r.e_tag,
                            // Completed by a node that died before it said so.
                            Err(e) => match self.s3.head(&path).await {
                                Ok(m) if m.size == meta.size => m.e_tag,
                                _ => return Err(s3_err(e)),
                            },
                        }
                    }
                };
                self.record_part(id, 0, &token, e_tag.as_deref().unwrap_or("-"))
                    .await?;
                Ok::<_, StoreError>(())
            }
            .await;
            if let Err(e) = made {
                self.release(id, 0, &token).await;
                return Err(e);
            }
            return Ok(());
        }
    }

    /// Deletes an upload's objects, multipart upload and rows (a refused finish, a
    /// sweep). Its `media` row is the caller's.
    async fn delete_upload(&self, id: &str) -> Result<()> {
        let upload_id: Option<String> = {
            let client = self.rows.client().await?;
            client
                .query_opt(
                    "SELECT upload_id FROM media_s3_uploads WHERE media_id = $1",
                    &[&id],
                )
                .await?
                .and_then(|r| r.get(0))
        };
        let path = self.upload_path(id);
        if let Some(upload_id) = upload_id {
            gone_is_ok(self.s3.abort_multipart(&path, &upload_id).await)?;
        }
        gone_is_ok(self.s3.delete(&path).await)?;
        self.rows.delete_chunks(id).await?;
        let client = self.rows.client().await?;
        for sql in FINISHED {
            client.execute(*sql, &[&id]).await?;
        }
        Ok(())
    }

    /// How many objects are stored under `under` (`blobs`, `uploads`): for tests and
    /// operators' checks.
    pub async fn object_count(&self, under: &str) -> Result<usize> {
        let prefix = self.path(under);
        let mut list = self.s3.list(Some(&prefix));
        let mut n = 0;
        while let Some(m) = list.next().await {
            m.map_err(s3_err)?;
            n += 1;
        }
        Ok(n)
    }
}

#[async_trait]
impl MediaStore for Arc<S3MediaStore> {
    async fn create(&self, meta: MediaMeta) -> Result<()> {
        self.rows.insert(&meta).await?;
        if layout(self.part_size, &meta).1 == 0 {
            return Ok(()); // One put when it is finished.
        }
        // Media of several parts: its multipart upload now, so that the nodes that
        // upload its parts only read its id.
        let made = async {
            let upload_id = self
                .s3
                .create_multipart(&self.upload_path(&meta.id))
                .await
                .map_err(s3_err)?;
            let client = self.rows.client().await?;
            client
                .execute(
                    "INSERT INTO media_s3_uploads (media_id, upload_id) VALUES ($1, $2)",
                    &[&meta.id, &upload_id],
                )
                .await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = made {
            let _ = self.discard(&meta.id).await;
            return Err(e);
        }
        Ok(())
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
        let digest = sha2::Sha256::digest(data).to_vec();
        // A chunk already recorded (acknowledged) is never rewritten: the same bytes
        // again are acknowledged as they are, other bytes refused.
        let held = self.rows.held(id, offset).await?;
        if let Some(stored) = held.chunk {
            if stored.as_deref() != Some(digest.as_slice()) {
                return Err(StoreError::ChunkMismatch);
            }
            return Ok(held.received);
        }
        let rec = self
            .rows
            .record_chunk(id, offset, Some(&digest), Some(data))
            .await?;
        self.received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // The parts this chunk made contiguous go to the bucket, in the background: the
        // chunk is acknowledged already (its bytes are in PostgreSQL).
        if rec.after > rec.before {
            let meta = MediaMeta {
                id: id.to_owned(),
                size: rec.size,
                chunk_size: rec.chunk_size,
                ..Default::default()
            };
            let (len, count) = layout(self.part_size, &meta);
            for part_no in 1..=count {
                let end = (part_no * len).min(meta.size);
                if rec.before < end && end <= rec.after {
                    let (me, meta) = (self.clone(), meta.clone());
                    tokio::spawn(async move {
                        if let Err(e) = me.upload_part(&meta, part_no).await {
                            tracing::warn!(media_id = %meta.id, part_no, error = %e,
                                "uploading a part failed (finishing the upload retries it)");
                        }
                    });
                }
            }
        }
        Ok(rec.after)
    }

    async fn received(&self, id: &str) -> Result<u64> {
        self.rows.received(id).await
    }

    async fn verify(&self, id: &str, head: usize) -> Result<Verified> {
        let meta = self.rows.meta(id).await?.ok_or(StoreError::NotFound)?;
        if meta.complete {
            return Err(StoreError::NotFound);
        }
        let received = self.rows.received(id).await?;
        if received < meta.size {
            return Err(StoreError::Conflict);
        }
        self.assemble(&meta).await?;
        // What the bucket holds is what is vouched for.
        let got = self.s3.get(&self.upload_path(id)).await.map_err(s3_err)?;
        let mut stream = got.into_stream();
        let mut hasher = sha2::Sha256::new();
        let mut head_bytes = Vec::with_capacity(head);
        let mut size = 0u64;
        while let Some(b) = stream.next().await {
            let b = b.map_err(s3_err)?;
            if head_bytes.len() < head {
                let take = (head - head_bytes.len()).min(b.len());
                head_bytes.extend_from_slice(&b[..take]);
            }
            hasher.update(&b);
            size += b.len() as u64;
        }
        if size != meta.size {
            return Err(StoreError::Corrupt(format!(
                "the assembled upload holds {size} bytes, not {}",
                meta.size
            )));
        }
        Ok(Verified {
            sha256: hex::encode(hasher.finalize()),
            head: head_bytes,
        })
    }

    async fn commit(&self, id: &str, content_type: &str, width: u32, height: u32) -> Result<()> {
        let meta = self.rows.meta(id).await?.ok_or(StoreError::NotFound)?;
        if meta.complete {
            return Ok(());
        }
        if !valid_sha(&meta.sha256) {
            return Err(StoreError::Corrupt("bad sha256".into()));
        }
        let (from, blob) = (self.upload_path(id), self.blob_path(&meta.sha256));
        // Content stored already is kept once.
        match self.s3.head(&blob).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                if let Err(e) = self.s3.copy(&from, &blob).await {
                    // Another node finishing the same upload copied and deleted it.
                    if self.s3.head(&blob).await.is_err() {
                        return Err(s3_err(e));
                    }
                }
            }
            Err(e) => return Err(s3_err(e)),
        }
        gone_is_ok(self.s3.delete(&from).await)?;
        self.rows
            .complete(id, content_type, width, height, FINISHED)
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
        let meta = self.rows.meta(id).await?.ok_or(StoreError::NotFound)?;
        if !meta.complete {
            return Err(StoreError::NotFound);
        }
        let end = offset.saturating_add(len as u64).min(meta.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bytes = self
            .s3
            .get_range(&self.blob_path(&meta.sha256), offset..end)
            .await
            .map_err(s3_err)?;
        Ok(bytes.to_vec())
    }

    async fn sweep(&self, created_before_ms: i64) -> Result<Vec<String>> {
        let ids = self.rows.delete_abandoned(created_before_ms).await?;
        for id in &ids {
            self.delete_upload(id).await?;
        }
        // Multipart uploads whose media row is gone (a node died between deleting the
        // row and aborting the upload).
        let orphans: Vec<String> = {
            let client = self.rows.client().await?;
            client
                .query(
                    "SELECT u.media_id FROM media_s3_uploads u \
                     WHERE NOT EXISTS (SELECT 1 FROM media m WHERE m.id = u.media_id)",
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        for id in orphans {
            self.delete_upload(&id).await?;
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
            gone_is_ok(self.s3.delete(&self.blob_path(&sha)).await)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_chunks_and_small_media_is_one_put() {
        let meta = |size, chunk_size| MediaMeta {
            size,
            chunk_size,
            ..Default::default()
        };
        let mib = 1024 * 1024;
        assert_eq!(layout(8 * mib, &meta(8 * mib, 8192)), (8 * mib, 0));
        assert_eq!(layout(8 * mib, &meta(8 * mib + 1, 8192)), (8 * mib, 2));
        // 5 MiB is not a whole number of 3000-byte chunks: rounded up.
        let (len, n) = layout(5 * mib, &meta(12 * mib, 3000));
        assert_eq!((len % 3000, len >= 5 * mib, n), (0, true, 3));
    }

    #[test]
    fn settings_are_checked_and_the_secret_never_printed() {
        let mut c = S3Config {
            bucket: "b".into(),
            secret_access_key: "very-secret".into(),
            part_size: 1024,
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(matches!(c.client(), Err(StoreError::Corrupt(m)) if m.contains("part size")));
        c.part_size = MIN_PART_SIZE;
        c.bucket.clear();
        assert!(matches!(c.client(), Err(StoreError::Corrupt(m)) if m.contains("bucket")));
    }
}
