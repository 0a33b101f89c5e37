//! The events' JSON (docs/webhooks.md, "Events"): the `data` of each event type, and
//! the envelope every delivery carries. Version 1; a field is only ever added.

use ferry_proto::v1;
use serde_json::{json, Value};

/// Every event type an endpoint may subscribe to (`*`: all of them). `bot.update` goes
/// only to a bot's own endpoint.
pub const EVENT_TYPES: &[&str] = &[
    "message.sent",
    "message.recalled",
    "user.registered",
    "user.deleted",
    "friend.added",
    "group.created",
    "group.member_added",
    "group.member_removed",
    "moment.posted",
    "user.online",
    "user.offline",
    "push.failed",
];

/// The body of a delivery: `{"v":1,"id","type","time_ms","data"}`.
pub fn envelope(id: &str, event_type: &str, time_ms: i64, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1,
        "id": id,
        "type": event_type,
        "time_ms": time_ms,
        "data": data,
    }))
    .unwrap_or_default()
}

/// A message's type as a word: `text` (the only one today), else the enum's name.
fn msg_type(t: i32) -> String {
    match v1::MsgType::try_from(t) {
        Ok(v1::MsgType::Text) => "text".into(),
        _ => format!("type_{t}"),
    }
}

fn media_kind(k: i32) -> &'static str {
    match v1::MediaKind::try_from(k) {
        Ok(v1::MediaKind::MediaImage) => "image",
        Ok(v1::MediaKind::MediaVoice) => "voice",
        Ok(v1::MediaKind::MediaVideo) => "video",
        Ok(v1::MediaKind::MediaFile) => "file",
        Ok(v1::MediaKind::MediaThumbnail) => "thumbnail",
        _ => "unspecified",
    }
}

/// A message as JSON (the shape of the contract's `api::json::message_json`; the lead's
/// shared copy replaces this one once it lands).
pub fn message_json(m: &v1::Message) -> Value {
    let media = m.media.as_ref().map(|md| {
        json!({
            "id": md.media_id,
            "kind": media_kind(md.kind),
            "size": md.size,
            "content_type": md.content_type,
            "width": md.width,
            "height": md.height,
            "duration_ms": md.duration_ms,
            "thumb_id": md.thumb_id,
            "file_name": md.file_name,
        })
    });
    json!({
        "id": m.msg_id.to_string(),
        "from": m.from,
        "to": m.to,
        "group_id": m.group_id.to_string(),
        "time_ms": m.time_ms,
        "type": msg_type(m.r#type),
        "text": m.text,
        "mentions": m.mentions,
        "media": media,
        "client_msg_id": m.client_msg_id.to_string(),
    })
}

/// An inbox entry as a bot update: `{"seq","type",…}` (`message`, `friend`, `moment`,
/// `group`, `recall`, `read`).
pub fn entry_json(seq: u64, e: &v1::Entry) -> Value {
    use v1::entry::Kind;
    let mut v = match &e.kind {
        Some(Kind::Message(m)) => json!({"type": "message", "message": message_json(m)}),
        Some(Kind::Friend(f)) => json!({
            "type": "friend",
            "kind": v1::friend_event::Kind::try_from(f.kind)
                .map(|k| k.as_str_name().to_ascii_lowercase())
                .unwrap_or_default(),
            "peer": f.peer,
            "greeting": f.greeting,
        }),
        Some(Kind::Moment(m)) => json!({
            "type": "moment",
            "moment_id": m.moment_id.to_string(),
            "by": m.by,
        }),
        Some(Kind::Group(g)) => json!({
            "type": "group",
            "kind": v1::group_event::Kind::try_from(g.kind)
                .map(|k| k.as_str_name().to_ascii_lowercase())
                .unwrap_or_default(),
            "group_id": g.group_id.to_string(),
            "users": g.users,
            "by": g.by,
        }),
        Some(Kind::Recall(r)) => json!({
            "type": "recall",
            "msg_id": r.msg_id.to_string(),
            "group_id": r.group_id.to_string(),
            "by": r.by,
        }),
        Some(Kind::Read(r)) => json!({
            "type": "read",
            "reader": r.reader,
            "msg_id": r.msg_id.to_string(),
        }),
        None => json!({"type": "unknown"}),
    };
    v["seq"] = json!(seq);
    v["time_ms"] = json!(e.time_ms);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_and_its_envelope() {
        let m = v1::Message {
            msg_id: 7,
            from: "alice".into(),
            to: "bob".into(),
            time_ms: 1_000,
            text: "hi".into(),
            client_msg_id: 9,
            ..Default::default()
        };
        let body = envelope(
            "msg-7",
            "message.sent",
            1_000,
            json!({"message": message_json(&m)}),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"], "msg-7");
        assert_eq!(v["type"], "message.sent");
        let msg = &v["data"]["message"];
        assert_eq!(msg["id"], "7");
        assert_eq!(msg["from"], "alice");
        assert_eq!(msg["type"], "text");
        assert_eq!(msg["media"], Value::Null);
        assert_eq!(msg["client_msg_id"], "9");
    }
}
