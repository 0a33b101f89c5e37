//! Media: chunked, resumable uploads (`media/create`, `media/chunk`, `media/status`,
//! `media/finish`) and ranged downloads (`GET /v1/media/{id}`).
//!
//! Only the uploader may write an upload; only the uploader, the users (or the members
//! of the groups) a message referencing the media was sent to, and the audience of a
//! moment showing it (the author and their friends) may read it. The size and SHA-256
//! are verified and the type is sniffed from the bytes at finish; a refused finish
//! leaves nothing stored. Uploads not finished within `upload_ttl_ms` are deleted by a
//! periodic sweep.
//!
//! Chunks are the hot path: a chunk whose upload id and token were checked together a
//! moment ago (the [`UploadCache`]) skips the session lookup and the metadata read.
//!
//! **The upload key.** A `media/create` that came sealed gets a fresh random key in its
//! (sealed, so confidential) answer, kept with the upload until it is finished or
//! swept. A chunk then need not be sealed: sent unsealed, its bytes are ChaCha20-Poly1305
//! under that key (`ferry_proto::upload`), and the key is its credential — no token, no
//! X25519 per chunk. A chunk that does not open is refused and nothing is stored. A
//! sealed chunk (token inside, as before the key existed) carries its bytes as they are,
//! so clients that ignore the key keep working; so does plaintext mode (no key).

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::bus::{Fetch, Origin, Resource};
use ferry_proto::upload::{self, TAG_LEN};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::{valid_media_id, MediaMeta};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::attach::{store_err, Attachments};
use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;
use crate::moments::Moments;

/// Media settings (`[logic.media]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Chunk size told to uploaders that do not ask for one.
    pub chunk_size: u32,
    /// Smallest and largest chunk size an uploader may ask for.
    pub min_chunk_size: u32,
    pub max_chunk_size: u32,
    /// Chunks accepted ahead of the next expected offset (out of order).
    pub window: u32,
    /// Largest upload per kind, in bytes.
    pub max_image_bytes: u64,
    pub max_voice_bytes: u64,
    pub max_video_bytes: u64,
    pub max_file_bytes: u64,
    pub max_thumbnail_bytes: u64,
    /// Largest download response; bigger media is read with `Range` requests. Keeps
    /// every bus message under NATS's 1 MiB.
    pub max_response_bytes: u32,
    /// What a download of media still uploading is told to wait.
    pub retry_after_ms: u32,
    /// An upload not finished this long after it was created is deleted.
    pub upload_ttl_ms: u64,
    /// How often abandoned uploads are looked for.
    pub sweep_interval_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            chunk_size: 8 * 1024,
            min_chunk_size: 1024,
            max_chunk_size: 512 * 1024,
            window: 64,
            max_image_bytes: 32 * 1024 * 1024,
            max_voice_bytes: 16 * 1024 * 1024,
            max_video_bytes: 512 * 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
            max_thumbnail_bytes: 512 * 1024,
            max_response_bytes: 768 * 1024,
            retry_after_ms: 500,
            upload_ttl_ms: 24 * 3600 * 1000,
            sweep_interval_ms: 10 * 60 * 1000,
        }
    }
}

/// Bytes read from the start of an upload to sniff its type and image dimensions.
const SNIFF_BYTES: usize = 256 * 1024;

/// How long a checked (upload, token) pair is trusted before the session is looked up
/// again, so a token revoked mid-upload stops working within this time.
const HANDLE_TTL: Duration = Duration::from_secs(10);
/// Cached pairs kept at most; beyond it, expired ones are dropped.
const HANDLE_MAX: usize = 4096;

/// What a chunk needs to know about its upload, once the caller was checked.
#[derive(Debug, Clone, Copy)]
struct UploadHandle {
    size: u64,
    chunk_size: u32,
    /// The upload's key, when it was created sealed: unsealed chunks are opened with it.
    key: Option<ferry_store::UploadKey>,
    checked: Instant,
}

impl UploadHandle {
    /// The handle of an upload in progress, as its record reads now.
    fn checked_now(meta: MediaMeta) -> UploadHandle {
        UploadHandle {
            size: meta.size,
            chunk_size: meta.chunk_size,
            key: meta.upload_key,
            checked: Instant::now(),
        }
    }
}

/// Stands for the token hash in the cache key of an upload whose chunks come unsealed,
/// authenticated by the upload key (no token). No token hashes to it.
const KEYED: [u8; 32] = [0; 32];

/// Uploads whose owner's token was checked recently, keyed by the upload id (128 random
/// bits, known only to the uploader) and the token's hash: both must match.
#[derive(Default)]
struct UploadCache(dashmap::DashMap<(u128, [u8; 32]), UploadHandle>);

impl UploadCache {
    fn key(id: &str, token: &str) -> Option<(u128, [u8; 32])> {
        if token.is_empty() || !valid_media_id(id) {
            return None;
        }
        let id = u128::from_str_radix(id, 16).ok()?;
        Some((id, crate::auth::token_hash(token)))
    }

    /// The cache key of an upload's chunks authenticated by its upload key.
    fn keyed(id: &str) -> Option<(u128, [u8; 32])> {
        if !valid_media_id(id) {
            return None;
        }
        Some((u128::from_str_radix(id, 16).ok()?, KEYED))
    }

    fn get(&self, key: &(u128, [u8; 32])) -> Option<UploadHandle> {
        let h = *self.0.get(key)?;
        (h.checked.elapsed() < HANDLE_TTL).then_some(h)
    }

    fn put(&self, key: (u128, [u8; 32]), h: UploadHandle) {
        if self.0.len() >= HANDLE_MAX {
            self.0.retain(|_, v| v.checked.elapsed() < HANDLE_TTL);
        }
        self.0.insert(key, h);
    }

    /// Forgets an upload (finished, refused or swept).
    fn forget(&self, id: &str) {
        if let Ok(id) = u128::from_str_radix(id, 16) {
            self.0.retain(|k, _| k.0 != id);
        }
    }
}

/// The MIME type of `head` from its magic number, for what is not an image.
pub fn sniff(head: &[u8]) -> &'static str {
    let at = |i: usize, m: &[u8]| head.len() >= i + m.len() && &head[i..i + m.len()] == m;
    if at(0, b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if at(0, b"\xff\xd8\xff") {
        "image/jpeg"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "image/gif"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        "audio/wav"
    } else if at(0, b"OggS") {
        "audio/ogg"
    } else if at(0, b"#!AMR") {
        "audio/amr"
    } else if at(0, b"ID3") || at(0, b"\xff\xfb") || at(0, b"\xff\xf3") {
        "audio/mpeg"
    } else if at(4, b"ftypM4A") {
        "audio/mp4"
    } else if at(4, b"ftyp") {
        "video/mp4"
    } else if at(0, b"\x1a\x45\xdf\xa3") {
        "video/webm"
    } else if at(0, b"%PDF-") {
        "application/pdf"
    } else if at(0, b"PK\x03\x04") {
        "application/zip"
    } else if at(0, b"\x1f\x8b") {
        "application/gzip"
    } else if !head.is_empty() && std::str::from_utf8(head).is_ok() {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// An image's MIME type and dimensions, or why it is not an image.
fn sniff_image(head: &[u8]) -> Result<(&'static str, u32, u32), LogicError> {
    let not_image = |why: String| LogicError::InvalidArgument(format!("not an image: {why}"));
    let format = image::guess_format(head).map_err(|e| not_image(e.to_string()))?;
    let mime = match format {
        image::ImageFormat::Png => "image/png",
        image::ImageFormat::Jpeg => "image/jpeg",
        image::ImageFormat::WebP => "image/webp",
        f => {
            return Err(not_image(format!(
                "{f:?} is not accepted (PNG, JPEG, WebP)"
            )))
        }
    };
    let (w, h) = image::ImageReader::with_format(Cursor::new(head), format)
        .into_dimensions()
        .map_err(|e| not_image(e.to_string()))?;
    if w == 0 || h == 0 {
        return Err(not_image("empty image".into()));
    }
    Ok((mime, w, h))
}

/// Whether a request came sealed: its body and its answer are confidential.
fn sealed(req: &BusRequest) -> bool {
    req.origin() == Origin::ShortLinkSealed
}

/// The media handlers and the sweep of abandoned uploads.
pub(crate) struct Media {
    core: Arc<Core>,
    /// Whose uploads are whose.
    attach: Arc<Attachments>,
    /// Who sees a moment, for media shown in one.
    moments: Arc<Moments>,
    /// Uploads whose owner was checked lately (shared with the sweep, which forgets
    /// the uploads it deletes).
    uploads: Arc<UploadCache>,
}

impl Media {
    pub fn new(core: Arc<Core>, attach: Arc<Attachments>, moments: Arc<Moments>) -> Media {
        Media {
            core,
            attach,
            moments,
            uploads: Arc::default(),
        }
    }

    fn media_limit(&self, kind: v1::MediaKind) -> Result<u64, LogicError> {
        let c = &self.core.cfg.media;
        Ok(match kind {
            v1::MediaKind::MediaImage => c.max_image_bytes,
            v1::MediaKind::MediaVoice => c.max_voice_bytes,
            v1::MediaKind::MediaVideo => c.max_video_bytes,
            v1::MediaKind::MediaFile => c.max_file_bytes,
            v1::MediaKind::MediaThumbnail => c.max_thumbnail_bytes,
            v1::MediaKind::Unspecified => {
                return Err(LogicError::InvalidArgument(
                    "kind must be image, voice, video, file or thumbnail".into(),
                ))
            }
        })
    }

    pub async fn create(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MediaCreateReq::decode(req.body.clone())?;
        let limit = self.media_limit(r.kind())?;
        if r.size == 0 {
            return Err(LogicError::InvalidArgument("empty media".into()));
        }
        if r.size > limit {
            return Err(LogicError::TooLarge(format!(
                "{} bytes is over the limit of {limit} bytes for {}",
                r.size,
                r.kind().as_str_name()
            )));
        }
        let sha = r.sha256.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LogicError::InvalidArgument(
                "sha256 must be 64 hex digits".into(),
            ));
        }
        if r.content_type.len() > 128 {
            return Err(LogicError::InvalidArgument("content type too long".into()));
        }
        let c = &self.core.cfg.media;
        let chunk_size = match r.chunk_size {
            0 => c.chunk_size,
            n => n.clamp(c.min_chunk_size, c.max_chunk_size),
        };
        let id = hex::encode(rand::random::<[u8; 16]>());
        // Only a sealed answer may carry a key: anywhere else it would travel in plain.
        let upload_key = sealed(req).then(|| {
            let mut k = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut k);
            ferry_store::UploadKey(k)
        });
        self.core
            .media()?
            .create(MediaMeta {
                id: id.clone(),
                uploader: me.user_id,
                kind: r.kind,
                size: r.size,
                declared_type: r.content_type,
                sha256: sha,
                chunk_size,
                created_ms: unix_ms(),
                upload_key,
                ..Default::default()
            })
            .await?;
        metrics::counter!("ferry_media_uploads_total").increment(1);
        Ok(ok(
            req.cmd,
            &v1::MediaCreateResp {
                media_id: id,
                chunk_size,
                window: c.window,
                upload_key: upload_key.map_or_else(Bytes::new, |k| Bytes::copy_from_slice(&k.0)),
            },
        ))
    }

    /// The upload a chunk goes to, from the cache when this token was checked for it
    /// lately; otherwise the caller and the upload are looked up (and cached).
    async fn chunk_upload(
        &self,
        req: &BusRequest,
        id: &str,
    ) -> Result<Result<UploadHandle, MediaMeta>, LogicError> {
        let key = if req.user_id == 0 {
            UploadCache::key(id, &req.token)
        } else {
            None
        };
        if let Some(h) = key.as_ref().and_then(|k| self.uploads.get(k)) {
            return Ok(Ok(h));
        }
        let me = self.core.caller(req).await?;
        let meta = self.attach.own_upload(me.user_id, id).await?;
        if meta.complete {
            return Ok(Err(meta));
        }
        let h = UploadHandle::checked_now(meta);
        if let Some(k) = key {
            self.uploads.put(k, h);
        }
        Ok(Ok(h))
    }

    /// The upload an unsealed chunk without a token goes to: one with a key (which the
    /// chunk must then open under), from the cache or the store.
    async fn keyed_upload(&self, id: &str) -> Result<UploadHandle, LogicError> {
        let ck = UploadCache::keyed(id);
        if let Some(h) = ck.as_ref().and_then(|k| self.uploads.get(k)) {
            return Ok(h);
        }
        let meta = self
            .core
            .media()?
            .meta(id)
            .await
            .map_err(store_err)?
            .filter(|m| !m.complete)
            .ok_or_else(|| LogicError::NotFound("no such upload in progress".into()))?;
        if meta.upload_key.is_none() {
            // Created in plain: its chunks need the token.
            return Err(LogicError::Unauthorized);
        }
        let h = UploadHandle::checked_now(meta);
        if let Some(k) = ck {
            self.uploads.put(k, h);
        }
        Ok(h)
    }

    pub async fn chunk(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::MediaChunkReq::decode(req.body.clone())?;
        let by_key = !sealed(req) && req.user_id == 0 && req.token.is_empty();
        let up = if by_key {
            self.keyed_upload(&r.media_id).await?
        } else {
            match self.chunk_upload(req, &r.media_id).await? {
                Ok(h) => h,
                Err(done) => {
                    return Ok(ok(
                        req.cmd,
                        &v1::MediaChunkAck {
                            next_offset: done.size,
                            size: done.size,
                            complete: true,
                        },
                    ))
                }
            }
        };
        let chunk = u64::from(up.chunk_size);
        if r.offset % chunk != 0 || r.offset >= up.size {
            return Err(LogicError::InvalidArgument(format!(
                "offset {} is not a chunk of this upload (chunks of {chunk} bytes, size {})",
                r.offset, up.size
            )));
        }
        let want = chunk.min(up.size - r.offset);
        // Unsealed to an upload with a key: the bytes are encrypted under it.
        let key = up.key.filter(|_| !sealed(req));
        let tag = if key.is_some() { TAG_LEN as u64 } else { 0 };
        if r.data.len() as u64 != want + tag {
            return Err(LogicError::InvalidArgument(format!(
                "the chunk at {} must be {want} bytes{}, not {}",
                r.offset,
                if tag > 0 { " and its 16-byte tag" } else { "" },
                r.data.len()
            )));
        }
        let data = match key {
            Some(k) => Bytes::from(
                upload::open_chunk(&k.0, &r.media_id, r.offset, &r.data).map_err(|_| {
                    metrics::counter!("ferry_media_chunks_refused_total").increment(1);
                    LogicError::InvalidArgument(
                        "the chunk does not decrypt under its upload's key (altered, or sent \
                         at another offset or to another upload); nothing was stored"
                            .into(),
                    )
                })?,
            ),
            None => r.data,
        };
        let store = self.core.media()?;
        let received = store.received(&r.media_id).await.map_err(store_err)?;
        let window = u64::from(self.core.cfg.media.window) * chunk;
        if r.offset >= received + window {
            return Err(LogicError::InvalidArgument(format!(
                "offset {} is beyond the window (next expected {received})",
                r.offset
            )));
        }
        let next = store
            .write_chunk(&r.media_id, r.offset, &data)
            .await
            .map_err(store_err)?;
        metrics::counter!("ferry_media_bytes_in_total").increment(data.len() as u64);
        Ok(ok(
            req.cmd,
            &v1::MediaChunkAck {
                next_offset: next,
                size: up.size,
                complete: false,
            },
        ))
    }

    pub async fn status(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MediaStatusReq::decode(req.body.clone())?;
        let meta = self.attach.own_upload(me.user_id, &r.media_id).await?;
        let next_offset = if meta.complete {
            meta.size
        } else {
            self.core
                .media()?
                .received(&r.media_id)
                .await
                .map_err(store_err)?
        };
        Ok(ok(
            req.cmd,
            &v1::MediaChunkAck {
                next_offset,
                size: meta.size,
                complete: meta.complete,
            },
        ))
    }

    pub async fn finish(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::MediaFinishReq::decode(req.body.clone())?;
        let meta = self.attach.own_upload(me.user_id, &r.media_id).await?;
        let store = self.core.media()?;
        if !meta.complete {
            let received = store.received(&r.media_id).await.map_err(store_err)?;
            if received < meta.size {
                return Err(LogicError::InvalidArgument(format!(
                    "incomplete upload: {received} of {} bytes received",
                    meta.size
                )));
            }
            let v = store
                .verify(&r.media_id, SNIFF_BYTES)
                .await
                .map_err(store_err)?;
            let refuse = |e: LogicError| async {
                self.uploads.forget(&r.media_id);
                if let Err(d) = store.discard(&r.media_id).await {
                    tracing::warn!(error = %d, "discarding a refused upload failed");
                }
                metrics::counter!("ferry_media_refused_total").increment(1);
                Err(e)
            };
            if v.sha256 != meta.sha256 {
                return refuse(LogicError::ChecksumMismatch(
                    "the SHA-256 of the bytes received does not match the one declared; \
                     nothing was stored"
                        .into(),
                ))
                .await;
            }
            let kind = v1::MediaKind::try_from(meta.kind).unwrap_or_default();
            let sniffed = if matches!(
                kind,
                v1::MediaKind::MediaImage | v1::MediaKind::MediaThumbnail
            ) {
                sniff_image(&v.head)
            } else {
                Ok((sniff(&v.head), 0, 0))
            };
            let (content_type, w, h) = match sniffed {
                Ok(t) => t,
                Err(e) => return refuse(e).await,
            };
            store
                .commit(&r.media_id, content_type, w, h)
                .await
                .map_err(store_err)?;
            self.uploads.forget(&r.media_id);
        }
        let meta = store
            .meta(&r.media_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| LogicError::NotFound("no such media".into()))?;
        Ok(ok(
            req.cmd,
            &v1::MediaFinishResp {
                media: Some(v1::MediaRef {
                    media_id: meta.id,
                    kind: meta.kind,
                    size: meta.size,
                    content_type: meta.content_type,
                    width: meta.width,
                    height: meta.height,
                    ..Default::default()
                }),
            },
        ))
    }

    pub async fn get(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let no_fetch = Fetch::default();
        let fetch = req.fetch.as_ref().unwrap_or(&no_fetch);
        let id = fetch.argument.as_str();
        let hidden = || LogicError::NotFound("no such media, or not yours to read".into());
        if !valid_media_id(id) {
            return Err(hidden());
        }
        let store = self.core.media()?;
        let meta = store
            .meta(id)
            .await
            .map_err(store_err)?
            .ok_or_else(hidden)?;
        let mut allowed = meta.uploader == me.user_id || meta.grant_users.contains(&me.user_id);
        for g in &meta.grant_groups {
            if allowed {
                break;
            }
            allowed = self
                .core
                .store
                .group_member(*g, me.user_id)
                .await?
                .is_some();
        }
        for m in &meta.grant_moments {
            if allowed {
                break;
            }
            allowed = match self.moments.visible_moment(me.user_id, *m).await {
                Ok(_) => true,
                Err(LogicError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
        }
        if !allowed {
            return Err(hidden());
        }
        if !meta.complete {
            return Err(LogicError::NotReady(
                "the media is still uploading; try again shortly".into(),
                self.core.cfg.media.retry_after_ms,
            ));
        }
        let etag = format!("\"{}\"", meta.sha256);
        let resource = |offset: Option<u64>| Resource {
            content_type: if meta.content_type.is_empty() {
                "application/octet-stream".into()
            } else {
                meta.content_type.clone()
            },
            etag: etag.clone(),
            total_size: meta.size,
            offset,
            ..Default::default()
        };
        let answer = |resource: Resource, body: Vec<u8>| BusResponse {
            cmd: u32::from(cmd::response(cmd::MEDIA_GET)),
            body: Bytes::from(body),
            resource: Some(resource),
            ..Default::default()
        };
        if fetch.range.is_none() && fetch.if_none_match.contains(&etag) {
            let current = Resource {
                etag: etag.clone(),
                not_modified: true,
                ..Default::default()
            };
            return Ok(answer(current, Vec::new()));
        }
        let max = u64::from(self.core.cfg.media.max_response_bytes);
        let (start, end) = match fetch.range.as_ref().map(|r| r.resolve(meta.size)) {
            None if meta.size <= max => {
                let body = store
                    .read(id, 0, meta.size as usize)
                    .await
                    .map_err(store_err)?;
                metrics::counter!("ferry_media_bytes_out_total").increment(body.len() as u64);
                return Ok(answer(resource(None), body));
            }
            None => {
                return Err(LogicError::TooLarge(format!(
                    "{} bytes: read it with Range requests of at most {max} bytes",
                    meta.size
                )))
            }
            Some(None) => {
                let past_the_end = Resource {
                    unsatisfiable: true,
                    ..resource(None)
                };
                return Ok(answer(past_the_end, Vec::new()));
            }
            Some(Some(r)) => r,
        };
        let end = end.min(start + max);
        let body = store
            .read(id, start, (end - start) as usize)
            .await
            .map_err(store_err)?;
        metrics::counter!("ferry_media_bytes_out_total").increment(body.len() as u64);
        Ok(answer(resource(Some(start)), body))
    }

    /// Deletes uploads not finished within `upload_ttl_ms`, every `sweep_interval_ms`,
    /// until `shutdown` fires. In a cluster every logic node sweeps; deleting twice is
    /// harmless.
    pub fn start_sweep(&self, shutdown: CancellationToken) -> Option<JoinHandle<()>> {
        let c = &self.core.cfg.media;
        if c.upload_ttl_ms == 0 || c.sweep_interval_ms == 0 {
            return None;
        }
        let every = Duration::from_millis(c.sweep_interval_ms);
        let ttl = i64::try_from(c.upload_ttl_ms).unwrap_or(i64::MAX);
        let core = self.core.clone();
        let uploads = self.uploads.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(store) = core.media_store() else {
                    continue;
                };
                match store.sweep(unix_ms().saturating_sub(ttl)).await {
                    Ok(ids) => {
                        for id in &ids {
                            uploads.forget(id);
                        }
                        if !ids.is_empty() {
                            metrics::counter!("ferry_media_uploads_abandoned_total")
                                .increment(ids.len() as u64);
                            tracing::info!(uploads = ids.len(), "deleted abandoned uploads");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sweeping abandoned uploads failed"),
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::World;

    #[tokio::test]
    async fn the_sweep_runs_until_shutdown_fires() {
        let mut cfg = LogicConfig::default();
        cfg.media.sweep_interval_ms = 10;
        let w = World::new(cfg);
        let attach = Arc::new(Attachments::new(w.core.clone()));
        let moments = Arc::new(Moments::new(
            w.core.clone(),
            w.notifier.clone(),
            w.friends.clone(),
            attach.clone(),
        ));
        let media = Media::new(w.core.clone(), attach, moments);
        let shutdown = CancellationToken::new();
        let sweep = media.start_sweep(shutdown.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sweep.is_finished(), "ten rounds later it still sweeps");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), sweep)
            .await
            .expect("the sweep stops when told")
            .unwrap();
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"OggS\0\x02"), "audio/ogg");
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), "video/mp4");
        assert_eq!(sniff(b"hello"), "text/plain");
        assert_eq!(
            sniff(&[0xde, 0xad, 0xbe, 0xef, 0xff]),
            "application/octet-stream"
        );
        assert!(sniff_image(b"\x89PNG\r\n\x1a\ngarbage").is_err());
        assert!(sniff_image(b"just text").is_err());
        let mut png = Vec::new();
        image::RgbImage::new(3, 2)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(sniff_image(&png).unwrap(), ("image/png", 3, 2));
    }
}
