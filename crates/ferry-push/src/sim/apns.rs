//! The simulated APNs (`POST /3/device/<token>`, sandbox under `/sandbox`), checking
//! Apple's "Sending notification requests to APNs" contract:
//!
//! - HTTP/2 only; a device token of hex digits (else 400 `BadDeviceToken`).
//! - `authorization: bearer <JWT>` (403 `MissingProviderToken`); ES256 with the
//!   configured key, `kid` the key id, `iss` the team id, `iat` not older than 60 min
//!   nor in the future (403 `InvalidProviderToken` / `ExpiredProviderToken`); a new JWT
//!   less than 20 min after the previous one (which was not expired) is 429
//!   `TooManyProviderTokenUpdates`.
//! - `apns-topic` present (400 `MissingTopic`); `apns-push-type` `alert` or
//!   `background` (400 `InvalidPushType`); `apns-priority` 1, 5 or 10, and 5 for
//!   background (400 `BadPriority`); `apns-expiration` a number (400
//!   `BadExpirationDate`); `apns-collapse-id` at most 64 bytes (400 `BadCollapseId`);
//!   `apns-id` a UUID (400 `BadMessageId`).
//! - A body (400 `PayloadEmpty`) of at most 4096 bytes (413 `PayloadTooLarge`): a JSON
//!   object with an `aps` object — `alert` and `mutable-content: 1` for an alert push,
//!   `content-available: 1` and no alert for a background one — and a `ferry` member
//!   that parses as PushData (400 `BadPayload`, the sim's own reason: Apple has none).
//!
//! Answers it scripts: 200 (with `apns-id`), 410 `Unregistered`, 400 `BadDeviceToken`,
//! 429 `TooManyRequests` with Retry-After, 500 `InternalServerError`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{jwt, lock, Answer, Incoming, Reply, State};
use crate::keys::unix_now;
use crate::Provider;

/// Apple refuses a provider token refreshed more often than this.
const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);

fn reason(status: u16, reason: &str, detail: &str) -> Answer {
    Answer::violation(
        status,
        json!({"reason": reason}).to_string(),
        format!("{reason}: {detail}"),
    )
}

pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub(crate) fn handle(
    state: &State,
    conn: &Mutex<Option<(String, Instant)>>,
    inc: &Incoming<'_>,
    token: &str,
    sandbox: bool,
) -> Answer {
    let mut a = check(state, conn, inc, token);
    a.key = token.to_owned();
    a.sandbox = sandbox;
    a
}

fn check(
    state: &State,
    conn: &Mutex<Option<(String, Instant)>>,
    inc: &Incoming<'_>,
    token: &str,
) -> Answer {
    if inc.version != hyper::Version::HTTP_2 {
        return reason(400, "BadPath", "APNs speaks HTTP/2 only");
    }
    if token.is_empty() {
        return reason(400, "MissingDeviceToken", "no token in the path");
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(400, "BadDeviceToken", "the token is not hex");
    }
    // The provider token.
    let Some(auth) = inc.header("authorization") else {
        return reason(403, "MissingProviderToken", "no authorization header");
    };
    let Some(token_jwt) = auth.strip_prefix("bearer ") else {
        return reason(
            403,
            "MissingProviderToken",
            "authorization is not `bearer <JWT>`",
        );
    };
    if lock(&state.apns_expired).contains(token_jwt) {
        // The test declared it expired: Apple's answer, not a violation.
        return Answer::new(403, json!({"reason": "ExpiredProviderToken"}).to_string());
    }
    if !state.seen_jwt(Provider::Apns, token_jwt) {
        let Some(public) = lock(&state.keys).apns.clone() else {
            return reason(
                403,
                "InvalidProviderToken",
                "the sim has no APNs key (call Sim::config)",
            );
        };
        let t = match jwt::verify(token_jwt, "ES256", &public) {
            Ok(t) => t,
            Err(e) => return reason(403, "InvalidProviderToken", &e),
        };
        if t.header.get("kid").and_then(Value::as_str) != Some(super::APNS_KEY_ID) {
            return reason(
                403,
                "InvalidProviderToken",
                &format!("kid is not the key id: {}", t.header),
            );
        }
        if t.claim_str("iss") != Some(super::APNS_TEAM_ID) {
            return reason(
                403,
                "InvalidProviderToken",
                &format!("iss is not the team id: {}", t.claims),
            );
        }
        let Some(iat) = t.claim_u64("iat") else {
            return reason(403, "InvalidProviderToken", "no numeric iat");
        };
        let now = unix_now();
        if iat > now + 60 {
            return reason(403, "InvalidProviderToken", "iat is in the future");
        }
        state.remember_jwt(Provider::Apns, token_jwt);
    }
    {
        // Apple's rule on refreshing: on one connection, not within 20 minutes of the
        // previous token, unless that one was refused as expired.
        let mut newest = lock(conn);
        if newest.as_ref().is_none_or(|(prev, _)| prev != token_jwt) {
            if let Some((prev, since)) = newest.as_ref() {
                if since.elapsed() < MIN_REFRESH && !lock(&state.apns_expired).contains(prev) {
                    return reason(
                        429,
                        "TooManyProviderTokenUpdates",
                        &format!("a new JWT {:?} after the previous one", since.elapsed()),
                    );
                }
            }
            *newest = Some((token_jwt.to_owned(), Instant::now()));
        }
    }
    // The iat of a JWT seen before still ages.
    if let Some(iat) = jwt_iat(token_jwt) {
        if unix_now().saturating_sub(iat) > 3600 {
            return reason(
                403,
                "ExpiredProviderToken",
                "iat is more than 60 minutes old",
            );
        }
    }
    // Headers.
    if inc.header("apns-topic").is_none_or(str::is_empty) {
        return reason(400, "MissingTopic", "no apns-topic");
    }
    let push_type = inc.header("apns-push-type").unwrap_or("");
    if push_type != "alert" && push_type != "background" {
        return reason(
            400,
            "InvalidPushType",
            &format!("apns-push-type {push_type:?}"),
        );
    }
    let priority = inc.header("apns-priority").unwrap_or("10");
    if !matches!(priority, "1" | "5" | "10") || (push_type == "background" && priority != "5") {
        return reason(
            400,
            "BadPriority",
            &format!("apns-priority {priority} for {push_type}"),
        );
    }
    if let Some(e) = inc.header("apns-expiration") {
        if e.parse::<u64>().is_err() {
            return reason(400, "BadExpirationDate", &format!("apns-expiration {e:?}"));
        }
    }
    if let Some(c) = inc.header("apns-collapse-id") {
        if c.len() > 64 {
            return reason(400, "BadCollapseId", &format!("{} bytes", c.len()));
        }
    }
    if let Some(id) = inc.header("apns-id") {
        if !is_uuid(id) {
            return reason(400, "BadMessageId", &format!("apns-id {id:?}"));
        }
    }
    // The payload.
    if inc.body.is_empty() {
        return reason(400, "PayloadEmpty", "no body");
    }
    if inc.body.len() > 4096 {
        return reason(413, "PayloadTooLarge", &format!("{} bytes", inc.body.len()));
    }
    let Ok(body) = serde_json::from_slice::<Value>(inc.body) else {
        return reason(400, "BadPayload", "the body is not JSON");
    };
    let Some(aps) = body.get("aps").and_then(Value::as_object) else {
        return reason(400, "BadPayload", "no aps object");
    };
    if push_type == "alert" {
        let alert_ok = aps.get("alert").is_some_and(|a| {
            a.get("title").is_some_and(Value::is_string)
                && a.get("body").is_some_and(Value::is_string)
        });
        if !alert_ok || aps.get("mutable-content") != Some(&json!(1)) {
            return reason(
                400,
                "BadPayload",
                "an alert push needs aps.alert {title, body} and mutable-content 1",
            );
        }
    } else if aps.contains_key("alert") || aps.get("content-available") != Some(&json!(1)) {
        return reason(
            400,
            "BadPayload",
            "a background push needs content-available 1 and no alert",
        );
    }
    if let Some(b) = aps.get("badge") {
        if !b.is_u64() {
            return reason(400, "BadPayload", "badge is not a number");
        }
    }
    if body
        .get("ferry")
        .and_then(|f| serde_json::from_value::<crate::PushData>(f.clone()).ok())
        .is_none()
    {
        return reason(400, "BadPayload", "no ferry member that parses as PushData");
    }
    // The script.
    let script = state.script_for(token);
    let mut a = match script.reply {
        Reply::Accept => {
            let id = inc
                .header("apns-id")
                .unwrap_or("00000000-0000-0000-0000-000000000000")
                .to_owned();
            Answer::new(200, "").header("apns-id", id)
        }
        Reply::Gone => Answer::new(
            410,
            json!({"reason": "Unregistered", "timestamp": unix_now() * 1000}).to_string(),
        ),
        Reply::BadDeviceToken => Answer::new(400, json!({"reason": "BadDeviceToken"}).to_string()),
        Reply::TooMany { retry_after_secs } => {
            Answer::new(429, json!({"reason": "TooManyRequests"}).to_string())
                .header("retry-after", retry_after_secs.to_string())
        }
        Reply::ServerError => {
            Answer::new(500, json!({"reason": "InternalServerError"}).to_string())
        }
    };
    a.delay = script.delay;
    a
}

/// The `iat` of a JWT already verified once.
fn jwt_iat(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let v: Value = serde_json::from_slice(&crate::keys::b64url_decode(claims)?).ok()?;
    v.get("iat")?.as_u64()
}
