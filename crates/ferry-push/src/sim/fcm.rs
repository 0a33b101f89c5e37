//! The simulated Google OAuth2 token endpoint (`POST /token`) and FCM HTTP v1 send
//! endpoint (`POST /v1/projects/<project>/messages:send`), checking:
//!
//! - token: a form body with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and an `assertion` JWT, RS256 with the service account's key, `iss` its
//!   client_email, `scope` with `firebase.messaging`, `aud` this token URL, `iat` not in
//!   the future nor older than an hour, `exp` after `iat` by at most an hour (400
//!   `invalid_grant`). Answers `{"access_token","expires_in":3599,"token_type":"Bearer"}`.
//! - send: `authorization: Bearer <a token this sim issued>` (401 `UNAUTHENTICATED`); a
//!   JSON body `{"message": {...}}` with a `token`, no `notification` block (Ferry sends
//!   data only), `data` of strings only with a `ferry` string that parses as PushData,
//!   data of at most 4096 bytes, `android.priority` `HIGH`/`NORMAL`, `android.ttl` as
//!   `<secs>s`, `android.collapse_key` a string (400 `INVALID_ARGUMENT`).
//!
//! Answers it scripts: 200 `{"name": ...}`, 404 `UNREGISTERED`, 400 `INVALID_ARGUMENT`
//! (its BadDeviceToken), 429 `QUOTA_EXCEEDED` with Retry-After, 500 `INTERNAL`.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{jwt, lock, Answer, Incoming, Reply, State};
use crate::keys::unix_now;
use crate::Provider;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn invalid_grant(detail: &str) -> Answer {
    Answer::violation(
        400,
        json!({"error": "invalid_grant", "error_description": detail}).to_string(),
        format!("invalid_grant: {detail}"),
    )
}

/// A Google API error body.
fn api_error(code: u16, status: &str, error_code: &str, message: &str) -> String {
    json!({"error": {"code": code, "message": message, "status": status, "details": [{
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": error_code,
    }]}})
    .to_string()
}

fn invalid(detail: &str) -> Answer {
    Answer::violation(
        400,
        api_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", detail),
        format!("INVALID_ARGUMENT: {detail}"),
    )
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

pub(crate) fn token(state: &State, inc: &Incoming<'_>) -> Answer {
    let mut a = check_token(state, inc);
    a.key = "token".into();
    a
}

fn check_token(state: &State, inc: &Incoming<'_>) -> Answer {
    if !inc
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return invalid_grant("content-type is not application/x-www-form-urlencoded");
    }
    let text = String::from_utf8_lossy(inc.body);
    let mut grant = None;
    let mut assertion = None;
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "grant_type" => grant = form_decode(v),
            "assertion" => assertion = form_decode(v),
            _ => {}
        }
    }
    if grant.as_deref() != Some(GRANT_TYPE) {
        return Answer::violation(
            400,
            json!({"error": "unsupported_grant_type"}).to_string(),
            format!("unsupported_grant_type: {grant:?}"),
        );
    }
    let Some(assertion) = assertion else {
        return invalid_grant("no assertion");
    };
    let Some(public) = lock(&state.keys).fcm.clone() else {
        return invalid_grant("the sim has no service account (call Sim::config)");
    };
    let t = match jwt::verify(&assertion, "RS256", &public) {
        Ok(t) => t,
        Err(e) => return invalid_grant(&e),
    };
    if t.claim_str("iss") != Some(super::FCM_CLIENT_EMAIL) {
        return invalid_grant(&format!("iss is not the client_email: {}", t.claims));
    }
    if !t
        .claim_str("scope")
        .is_some_and(|s| s.split(' ').any(|x| x == crate::fcm::SCOPE))
    {
        return invalid_grant(&format!("scope lacks firebase.messaging: {}", t.claims));
    }
    let token_url = format!("{}/token", state.origin);
    if t.claim_str("aud") != Some(token_url.as_str()) {
        return invalid_grant(&format!("aud is not {token_url}: {}", t.claims));
    }
    let (Some(iat), Some(exp)) = (t.claim_u64("iat"), t.claim_u64("exp")) else {
        return invalid_grant("iat and exp must be numbers");
    };
    let now = unix_now();
    if iat > now + 60
        || now.saturating_sub(iat) > 3600
        || exp <= iat
        || exp - iat > 3600
        || exp < now
    {
        return invalid_grant(&format!("bad iat/exp: iat {iat}, exp {exp}, now {now}"));
    }
    state.remember_jwt(Provider::Fcm, &assertion);
    let n = state.token_seq.fetch_add(1, Ordering::Relaxed);
    let access = format!("ya29.sim-{n}-{:016x}", rand_u64());
    lock(&state.fcm_tokens).insert(access.clone(), true);
    Answer::new(
        200,
        json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
    .header("content-type", "application/json")
}

fn rand_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

pub(crate) fn send(state: &State, inc: &Incoming<'_>) -> Answer {
    let body: Value = serde_json::from_slice(inc.body).unwrap_or_default();
    let key = body
        .pointer("/message/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut a = check_send(state, inc, &body, &key);
    a.key = key;
    a
}

fn check_send(state: &State, inc: &Incoming<'_>, body: &Value, key: &str) -> Answer {
    let project = inc
        .path
        .trim_start_matches("/v1/projects/")
        .trim_end_matches("/messages:send");
    if project.is_empty() || project.contains('/') {
        return invalid(&format!("bad project in the path {}", inc.path));
    }
    let bearer = inc
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    match bearer.map(|b| lock(&state.fcm_tokens).get(b).copied()) {
        Some(Some(true)) => {}
        Some(Some(false)) => {
            // Expired by the test: Google's answer, not a violation.
            return Answer::new(
                401,
                api_error(
                    401,
                    "UNAUTHENTICATED",
                    "THIRD_PARTY_AUTH_ERROR",
                    "Request had invalid authentication credentials.",
                ),
            );
        }
        _ => {
            return Answer::violation(
                401,
                api_error(
                    401,
                    "UNAUTHENTICATED",
                    "THIRD_PARTY_AUTH_ERROR",
                    "no valid bearer token",
                ),
                "UNAUTHENTICATED: no bearer token this sim issued",
            );
        }
    }
    if !inc
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return invalid("content-type is not application/json");
    }
    let Some(msg) = body.get("message").and_then(Value::as_object) else {
        return invalid("the body is not {\"message\": {...}}");
    };
    if key.is_empty() {
        return invalid("message.token missing");
    }
    if msg.contains_key("notification") {
        return invalid("a notification block (Ferry sends data-only messages)");
    }
    let Some(data) = msg.get("data").and_then(Value::as_object) else {
        return invalid("no message.data object");
    };
    if let Some((k, _)) = data.iter().find(|(_, v)| !v.is_string()) {
        return invalid(&format!("data.{k} is not a string"));
    }
    let size: usize = data
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > 4096 {
        return invalid(&format!("data of {size} bytes, over 4096"));
    }
    if data
        .get("ferry")
        .and_then(Value::as_str)
        .and_then(|f| serde_json::from_str::<crate::PushData>(f).ok())
        .is_none()
    {
        return invalid("data.ferry is not a PushData JSON string");
    }
    let Some(android) = msg.get("android").and_then(Value::as_object) else {
        return invalid("no message.android");
    };
    if !matches!(
        android.get("priority").and_then(Value::as_str),
        Some("HIGH" | "NORMAL")
    ) {
        return invalid("android.priority is not HIGH or NORMAL");
    }
    let ttl_ok = android
        .get("ttl")
        .and_then(Value::as_str)
        .and_then(|t| t.strip_suffix('s'))
        .is_some_and(|n| n.parse::<f64>().is_ok_and(|x| x >= 0.0));
    if !ttl_ok {
        return invalid("android.ttl is not \"<seconds>s\"");
    }
    if android.get("collapse_key").is_some_and(|c| !c.is_string()) {
        return invalid("android.collapse_key is not a string");
    }
    let script = state.script_for(key);
    let mut a = match script.reply {
        Reply::Accept => Answer::new(
            200,
            json!({"name": format!("projects/{project}/messages/{:x}", rand_u64())}).to_string(),
        ),
        Reply::Gone => Answer::new(
            404,
            api_error(
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            ),
        ),
        Reply::BadDeviceToken => Answer::new(
            400,
            api_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
        ),
        Reply::TooMany { retry_after_secs } => Answer::new(
            429,
            api_error(
                429,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded.",
            ),
        )
        .header("retry-after", retry_after_secs.to_string()),
        Reply::ServerError => Answer::new(
            500,
            api_error(500, "INTERNAL", "INTERNAL", "Internal error."),
        ),
    };
    a.headers.push(("content-type", "application/json".into()));
    a.delay = script.delay;
    a
}
