//! Profile: avatars (checked by their content, stored at two sizes, served with an
//! ETag) and client log reports (checked against their declared length and MD5).

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::bus::{Fetch, Resource};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::{Avatar, ReportInfo};
use md5::Digest as _;

use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;

/// Side length of the stored avatar and of its thumbnail.
const AVATAR_PX: u32 = 256;
const THUMB_PX: u32 = 64;
/// Limits on what clients send.
const MAX_AVATAR_BYTES: usize = 2 * 1024 * 1024;
const MAX_AVATAR_SIDE: u32 = 8192;
const MAX_REPORT_BYTES: usize = 2 * 1024 * 1024;

/// Avatars and client log reports.
pub(crate) struct Profile {
    core: Arc<Core>,
}

impl Profile {
    pub fn new(core: Arc<Core>) -> Profile {
        Profile { core }
    }

    pub async fn avatar_set(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::AvatarSetReq::decode(req.body.clone())?;
        if r.image.len() > MAX_AVATAR_BYTES {
            return Err(LogicError::TooLarge(format!(
                "avatar over {MAX_AVATAR_BYTES} bytes"
            )));
        }
        let avatar = tokio::task::spawn_blocking(move || process_avatar(&r.image))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))??;
        let etag = avatar.etag.clone();
        self.core.store.set_avatar(me.user_id, avatar).await?;
        Ok(ok(req.cmd, &v1::AvatarSetResp { etag }))
    }

    pub async fn avatar_get(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let no_fetch = Fetch::default();
        let fetch = req.fetch.as_ref().unwrap_or(&no_fetch);
        let user = self.core.user_id(&fetch.argument).await?;
        let avatar = self
            .core
            .store
            .avatar(user)
            .await?
            .ok_or_else(|| LogicError::NotFound(format!("{} has no avatar", fetch.argument)))?;
        let etag = if fetch.thumbnail {
            format!("{}-t\"", avatar.etag.trim_end_matches('"'))
        } else {
            avatar.etag.clone()
        };
        if fetch.if_none_match.contains(&etag) {
            return Ok(BusResponse {
                cmd: u32::from(cmd::response(cmd::AVATAR_GET)),
                resource: Some(Resource {
                    etag,
                    not_modified: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let image = if fetch.thumbnail {
            avatar.thumb
        } else {
            avatar.image
        };
        Ok(BusResponse {
            cmd: u32::from(cmd::response(cmd::AVATAR_GET)),
            resource: Some(Resource {
                content_type: avatar.content_type,
                etag,
                total_size: image.len() as u64,
                ..Default::default()
            }),
            body: Bytes::from(image),
            ..Default::default()
        })
    }

    pub async fn report(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::ReportReq::decode(req.body.clone())?;
        if r.data.len() > MAX_REPORT_BYTES {
            return Err(LogicError::TooLarge(format!(
                "report over {MAX_REPORT_BYTES} bytes"
            )));
        }
        if r.length != r.data.len() as u64 {
            return Err(LogicError::ChecksumMismatch(format!(
                "declared length {} but {} bytes arrived",
                r.length,
                r.data.len()
            )));
        }
        let md5 = hex::encode(md5::Md5::digest(&r.data));
        if !md5.eq_ignore_ascii_case(r.md5.trim()) {
            return Err(LogicError::ChecksumMismatch(
                "the MD5 does not match the data".into(),
            ));
        }
        let short = |s: &str, max: usize, what: &str| {
            if s.len() > max || s.chars().any(char::is_control) {
                Err(LogicError::InvalidArgument(format!(
                    "{what}: at most {max} printable bytes"
                )))
            } else {
                Ok(s.to_owned())
            }
        };
        let info = ReportInfo {
            id: 0,
            user_id: me.user_id,
            device_id: me.device_id.to_string(),
            client_version: short(&r.client_version, 64, "client_version")?,
            kind: short(if r.kind.is_empty() { "log" } else { &r.kind }, 16, "kind")?,
            file_name: short(&r.file_name, 128, "file_name")?,
            length: r.length,
            md5,
            created_ms: unix_ms(),
        };
        let id = self.core.store.add_report(info, r.data.to_vec()).await?;
        tracing::info!(user_id = me.user_id, report_id = id, "client report stored");
        Ok(ok(req.cmd, &v1::ReportResp { report_id: id }))
    }
}

/// Checks an uploaded avatar by its content and makes the stored sizes.
fn process_avatar(bytes: &[u8]) -> Result<Avatar, LogicError> {
    use image::{ImageFormat, ImageReader};
    let not_image = || LogicError::InvalidArgument("not a PNG, JPEG or WebP image".into());
    let format = image::guess_format(bytes).map_err(|_| not_image())?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(not_image());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_AVATAR_SIDE);
    limits.max_image_height = Some(MAX_AVATAR_SIDE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| LogicError::InvalidArgument(format!("unreadable image: {e}")))?;
    let encode = |side: u32| -> Result<Vec<u8>, LogicError> {
        let small = img
            .resize_to_fill(side, side, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let mut out = Cursor::new(Vec::new());
        small
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| LogicError::Internal(format!("encoding avatar: {e}")))?;
        Ok(out.into_inner())
    };
    let image = encode(AVATAR_PX)?;
    let thumb = encode(THUMB_PX)?;
    let digest = sha2::Sha256::digest(&image);
    Ok(Avatar {
        etag: format!("\"{}\"", hex::encode(&digest[..8])),
        content_type: "image/jpeg".into(),
        image,
        thumb,
        updated_ms: unix_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn avatars_are_checked_and_resized() {
        let a = process_avatar(&png(300, 200)).unwrap();
        let big = image::load_from_memory(&a.image).unwrap();
        assert_eq!((big.width(), big.height()), (AVATAR_PX, AVATAR_PX));
        let small = image::load_from_memory(&a.thumb).unwrap();
        assert_eq!((small.width(), small.height()), (THUMB_PX, THUMB_PX));
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert!(matches!(
            process_avatar(b"GIF89a....."),
            Err(LogicError::InvalidArgument(_))
        ));
        assert!(matches!(
            process_avatar(b"hello"),
            Err(LogicError::InvalidArgument(_))
        ));
        // A PNG header with a body cut short.
        let cut = &png(50, 50)[..40];
        assert!(matches!(
            process_avatar(cut),
            Err(LogicError::InvalidArgument(_))
        ));
    }
}
