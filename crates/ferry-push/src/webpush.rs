//! Web Push (RFC 8030) with message encryption (RFC 8291, `aes128gcm` of RFC 8188) and
//! VAPID (RFC 8292); UnifiedPush endpoints speak the same protocol.
//!
//! Wire format (one request per push):
//!
//! ```text
//! POST <target.endpoint>                          (https only)
//! authorization: vapid t=<JWT>, k=<VAPID public key, base64url, uncompressed 65 bytes>
//!     JWT: ES256, header {"typ":"JWT","alg":"ES256"},
//!     claims {"aud":"<scheme>://<host>[:<port>] of the endpoint","exp":now+12h,
//!     "sub":<subject>}; reused per audience until 1 h before exp
//! ttl: <ttl in seconds>
//! urgency: high | normal                          (high when urgent)
//! topic: <collapse_id>
//! content-encoding: aes128gcm
//! content-type: application/octet-stream
//!
//! body: salt (16) | record size (4, big-endian, 4096) | key id length (1, = 65)
//!       | the sender's ephemeral P-256 public key (65) | one AES-128-GCM record
//! ```
//!
//! The record is the JSON payload `{"ferry":{PushData},"title":..,"body":..,"badge":n}`
//! (`title`/`body` with an alert, `badge` when the notification has one) followed by
//! the last-record delimiter 0x02, no padding, sealed with the content key and nonce
//! RFC 8291 derives from ECDH(ephemeral key, `p256dh`) and the `auth` secret. The whole
//! body is at most 4096 bytes (what every push service must take): a payload over 3993
//! bytes is Rejected before sending.
//!
//! Answers: 200/201/202 → Accepted; 404/410 → Gone; 429 and 5xx → Retry (Retry-After);
//! 400, 401, 403, 413 and anything else → Rejected. A bad `p256dh` or `auth` → Rejected.
//!
//! It must not send plaintext (there is no unencrypted fallback), nor to an `http:`
//! endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::EcdsaKeyPair;
use ring::{aead, agreement, hkdf};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{concurrency, WebPushConfig};
use crate::{keys, net, ConfigError, Notification, Outcome, Provider, Sender, Target};

/// The one record's size (`rs`).
pub const RECORD_SIZE: usize = 4096;
/// The largest body push services must take (RFC 8030 section 7.2: at least 4096
/// bytes; FCM's Web Push and others refuse more).
pub const MAX_BODY: usize = 4096;
/// The largest payload: the body less the header (86 bytes), the tag and the delimiter.
pub const MAX_PAYLOAD: usize = MAX_BODY - HEADER_LEN - 16 - 1;
/// salt (16) + record size (4) + key id length (1) + key id (65).
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// VAPID JWT lifetime (RFC 8292 allows at most 24 h).
const JWT_LIFETIME_SECS: u64 = 12 * 3600;
/// A JWT is made anew this long before it expires.
const JWT_MARGIN_SECS: u64 = 3600;
/// Audiences (push service origins) whose JWT is kept; more are rare (a few browser
/// vendors and UnifiedPush distributors), this only bounds memory.
const MAX_AUDIENCES: usize = 1024;

/// What the `webpush` and `unifiedpush` senders share: the key, the JWT cache, the
/// client and the in-flight limit.
pub struct WebPushCore {
    client: reqwest::Client,
    key: EcdsaKeyPair,
    /// The VAPID public key, base64url: the `k=` of every request.
    public_b64: String,
    subject: String,
    limit: Semaphore,
    /// Per audience: the JWT and its `exp`.
    jwts: Mutex<HashMap<String, (String, u64)>>,
    rng: SystemRandom,
}

impl WebPushCore {
    pub fn new(
        cfg: &WebPushConfig,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let what = "push.webpush.vapid_private_key_file";
        let pem = keys::read_file(&cfg.vapid_private_key_file, what)?;
        let key = keys::p256_key(&pem, what)?;
        if !(cfg.subject.starts_with("mailto:") || cfg.subject.starts_with("https://")) {
            return Err(ConfigError(
                "push.webpush.subject: a mailto: or https: URL".into(),
            ));
        }
        Ok(WebPushCore {
            client: net::client(ca_pem, timeout)?,
            public_b64: keys::b64url(&keys::p256_public(&key)),
            key,
            subject: cfg.subject.clone(),
            limit: Semaphore::new(concurrency(cfg.concurrency, "push.webpush")?),
            jwts: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        })
    }

    /// The VAPID public key, base64url (the web app's `applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    fn jwt(&self, aud: &str) -> Option<String> {
        let now = keys::unix_now();
        let mut cache = self.jwts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, exp)) = cache.get(aud) {
            if now + JWT_MARGIN_SECS < *exp {
                return Some(t.clone());
            }
        }
        let exp = now + JWT_LIFETIME_SECS;
        let t = keys::jwt_es256(
            &self.key,
            &json!({"typ": "JWT", "alg": "ES256"}),
            &json!({"aud": aud, "exp": exp, "sub": self.subject}),
        )?;
        if cache.len() >= MAX_AUDIENCES {
            cache.retain(|_, (_, e)| now + JWT_MARGIN_SECS < *e);
            if cache.len() >= MAX_AUDIENCES {
                cache.clear();
            }
        }
        cache.insert(aud.to_owned(), (t.clone(), exp));
        Some(t)
    }
}

/// Sends to Web Push or UnifiedPush endpoints (the same protocol; two senders so each
/// provider has its own label).
pub struct WebPushSender {
    provider: Provider,
    core: Arc<WebPushCore>,
}

impl WebPushSender {
    pub fn new(provider: Provider, core: Arc<WebPushCore>) -> Self {
        WebPushSender { provider, core }
    }
}

/// The plaintext JSON payload (see the module doc).
pub fn payload(note: &Notification) -> String {
    let mut p = serde_json::Map::new();
    p.insert("ferry".into(), json!(note.data));
    if let Some(a) = &note.alert {
        p.insert("title".into(), json!(a.title));
        p.insert("body".into(), json!(a.body));
    }
    if let Some(b) = note.badge {
        p.insert("badge".into(), json!(b));
    }
    serde_json::Value::Object(p).to_string()
}

/// An HKDF output length for ring.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], len: usize) -> Option<Vec<u8>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk.expand(info, Len(len)).ok()?;
    let mut out = vec![0u8; len];
    okm.fill(&mut out).ok()?;
    Some(out)
}

/// RFC 8291: `plaintext` sealed for the user agent whose public key is `ua_public`
/// (65 bytes) and auth secret `auth` (16 bytes), as one `aes128gcm` record with its
/// header. Err: why it cannot be (a bad key, a payload too large).
pub fn encrypt(
    rng: &dyn SecureRandom,
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, String> {
    if ua_public.len() != 65 || ua_public[0] != 4 {
        return Err("p256dh is not an uncompressed P-256 point".into());
    }
    if auth.len() != 16 {
        return Err("auth is not 16 bytes".into());
    }
    if plaintext.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over {MAX_PAYLOAD}",
            plaintext.len()
        ));
    }
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, rng)
        .map_err(|_| "no randomness".to_owned())?;
    let as_public = eph
        .compute_public_key()
        .map_err(|_| "cannot compute the ephemeral key".to_owned())?;
    let as_public = as_public.as_ref().to_vec();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    let ecdh = agreement::agree_ephemeral(eph, &peer, |s| s.to_vec())
        .map_err(|_| "p256dh is not a point on P-256".to_owned())?;
    // IKM = HKDF(auth, ecdh, "WebPush: info" 0x00 ua_public as_public, 32)
    let ikm = hkdf(
        auth,
        &ecdh,
        &[b"WebPush: info\0", ua_public, &as_public],
        32,
    )
    .ok_or("hkdf")?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt)
        .map_err(|_| "no randomness".to_owned())?;
    let cek = hkdf(&salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], 16).ok_or("hkdf")?;
    let nonce = hkdf(&salt, &ikm, &[b"Content-Encoding: nonce\0"], 12).ok_or("hkdf")?;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &cek).map_err(|_| "aes key".to_owned())?,
    );
    let nonce = aead::Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "nonce".to_owned())?;
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(2); // the last (and only) record's delimiter
    key.seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut record)
        .map_err(|_| "seal".to_owned())?;
    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&(RECORD_SIZE as u32).to_be_bytes());
    body.push(65);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// The VAPID audience of an endpoint: its origin (`https://host[:port]`).
fn audience(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

fn outcome(status: u16, text: &str, after: Option<Duration>) -> Outcome {
    let reason = if text.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        let t: String = text.trim().chars().take(200).collect();
        format!("HTTP {status}: {t}")
    };
    match status {
        200..=202 => Outcome::Accepted,
        404 | 410 => Outcome::Gone { reason },
        429 | 500..=599 => Outcome::Retry { after, reason },
        _ => Outcome::Rejected { reason },
    }
}

#[async_trait::async_trait]
impl Sender for WebPushSender {
    fn provider(&self) -> Provider {
        self.provider
    }

    async fn send(&self, target: &Target, note: &Notification) -> Outcome {
        let core = &self.core;
        let url = match reqwest::Url::parse(&target.endpoint) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => u,
            _ => {
                return Outcome::Rejected {
                    reason: "the endpoint is not an https URL".into(),
                }
            }
        };
        let Some(aud) = audience(&url) else {
            return Outcome::Rejected {
                reason: "the endpoint has no host".into(),
            };
        };
        let (Some(ua_public), Some(auth)) = (
            keys::b64url_decode(&target.p256dh),
            keys::b64url_decode(&target.auth),
        ) else {
            return Outcome::Rejected {
                reason: "p256dh or auth is not base64url".into(),
            };
        };
        let body = match encrypt(&core.rng, &ua_public, &auth, payload(note).as_bytes()) {
            Ok(b) => b,
            Err(e) => return Outcome::Rejected { reason: e },
        };
        let Some(jwt) = core.jwt(&aud) else {
            return Outcome::Rejected {
                reason: "cannot sign the VAPID JWT".into(),
            };
        };
        let _slot = match net::slot(&core.limit).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let resp = match core
            .client
            .post(url)
            .header(
                "authorization",
                format!("vapid t={jwt}, k={}", core.public_b64),
            )
            .header("ttl", note.ttl.as_secs().to_string())
            .header("urgency", if note.urgent { "high" } else { "normal" })
            .header("topic", &note.collapse_id)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return net::transport_error(&e),
        };
        let status = resp.status().as_u16();
        let after = net::retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        outcome(status, &text, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_errors_not_panics() {
        let rng = SystemRandom::new();
        assert!(encrypt(&rng, &[4; 65], &[0; 16], b"x").is_err()); // not on the curve
        assert!(encrypt(&rng, &[4; 10], &[0; 16], b"x").is_err());
        assert!(encrypt(&rng, &[], &[0; 16], b"x").is_err());
        let ua = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let ua_pub = ua.compute_public_key().unwrap();
        assert!(encrypt(&rng, ua_pub.as_ref(), &[0; 15], b"x").is_err());
        assert!(encrypt(&rng, ua_pub.as_ref(), &[0; 16], &[b'a'; MAX_PAYLOAD + 1]).is_err());
        let body = encrypt(&rng, ua_pub.as_ref(), &[0; 16], &[b'a'; MAX_PAYLOAD]).unwrap();
        assert_eq!(body.len(), MAX_BODY);
    }

    #[test]
    fn audiences_are_origins() {
        let u = reqwest::Url::parse("https://push.example.net:8443/wp/abc?x=1").unwrap();
        assert_eq!(
            audience(&u).as_deref(),
            Some("https://push.example.net:8443")
        );
        let u = reqwest::Url::parse("https://push.example.net/wp/abc").unwrap();
        assert_eq!(audience(&u).as_deref(), Some("https://push.example.net"));
    }

    #[test]
    fn push_service_answers_read_as_outcomes() {
        assert_eq!(outcome(201, "", None), Outcome::Accepted);
        assert_eq!(outcome(410, "", None).label(), "gone");
        assert_eq!(outcome(404, "", None).label(), "gone");
        assert_eq!(outcome(413, "too big", None).label(), "rejected");
        assert_eq!(
            outcome(429, "", Some(Duration::from_secs(1))).label(),
            "retry"
        );
        assert_eq!(outcome(502, "", None).label(), "retry");
    }
}
