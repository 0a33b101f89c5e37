//! The JSON shapes the APIs for other systems share: a message as webhooks, bot updates
//! and exports show it (docs/webhooks.md, *Message*).

use ferry_proto::v1;
use serde_json::{json, Value};

/// A message as JSON:
/// `{"id","from","to","group_id","time_ms","type","text","mentions","media","client_msg_id"}`.
/// `to` is empty and `group_id` set for a group message; `media` is null without one;
/// `type` is `text`, or the media's kind (`image`, `voice`, `video`, `file`).
pub(crate) fn message_json(m: &v1::Message) -> Value {
    let media = m.media.as_ref().map(media_json);
    let kind = match m.media.as_ref().map(|r| r.kind()) {
        Some(v1::MediaKind::MediaImage) => "image",
        Some(v1::MediaKind::MediaVoice) => "voice",
        Some(v1::MediaKind::MediaVideo) => "video",
        Some(v1::MediaKind::MediaFile) => "file",
        Some(v1::MediaKind::MediaThumbnail) => "thumbnail",
        Some(v1::MediaKind::Unspecified) => "media",
        // A system message (the admin API's broadcast): `from` is "system".
        None if m.r#type == v1::MsgType::System as i32 => "system",
        None => "text",
    };
    json!({
        "id": m.msg_id,
        "from": m.from,
        "to": m.to,
        "group_id": m.group_id,
        "time_ms": m.time_ms,
        "type": kind,
        "text": m.text,
        "mentions": m.mentions,
        "media": media,
        "client_msg_id": m.client_msg_id,
    })
}

/// A media reference as JSON (the bytes are fetched with `GET /v1/media/{id}`).
pub(crate) fn media_json(r: &v1::MediaRef) -> Value {
    let kind = match r.kind() {
        v1::MediaKind::MediaImage => "image",
        v1::MediaKind::MediaVoice => "voice",
        v1::MediaKind::MediaVideo => "video",
        v1::MediaKind::MediaFile => "file",
        v1::MediaKind::MediaThumbnail => "thumbnail",
        v1::MediaKind::Unspecified => "unspecified",
    };
    json!({
        "id": r.media_id,
        "kind": kind,
        "size": r.size,
        "content_type": r.content_type,
        "width": r.width,
        "height": r.height,
        "duration_ms": r.duration_ms,
        "thumb_id": r.thumb_id,
        "file_name": r.file_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_media_messages() {
        let m = v1::Message {
            msg_id: 7,
            from: "alice".into(),
            to: "bob".into(),
            time_ms: 1_700_000_000_000,
            text: "hi".into(),
            client_msg_id: 42,
            ..Default::default()
        };
        let j = message_json(&m);
        assert_eq!(j["type"], "text");
        assert_eq!(j["id"], 7);
        assert_eq!(j["from"], "alice");
        assert!(j["media"].is_null());
        let with_image = v1::Message {
            media: Some(v1::MediaRef {
                media_id: "ab12".into(),
                kind: v1::MediaKind::MediaImage as i32,
                size: 1000,
                content_type: "image/png".into(),
                ..Default::default()
            }),
            ..m
        };
        let j = message_json(&with_image);
        assert_eq!(j["type"], "image");
        assert_eq!(j["media"]["id"], "ab12");
        assert_eq!(j["media"]["size"], 1000);
    }
}
