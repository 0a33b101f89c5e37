//! The events' JSON (docs/webhooks.md, "Events"): the `data` of each event type, and
//! the envelope every delivery carries. Version 1; a field is only ever added.

use serde_json::{json, Value};

/// Every event type an endpoint may subscribe to (`*`: all of them). `bot.update` goes
/// only to a bot's own endpoint.
pub const EVENT_TYPES: &[&str] = &[
    "message.sent",
    "message.recalled",
    "message.edited",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::json::message_json;
    use ferry_proto::v1;

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
