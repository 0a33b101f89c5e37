//! Platform push, the app's side (docs/protocol.md, Push): building the device's push
//! target, the do-not-disturb window's `HH:MM-HH:MM` form, and reading the `ferry` data
//! a push carries.
//!
//! The requests themselves are [`crate::Account`]'s and [`crate::Client`]'s
//! (`register_push`, `unregister_push`, `push_targets`, `set_push_prefs`, `push_prefs`);
//! what the app does when it goes to the background is [`crate::Client::app_backgrounded`].
//!
//! This module must not decide what a push means for the user: a push only says "sync up
//! to at least `seq`"; the entries themselves come from the sync.

use ferry_proto::v1;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// An APNs target: the device token (hex) for the app `topic` (its bundle id), in the
/// development environment when `sandbox`.
pub fn apns(token: &str, topic: &str, sandbox: bool) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Apns as i32,
        token: token.into(),
        app_id: topic.into(),
        sandbox,
        ..Default::default()
    }
}

/// An FCM target: the registration token; `project` empty for the server's default
/// Firebase project.
pub fn fcm(token: &str, project: &str) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Fcm as i32,
        token: token.into(),
        app_id: project.into(),
        ..Default::default()
    }
}

/// A Web Push target: the browser's `PushSubscription` (`endpoint`, and its `p256dh`
/// and `auth` keys, base64url).
pub fn web_push(endpoint: &str, p256dh: &str, auth: &str) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Webpush as i32,
        endpoint: endpoint.into(),
        p256dh: p256dh.into(),
        auth: auth.into(),
        ..Default::default()
    }
}

/// A UnifiedPush target: the distributor's endpoint and the keys the app generated (the
/// same fields as Web Push).
pub fn unified_push(endpoint: &str, p256dh: &str, auth: &str) -> v1::PushTarget {
    v1::PushTarget {
        provider: v1::PushProvider::Unifiedpush as i32,
        ..web_push(endpoint, p256dh, auth)
    }
}

/// A do-not-disturb window `HH:MM-HH:MM` in the device's local time, as minutes after
/// midnight (start, end). It may wrap past midnight (`22:00-07:00` is (1320, 420));
/// equal ends switch it off.
pub fn parse_dnd(s: &str) -> Result<(u32, u32), ClientError> {
    let bad = || ClientError::protocol(format!("do-not-disturb {s:?}: expected HH:MM-HH:MM"));
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && !t.trim().starts_with('+')).then_some(h * 60 + m)
    };
    Ok((minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?))
}

/// Minutes after midnight as `HH:MM`.
pub fn format_minutes(m: u32) -> String {
    format!("{:02}:{:02}", m / 60 % 24, m % 60)
}

/// The `ferry` object every push carries (APNs: beside `aps`; FCM: the JSON string
/// `data.ferry`; Web Push and UnifiedPush: the decrypted payload's `ferry` member).
/// Nothing in it is news the sync would not bring: on receipt the app syncs up to at
/// least [`PushData::seq`] and shows what the sync gave.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PushData {
    /// The format's version (1).
    pub v: u32,
    /// The newest inbox seq the push stands for (0: only group entries, which are not
    /// in the inbox: sync the groups).
    pub seq: u64,
    /// How many entries it stands for (a coalesced burst).
    pub count: u32,
    /// `message`, `group`, `mention`, `friend`, `recall` or `test`: the newest entry.
    pub kind: String,
    /// The sender, with preview SENDER or FULL.
    #[serde(default)]
    pub from: String,
    /// The group, for a group message or mention (preview SENDER or FULL).
    #[serde(default)]
    pub group_id: u64,
    /// The text, with preview FULL only.
    #[serde(default)]
    pub text: String,
}

impl PushData {
    /// Reads the `ferry` object from a push payload: the whole decrypted Web Push /
    /// UnifiedPush body or APNs `userInfo` (`{"ferry": {...}, ...}`), the FCM data value
    /// (a JSON string holding the object), or the object itself.
    pub fn from_payload(payload: &str) -> Result<PushData, ClientError> {
        let bad = |e: serde_json::Error| ClientError::protocol_source("push payload", e);
        let value: serde_json::Value = serde_json::from_str(payload).map_err(bad)?;
        let data = match value.get("ferry") {
            Some(serde_json::Value::String(inner)) => serde_json::from_str(inner).map_err(bad)?,
            Some(obj) => obj.clone(),
            None => value,
        };
        serde_json::from_value(data).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnd_windows_parse_and_wrap() {
        assert_eq!(parse_dnd("22:00-07:00").unwrap(), (1320, 420));
        assert_eq!(parse_dnd(" 0:05 - 23:59 ").unwrap(), (5, 1439));
        assert_eq!(parse_dnd("00:00-00:00").unwrap(), (0, 0));
        for bad in [
            "",
            "22:00",
            "24:00-07:00",
            "22:60-07:00",
            "a:b-c:d",
            "22-07",
            "+1:00-2:00",
        ] {
            assert!(parse_dnd(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_minutes(1320), "22:00");
        assert_eq!(format_minutes(425), "07:05");
    }

    #[test]
    fn targets_carry_their_provider_and_fields() {
        let t = apns("ab12", "chat.ferry.app", true);
        assert_eq!(t.provider(), v1::PushProvider::Apns);
        assert_eq!(
            (t.token.as_str(), t.app_id.as_str(), t.sandbox),
            ("ab12", "chat.ferry.app", true)
        );
        let u = unified_push("https://up.example/x", "BPk", "au");
        assert_eq!(u.provider(), v1::PushProvider::Unifiedpush);
        assert_eq!(
            (u.endpoint.as_str(), u.p256dh.as_str(), u.auth.as_str()),
            ("https://up.example/x", "BPk", "au")
        );
        assert_eq!(fcm("tok", "").provider(), v1::PushProvider::Fcm);
    }

    #[test]
    fn push_data_reads_from_every_provider_shape() {
        let obj = r#"{"v":1,"seq":42,"count":3,"kind":"message","from":"ann"}"#;
        let want = PushData {
            v: 1,
            seq: 42,
            count: 3,
            kind: "message".into(),
            from: "ann".into(),
            ..Default::default()
        };
        // APNs userInfo and a Web Push body: the object under "ferry".
        let apns = format!(r#"{{"aps":{{"badge":2}},"ferry":{obj}}}"#);
        assert_eq!(PushData::from_payload(&apns).unwrap(), want);
        // FCM data: "ferry" holds the object as a JSON string.
        let fcm = serde_json::json!({ "ferry": obj, "badge": "2" }).to_string();
        assert_eq!(PushData::from_payload(&fcm).unwrap(), want);
        assert_eq!(PushData::from_payload(obj).unwrap(), want);
        assert!(PushData::from_payload("{").is_err());
        assert!(PushData::from_payload(r#"{"ferry":"not json"}"#).is_err());
    }
}
