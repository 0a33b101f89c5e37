//! Apple Push Notification service, token-based, over HTTP/2.
//!
//! Wire format (one request per push):
//!
//! ```text
//! POST {url | sandbox_url}/3/device/{token}          (token: hex, as the device gave it)
//! authorization: bearer <JWT>     ES256, header {"alg":"ES256","kid":key_id},
//!                                 claims {"iss":team_id,"iat":<unix s>}; one JWT is
//!                                 reused for 50 min (Apple refuses a new one more often
//!                                 than every 20 min and one older than 60 min)
//! apns-topic: <target.app_id>     the app's bundle id
//! apns-push-type: alert | background      alert when the notification has an alert
//! apns-priority: 10 | 5           10 only for an urgent push with an alert
//! apns-expiration: <created_ms/1000 + ttl s>
//! apns-collapse-id: <collapse_id>
//! apns-id: <note.id as a UUID>
//! content-type: application/json
//!
//! {"aps":{"alert":{"title":..,"body":..},"badge":n,"mutable-content":1},"ferry":{PushData}}
//! {"aps":{"badge":n,"content-available":1},"ferry":{PushData}}        (no alert)
//! ```
//!
//! `badge` only when the notification has one. Answers: 200 → Accepted; 410, or 400
//! with reason `BadDeviceToken` / `DeviceTokenNotForTopic`, or reason `Unregistered` →
//! Gone; 403 `ExpiredProviderToken` → a new JWT and one more try; 429 and 5xx → Retry
//! (with Retry-After when given); anything else → Rejected with Apple's `reason`.
//!
//! It must not retry beyond that one JWT refresh, nor make a new JWT per request (Apple
//! answers `TooManyProviderTokenUpdates`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::signature::EcdsaKeyPair;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{base_url, concurrency, ApnsConfig};
use crate::{keys, net, ConfigError, Notification, Outcome, Provider, Sender, Target};

/// How long one provider JWT is used: under Apple's 60 minutes, over its 20.
pub const JWT_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// Sends to APNs.
pub struct ApnsSender {
    client: reqwest::Client,
    key: EcdsaKeyPair,
    key_id: String,
    team_id: String,
    url: String,
    sandbox_url: String,
    limit: Semaphore,
    /// The JWT in use and when it was made.
    jwt: Mutex<Option<(String, Instant)>>,
}

impl ApnsSender {
    pub fn new(
        cfg: &ApnsConfig,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let pem = keys::read_file(&cfg.key_file, "push.apns.key_file")?;
        let key = keys::p256_key(&pem, "push.apns.key_file")?;
        if cfg.key_id.is_empty() || cfg.team_id.is_empty() {
            return Err(ConfigError(
                "push.apns: key_id and team_id are required".into(),
            ));
        }
        Ok(ApnsSender {
            client: net::client(ca_pem, timeout)?,
            key,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            url: base_url(&cfg.url, "push.apns.url")?,
            sandbox_url: base_url(&cfg.sandbox_url, "push.apns.sandbox_url")?,
            limit: Semaphore::new(concurrency(cfg.concurrency, "push.apns")?),
            jwt: Mutex::new(None),
        })
    }

    /// The JWT to send with, made anew when none is younger than [`JWT_LIFETIME`].
    fn jwt(&self) -> Option<String> {
        let mut cur = self.jwt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, made)) = cur.as_ref() {
            if made.elapsed() < JWT_LIFETIME {
                return Some(t.clone());
            }
        }
        let t = keys::jwt_es256(
            &self.key,
            &json!({"alg": "ES256", "kid": self.key_id}),
            &json!({"iss": self.team_id, "iat": keys::unix_now()}),
        )?;
        *cur = Some((t.clone(), Instant::now()));
        Some(t)
    }

    /// Drops `used` after Apple called it expired, unless another request has already
    /// replaced it (many requests in flight see the same 403: one new JWT, not many).
    fn expire(&self, used: &str) {
        let mut cur = self.jwt.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|(t, _)| t == used) {
            *cur = None;
        }
    }

    fn request(
        &self,
        target: &Target,
        note: &Notification,
        jwt: &str,
    ) -> Result<reqwest::RequestBuilder, Outcome> {
        let base = if target.sandbox {
            &self.sandbox_url
        } else {
            &self.url
        };
        let expiration = (note.created_ms.max(0) / 1000) as u64 + note.ttl.as_secs();
        let priority = if note.urgent && note.alert.is_some() {
            "10"
        } else {
            "5"
        };
        let push_type = if note.alert.is_some() {
            "alert"
        } else {
            "background"
        };
        let body = payload(note);
        Ok(self
            .client
            .post(format!("{base}/3/device/{}", target.token))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &target.app_id)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", &note.collapse_id)
            .header("apns-id", note.id.to_string())
            .header("content-type", "application/json")
            .body(body))
    }
}

/// The JSON body (see the module doc).
pub fn payload(note: &Notification) -> String {
    let mut aps = serde_json::Map::new();
    if let Some(a) = &note.alert {
        aps.insert("alert".into(), json!({"title": a.title, "body": a.body}));
        aps.insert("mutable-content".into(), json!(1));
    } else {
        aps.insert("content-available".into(), json!(1));
    }
    if let Some(b) = note.badge {
        aps.insert("badge".into(), json!(b));
    }
    json!({"aps": aps, "ferry": note.data}).to_string()
}

/// A device token as APNs issues it: hex, of a sane length. Anything else would not
/// even make a valid request path.
fn valid_token(t: &str) -> bool {
    (8..=200).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What Apple answered, read from the status and the `{"reason": ...}` body.
fn outcome(status: u16, reason: &str, after: Option<Duration>) -> Outcome {
    let reason = if reason.is_empty() {
        format!("HTTP {status}")
    } else {
        reason.to_owned()
    };
    match status {
        200 => Outcome::Accepted,
        410 => Outcome::Gone { reason },
        _ if reason == "Unregistered" => Outcome::Gone { reason },
        400 if reason == "BadDeviceToken" || reason == "DeviceTokenNotForTopic" => {
            Outcome::Gone { reason }
        }
        429 | 500..=599 => Outcome::Retry { after, reason },
        _ => Outcome::Rejected { reason },
    }
}

#[async_trait::async_trait]
impl Sender for ApnsSender {
    fn provider(&self) -> Provider {
        Provider::Apns
    }

    async fn send(&self, target: &Target, note: &Notification) -> Outcome {
        if !valid_token(&target.token) {
            return Outcome::Rejected {
                reason: "BadDeviceToken (not a hex device token)".into(),
            };
        }
        if target.app_id.is_empty() {
            return Outcome::Rejected {
                reason: "MissingTopic (the target has no app_id)".into(),
            };
        }
        let _slot = match net::slot(&self.limit).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let mut refreshed = false;
        loop {
            let Some(jwt) = self.jwt() else {
                return Outcome::Rejected {
                    reason: "cannot sign the provider JWT".into(),
                };
            };
            let req = match self.request(target, note, &jwt) {
                Ok(r) => r,
                Err(o) => return o,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return net::transport_error(&e),
            };
            let status = resp.status().as_u16();
            let after = net::retry_after(resp.headers());
            let body = resp.bytes().await.unwrap_or_default();
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            if status == 403 && reason == "ExpiredProviderToken" && !refreshed {
                tracing::info!("apns: provider token refused as expired, making a new one");
                self.expire(&jwt);
                refreshed = true;
                continue;
            }
            return outcome(status, &reason, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_answers_read_as_outcomes() {
        assert_eq!(outcome(200, "", None), Outcome::Accepted);
        assert_eq!(outcome(410, "Unregistered", None).label(), "gone");
        assert_eq!(outcome(400, "BadDeviceToken", None).label(), "gone");
        assert_eq!(outcome(400, "DeviceTokenNotForTopic", None).label(), "gone");
        assert_eq!(outcome(400, "BadCollapseId", None).label(), "rejected");
        assert_eq!(
            outcome(429, "TooManyRequests", Some(Duration::from_secs(3))),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "TooManyRequests".into()
            }
        );
        assert_eq!(outcome(503, "", None).label(), "retry");
        assert_eq!(outcome(413, "PayloadTooLarge", None).label(), "rejected");
    }

    #[test]
    fn tokens_must_be_hex() {
        assert!(valid_token(&"ab".repeat(32)));
        assert!(!valid_token("../../etc"));
        assert!(!valid_token("zz"));
        assert!(!valid_token(""));
    }
}
