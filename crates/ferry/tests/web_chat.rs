//! The chat web app (`web/chat`, served at `/chat`): the server answers every file with
//! its type and headers, and the browser tests (`tests/browser/`, node's test runner
//! driving Debian's chromium through playwright-core) pass against this build's `ferry`
//! binary: two browsers chatting (text, typing, read receipts, an image thumbnail-first
//! and byte-identical, recall, a group), catch-up after being away, a CLI user talking
//! to a browser user, the long-poll fallback when WebSockets are refused, and the
//! desktop and phone layouts (screenshots in `target/browser/`).
//!
//! The browser test needs `node` + `npm` and `chromium` (`apt-get install nodejs npm
//! chromium`). Without chromium it says so and skips, unless `FERRY_REQUIRE_CHROMIUM=1`
//! (set by `.ci/run` once chromium is installed) makes that a failure — the rule of
//! `tests/dashboard.rs`. Without node it fails: the tests are part of the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_testkit::*;

/// A plain HTTP/1.1 GET on a fresh connection, read to its end.
fn get(rt: &tokio::runtime::Runtime, addr: &str, path: &str) -> HttpAnswer {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    rt.block_on(http_request(addr, req.as_bytes()))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn chat_files_are_served_with_their_types() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = rt.block_on(TestServer::start());
    let addr = srv.addr();
    let web = repo().join("web/chat");
    let files = [
        ("/chat", "index.html", "text/html; charset=utf-8"),
        ("/chat/", "index.html", "text/html; charset=utf-8"),
        ("/chat/index.html", "index.html", "text/html; charset=utf-8"),
        ("/chat/app.js", "app.js", "text/javascript; charset=utf-8"),
        (
            "/chat/ferry-sdk.js",
            "ferry-sdk.js",
            "text/javascript; charset=utf-8",
        ),
        ("/chat/app.css", "app.css", "text/css; charset=utf-8"),
        ("/chat/icon.svg", "icon.svg", "image/svg+xml"),
    ];
    for (path, file, ty) in files {
        let a = get(&rt, &addr, path);
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("content-type").as_deref(), Some(ty), "{path}");
        assert_eq!(
            a.body,
            std::fs::read(web.join(file)).unwrap(),
            "{path} is web/chat/{file} as built in"
        );
        assert_eq!(
            a.header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        assert_eq!(
            a.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        let csp = a.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws: wss: http: https:"),
            "{csp}"
        );
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }
    // The page loads only what is served.
    let page = String::from_utf8(get(&rt, &addr, "/chat").body).unwrap();
    for asset in ["/chat/app.js", "/chat/app.css", "/chat/icon.svg"] {
        assert!(page.contains(asset), "index.html refers to {asset}");
    }
    let app = String::from_utf8(get(&rt, &addr, "/chat/app.js").body).unwrap();
    assert!(
        app.contains("from \"./ferry-sdk.js\""),
        "app.js imports the SDK bundle"
    );
    for missing in ["/chat/nope.js", "/chat/../Cargo.toml", "/chatx"] {
        assert_eq!(get(&rt, &addr, missing).status, 404, "{missing}");
    }
    rt.block_on(srv.server.shutdown());
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn find_chromium() -> Option<String> {
    if let Ok(p) = std::env::var("FERRY_CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser"]
        .iter()
        .find(|n| have(n, "--version"))
        .map(|n| n.to_string())
}

#[test]
fn the_chat_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        let msg = "chromium is not installed (Debian: apt-get install chromium): \
                   the chat's browser tests cannot run";
        if std::env::var("FERRY_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("{msg}, but FERRY_REQUIRE_CHROMIUM=1");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let chromium = if chromium.contains('/') {
        chromium
    } else {
        // playwright wants a path.
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {chromium}")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert!(
        have("node", "--version"),
        "node is required for the browser tests (apt-get install nodejs npm)"
    );
    let root = repo();
    let dir = root.join("tests/browser");
    npm_ci(&dir);
    let status = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-timeout=180000"])
        .arg("tests/browser/")
        .current_dir(&root)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_CHROMIUM", &chromium)
        .status()
        .expect("running node");
    assert!(status.success(), "the browser tests failed (output above)");
}
