//! Monitoring end to end: `/metrics` is valid Prometheus text whose counters match what
//! the test did; the admin token guards the data, the event stream and `/metrics`; and
//! a real headless Chromium shows the dashboard's numbers moving while a client sends
//! messages (and shows nothing without the token).
//!
//! Every server in one process shares the process's metrics recorder (as every role in
//! one process shares one `/metrics`), so these tests run one at a time and compare
//! counters before and after — and they are a test binary of their own, not a module of
//! `tests/it` (where every other test's servers would move the same counters).
//!
//! The browser test needs Debian's `chromium` (`apt-get install chromium`; `.ci/run`
//! installs it). Without it the test says so and skips, unless
//! `FERRY_REQUIRE_CHROMIUM=1` (set by `.ci/run` once chromium is installed) makes that
//! a failure. `FERRY_DASHBOARD_SCREENSHOT=docs/dashboard.png` saves what the browser
//! drew (and `…-phone.png` beside it for the phone-sized view).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_testkit::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- a small HTTP/1.1 GET ----------------------------------------------------------------

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// GETs `path`; with `until`, stops reading once the body contains it (for streams).
fn get(addr: &str, path: &str, token: Option<&str>, until: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = s.read(&mut buf).expect("reading the answer");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(u) = until {
            if String::from_utf8_lossy(&raw).contains(u) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "answer to {path} never finished");
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Undoes chunked transfer encoding, as far as the text goes.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            out.push_str(&rest[..rest.len().min(n)]);
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

// ---- a strict Prometheus text checker, independent of the server's own parser --------

/// Series → value, after checking the page the way Prometheus' parser would: every
/// sample belongs to a family declared by `# TYPE` before it, names and labels are well
/// formed, no series repeats, counters end in `_total`, and every histogram has
/// non-decreasing buckets ending in `le="+Inf"` equal to its `_count`, and a `_sum`.
fn check_prometheus(text: &str) -> HashMap<String, f64> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut series: HashMap<String, f64> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{}", at()));
            assert!(name_ok(name), "{}", at());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{}",
                at()
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {}",
                at()
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# "),
                "{}",
                at()
            );
            continue;
        }
        // name{labels} value
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {}", at())),
        };
        let name = key.split('{').next().unwrap();
        assert!(name_ok(name), "bad name: {}", at());
        if let Some(labels) = key.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {}",
                    at()
                );
                let inner = &labels[1..labels.len() - 1];
                // k="v" pairs; values here never contain commas or quotes.
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{}", at()));
                    assert!(name_ok(k) && !k.contains(':'), "bad label name: {}", at());
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "unquoted label value: {}",
                        at()
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample before its TYPE: {}", at()));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {}", at());
            assert!(value >= 0.0, "negative counter: {}", at());
        }
        assert!(
            series.insert(key.to_owned(), value).is_none(),
            "series twice: {}",
            at()
        );
        order.push(key.to_owned());
    }
    // Histograms: buckets per label set.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let bucket_prefix = format!("{family}_bucket{{");
        let mut sets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for key in order.iter().filter(|k| k.starts_with(&bucket_prefix)) {
            let labels = &key[bucket_prefix.len()..key.len() - 1];
            let mut rest = Vec::new();
            let mut le = None;
            for pair in labels.split(',') {
                match pair.strip_prefix("le=") {
                    Some(v) => {
                        let v = v.trim_matches('"');
                        le = Some(if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse::<f64>().unwrap()
                        })
                    }
                    None => rest.push(pair),
                }
            }
            sets.entry(rest.join(","))
                .or_default()
                .push((le.expect("bucket without le"), series[key]));
        }
        assert!(!sets.is_empty(), "histogram {family} has no buckets");
        for (labels, mut buckets) in sets {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{labels}}}: buckets decrease"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{family}{{{labels}}}: no +Inf bucket");
            let suffix = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let count = series
                .get(&format!("{family}_count{suffix}"))
                .unwrap_or_else(|| panic!("{family}{suffix}: no _count"));
            assert_eq!(*count, last.1, "{family}{suffix}: +Inf bucket != _count");
            assert!(
                series.contains_key(&format!("{family}_sum{suffix}")),
                "{family}{suffix}: no _sum"
            );
        }
    }
    series
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    series.get(key).copied().unwrap_or(0.0)
}

fn scrape(addr: &str, token: &str) -> HashMap<String, f64> {
    let a = get(addr, "/metrics", Some(token), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        a.headers
    );
    check_prometheus(&a.body)
}

#[test]
fn metrics_parse_and_count_what_the_test_did() {
    let _one = serial();
    let rt = runtime();
    rt.block_on(async {
        let srv = TestServer::start().await;
        let addr = srv.addr();
        let token = srv.server.monitor.token().to_owned();
        srv.register(&["alice", "bob"]).await;

        let m = |k: &'static str| {
            let (addr, token) = (addr.clone(), token.clone());
            async move {
                let s = tokio::task::spawn_blocking(move || scrape(&addr, &token))
                    .await
                    .unwrap();
                (k, s)
            }
        };
        let (_, s0) = m("before").await;
        let (alice, _a_ev) = connect(&addr, "alice").await;
        let (bob, mut bob_ev) = connect(&addr, "bob").await;
        // The gateway counts a link just after it answers the login: give it a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let s1 = loop {
            let (_, s) = m("logged in").await;
            if value(&s, "ferry_gateway_links{gateway=\"gw-1\"}") == 2.0 {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "two links never showed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            value(&s1, "ferry_logins_total") - value(&s0, "ferry_logins_total"),
            2.0,
            "two clients logged in"
        );
        assert!(value(&s1, "ferry_gateway_connections{gateway=\"gw-1\"}") >= 2.0);

        const N: usize = 25;
        for i in 0..N {
            alice.send_text("bob", &format!("m{i}")).await.unwrap();
        }
        recv_messages(&mut bob_ev, "bob", N, 20).await;
        let err = alice.send_text("nobody", "hello?").await;
        assert!(err.is_err(), "sending to an unknown user must fail");
        let (_, s2) = m("after").await;

        let d = |k: &str| value(&s2, k) - value(&s1, k);
        assert_eq!(d("ferry_messages_in_total"), N as f64);
        assert_eq!(
            d("ferry_request_duration_seconds_count{cmd=\"send\"}"),
            N as f64 + 1.0,
            "every SEND is timed, the refused one too"
        );
        // Bob was online for each message, so each was pushed to his gateway.
        assert_eq!(d("ferry_delivery_seconds_count"), N as f64);
        assert_eq!(
            d("ferry_errors_total{cmd=\"send\",code=\"UNKNOWN_USER\"}"),
            1.0
        );
        // Each message notifies bob; alice's own entry rides in her SendAck (the SDK
        // logs in with echo_in_ack), so her only link gets no notify of it.
        assert_eq!(d("ferry_notifies_total"), N as f64);
        assert_eq!(d("ferry_entries_out_total{via=\"ack\"}"), N as f64);
        assert!(d("ferry_store_batch_size_count") >= 1.0);
        assert!(
            d("ferry_store_batch_size_sum") >= N as f64,
            "every stored message went through a group commit"
        );
        assert!(value(&s2, "ferry_store_file_bytes{file=\"ferry.db\"}") > 0.0);
        assert!(d("ferry_gateway_frames_in_total{gateway=\"gw-1\"}") >= N as f64);
        alice.close().await;
        bob.close().await;
        srv.server.shutdown().await;
    });
}

#[test]
fn the_admin_token_guards_data_events_and_metrics() {
    let _one = serial();
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        let server = ferry::Server::bind(cfg.clone()).await.unwrap();
        let addr = server.addr().to_string();
        let token = server.monitor.token().to_owned();
        assert!(token.len() >= 32);
        let stored = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
        assert_eq!(
            stored.trim(),
            token,
            "the generated token is kept in the data dir"
        );

        let (a, t) = (addr.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            for path in ["/api/admin/summary", "/api/admin/events", "/metrics"] {
                let none = get(&a, path, None, None);
                assert_eq!(none.status, 401, "{path} without a token");
                assert!(
                    !none.body.contains("ferry_"),
                    "{path} leaked data: {}",
                    none.body
                );
                let wrong = get(&a, path, Some("not-the-token-at-all"), None);
                assert_eq!(wrong.status, 401, "{path} with a wrong token");
                let almost = get(&a, path, Some(&t[..t.len() - 1]), None);
                assert_eq!(almost.status, 401, "{path} with a prefix of the token");
            }
            // The page itself loads without a token; it holds no numbers.
            let page = get(&a, "/dashboard", None, None);
            assert_eq!(page.status, 200);
            assert!(page.headers["content-type"].starts_with("text/html"));
            assert!(page.headers["content-security-policy"].contains("script-src 'self'"));
            assert!(page.body.contains("data-metric=\"messages_total\">—<"));
            let js = get(&a, "/dashboard/app.js", None, None);
            assert_eq!(js.status, 200);

            let ok = get(&a, "/api/admin/summary", Some(&t), None);
            assert_eq!(ok.status, 200);
            let s: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
            assert_eq!(s["nodes"][0]["id"], "gw-1");
            assert_eq!(s["regions"], serde_json::json!([]), "no invented regions");
            let ev = get(&a, "/api/admin/events", Some(&t), Some("\n\n"));
            assert_eq!(ev.status, 200);
            assert!(ev.headers["content-type"].starts_with("text/event-stream"));
            assert!(ev.body.contains("event: summary"), "{}", ev.body);
            assert_eq!(get(&a, "/metrics", Some(&t), None).status, 200);
        })
        .await
        .unwrap();
        server.shutdown().await;

        // Same data dir: same token. A configured token wins.
        let again = ferry::Server::bind(cfg.clone()).await.unwrap();
        assert_eq!(again.monitor.token(), token);
        again.shutdown().await;
        let mut configured = cfg.clone();
        configured.admin_token = "an-operator-chosen-token".into();
        let third = ferry::Server::bind(configured).await.unwrap();
        assert_eq!(third.monitor.token(), "an-operator-chosen-token");
        let a = third.addr().to_string();
        tokio::task::spawn_blocking(move || {
            assert_eq!(
                get(&a, "/api/admin/summary", Some(&token), None).status,
                401
            );
            let ok = get(
                &a,
                "/api/admin/summary",
                Some("an-operator-chosen-token"),
                None,
            );
            assert_eq!(ok.status, 200);
        })
        .await
        .unwrap();
        third.shutdown().await;
    });
}

#[test]
fn the_grafana_dashboard_asks_for_metrics_that_exist() {
    let _one = serial();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/ferry.json"
    ))
    .unwrap();
    let board: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&board, &mut exprs);
    assert!(exprs.len() >= 10, "the board has its panels");

    // Every ferry_* name the board queries is on a live /metrics page after some traffic
    // (endpoint reports excepted: that feature has not landed).
    let rt = runtime();
    let names: HashSet<String> = rt.block_on(async {
        let srv = TestServer::start().await;
        srv.register(&["carol", "dave"]).await;
        let (carol, _c) = connect(&srv.addr(), "carol").await;
        let (dave, mut d) = connect(&srv.addr(), "dave").await;
        carol.send_text("dave", "hi").await.unwrap();
        recv_messages(&mut d, "dave", 1, 10).await;
        let _ = carol.send_text("nobody", "x").await;
        let short = ferry_client::ShortLink::new(&srv.addr());
        short.newsync("not-a-token", 0, 10).await.unwrap_err();
        let t = token(&srv.addr(), "dave", "dave-laptop").await;
        short.newsync(&t, 0, 10).await.unwrap();
        let (addr, token) = (srv.addr(), srv.server.monitor.token().to_owned());
        let s = tokio::task::spawn_blocking(move || scrape(&addr, &token))
            .await
            .unwrap();
        carol.close().await;
        dave.close().await;
        srv.server.shutdown().await;
        s.keys()
            .map(|k| k.split('{').next().unwrap().to_owned())
            .collect()
    });
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("ferry_") && !word.starts_with("ferry_endpoint_") {
                assert!(names.contains(word), "{word} (in {e:?}) is not on /metrics");
            }
        }
    }
}

// ---- headless Chromium over the DevTools protocol ----------------------------------------

fn find_chromium() -> Option<String> {
    if let Ok(p) = std::env::var("FERRY_CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| name.to_string())
    })
}

/// A browser process, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium and returns it with its DevTools websocket address.
fn launch(bin: &str) -> (Browser, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let browser = Browser {
        child,
        _profile: profile,
    };
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not open its DevTools port within 30 s");
    (browser, url)
}

/// The DevTools protocol over a websocket, spoken by hand (text frames, masked).
struct Cdp {
    ws: TcpStream,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let rest = url.strip_prefix("ws://").expect("a ws:// url");
        let (host, path) = rest.split_once('/').unwrap();
        let mut ws = TcpStream::connect(host).unwrap();
        ws.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            ws,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: ZmVycnktZGFzaGJvYXJkIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ws.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "no websocket: {head}");
        Cdp {
            ws,
            next_id: 1,
            session: None,
        }
    }

    fn send_frame(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x1f, 0x2e, 0x3d, 0x4c];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).unwrap();
    }

    fn read_message(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.ws.read_exact(&mut h).expect("reading from chromium");
            let fin = h[0] & 0x80 != 0;
            let op = h[0] & 0x0f;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.ws.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.ws.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.ws.read_exact(&mut payload).unwrap();
            match op {
                0x8 => panic!("chromium closed the DevTools connection"),
                0x9 | 0xA => continue, // ping / pong
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Sends a command (to the attached page, if any) and waits for its answer.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = serde_json::Value::String(s.clone());
        }
        self.send_frame(&msg.to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer");
            let v: serde_json::Value = serde_json::from_str(&self.read_message()).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    fn open_page(&mut self) {
        let target = self.call(
            "Target.createTarget",
            serde_json::json!({ "url": "about:blank" }),
        );
        let attached = self.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile
            }),
        );
    }

    fn screenshot(&mut self, path: &str) {
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("dashboard screenshot written to {path}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| acc << 6 | x) << (6 * (4 - v.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..v.len()]);
    }
    out
}

/// What the page shows, read from the DOM.
#[derive(Debug)]
struct Shown {
    state: String,
    updates: u64,
    messages_total: String,
    messages_per_s: String,
    connections: String,
    delivery_p50: String,
    login_visible: bool,
    board_visible: bool,
}

const READ_PAGE: &str = r##"JSON.stringify((() => {
  // While a navigation is under way the old (blank) page may still be there.
  const m = (k) => (document.querySelector('[data-metric="' + k + '"]') || { textContent: "" }).textContent;
  const visible = (sel) => { const e = document.querySelector(sel); return !!e && e.offsetParent !== null; };
  const data = (document.body && document.body.dataset) || {};
  return { state: data.state || "loading", updates: +(data.updates || 0),
           messages_total: m("messages_total"), messages_per_s: m("messages_per_s"),
           connections: m("connections"), delivery_p50: m("delivery_p50"),
           login_visible: visible("#login-form"), board_visible: visible("#board") };
})())"##;

fn read_page(cdp: &mut Cdp) -> Shown {
    let v: serde_json::Value = serde_json::from_str(cdp.eval(READ_PAGE).as_str().unwrap()).unwrap();
    Shown {
        state: v["state"].as_str().unwrap().to_owned(),
        updates: v["updates"].as_u64().unwrap(),
        messages_total: v["messages_total"].as_str().unwrap().to_owned(),
        messages_per_s: v["messages_per_s"].as_str().unwrap().to_owned(),
        connections: v["connections"].as_str().unwrap().to_owned(),
        delivery_p50: v["delivery_p50"].as_str().unwrap().to_owned(),
        login_visible: v["login_visible"].as_bool().unwrap(),
        board_visible: v["board_visible"].as_bool().unwrap(),
    }
}

fn number(text: &str) -> Option<f64> {
    text.replace(',', "").parse().ok()
}

/// Polls the page until `done` holds, failing after `secs`.
fn wait_for(cdp: &mut Cdp, secs: u64, what: &str, done: impl Fn(&Shown) -> bool) -> Shown {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let shown = read_page(cdp);
        if done(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}; it shows {shown:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_in_headless_chromium_shows_the_numbers_move() {
    let Some(bin) = find_chromium() else {
        let msg = "chromium is not installed (Debian: apt-get install chromium): \
                   the headless dashboard test cannot run";
        if std::env::var("FERRY_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("{msg}, but FERRY_REQUIRE_CHROMIUM=1");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let _one = serial();
    let rt = runtime();
    let (srv, alice, bob, bob_ev) = rt.block_on(async {
        let srv = TestServer::start().await;
        srv.register(&["alice", "bob"]).await;
        let (alice, _a) = connect(&srv.addr(), "alice").await;
        let (bob, bob_ev) = connect(&srv.addr(), "bob").await;
        (srv, alice, bob, bob_ev)
    });
    let addr = srv.addr();
    let token = srv.server.monitor.token().to_owned();

    let (_browser, ws) = launch(&bin);
    let mut cdp = Cdp::connect(&ws);
    cdp.open_page();
    cdp.viewport(1280, 1000, false);
    cdp.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://{addr}/dashboard#token={token}") }),
    );
    // Two clients are connected (the browser's own HTTP connections count too).
    let before = wait_for(&mut cdp, 20, "live data with two clients", |s| {
        s.state == "live"
            && number(&s.messages_total).is_some()
            && number(&s.connections).is_some_and(|c| c >= 2.0)
    });
    assert!(before.board_visible && !before.login_visible, "{before:?}");
    let start_total = number(&before.messages_total).unwrap();
    // The token left the address bar (it is in localStorage now).
    assert_eq!(cdp.eval("location.hash"), "");

    // A client sends while the page watches.
    const N: usize = 80;
    let sender = rt.spawn(async move {
        let mut bob_ev = bob_ev;
        for i in 0..N {
            alice.send_text("bob", &format!("live {i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        recv_messages(&mut bob_ev, "bob", N, 20).await;
        alice
    });
    let moving = wait_for(&mut cdp, 20, "a message rate", |s| {
        number(&s.messages_per_s).is_some_and(|r| r > 0.0)
    });
    let after = wait_for(&mut cdp, 30, "every message counted", |s| {
        number(&s.messages_total).is_some_and(|t| t >= start_total + N as f64)
    });
    assert!(
        after.updates > before.updates + 2,
        "updates arrive live, without reloading: {before:?} → {after:?}"
    );
    assert!(
        number(&after.delivery_p50).is_some(),
        "delivery latency is shown: {after:?}"
    );
    let alice = rt.block_on(sender).unwrap();
    eprintln!("page before: {before:?}\nwhile sending: {moving:?}\nafter: {after:?}");
    // The charts have lines in them.
    let paths = cdp.eval("document.querySelectorAll('#chart-rates path').length");
    assert!(paths.as_u64().unwrap() >= 1, "the rate chart is drawn");
    // The push panel is there and says that no device has registered a push target.
    let push_empty = cdp.eval(
        "(() => { const e = document.querySelector('#push-empty'); \
         return !!e && e.offsetParent !== null && e.textContent.startsWith('No push targets'); })()",
    );
    assert_eq!(
        push_empty,
        serde_json::json!(true),
        "the push panel's empty state"
    );

    let shot = std::env::var("FERRY_DASHBOARD_SCREENSHOT").ok();
    if let Some(path) = &shot {
        cdp.screenshot(path);
    }
    // Readable on a phone: nothing wider than the screen.
    cdp.viewport(390, 844, true);
    std::thread::sleep(Duration::from_millis(1500));
    let overflow = cdp.eval("document.documentElement.scrollWidth - window.innerWidth");
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than a phone screen by {overflow}px"
    );
    if let Some(path) = &shot {
        cdp.screenshot(&path.replace(".png", "-phone.png"));
    }

    // Without the token the page shows nothing.
    cdp.viewport(1280, 1000, false);
    cdp.eval("localStorage.clear(); true");
    cdp.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://{addr}/dashboard") }),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let locked = wait_for(&mut cdp, 10, "the locked page", |s| s.state == "locked");
    assert!(locked.login_visible && !locked.board_visible, "{locked:?}");
    assert_eq!(locked.messages_total, "—", "{locked:?}");
    assert_eq!(locked.updates, 0, "no data reached the page: {locked:?}");
    // A wrong token is refused by the server, and the page says so.
    cdp.eval(
        "document.querySelector('#token-input').value = 'a-wrong-token-of-some-length'; \
         document.querySelector('#login-form').requestSubmit(); true",
    );
    let refused = wait_for(&mut cdp, 10, "the refusal", |s| s.state == "locked");
    let msg = cdp.eval("document.querySelector('#login-error').textContent");
    assert!(
        msg.as_str().unwrap().contains("refused"),
        "the page explains the refusal: {msg} {refused:?}"
    );
    assert_eq!(refused.updates, 0);

    rt.block_on(async {
        alice.close().await;
        bob.close().await;
        srv.server.shutdown().await;
    });
}
