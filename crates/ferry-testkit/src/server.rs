//! An in-process server for tests and the SDK clients that talk to it: a
//! [`ferry::Server`] on port 0 with a temporary data folder, cheap password hashing and
//! short timeouts; users, client configs, and waiting (bounded) for client events.

use std::time::Duration;

use ferry::{Config, Server};
use ferry_client::{Account, Client, ClientConfig, ClientError, Event, ShortLink};
use ferry_proto::v1;
use tokio::sync::mpsc;

pub const PASSWORD: &str = "password-1";

/// A config for tests: a temp data dir, cheap password hashing, short timeouts.
pub fn test_config(data: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: data.to_path_buf(),
        listen: vec!["127.0.0.1:0".into()],
        ..Default::default()
    };
    cfg.logic.password.memory_kib = 64;
    cfg.logic.password.iterations = 1;
    // Most tests message between strangers; the friends-only default has its own tests.
    cfg.logic.open_messaging = true;
    cfg.gateway.login_timeout_ms = 2_000;
    cfg.gateway.heartbeat_timeout_ms = 5_000;
    cfg.gateway.shutdown_grace_ms = 1_000;
    // Every test client comes from 127.0.0.1: the per-user and per-IP limits have their
    // own tests (crates/ferry/tests/it/limits.rs) and stay out of the others' way.
    cfg.logic.limits = ferry_logic::LimitsConfig::unlimited();
    cfg.gateway.max_connections_per_ip = 0;
    // Raw-frame and plain short-link helpers stay plaintext (explicitly allowed here);
    // SDK clients still encrypt (they trust the test server's key on first use), and
    // tests/it/secure.rs runs servers that refuse plaintext.
    cfg.gateway.allow_plaintext = true;
    cfg
}

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let server = Server::bind(cfg).await.unwrap();
        TestServer { server, dir }
    }

    pub fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    pub async fn register(&self, users: &[&str]) {
        let short = ShortLink::new(&self.addr());
        for u in users {
            short.register(u, PASSWORD).await.unwrap();
        }
    }
}

pub fn client_config(server: &str, user: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, user, PASSWORD);
    cfg.heartbeat = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    // A fixed heartbeat (the smart heartbeat has its own tests in smart.rs), a dead link
    // noticed within 1.5 s, and a quick way back to TCP after a fallback.
    cfg.smart.heartbeat_max = cfg.heartbeat;
    cfg.smart.answer_timeout = Duration::from_millis(1_500);
    cfg.smart.tcp_retry = Duration::from_secs(1);
    cfg
}

pub async fn connect(server: &str, user: &str) -> (Client, mpsc::Receiver<Event>) {
    Client::connect(client_config(server, user)).await.unwrap()
}

/// Waits for `n` message entries not sent by `me`, failing after `secs`.
pub async fn recv_messages(
    events: &mut mpsc::Receiver<Event>,
    me: &str,
    n: usize,
    secs: u64,
) -> Vec<(u64, v1::Message)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < n {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {n} messages", got.len()))
            .expect("event stream ended");
        if let Event::Entry(e) = ev {
            if let Some(v1::entry::Kind::Message(m)) = e.kind {
                if m.from != me {
                    got.push((e.seq, m));
                }
            }
        }
    }
    got
}

/// Asserts nothing more arrives for a while.
pub async fn assert_quiet(events: &mut mpsc::Receiver<Event>, me: &str, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Event::Entry(e) = &ev {
            if let Some(v1::entry::Kind::Message(m)) = &e.kind {
                assert_eq!(m.from, me, "unexpected extra message {m:?}");
            }
        }
    }
}

/// A token for `user` on a fresh device.
pub async fn token(addr: &str, user: &str, device: &str) -> String {
    ShortLink::new(addr)
        .auth(user, PASSWORD, device)
        .await
        .unwrap()
        .token
}

/// Waits (up to `secs`) for the first event `pick` accepts, skipping the others.
pub async fn event_where<T>(
    events: &mut mpsc::Receiver<Event>,
    secs: u64,
    pick: impl Fn(Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(ev) {
                    return t;
                }
            }
            Ok(None) => panic!("the event stream ended"),
            Err(_) => panic!("no matching event within {secs} s"),
        }
    }
}

/// Waits (up to `secs`) until `ok` holds, looking every 20 ms; panics naming `what`.
pub async fn eventually(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The short-link services of `user` (signs in with the test password). A sign-in
/// answered UNAVAILABLE ("try again": in a cluster, a logic node just started or just
/// killed) is tried again for up to 5 s, as a client would.
pub async fn account(addr: &str, user: &str) -> Account {
    let mut tries = 0;
    loop {
        match Account::open(client_config(addr, user)).await {
            Err(e) if e.code() == Some(v1::ErrorCode::Unavailable) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r.unwrap(),
        }
    }
}

/// The server's refusal code of a failed call.
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> v1::ErrorCode {
    r.unwrap_err().code().expect("a server error")
}

/// Deterministic noise (xorshift), which no codec compresses.
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A PNG of `w`×`h` noise pixels.
pub fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_raw(w, h, noise((w * h * 3) as usize, 0x9e37_79b9)).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Uploads `data` until at least `percent` of it is acknowledged, then drops the upload
/// (as a cut connection or a killed app would) and lets requests already on the wire land.
pub async fn upload_part(
    acc: &Account,
    upload: &v1::MediaCreateResp,
    data: bytes::Bytes,
    percent: u64,
) {
    let size = data.len() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = {
        let (acc, upload) = (acc.clone(), upload.clone());
        tokio::spawn(async move {
            acc.upload_media(&upload, data, &move |done, _| {
                let _ = tx.send(done);
            })
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no progress")
            .expect("the upload ended early");
        if done * 100 >= size * percent {
            break;
        }
    }
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A server that refuses plaintext (the production default).
pub async fn strict_server() -> TestServer {
    TestServer::with(|c| {
        c.gateway.allow_plaintext = false;
        c.gateway.lp_poll_hold_ms = 2_000;
    })
    .await
}

/// The server's public key.
pub fn key_of(ts: &TestServer) -> [u8; 32] {
    ferry_client::Security::pinned_hex(&ts.server.gateway.public_key_hex())
        .unwrap()
        .key()
        .unwrap()
}

/// A client that pins the server's key.
pub fn pinned(ts: &TestServer, user: &str) -> ClientConfig {
    let mut cfg = client_config(&ts.addr(), user);
    cfg.security = ferry_client::Security::Pinned(key_of(ts));
    cfg
}

/// Registers `users` over sealed short-link requests.
pub async fn register_sealed(ts: &TestServer, users: &[&str]) {
    let short = ShortLink::sealed(&ts.addr(), Some(key_of(ts)));
    for u in users {
        short.register(u, PASSWORD).await.unwrap();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The test server's admin token (generated into its data folder at start).
pub fn admin_token(ts: &TestServer) -> String {
    std::fs::read_to_string(ts.dir.path().join("admin-token"))
        .expect("the server wrote its admin token")
        .trim()
        .to_owned()
}

/// Calls the JSON APIs (`METHOD /v1/<path>`, path after `/v1/`) with a bearer token
/// (when given) and a JSON body (when given): the status and the answer's JSON (`Null`
/// when the body is empty or not JSON).
pub async fn api_call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let a = api_raw(addr, method, path, token, body).await;
    let json = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, json)
}

/// [`api_call`], answering the whole HTTP answer (headers, raw body).
pub async fn api_raw(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> crate::raw::HttpAnswer {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Ferry-Actor: test\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    crate::raw::http_request(addr, req.as_bytes()).await
}
