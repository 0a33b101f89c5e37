//! A local push provider that checks the contract: one HTTPS server (rustls, a CA and a
//! certificate for 127.0.0.1 made with rcgen at start, HTTP/2 and HTTP/1.1 by ALPN) that
//! plays APNs (`/3/device/<token>`, and `/sandbox/3/device/<token>` for the sandbox
//! URL), Google's OAuth2 token endpoint (`/token`) and FCM's send endpoint
//! (`/v1/projects/<p>/messages:send`), and Web Push endpoints (`/wp/<id>`).
//!
//! Every request is checked against what the provider publishes (see [`apns`],
//! [`fcm`] and [`webpush`] here for the list): required headers and their formats, the
//! JWT (signature checked with the public key of the keys [`Sim::config`] made, its
//! claims), the JSON body's shape and the 4096-byte limits. A request that breaks the
//! contract is answered as the real provider would (400 and a reason, 403/401 for bad
//! credentials, 413 for too large) and recorded as a [`Violation`]. A request that keeps
//! it is answered from the test's script ([`Sim::script`], [`Sim::script_default`]):
//! accept, Gone, BadDeviceToken, 429 with Retry-After, 500, after an optional delay.
//!
//! Everything is recorded ([`Sim::requests`]) unless counting mode is on
//! ([`Sim::set_recording`]), which keeps only counters (a bench's load).
//!
//! Use:
//!
//! ```no_run
//! # async fn example() -> Result<(), String> {
//! use ferry_push::sim::{Reply, Sim};
//! use ferry_push::{Provider, Senders};
//!
//! let sim = Sim::start().await?;
//! let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
//! let config = sim.config(dir.path())?; // keys, CA, every provider's URL → the sim
//! let senders = Senders::from_config(&config).map_err(|e| e.to_string())?;
//! sim.script("0a1b2c3d4e5f6a7b", Reply::Gone); // this APNs token is dead
//! sim.script_default(Reply::TooMany { retry_after_secs: 3 }); // everyone else: 429
//! // ... send through senders.get(Provider::Apns) ...
//! assert!(sim.violations().is_empty());
//! assert_eq!(sim.distinct_jwts(Provider::Apns), 1);
//! # Ok(()) }
//! ```
//!
//! For tests and `ferry bench push` only (the `sim` feature): it must never be what a
//! production sender talks to, and it checks Ferry's own contract too (the `ferry`
//! member must parse as [`crate::PushData`]), which a real provider would not. It cannot
//! decrypt Web Push bodies (ring does not import ECDH private keys): it checks their
//! `aes128gcm` framing, and the interop test decrypts them with Python.

mod apns;
mod fcm;
mod jwt;
mod webpush;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, Response};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};

use crate::{ApnsConfig, FcmConfig, Provider, PushConfig, WebPushConfig};

/// A fixed RSA key for the simulated Google service account. TEST ONLY: generating a
/// 2048-bit RSA key in a debug build takes seconds, so this one (made once with Python's
/// `cryptography`) is committed; it signs nothing but requests to this simulator.
const TEST_RSA_KEY: &str = include_str!("test_rsa_key.pem");

/// The APNs key id and team id [`Sim::config`] writes.
pub const APNS_KEY_ID: &str = "SIMKEY0001";
pub const APNS_TEAM_ID: &str = "SIMTEAM001";
/// The service account's email and project id.
pub const FCM_CLIENT_EMAIL: &str = "ferry-sim@ferry-sim.iam.gserviceaccount.com";
pub const FCM_PROJECT: &str = "ferry-sim";
/// The VAPID subject.
pub const VAPID_SUBJECT: &str = "mailto:ops@ferry.test";

/// How the sim answers a request that keeps the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// APNs 200, FCM 200, Web Push 201.
    Accept,
    /// APNs 410 `Unregistered`, FCM 404 `UNREGISTERED`, Web Push 410.
    Gone,
    /// APNs 400 `BadDeviceToken`, FCM 400 `INVALID_ARGUMENT`, Web Push 404.
    BadDeviceToken,
    /// 429 with `Retry-After: <secs>`.
    TooMany { retry_after_secs: u64 },
    /// 500.
    ServerError,
}

/// A reply and how long to wait before giving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    pub reply: Reply,
    pub delay: Duration,
}

impl From<Reply> for Script {
    fn from(reply: Reply) -> Self {
        Script {
            reply,
            delay: Duration::ZERO,
        }
    }
}

/// One request the sim received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Apns, Fcm (sends and token requests) or WebPush (every `/wp/` endpoint).
    pub provider: Provider,
    /// The request path.
    pub path: String,
    /// The APNs device token, the FCM registration token (from the body), the Web Push
    /// endpoint id, or `token` for an OAuth2 token request.
    pub key: String,
    /// APNs: sent to the sandbox URL.
    pub sandbox: bool,
    /// `HTTP/2.0` or `HTTP/1.1`.
    pub version: String,
    /// Every header, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as received (Web Push: the encrypted `aes128gcm` body).
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
    /// The status the sim answered.
    pub status: u16,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (null when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// A push the sim accepted, as a bench needs it (kept in counting mode too).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub provider: Provider,
    /// The APNs device token or FCM registration token (Web Push bodies are encrypted
    /// and not noted).
    pub key: String,
    /// The `ferry.seq` the push covers.
    pub seq: u64,
    pub at: Instant,
}

/// A request that broke the provider's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub provider: Provider,
    pub path: String,
    /// What was wrong (the reason the sim answered with, and details).
    pub what: String,
}

/// The public halves of the keys [`Sim::config`] wrote, to check signatures with.
#[derive(Default)]
struct Keys {
    apns: Option<Vec<u8>>,
    fcm: Option<Vec<u8>>,
    vapid: Option<Vec<u8>>,
}

/// What the handlers share.
pub(crate) struct State {
    /// `https://127.0.0.1:<port>`: the Web Push audience and the token URL's base.
    origin: String,
    keys: Mutex<Keys>,
    script: Mutex<HashMap<String, Script>>,
    default: Mutex<Script>,
    recording: AtomicBool,
    requests: Mutex<Vec<Request>>,
    /// Accepted APNs and FCM pushes since the last [`Sim::take_arrivals`].
    arrivals: Mutex<Vec<Arrival>>,
    violations: Mutex<Vec<Violation>>,
    /// Requests per provider (index: [`slot`]), recorded or not.
    counts: [AtomicU64; 3],
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Distinct JWTs seen per provider (APNs provider tokens, OAuth2 assertions, VAPID
    /// JWTs), each verified once.
    jwts: Mutex<[HashSet<String>; 3]>,
    /// APNs: JWTs the test declared expired ([`Sim::expire_credentials`]).
    apns_expired: Mutex<HashSet<String>>,
    /// FCM access tokens issued: token → still valid.
    fcm_tokens: Mutex<HashMap<String, bool>>,
    token_seq: AtomicU64,
}

fn slot(p: Provider) -> usize {
    match p {
        Provider::Apns => 0,
        Provider::Fcm => 1,
        Provider::WebPush | Provider::UnifiedPush => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a handler decided: the answer, and a violation to record when the request
/// broke the contract.
pub(crate) struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    violation: Option<String>,
    /// The key to record the request under.
    key: String,
    sandbox: bool,
    /// Wait this long before answering (the script's delay).
    delay: Duration,
}

impl Answer {
    fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
            violation: None,
            key: String::new(),
            sandbox: false,
            delay: Duration::ZERO,
        }
    }

    fn violation(status: u16, body: impl Into<String>, what: impl Into<String>) -> Answer {
        let mut a = Answer::new(status, body);
        a.violation = Some(what.into());
        a
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// What a handler sees of a request.
pub(crate) struct Incoming<'a> {
    pub path: &'a str,
    pub version: hyper::Version,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
}

impl Incoming<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl State {
    fn script_for(&self, key: &str) -> Script {
        lock(&self.script)
            .get(key)
            .copied()
            .unwrap_or_else(|| *lock(&self.default))
    }

    /// Whether `jwt` was verified before: each distinct JWT is verified once, then
    /// remembered (and counted).
    fn seen_jwt(&self, provider: Provider, jwt: &str) -> bool {
        lock(&self.jwts)[slot(provider)].contains(jwt)
    }

    fn remember_jwt(&self, provider: Provider, jwt: &str) {
        lock(&self.jwts)[slot(provider)].insert(jwt.to_owned());
    }
}

/// The running simulator; stops when dropped.
pub struct Sim {
    url: String,
    ca_pem: String,
    state: Arc<State>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Sim {
    /// Starts the server on 127.0.0.1, a free port, in the current tokio runtime.
    pub async fn start() -> Result<Sim, String> {
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry push sim CA");
        let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(|e| e.to_string())?
                .signed_by(&leaf_key, &ca, &ca_key)
                .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        let state = Arc::new(State {
            origin: url.clone(),
            keys: Mutex::new(Keys::default()),
            script: Mutex::new(HashMap::new()),
            default: Mutex::new(Reply::Accept.into()),
            recording: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            counts: Default::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            jwts: Mutex::new(Default::default()),
            apns_expired: Mutex::new(HashSet::new()),
            fcm_tokens: Mutex::new(HashMap::new()),
            token_seq: AtomicU64::new(0),
        });
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(accept_loop(listener, acceptor, state.clone(), stop));
        Ok(Sim {
            url,
            ca_pem: ca.pem(),
            state,
            shutdown,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate (PEM) that signed the server's certificate: what
    /// `PushConfig.ca_file` must hold.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A Web Push endpoint on the sim: `<url>/wp/<id>`.
    pub fn web_push_endpoint(&self, id: &str) -> String {
        format!("{}/wp/{id}", self.url)
    }

    /// Writes new keys (an APNs `.p8`, a service-account JSON with the fixed test RSA
    /// key, a VAPID key) and the CA into `dir`, tells the sim their public halves, and
    /// returns a configuration with every provider pointed at the sim (concurrency 64,
    /// timeout 10 s). A second call replaces the keys.
    pub fn config(&self, dir: &Path) -> Result<PushConfig, String> {
        let rng = SystemRandom::new();
        let write = |name: &str, text: &str| -> Result<std::path::PathBuf, String> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let p256 = || -> Result<(String, Vec<u8>), String> {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|_| "cannot make a P-256 key".to_owned())?;
            let pair = EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                doc.as_ref(),
                &rng,
            )
            .map_err(|e| e.to_string())?;
            Ok((
                pem("PRIVATE KEY", doc.as_ref()),
                pair.public_key().as_ref().to_vec(),
            ))
        };
        let (apns_pem, apns_pub) = p256()?;
        let (vapid_pem, vapid_pub) = p256()?;
        let rsa_der = crate::keys::pkcs8_from_pem(TEST_RSA_KEY, "test RSA key").map_err(|e| e.0)?;
        let rsa = RsaKeyPair::from_pkcs8(&rsa_der).map_err(|e| e.to_string())?;
        let sa = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "sim",
            "private_key": TEST_RSA_KEY,
            "client_email": FCM_CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": format!("{}/token", self.url),
        });
        let key_file = write(&format!("AuthKey_{APNS_KEY_ID}.p8"), &apns_pem)?;
        let service_account_file = write("service-account.json", &sa.to_string())?;
        let vapid_private_key_file = write("vapid.pem", &vapid_pem)?;
        let ca_file = write("push-ca.pem", &self.ca_pem)?;
        {
            let mut k = lock(&self.state.keys);
            k.apns = Some(apns_pub);
            k.fcm = Some(rsa.public().as_ref().to_vec());
            k.vapid = Some(vapid_pub);
        }
        Ok(PushConfig {
            apns: Some(ApnsConfig {
                key_file,
                key_id: APNS_KEY_ID.into(),
                team_id: APNS_TEAM_ID.into(),
                url: self.url.clone(),
                sandbox_url: format!("{}/sandbox", self.url),
                concurrency: 64,
            }),
            fcm: Some(FcmConfig {
                service_account_file,
                url: self.url.clone(),
                token_url: None,
                concurrency: 64,
            }),
            webpush: Some(WebPushConfig {
                vapid_private_key_file,
                subject: VAPID_SUBJECT.into(),
                concurrency: 64,
            }),
            ca_file: Some(ca_file),
            timeout_ms: 10_000,
        })
    }

    /// The VAPID public key of the last [`Sim::config`], base64url.
    pub fn vapid_public_key(&self) -> Option<String> {
        lock(&self.state.keys)
            .vapid
            .as_deref()
            .map(crate::keys::b64url)
    }

    /// How to answer requests for `key` (an APNs device token, an FCM registration
    /// token, a Web Push endpoint id).
    pub fn script(&self, key: &str, script: impl Into<Script>) {
        lock(&self.state.script).insert(key.to_owned(), script.into());
    }

    /// How to answer requests for keys without a script of their own.
    pub fn script_default(&self, script: impl Into<Script>) {
        *lock(&self.state.default) = script.into();
    }

    /// Counting mode (`false`): keep counters only, record no request (bench load).
    /// Violations are always recorded.
    pub fn set_recording(&self, on: bool) {
        self.state.recording.store(on, Ordering::Relaxed);
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state.requests).clone()
    }

    /// The recorded requests of one provider (`WebPush` for every `/wp/` endpoint).
    pub fn requests_of(&self, provider: Provider) -> Vec<Request> {
        let s = slot(provider);
        lock(&self.state.requests)
            .iter()
            .filter(|r| slot(r.provider) == s)
            .cloned()
            .collect()
    }

    /// Every contract violation so far.
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.state.violations).clone()
    }

    /// Requests received for `provider`, recorded or not (FCM: token requests too).
    /// The accepted APNs and FCM pushes noted since the last call (with the device and
    /// the `ferry.seq` each covers), oldest first.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *lock(&self.state.arrivals))
    }

    pub fn count(&self, provider: Provider) -> u64 {
        self.state.counts[slot(provider)].load(Ordering::Relaxed)
    }

    /// Distinct JWTs seen: APNs provider tokens, FCM OAuth2 assertions (RS256 is
    /// deterministic: two made in the same second are one), VAPID JWTs.
    pub fn distinct_jwts(&self, provider: Provider) -> usize {
        lock(&self.state.jwts)[slot(provider)].len()
    }

    /// The most requests that were in the server at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::Relaxed)
    }

    /// Declares every credential issued or seen so far expired: the next request with
    /// an APNs JWT seen before is answered 403 `ExpiredProviderToken`, one with an FCM
    /// access token issued before 401 `UNAUTHENTICATED` (as the providers do once their
    /// clock passes a token's life).
    pub fn expire_credentials(&self) {
        let seen: Vec<String> = lock(&self.state.jwts)[0].iter().cloned().collect();
        lock(&self.state.apns_expired).extend(seen);
        for valid in lock(&self.state.fcm_tokens).values_mut() {
            *valid = false;
        }
    }

    /// Forgets requests, violations and counters (not the keys, scripts or JWTs seen).
    pub fn clear(&self) {
        lock(&self.state.requests).clear();
        lock(&self.state.violations).clear();
        for c in &self.state.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.state.max_in_flight.store(0, Ordering::Relaxed);
    }
}

/// A PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A valid Web Push subscription key pair whose private half is thrown away (p256dh,
/// auth, both base64url): for pushes nobody decrypts (a bench, outcome tests).
pub fn throwaway_subscription() -> (String, String) {
    use ring::rand::SecureRandom;
    let rng = SystemRandom::new();
    let key = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng);
    let public = key
        .and_then(|k| k.compute_public_key())
        .map(|p| p.as_ref().to_vec())
        .unwrap_or_default();
    let mut auth = [0u8; 16];
    let _ = rng.fill(&mut auth);
    (crate::keys::b64url(&public), crate::keys::b64url(&auth))
}

/// The `ferry.seq` of an APNs body (`ferry` beside `aps`) or an FCM one (`data.ferry`, a
/// JSON string).
fn pushed_seq(provider: Provider, body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ferry = match provider {
        Provider::Apns => v.get("ferry")?.clone(),
        _ => serde_json::from_str(v.pointer("/message/data/ferry")?.as_str()?).ok()?,
    };
    ferry.get("seq")?.as_u64()
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // APNs ties a provider token to the connection: the newest one on this
            // connection and when it was first seen (a new one within 20 minutes is
            // refused).
            let conn: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let conn = conn.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, &conn, req).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Counts the request in flight for as long as it lives.
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: &State,
    conn: &Mutex<Option<(String, Instant)>>,
    req: HttpRequest<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let n = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let _guard = InFlight(state);
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let inc = Incoming {
        path: &path,
        version: parts.version,
        headers: &parts.headers,
        body: &body,
    };
    let (provider, answer) = if parts.method != hyper::Method::POST {
        (Provider::WebPush, Answer::new(405, "POST only"))
    } else if let Some(rest) = path.strip_prefix("/sandbox/3/device/") {
        (Provider::Apns, apns::handle(state, conn, &inc, rest, true))
    } else if let Some(rest) = path.strip_prefix("/3/device/") {
        (Provider::Apns, apns::handle(state, conn, &inc, rest, false))
    } else if path == "/token" {
        (Provider::Fcm, fcm::token(state, &inc))
    } else if path.starts_with("/v1/projects/") && path.ends_with("/messages:send") {
        (Provider::Fcm, fcm::send(state, &inc))
    } else if let Some(id) = path.strip_prefix("/wp/") {
        (Provider::WebPush, webpush::handle(state, &inc, id))
    } else {
        (Provider::WebPush, Answer::new(404, "no such endpoint"))
    };
    state.counts[slot(provider)].fetch_add(1, Ordering::Relaxed);
    if (200..300).contains(&answer.status) && path != "/token" && provider != Provider::WebPush {
        if let Some(seq) = pushed_seq(provider, &body) {
            lock(&state.arrivals).push(Arrival {
                provider,
                key: answer.key.clone(),
                seq,
                at,
            });
        }
    }
    if let Some(what) = &answer.violation {
        lock(&state.violations).push(Violation {
            provider,
            path: path.clone(),
            what: what.clone(),
        });
    }
    if state.recording.load(Ordering::Relaxed) {
        lock(&state.requests).push(Request {
            provider,
            path: path.clone(),
            key: answer.key.clone(),
            sandbox: answer.sandbox,
            version: format!("{:?}", parts.version),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            at,
            status: answer.status,
        });
    }
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut resp = Response::builder().status(answer.status);
    for (n, v) in &answer.headers {
        resp = resp.header(*n, v.as_str());
    }
    resp.body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
