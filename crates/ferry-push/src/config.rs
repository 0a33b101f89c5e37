//! The `[push]` section of Ferry's configuration and the [`Senders`] made from it.
//!
//! ```toml
//! [push]
//! ca_file = "/etc/ferry/push-ca.pem"   # optional: extra trusted roots (tests, relays)
//! timeout_ms = 10000
//!
//! [push.apns]
//! key_file = "/etc/ferry/AuthKey_ABC123DEFG.p8"   # Apple's .p8 (PKCS#8 PEM, P-256)
//! key_id = "ABC123DEFG"
//! team_id = "TEAM123456"
//! # url = "https://api.push.apple.com"
//! # sandbox_url = "https://api.sandbox.push.apple.com"
//! # concurrency = 64
//!
//! [push.fcm]
//! service_account_file = "/etc/ferry/firebase-sa.json"
//! # url = "https://fcm.googleapis.com"
//! # token_url = ...   # default: the JSON's token_uri
//! # concurrency = 64
//!
//! [push.webpush]          # for both webpush and unifiedpush targets
//! vapid_private_key_file = "/etc/ferry/vapid.pem"
//! subject = "mailto:ops@example.com"
//! # concurrency = 64
//! ```
//!
//! The VAPID key is a PKCS#8 PEM P-256 key with its public key inside, as
//! `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out vapid.pem` writes
//! it (the raw 32-byte base64url form some tools print cannot be used: ring needs the
//! public key too). Its public key (base64url, uncompressed) is what the web app passes
//! to `pushManager.subscribe` as `applicationServerKey`.
//!
//! A provider without a section has no sender ([`Senders::get`] is None). This module
//! must not send anything: it reads files and builds the senders.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{keys, ConfigError, Provider, Sender};

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_concurrency() -> usize {
    64
}

fn default_apns_url() -> String {
    "https://api.push.apple.com".into()
}

fn default_apns_sandbox_url() -> String {
    "https://api.sandbox.push.apple.com".into()
}

fn default_fcm_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// `[push]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmConfig>,
    /// Used for both `webpush` and `unifiedpush` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webpush: Option<WebPushConfig>,
    /// Extra root certificates (PEM) trusted for every provider, besides the system's:
    /// tests (the [`crate::sim`] server's CA) and private relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Per request, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            apns: None,
            fcm: None,
            webpush: None,
            ca_file: None,
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// `[push.apns]`: token-based (JWT) authentication with a `.p8` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// Apple's `.p8` signing key (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
    /// The key's 10-character id (the JWT's `kid`).
    pub key_id: String,
    /// The developer team id (the JWT's `iss`).
    pub team_id: String,
    #[serde(default = "default_apns_url")]
    pub url: String,
    /// For targets registered with `sandbox` (development builds).
    #[serde(default = "default_apns_sandbox_url")]
    pub sandbox_url: String,
    /// Requests in flight at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[push.fcm]`: FCM HTTP v1 with a Google service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key (client_email, private_key, token_uri, project_id).
    pub service_account_file: PathBuf,
    #[serde(default = "default_fcm_url")]
    pub url: String,
    /// The OAuth2 token endpoint; default: the JSON's `token_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[push.webpush]`: VAPID (RFC 8292) for Web Push and UnifiedPush endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID key: PKCS#8 PEM, P-256, with its public key (see the module doc).
    pub vapid_private_key_file: PathBuf,
    /// The JWT's `sub`: `mailto:...` or an `https:` URL where the push service can reach
    /// the operator.
    pub subject: String,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// The Google service-account JSON's members Ferry reads.
#[derive(Deserialize)]
pub(crate) struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub token_uri: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
}

/// One sender per configured provider.
#[derive(Clone, Default)]
pub struct Senders {
    apns: Option<Arc<dyn Sender>>,
    fcm: Option<Arc<dyn Sender>>,
    webpush: Option<Arc<dyn Sender>>,
    unifiedpush: Option<Arc<dyn Sender>>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senders")
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .field("webpush", &self.webpush.is_some())
            .field("unifiedpush", &self.unifiedpush.is_some())
            .finish()
    }
}

impl Senders {
    /// Reads the keys and builds a sender per configured provider. Fails on a key that
    /// does not parse, a missing file, a bad URL: at start-up, not at the first push.
    pub fn from_config(cfg: &PushConfig) -> Result<Senders, ConfigError> {
        let ca = match &cfg.ca_file {
            Some(path) => Some(keys::read_file(path, "push.ca_file")?),
            None => None,
        };
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let mut out = Senders::default();
        if let Some(a) = &cfg.apns {
            out.apns = Some(Arc::new(crate::apns::ApnsSender::new(
                a,
                ca.as_deref(),
                timeout,
            )?));
        }
        if let Some(f) = &cfg.fcm {
            out.fcm = Some(Arc::new(crate::fcm::FcmSender::new(
                f,
                ca.as_deref(),
                timeout,
            )?));
        }
        if let Some(w) = &cfg.webpush {
            let core = Arc::new(crate::webpush::WebPushCore::new(w, ca.as_deref(), timeout)?);
            out.webpush = Some(Arc::new(crate::webpush::WebPushSender::new(
                Provider::WebPush,
                core.clone(),
            )));
            out.unifiedpush = Some(Arc::new(crate::webpush::WebPushSender::new(
                Provider::UnifiedPush,
                core,
            )));
        }
        Ok(out)
    }

    /// The sender for `provider`, if configured.
    pub fn get(&self, provider: Provider) -> Option<Arc<dyn Sender>> {
        match provider {
            Provider::Apns => self.apns.clone(),
            Provider::Fcm => self.fcm.clone(),
            Provider::WebPush => self.webpush.clone(),
            Provider::UnifiedPush => self.unifiedpush.clone(),
        }
    }

    /// Replaces (or removes) one provider's sender: tests and embedders with a sender
    /// of their own.
    pub fn set(&mut self, provider: Provider, sender: Option<Arc<dyn Sender>>) {
        match provider {
            Provider::Apns => self.apns = sender,
            Provider::Fcm => self.fcm = sender,
            Provider::WebPush => self.webpush = sender,
            Provider::UnifiedPush => self.unifiedpush = sender,
        }
    }
}

/// Checks a base URL from the configuration: `http(s)://host[:port]`, no trailing `/`.
pub(crate) fn base_url(url: &str, what: &str) -> Result<String, ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError(format!("{what} {url:?}: {e}")))?;
    if parsed.scheme() != "https" && parsed.scheme() != "http" {
        return Err(ConfigError(format!("{what} {url:?}: not an https URL")));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub(crate) fn concurrency(n: usize, what: &str) -> Result<usize, ConfigError> {
    if n == 0 || n > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(ConfigError(format!(
            "{what}.concurrency must be at least 1"
        )));
    }
    Ok(n)
}
