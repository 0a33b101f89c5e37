//! Ferry's push senders: what it takes to hand one notification to Apple (APNs), Google
//! (FCM HTTP v1), a browser's push service (Web Push, RFC 8030 with RFC 8291 encryption
//! and RFC 8292 VAPID) or a UnifiedPush distributor (Web Push to its endpoint), and to
//! read the provider's answer as an [`Outcome`].
//!
//! A [`Sender`] sends one [`Notification`] to one [`Target`] and says what happened; it
//! keeps its own credentials (JWTs reused within their window, OAuth2 access tokens) and
//! connections, and limits how many requests it has in flight. Provider base URLs are
//! configuration ([`PushConfig`]) so tests and private relays work.
//!
//! This crate must not decide *whether* or *when* to push (the logic layer does: online
//! devices, coalescing, mutes, do-not-disturb), nor keep anything durable (the store
//! does: targets and the push queue), nor retry (the caller reschedules from the
//! [`Outcome`]).
//!
//! Modules: [`config`] (the `[push]` section and [`Senders`]), [`apns`], [`fcm`],
//! [`webpush`] (each with its provider's exact wire format), and, with the `sim`
//! feature, [`sim`]: a local HTTPS server that plays all of them and checks every request
//! against their published contracts.

use std::time::Duration;

pub mod apns;
pub mod config;
pub mod fcm;
mod keys;
mod net;
#[cfg(feature = "sim")]
pub mod sim;
pub mod webpush;

pub use config::{ApnsConfig, FcmConfig, PushConfig, Senders, WebPushConfig};
pub use uuid_like::PushId;

use serde::{Deserialize, Serialize};

/// The push services Ferry sends through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Apns,
    Fcm,
    #[serde(rename = "webpush")]
    WebPush,
    #[serde(rename = "unifiedpush")]
    UnifiedPush,
}

impl Provider {
    /// The provider's short name, as stored and as metrics label it: `apns`, `fcm`,
    /// `webpush`, `unifiedpush`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
            Provider::WebPush => "webpush",
            Provider::UnifiedPush => "unifiedpush",
        }
    }

    pub fn from_name(s: &str) -> Option<Provider> {
        Some(match s {
            "apns" => Provider::Apns,
            "fcm" => Provider::Fcm,
            "webpush" => Provider::WebPush,
            "unifiedpush" => Provider::UnifiedPush,
            _ => return None,
        })
    }

    pub const ALL: [Provider; 4] = [
        Provider::Apns,
        Provider::Fcm,
        Provider::WebPush,
        Provider::UnifiedPush,
    ];
}

/// Where one device's pushes go (a registered push target, as the provider needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: Provider,
    /// APNs device token (hex) or FCM registration token; empty for Web Push.
    pub token: String,
    /// Web Push / UnifiedPush: the subscription endpoint (https URL).
    pub endpoint: String,
    /// Web Push / UnifiedPush: the user agent's P-256 public key, base64url (65 bytes).
    pub p256dh: String,
    /// Web Push / UnifiedPush: the 16-byte auth secret, base64url.
    pub auth: String,
    /// APNs topic (bundle id); FCM project id (empty: the configured default).
    pub app_id: String,
    /// APNs development environment.
    pub sandbox: bool,
}

/// What a push says. Every provider gets the same content, shaped its own way (see
/// docs/protocol.md, Push, for each provider's wire form).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Unique per (device, newest entry covered): `apns-id` (a UUID built from it), the
    /// log key of the attempt. A push sent again after a node died mid-send carries the
    /// same id.
    pub id: uuid_like::PushId,
    /// Same for all of one device's pushes, so the provider and the OS replace an older
    /// undelivered or shown push by a newer one (`apns-collapse-id`, FCM
    /// `collapse_key`, Web Push `Topic`). At most 32 characters of `[A-Za-z0-9_-]`.
    pub collapse_id: String,
    /// The app's data: what it needs to sync and to render the push itself.
    pub data: PushData,
    /// Shown by the OS (APNs `alert`, FCM `notification` is NOT used — data only; Web Push
    /// payload `title`/`body`). None: a silent push (do-not-disturb, preview off on a
    /// platform that needs no alert).
    pub alert: Option<Alert>,
    /// The app icon's badge: the device's unread count.
    pub badge: Option<u32>,
    /// How long the provider should keep trying to deliver it.
    pub ttl: Duration,
    /// When it was made, unix ms (the push's age, for `apns-expiration` = created + ttl).
    pub created_ms: i64,
    /// High priority (wake the device now: `apns-priority: 10`, FCM `android.priority:
    /// high`, Web Push `Urgency: high`); false for badge-only or silent updates.
    pub urgent: bool,
}

/// Text the OS shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub title: String,
    pub body: String,
}

/// The app's data in every push, as JSON under the key `ferry` (APNs: beside `aps`; FCM:
/// `data.ferry` as a JSON string; Web Push: the decrypted payload's `ferry` member).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PushData {
    /// Format version (1).
    pub v: u32,
    /// The newest inbox seq covered: the app syncs up to at least this.
    pub seq: u64,
    /// Entries this push stands for (a coalesced burst).
    pub count: u32,
    /// `message`, `group`, `mention`, `friend`, `recall`: what the newest entry is.
    pub kind: String,
    /// The sender's name, with preview SENDER or FULL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// The group, for a group message or mention (with preview SENDER or FULL).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group_id: u64,
    /// The message text, with preview FULL only (cut to 256 characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken for delivery.
    Accepted,
    /// The target is dead (APNs 410 / BadDeviceToken / Unregistered, FCM UNREGISTERED /
    /// NOT_FOUND, Web Push 404 / 410): remove it, never send to it again.
    Gone { reason: String },
    /// Try again later (429, 5xx, a timeout, a connection error); `after` is the
    /// provider's Retry-After when it gave one.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (a malformed request, a payload too large, wrong credentials for
    /// this app): drop this push, keep the target.
    Rejected { reason: String },
}

impl Outcome {
    /// A short label for metrics: `accepted`, `gone`, `retry`, `rejected`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Gone { .. } => "gone",
            Outcome::Retry { .. } => "retry",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

/// Sends notifications through one provider.
#[async_trait::async_trait]
pub trait Sender: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    /// Sends one notification to one target; never panics, never retries.
    async fn send(&self, target: &Target, note: &Notification) -> Outcome;
}

/// A configuration error (a key that does not parse, a missing field).
#[derive(Debug, thiserror::Error)]
#[error("push configuration: {0}")]
pub struct ConfigError(pub String);

/// Push ids: 16 bytes, written as a UUID (8-4-4-4-12 hex), derived from the device and
/// the newest seq so that a re-sent push carries the same id.
pub mod uuid_like {
    /// A push's id (see [`PushId::new`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PushId(pub [u8; 16]);

    impl PushId {
        /// The id of the push to `device` of `user` covering entries up to `seq`.
        pub fn new(user: u64, device: &str, seq: u64) -> PushId {
            // FNV-1a over the device name, mixed with the user and the seq: stable
            // across nodes and restarts, which is all it must be.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in device.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&(h ^ user.rotate_left(17)).to_be_bytes());
            out[8..].copy_from_slice(&seq.to_be_bytes());
            PushId(out)
        }
    }

    impl std::fmt::Display for PushId {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let b = &self.0;
            for (i, x) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    f.write_str("-")?;
                }
                write!(f, "{x:02x}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_id_is_a_uuid_stable_per_device_and_seq() {
        let a = uuid_like::PushId::new(7, "phone", 42).to_string();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_eq!(a, uuid_like::PushId::new(7, "phone", 42).to_string());
        assert_ne!(a, uuid_like::PushId::new(7, "phone", 43).to_string());
        assert_ne!(a, uuid_like::PushId::new(7, "tablet", 42).to_string());
    }

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::from_name(p.name()), Some(p));
        }
        assert_eq!(Provider::from_name("sms"), None);
    }
}
