//! The JSON APIs' plumbing (docs/admin-api.md): `/v1/admin/…` and `/v1/bot/…` reach
//! logic through the gateway on every port; the OpenAPI document is served without a
//! token; admin routes answer 401 without a token, 403 with a user's session token, 503
//! on a node without an admin token; unknown routes 404, wrong methods 405, oversized
//! bodies 413 — all as `{"error":{"code","message"}}`; `ferry admin audit` reads the log.

use ferry_testkit::*;
use serde_json::json;

#[tokio::test]
async fn openapi_is_public_and_lists_the_routes() {
    let ts = TestServer::start().await;
    let (status, doc) = api_call(&ts.addr(), "GET", "admin/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"]["/admin/audit"]["get"]["operationId"],
        "audit.list"
    );
    // Every documented admin operation declares the admin scheme.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path.starts_with("/admin/") && path != "/admin/openapi.json" {
                assert_eq!(op["security"][0]["admin"], json!([]), "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn admin_routes_want_the_admin_token() {
    let ts = TestServer::start().await;
    ts.register(&["apiuser"]).await;
    let addr = ts.addr();
    let admin = admin_token(&ts);
    let user = token(&addr, "apiuser", "d1").await;

    let (status, body) = api_call(&addr, "GET", "admin/audit", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let raw = api_raw(&addr, "GET", "admin/audit", None, None).await;
    assert!(raw.header("www-authenticate").is_some());

    let (status, body) = api_call(&addr, "GET", "admin/audit", Some(&user), None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "PERMISSION_DENIED");

    let (status, body) = api_call(
        &addr,
        "GET",
        "admin/audit",
        Some("x".repeat(48).as_str()),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = api_call(&addr, "GET", "admin/audit", Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["entries"].is_array());

    // Unknown route, wrong method, bad query: clear errors, same shape.
    let (status, body) = api_call(&addr, "GET", "admin/no-such-thing", Some(&admin), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (status, body) = api_call(&addr, "DELETE", "admin/audit", Some(&admin), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    let (status, body) = api_call(&addr, "GET", "admin/audit?limit=lots", Some(&admin), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    let (status, _) = api_call(&addr, "GET", "bot/no-such-thing", None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_the_server_keeps_serving() {
    let ts = TestServer::start().await;
    let addr = ts.addr();
    let admin = admin_token(&ts);
    let big = json!({"text": "x".repeat(1_100_000)});
    let (status, body) = api_call(&addr, "POST", "admin/audit", Some(&admin), Some(&big)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "TOO_LARGE");
    let (status, _) = api_call(&addr, "GET", "admin/audit", Some(&admin), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_node_without_an_admin_token_says_the_api_is_off() {
    // A cluster logic node without `admin_token` (here: logic given an empty one).
    let bus = ferry_bus::InProcBus::new();
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn ferry_store::Store> = std::sync::Arc::new(
        ferry_store::SqliteStore::open(dir.path(), ferry_store::Durability::Os).unwrap(),
    );
    let logic = ferry_logic::Logic::new(Default::default(), store, bus.clone());
    logic.start();
    let req = ferry_bus::BusRequest {
        cmd: u32::from(ferry_proto::cmd::API),
        token: "some-token-of-enough-length".into(),
        api: Some(ferry_proto::bus::ApiCall {
            method: "GET".into(),
            path: "admin/audit".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = ferry_bus::Bus::request(&*bus, req).await.unwrap();
    let answer = resp.api.expect("an API answer");
    assert_eq!(answer.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin_token"));
}

#[tokio::test]
async fn the_cli_reads_the_audit_log() {
    let ts = TestServer::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["admin", "audit", "--json", "--server", &ts.addr(), "--data"])
        .arg(ts.dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["entries"].is_array());
    // A wrong token: the API's own message, and a failure status.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "admin",
            "audit",
            "--server",
            &ts.addr(),
            "--token",
            "not-the-admin-token-at-all",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not use the admin API"));
}
