//! The JSON shapes the APIs for other systems share — webhooks, bot updates, the
//! before-send hook and exports (docs/webhooks.md, *Message* and *Updates*). One
//! renderer, so a message looks the same wherever it appears. Ids (message, group,
//! moment, client_msg_id) are decimal strings: 64-bit ids do not fit a JavaScript
//! number. Counts, sizes, seqs and times are numbers.

use ferry_proto::v1;
use serde_json::{json, Value};

/// A message as JSON:
/// `{"id","from","to","group_id","time_ms","type","text","mentions","media","client_msg_id","quote","edited_ms"}`.
/// `quote` is null unless the message is a reply (`{"msg_id","from","text","kind","recalled"}`,
/// `kind` as `type` without `system`); `edited_ms` is 0 unless the text was edited.
/// `to` is empty and `group_id` set (non-"0") for a group message; `media` is null
/// without one; `type` is `text`, `system`, or the media's kind (`image`, `voice`,
/// `video`, `file`).
pub(crate) fn message_json(m: &v1::Message) -> Value {
    let media = m.media.as_deref().map(media_json);
    let kind = match m.media.as_ref() {
        Some(r) => media_kind(r.kind()),
        // A system message (the admin API's broadcast): `from` is "system".
        None if m.r#type == v1::MsgType::System as i32 => "system",
        None => "text",
    };
    let mut v = json!({
        "id": m.msg_id.to_string(),
        "from": m.from,
        "to": m.to,
        "group_id": m.group_id.to_string(),
        "time_ms": m.time_ms,
        "type": kind,
        "text": m.text,
        "mentions": m.mentions,
        "media": media,
        "client_msg_id": m.client_msg_id.to_string(),
        "quote": m.quote.as_deref().map(quote_json),
        "edited_ms": m.edited_ms,
    });
    // A forwarded message: the original's author and time.
    if let Some(f) = &m.forwarded {
        v["forwarded"] = json!({"from": f.from, "time_ms": f.time_ms});
    }
    v
}

/// The quote of a reply: `{"msg_id","from","text","kind","recalled"}` (`text` empty and
/// `recalled` true once the quoted message was recalled).
fn quote_json(q: &v1::Quote) -> Value {
    json!({
        "msg_id": q.msg_id.to_string(),
        "from": q.from,
        "text": q.text,
        "kind": match q.kind() {
            v1::MediaKind::Unspecified => "text",
            k => media_kind(k),
        },
        "recalled": q.recalled,
    })
}

fn edit_json(e: &v1::Edit) -> Value {
    json!({
        "type": "edit",
        "msg_id": e.msg_id.to_string(),
        "group_id": e.group_id.to_string(),
        "text": e.text,
        "edited_ms": e.edited_ms,
        "by": e.by,
    })
}

fn reaction_json(r: &v1::Reaction) -> Value {
    json!({
        "type": "reaction",
        "msg_id": r.msg_id.to_string(),
        "group_id": r.group_id.to_string(),
        "emoji": r.emoji,
        "by": r.by,
        "add": r.add,
        "count": r.count,
    })
}

fn pin_json(p: &v1::Pin) -> Value {
    json!({
        "type": "pin",
        "msg_id": p.msg_id.to_string(),
        "group_id": p.group_id.to_string(),
        "peer": p.peer,
        "by": p.by,
        "pinned": p.pinned,
    })
}

fn media_kind(k: v1::MediaKind) -> &'static str {
    match k {
        v1::MediaKind::MediaImage => "image",
        v1::MediaKind::MediaVoice => "voice",
        v1::MediaKind::MediaVideo => "video",
        v1::MediaKind::MediaFile => "file",
        v1::MediaKind::MediaThumbnail => "thumbnail",
        v1::MediaKind::Unspecified => "media",
    }
}

/// A media reference as JSON (the bytes are fetched with `GET /v1/media/{id}`).
pub(crate) fn media_json(r: &v1::MediaRef) -> Value {
    json!({
        "id": r.media_id,
        "kind": media_kind(r.kind()),
        "size": r.size,
        "content_type": r.content_type,
        "width": r.width,
        "height": r.height,
        "duration_ms": r.duration_ms,
        "thumb_id": r.thumb_id,
        "file_name": r.file_name,
    })
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn group_event_json(g: &v1::GroupEvent) -> Value {
    json!({
        "type": "group",
        "kind": lower(g.kind().as_str_name()),
        "group_id": g.group_id.to_string(),
        "users": g.users,
        "by": g.by,
        "text": g.text,
    })
}

fn recall_json(r: &v1::Recall) -> Value {
    json!({
        "type": "recall",
        "msg_id": r.msg_id.to_string(),
        "group_id": r.group_id.to_string(),
        "by": r.by,
    })
}

/// An inbox entry as an update: `{"type",…,"seq","time_ms"}`, type `message`, `friend`,
/// `moment`, `group` (the owner's own membership), `recall`, `read`, `edit`, `reaction`,
/// `hide` (`{"msg_ids":[…]}`: messages the owner deleted for themselves), `pin` or
/// `conv` (the owner's state of a conversation, docs/protocol.md 4b).
pub(crate) fn entry_json(e: &v1::Entry) -> Value {
    use v1::entry::Kind;
    let mut v = match &e.kind {
        Some(Kind::Message(m)) => json!({"type": "message", "message": message_json(m)}),
        Some(Kind::Friend(f)) => json!({
            "type": "friend",
            "kind": lower(f.kind().as_str_name()),
            "peer": f.peer,
            "greeting": f.greeting,
        }),
        Some(Kind::Moment(m)) => json!({
            "type": "moment",
            "kind": lower(m.kind().as_str_name()),
            "moment_id": m.moment_id.to_string(),
            "by": m.by,
            "text": m.text,
        }),
        Some(Kind::Group(g)) => group_event_json(g),
        Some(Kind::Recall(r)) => recall_json(r),
        Some(Kind::Read(r)) => json!({
            "type": "read",
            "reader": r.reader,
            "msg_id": r.msg_id.to_string(),
        }),
        Some(Kind::Edit(x)) => edit_json(x),
        Some(Kind::Reaction(x)) => reaction_json(x),
        Some(Kind::Hide(h)) => json!({
            "type": "hide",
            "msg_ids": h.msg_ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        }),
        Some(Kind::Pin(x)) => pin_json(x),
        Some(Kind::Conv(c)) => json!({
            "type": "conv",
            "peer": c.peer,
            "group_id": c.group_id.to_string(),
            "archived": c.archived,
            "unread": c.unread,
            "muted_until_ms": c.muted_until_ms,
            "draft": c.draft,
            "draft_ms": c.draft_ms,
            "cleared_before_msg_id": c.cleared_before_msg_id.to_string(),
            "retention_secs": c.retention_secs,
        }),
        None => json!({"type": "unknown"}),
    };
    v["seq"] = json!(e.seq);
    v["time_ms"] = json!(e.time_ms);
    v
}

/// An entry of group `group_id`'s log as an update: `{"type",…,"group_id","gseq","time_ms"}`,
/// type `message`, `group` (a change of the group: someone joined, left, …), `recall`,
/// `edit`, `reaction`, `pin` or `retention` (the group's own retention was set).
pub(crate) fn group_entry_json(group_id: u64, e: &v1::GroupEntry) -> Value {
    use v1::group_entry::Kind;
    let mut v = match &e.kind {
        Some(Kind::Message(m)) => json!({"type": "message", "message": message_json(m)}),
        Some(Kind::Event(g)) => group_event_json(g),
        Some(Kind::Recall(r)) => recall_json(r),
        Some(Kind::Edit(x)) => edit_json(x),
        Some(Kind::Reaction(x)) => reaction_json(x),
        Some(Kind::Pin(x)) => pin_json(x),
        Some(Kind::Retention(r)) => json!({
            "type": "retention",
            "retention_secs": r.retention_secs,
            "by": r.by,
        }),
        None => json!({"type": "unknown"}),
    };
    v["group_id"] = json!(group_id.to_string());
    v["gseq"] = json!(e.gseq);
    v["time_ms"] = json!(e.time_ms);
    v
}

/// Whether an update is `me`'s own doing that `me` need not hear of: a message `me` sent,
/// or a change of a group's log that names `me` (that one reaches `me` through the inbox
/// as well).
pub(crate) fn is_own_update(update: &Value, me: &str) -> bool {
    match update["type"].as_str() {
        Some("message") => update["message"]["from"] == me,
        Some("group") if update.get("gseq").is_some() => update["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|n| n == me)),
        _ => false,
    }
}

/// Serde for a 64-bit id shown as a decimal string (`#[serde(with = "id_str")]`): it
/// is written as a string and read from a string or a number.
pub(crate) mod id_str {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(crate) enum Id {
        Num(u64),
        Str(String),
    }

    pub(crate) fn parse<E: serde::de::Error>(id: Id) -> Result<u64, E> {
        match id {
            Id::Num(n) => Ok(n),
            Id::Str(s) if s.is_empty() => Ok(0),
            Id::Str(s) => s
                .parse()
                .map_err(|_| E::custom(format!("{s:?} is not an id (a decimal number)"))),
        }
    }

    pub(crate) fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(Id::deserialize(d)?)
    }

    /// The same for an id that may be absent (`null`).
    pub(crate) mod opt {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match id {
                Some(id) => s.collect_str(id),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<u64>, D::Error> {
            Option::<super::Id>::deserialize(d)?
                .map(super::parse)
                .transpose()
        }
    }
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
        assert_eq!(j["id"], "7");
        assert_eq!(j["client_msg_id"], "42");
        assert_eq!(j["group_id"], "0");
        assert_eq!(j["from"], "alice");
        assert!(j["media"].is_null());
        let with_image = v1::Message {
            media: Some(Box::new(v1::MediaRef {
                media_id: "ab12".into(),
                kind: v1::MediaKind::MediaImage as i32,
                size: 1000,
                content_type: "image/png".into(),
                ..Default::default()
            })),
            ..m
        };
        let j = message_json(&with_image);
        assert_eq!(j["type"], "image");
        assert_eq!(j["media"]["id"], "ab12");
        assert_eq!(j["media"]["size"], 1000);
    }
}
