//! Media on the short link: chunked, resumable uploads with a window of chunks in
//! flight, ranged downloads, and `send_image` / `send_file` / `send_voice` /
//! `send_video`, which upload and send a message that refers to the upload.
//!
//! An image goes thumbnail first, then the message, then the original: the receiver
//! can show the thumbnail at once. [`Client::start_image`] stops after the message so an
//! app can upload the original in the background ([`MediaSend::finish`]).
//!
//! With encryption on, `media/create` answers an upload key (`MediaCreateResp.
//! upload_key`) and every chunk goes unsealed, its bytes encrypted under that key
//! (`ferry_proto::upload`): no X25519 exchange per chunk. The create answer is the
//! upload's whole state: keep it (it is a protobuf message) to resume after a restart.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::cmd;
use ferry_proto::v1::{self, ErrorCode, MediaKind};

use crate::short::path;
use sha2::Digest;
use tokio::task::JoinSet;

use crate::{Account, Client, ClientError};

/// A progress callback: `(bytes acknowledged, total bytes)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Chunk requests in flight at once during an upload.
pub const UPLOAD_WINDOW: usize = 8;
/// How far ahead of the oldest unacknowledged chunk an upload may send, in chunks. One
/// slow request must not let the others run past the server's window (64 by default).
pub const UPLOAD_AHEAD: u64 = 32;
/// Bytes asked per download request (the server answers at most 768 KiB).
pub const DOWNLOAD_RANGE: u64 = 512 * 1024;
/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_PX: u32 = 200;

/// Where a media message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    User(String),
    Group(u64),
}

impl From<&str> for Dest {
    fn from(s: &str) -> Self {
        Dest::User(s.to_owned())
    }
}

/// A sent media message: the server's acknowledgement and the reference it carries.
#[derive(Debug, Clone)]
pub struct SentMedia {
    pub ack: v1::SendAck,
    pub media: v1::MediaRef,
}

/// An image message already sent (with its thumbnail uploaded) whose original is still
/// to upload.
pub struct MediaSend {
    account: Account,
    /// The original's upload (id, chunk size, key).
    upload: v1::MediaCreateResp,
    data: Bytes,
    pub sent: SentMedia,
}

impl MediaSend {
    /// Uploads the original (resuming where a previous attempt stopped).
    pub async fn finish(self, progress: Progress<'_>) -> Result<SentMedia, ClientError> {
        let r = self
            .account
            .upload_media(&self.upload, self.data, progress)
            .await?;
        let mut sent = self.sent;
        sent.media.content_type = r.content_type;
        Ok(sent)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A JPEG thumbnail of at most `THUMBNAIL_PX` on its longest side, and the image's
/// width and height.
pub fn thumbnail(image_bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), ClientError> {
    let img = image::load_from_memory(image_bytes)
        .map_err(|e| ClientError::protocol_source("not an image", e))?;
    let (w, h) = (img.width(), img.height());
    let thumb = img.thumbnail(THUMBNAIL_PX, THUMBNAIL_PX).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut out), 80)
        .encode_image(&thumb)
        .map_err(|e| ClientError::protocol_source("thumbnail", e))?;
    Ok((out, w, h))
}

fn content_type_hint(data: &[u8], kind: MediaKind) -> &'static str {
    match image::guess_format(data) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::WebP) => "image/webp",
        _ => match kind {
            MediaKind::MediaVoice => "audio/ogg",
            MediaKind::MediaVideo => "video/mp4",
            _ => "application/octet-stream",
        },
    }
}

impl Account {
    /// Starts an upload; returns its id, chunk size and (on an encrypted link) key: the
    /// state [`Account::upload_media`] needs, to keep for a resume. `chunk_size` 0 takes
    /// the server's default.
    pub async fn create_media(
        &self,
        data: &[u8],
        kind: MediaKind,
        chunk_size: u32,
    ) -> Result<v1::MediaCreateResp, ClientError> {
        self.call(
            path(cmd::MEDIA_CREATE),
            &v1::MediaCreateReq {
                size: data.len() as u64,
                content_type: content_type_hint(data, kind).into(),
                sha256: sha256_hex(data),
                kind: kind as i32,
                chunk_size,
            },
        )
        .await
    }

    /// Where an upload stands: everything before `next_offset` is on the server.
    pub async fn media_status(&self, media_id: &str) -> Result<v1::MediaChunkAck, ClientError> {
        self.call(
            path(cmd::MEDIA_STATUS),
            &v1::MediaStatusReq {
                media_id: media_id.into(),
            },
        )
        .await
    }

    /// Uploads `data` to the upload `upload` (what [`Account::create_media`] answered),
    /// from where the server says it stands, with up to [`UPLOAD_WINDOW`] chunks in
    /// flight, then finishes it (the server verifies size and SHA-256). Call it again
    /// after a failure to resume.
    ///
    /// `data` must be the content the upload was created for: with a key, a chunk's
    /// nonce comes from its offset, which is safe only because an offset always carries
    /// the same bytes (docs/protocol.md, Media). The size is checked here; the server
    /// refuses other bytes at an offset it acknowledged, and other content at finish.
    pub async fn upload_media(
        &self,
        upload: &v1::MediaCreateResp,
        data: Bytes,
        progress: Progress<'_>,
    ) -> Result<v1::MediaRef, ClientError> {
        self.upload_media_with(upload, data, UPLOAD_WINDOW, progress)
            .await
    }

    /// [`Account::upload_media`] with `in_flight` chunk requests at once (at least 1,
    /// at most `UPLOAD_AHEAD`); each is a request on a keep-alive connection of its own.
    pub async fn upload_media_with(
        &self,
        upload: &v1::MediaCreateResp,
        data: Bytes,
        in_flight: usize,
        progress: Progress<'_>,
    ) -> Result<v1::MediaRef, ClientError> {
        let media_id = upload.media_id.as_str();
        let key = match upload.upload_key.len() {
            0 => None,
            _ => Some(
                ferry_proto::upload::key_from(&upload.upload_key)
                    .map_err(|e| ClientError::protocol_source("upload key", e))?,
            ),
        };
        let in_flight = in_flight.clamp(1, UPLOAD_AHEAD as usize);
        let size = data.len() as u64;
        let chunk = u64::from(upload.chunk_size.max(1));
        let status = self.media_status(media_id).await?;
        if status.size != size {
            return Err(ClientError::protocol(format!(
                "upload {media_id} is for {} bytes, not {size}: not the content it was \
                 created for",
                status.size
            )));
        }
        if !status.complete {
            let start = status.next_offset - status.next_offset % chunk;
            let mut done = start;
            progress(done, size);
            let mut next = start;
            let mut inflight = JoinSet::new();
            let mut pending = std::collections::BTreeSet::new();
            loop {
                while inflight.len() < in_flight
                    && next < size
                    && pending
                        .first()
                        .is_none_or(|&lo| next < lo + UPLOAD_AHEAD * chunk)
                {
                    let end = (next + chunk).min(size);
                    let body = v1::MediaChunkReq {
                        media_id: media_id.into(),
                        offset: next,
                        data: data.slice(next as usize..end as usize),
                    };
                    let me = self.clone();
                    pending.insert(next);
                    inflight.spawn(async move {
                        let n = body.data.len() as u64;
                        let offset = body.offset;
                        match key {
                            Some(key) => me.send_keyed_chunk(&key, body).await,
                            None => me.send_chunk(&body).await,
                        }
                        .map(|_| (offset, n))
                    });
                    next = end;
                }
                match inflight.join_next().await {
                    None => break,
                    Some(Ok(Ok((offset, n)))) => {
                        pending.remove(&offset);
                        done += n;
                        progress(done, size);
                    }
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => return Err(ClientError::protocol_source("", e)),
                }
            }
        }
        let r: v1::MediaFinishResp = self
            .call(
                path(cmd::MEDIA_FINISH),
                &v1::MediaFinishReq {
                    media_id: media_id.into(),
                },
            )
            .await?;
        progress(size, size);
        r.media
            .ok_or_else(|| ClientError::protocol("finish without media"))
    }

    /// One chunk, retried a few times when the error may pass.
    async fn send_chunk(&self, body: &v1::MediaChunkReq) -> Result<v1::MediaChunkAck, ClientError> {
        let mut pause = Duration::from_millis(50);
        for attempt in 0.. {
            match self.call(path(cmd::MEDIA_CHUNK), body).await {
                Err(e) if e.is_retryable() && attempt < 5 => {
                    tracing::debug!(error = %e, offset = body.offset, "chunk failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// One chunk encrypted under the upload key and sent unsealed, without a token
    /// (the key is its credential), retried a few times when the error may pass.
    async fn send_keyed_chunk(
        &self,
        key: &[u8; ferry_proto::upload::KEY_LEN],
        mut body: v1::MediaChunkReq,
    ) -> Result<v1::MediaChunkAck, ClientError> {
        body.data = ferry_proto::upload::seal_chunk(key, &body.media_id, body.offset, &body.data)
            .map(Bytes::from)
            .map_err(|e| ClientError::protocol_source("encrypting a chunk", e))?;
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match self
                .short()
                .call_unsealed(path(cmd::MEDIA_CHUNK), &body)
                .await
            {
                Err(e) if e.is_retryable() && attempt < 5 => {
                    tracing::debug!(error = %e, offset = body.offset, "chunk failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates an upload and uploads `data`.
    pub async fn upload(
        &self,
        data: Bytes,
        kind: MediaKind,
        progress: Progress<'_>,
    ) -> Result<v1::MediaRef, ClientError> {
        let c = self.create_media(&data, kind, 0).await?;
        self.upload_media(&c, data, progress).await
    }

    /// Downloads media in ranges. While the media is still uploading the server says
    /// when to ask again; this waits (up to `wait`) and goes on.
    pub async fn download(
        &self,
        media_id: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut total = None;
        while total.is_none_or(|t| (out.len() as u64) < t) {
            let from = out.len() as u64;
            let range = (from, from + DOWNLOAD_RANGE - 1);
            let path = format!("{}/{media_id}", path(cmd::MEDIA_GET));
            match self
                .short()
                .get_range(&path, &self.token(), Some(range))
                .await
            {
                Ok((body, t)) => {
                    if body.is_empty() && t > from {
                        return Err(ClientError::protocol("empty range"));
                    }
                    out.extend_from_slice(&body);
                    total = Some(t);
                    progress(out.len() as u64, t);
                }
                Err(e)
                    if e.code() == Some(ErrorCode::Unavailable)
                        && e.retry_after().is_some()
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

impl Client {
    async fn send_media_msg(
        &self,
        to: &Dest,
        text: &str,
        media: v1::MediaRef,
    ) -> Result<SentMedia, ClientError> {
        let (to, group_id) = match to {
            Dest::User(u) => (u.clone(), 0),
            Dest::Group(g) => (String::new(), *g),
        };
        let ack = self
            .send_msg(&v1::SendMsg {
                client_msg_id: self.shared.next_client_msg_id(),
                to,
                text: text.into(),
                group_id,
                media: Some(Box::new(media.clone())),
                ..Default::default()
            })
            .await?;
        Ok(SentMedia { ack, media })
    }

    /// Sends an image: makes a thumbnail, creates the original's upload, uploads the
    /// thumbnail, sends the message referring to both, and returns with the original
    /// still to upload ([`MediaSend::finish`]).
    pub async fn start_image(
        &self,
        to: impl Into<Dest>,
        image_bytes: Vec<u8>,
    ) -> Result<MediaSend, ClientError> {
        let to = to.into();
        let data = Bytes::from(image_bytes);
        let (thumb, width, height) = thumbnail(&data)?;
        let account = self.account();
        let original = account
            .create_media(&data, MediaKind::MediaImage, 0)
            .await?;
        let t = account
            .upload(Bytes::from(thumb), MediaKind::MediaThumbnail, &|_, _| {})
            .await?;
        let media = v1::MediaRef {
            media_id: original.media_id.clone(),
            kind: MediaKind::MediaImage as i32,
            size: data.len() as u64,
            width,
            height,
            thumb_id: t.media_id,
            ..Default::default()
        };
        let sent = self.send_media_msg(&to, "", media).await?;
        Ok(MediaSend {
            account,
            upload: original,
            data,
            sent,
        })
    }

    /// Sends an image (see [`Client::start_image`]) and uploads the original.
    pub async fn send_image(
        &self,
        to: impl Into<Dest>,
        image_bytes: Vec<u8>,
        progress: Progress<'_>,
    ) -> Result<SentMedia, ClientError> {
        self.start_image(to, image_bytes)
            .await?
            .finish(progress)
            .await
    }

    /// Uploads media (and a thumbnail, when given), then sends the message.
    #[allow(clippy::too_many_arguments)]
    async fn send_uploaded(
        &self,
        to: Dest,
        data: Vec<u8>,
        kind: MediaKind,
        thumbnail: Option<Vec<u8>>,
        duration_ms: u32,
        file_name: &str,
        progress: Progress<'_>,
    ) -> Result<SentMedia, ClientError> {
        let account = self.account();
        let thumb_id = match thumbnail {
            Some(t) => {
                account
                    .upload(Bytes::from(t), MediaKind::MediaThumbnail, &|_, _| {})
                    .await?
                    .media_id
            }
            None => String::new(),
        };
        let m = account.upload(Bytes::from(data), kind, progress).await?;
        let media = v1::MediaRef {
            duration_ms,
            thumb_id,
            file_name: file_name.into(),
            ..m
        };
        self.send_media_msg(&to, "", media).await
    }

    /// Sends a file under its name.
    pub async fn send_file(
        &self,
        to: impl Into<Dest>,
        data: Vec<u8>,
        file_name: &str,
        progress: Progress<'_>,
    ) -> Result<SentMedia, ClientError> {
        self.send_uploaded(
            to.into(),
            data,
            MediaKind::MediaFile,
            None,
            0,
            file_name,
            progress,
        )
        .await
    }

    /// Sends a voice note of `duration_ms`.
    pub async fn send_voice(
        &self,
        to: impl Into<Dest>,
        data: Vec<u8>,
        duration_ms: u32,
        progress: Progress<'_>,
    ) -> Result<SentMedia, ClientError> {
        self.send_uploaded(
            to.into(),
            data,
            MediaKind::MediaVoice,
            None,
            duration_ms,
            "",
            progress,
        )
        .await
    }

    /// Sends a video with a thumbnail the app made (a frame, as JPEG or PNG).
    pub async fn send_video(
        &self,
        to: impl Into<Dest>,
        data: Vec<u8>,
        thumbnail: Option<Vec<u8>>,
        duration_ms: u32,
        progress: Progress<'_>,
    ) -> Result<SentMedia, ClientError> {
        self.send_uploaded(
            to.into(),
            data,
            MediaKind::MediaVideo,
            thumbnail,
            duration_ms,
            "",
            progress,
        )
        .await
    }

    /// Downloads media this device may read (see [`Account::download`]).
    pub async fn download(
        &self,
        media_id: &str,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, ClientError> {
        self.account()
            .download(media_id, Duration::from_secs(120), progress)
            .await
    }
}
