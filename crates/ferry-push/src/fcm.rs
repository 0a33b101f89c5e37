//! Firebase Cloud Messaging, HTTP v1 API, data-only messages.
//!
//! Wire format. The OAuth2 access token, by the JWT-bearer grant (RFC 7523), cached
//! until 60 s before it expires and fetched again after a 401:
//!
//! ```text
//! POST {token_url}                (default: the service account's token_uri)
//! content-type: application/x-www-form-urlencoded
//!
//! grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=<JWT>
//!     JWT: RS256, header {"alg":"RS256","typ":"JWT"}, claims {"iss":client_email,
//!     "scope":"https://www.googleapis.com/auth/firebase.messaging","aud":token_url,
//!     "iat":now,"exp":now+3600}
//! → {"access_token":"...","expires_in":3599,"token_type":"Bearer"}
//! ```
//!
//! One push:
//!
//! ```text
//! POST {url}/v1/projects/{target.app_id, or the service account's project_id}/messages:send
//! authorization: Bearer <access token>
//! content-type: application/json
//!
//! {"message":{"token":"<registration token>",
//!   "data":{"ferry":"<PushData as a JSON string>","badge":"<n>","title":"..","body":".."},
//!   "android":{"priority":"HIGH"|"NORMAL","ttl":"<secs>s","collapse_key":"<collapse_id>"}}}
//! ```
//!
//! Data only (no `notification` block: the app renders the push itself); `badge` only
//! when the notification has one, `title` and `body` only with an alert; every data value
//! is a string, as FCM requires. HIGH when urgent. Answers: 200 → Accepted; 404, an
//! `error.details[].errorCode` of `UNREGISTERED` or an `error.status` of `NOT_FOUND` →
//! Gone; 401 → a new access token and one more try; 429, 500, 503 (any 5xx) → Retry
//! (Retry-After); 400 `INVALID_ARGUMENT` and anything else → Rejected.
//!
//! It must not fetch an access token per push, nor hold one past its expiry.

use std::time::{Duration, Instant};

use ring::signature::RsaKeyPair;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{base_url, concurrency, FcmConfig, ServiceAccount};
use crate::{keys, net, ConfigError, Notification, Outcome, Provider, Sender, Target};

/// The OAuth2 scope FCM's send API wants.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// FCM keeps a message at most 28 days.
const MAX_TTL_SECS: u64 = 28 * 24 * 3600;

/// Sends to FCM.
pub struct FcmSender {
    client: reqwest::Client,
    key: RsaKeyPair,
    client_email: String,
    token_url: String,
    url: String,
    project_id: String,
    limit: Semaphore,
    /// The access token and until when to use it. An async lock: while one request
    /// fetches a token the others wait for it instead of each fetching one.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl FcmSender {
    pub fn new(
        cfg: &FcmConfig,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let what = "push.fcm.service_account_file";
        let text = keys::read_file(&cfg.service_account_file, what)?;
        let sa: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| ConfigError(format!("{what}: not a service-account JSON key: {e}")))?;
        let key = keys::rsa_key(&sa.private_key, &format!("{what} (private_key)"))?;
        let token_url = cfg.token_url.clone().or(sa.token_uri).ok_or_else(|| {
            ConfigError(format!("{what}: no token_uri, and no push.fcm.token_url"))
        })?;
        reqwest::Url::parse(&token_url)
            .map_err(|e| ConfigError(format!("push.fcm token url {token_url:?}: {e}")))?;
        Ok(FcmSender {
            client: net::client(ca_pem, timeout)?,
            key,
            client_email: sa.client_email,
            token_url,
            url: base_url(&cfg.url, "push.fcm.url")?,
            project_id: sa.project_id.unwrap_or_default(),
            limit: Semaphore::new(concurrency(cfg.concurrency, "push.fcm")?),
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The access token to send with: the cached one, or a new one from the token
    /// endpoint. Err: the outcome of a push that cannot be authorized now.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cur = self.token.lock().await;
        if let Some((t, until)) = cur.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let now = keys::unix_now();
        let assertion = keys::jwt_rs256(
            &self.key,
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_url,
                    "iat": now, "exp": now + 3600}),
        )
        .ok_or_else(|| Outcome::Rejected {
            reason: "cannot sign the OAuth2 assertion".into(),
        })?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let resp = self
            .client
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| net::transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = net::retry_after(resp.headers());
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status != 200 {
            let reason = format!("oauth2 token endpoint: HTTP {status} {body}");
            return Err(if status == 429 || status >= 500 {
                Outcome::Retry { after, reason }
            } else {
                // A key Google does not take (revoked, wrong account): no push will go.
                Outcome::Rejected { reason }
            });
        }
        let Some(token) = body.get("access_token").and_then(|t| t.as_str()) else {
            return Err(Outcome::Retry {
                after: None,
                reason: format!("oauth2 answer without access_token: {body}"),
            });
        };
        let life = body
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(life.saturating_sub(60));
        *cur = Some((token.to_owned(), until));
        Ok(token.to_owned())
    }

    /// Forgets `used` after a 401, unless a newer token has replaced it already.
    async fn expire(&self, used: &str) {
        let mut cur = self.token.lock().await;
        if cur.as_ref().is_some_and(|(t, _)| t == used) {
            *cur = None;
        }
    }
}

/// The JSON body (see the module doc).
pub fn message(target: &Target, note: &Notification) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    data.insert(
        "ferry".into(),
        json!(serde_json::to_string(&note.data).unwrap_or_default()),
    );
    if let Some(b) = note.badge {
        data.insert("badge".into(), json!(b.to_string()));
    }
    if let Some(a) = &note.alert {
        data.insert("title".into(), json!(a.title));
        data.insert("body".into(), json!(a.body));
    }
    let ttl = note.ttl.as_secs().min(MAX_TTL_SECS);
    json!({"message": {
        "token": target.token,
        "data": data,
        "android": {
            "priority": if note.urgent { "HIGH" } else { "NORMAL" },
            "ttl": format!("{ttl}s"),
            "collapse_key": note.collapse_id,
        },
    }})
}

/// FCM registration tokens are long runs of `[A-Za-z0-9_:-]`.
fn valid_token(t: &str) -> bool {
    (8..=4096).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// Project ids go into the URL path: lower-case letters, digits and dashes.
fn valid_project(p: &str) -> bool {
    !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What FCM answered, from the status and the Google API error body.
fn outcome(status: u16, body: &serde_json::Value, after: Option<Duration>) -> Outcome {
    let err = body.get("error");
    let api_status = err
        .and_then(|e| e.get("status"))
        .and_then(|s| s.as_str())
        .unwrap_or("");
    let codes: Vec<&str> = err
        .and_then(|e| e.get("details"))
        .and_then(|d| d.as_array())
        .map(|d| {
            d.iter()
                .filter_map(|x| x.get("errorCode")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    let reason = match (codes.first(), api_status) {
        (Some(c), _) => (*c).to_owned(),
        (None, s) if !s.is_empty() => s.to_owned(),
        _ => format!("HTTP {status}"),
    };
    match status {
        200 => Outcome::Accepted,
        404 => Outcome::Gone { reason },
        _ if codes.contains(&"UNREGISTERED") || api_status == "NOT_FOUND" => {
            Outcome::Gone { reason }
        }
        429 | 500..=599 => Outcome::Retry { after, reason },
        _ => Outcome::Rejected { reason },
    }
}

#[async_trait::async_trait]
impl Sender for FcmSender {
    fn provider(&self) -> Provider {
        Provider::Fcm
    }

    async fn send(&self, target: &Target, note: &Notification) -> Outcome {
        if !valid_token(&target.token) {
            return Outcome::Rejected {
                reason: "INVALID_ARGUMENT (not an FCM registration token)".into(),
            };
        }
        let project = if target.app_id.is_empty() {
            &self.project_id
        } else {
            &target.app_id
        };
        if !valid_project(project) {
            return Outcome::Rejected {
                reason: format!("no valid FCM project id ({project:?})"),
            };
        }
        let _slot = match net::slot(&self.limit).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let url = format!("{}/v1/projects/{project}/messages:send", self.url);
        let body = message(target, note).to_string();
        let mut refreshed = false;
        loop {
            let token = match self.access_token().await {
                Ok(t) => t,
                Err(o) => return o,
            };
            let resp = match self
                .client
                .post(&url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return net::transport_error(&e),
            };
            let status = resp.status().as_u16();
            let after = net::retry_after(resp.headers());
            let answer: serde_json::Value = resp.json().await.unwrap_or_default();
            if status == 401 && !refreshed {
                tracing::info!("fcm: access token refused (401), fetching a new one");
                self.expire(&token).await;
                refreshed = true;
                continue;
            }
            return outcome(status, &answer, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_answers_read_as_outcomes() {
        let unreg = json!({"error": {"code": 404, "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
        assert_eq!(
            outcome(404, &unreg, None),
            Outcome::Gone {
                reason: "UNREGISTERED".into()
            }
        );
        let unreg400 = json!({"error": {"status": "INVALID_ARGUMENT", "details": [{"errorCode": "UNREGISTERED"}]}});
        assert_eq!(outcome(400, &unreg400, None).label(), "gone");
        let bad = json!({"error": {"status": "INVALID_ARGUMENT", "details": [{"errorCode": "INVALID_ARGUMENT"}]}});
        assert_eq!(outcome(400, &bad, None).label(), "rejected");
        assert_eq!(
            outcome(429, &json!({}), Some(Duration::from_secs(9))),
            Outcome::Retry {
                after: Some(Duration::from_secs(9)),
                reason: "HTTP 429".into()
            }
        );
        assert_eq!(outcome(503, &json!({}), None).label(), "retry");
        assert_eq!(outcome(200, &json!({"name": "x"}), None), Outcome::Accepted);
    }
}
