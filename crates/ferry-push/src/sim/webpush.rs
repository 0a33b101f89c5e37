//! The simulated Web Push endpoint (`POST /wp/<id>`), checking RFC 8030, 8291 and
//! 8292:
//!
//! - `authorization: vapid t=<JWT>, k=<key>` (401): `k` the configured VAPID public key
//!   (403 when another), the JWT ES256 verified with it, `aud` this server's origin,
//!   `exp` in the future and at most 24 h ahead, `sub` a `mailto:` or `https:` URL.
//! - `TTL` a non-negative integer (400); `Urgency` one of `very-low`, `low`, `normal`,
//!   `high` (400); `Topic` at most 32 characters of the base64url alphabet (400);
//!   `Content-Encoding: aes128gcm` (415).
//! - The body (at most 4096 bytes, else 413): the `aes128gcm` header — 16-byte salt,
//!   record size at least 18, key id of 65 bytes that is an uncompressed P-256 point —
//!   and one record no larger than the record size, at least a tag and a delimiter
//!   long (400).
//!
//! Answers it scripts: 201 (with `Location`), 410 (Gone), 404 (its BadDeviceToken),
//! 429 with Retry-After, 500.

use super::{jwt, lock, Answer, Incoming, Reply, State};
use crate::keys::{b64url_decode, unix_now};
use crate::Provider;

fn bad(status: u16, detail: &str) -> Answer {
    Answer::violation(status, detail.to_owned(), format!("{status}: {detail}"))
}

pub(crate) fn handle(state: &State, inc: &Incoming<'_>, id: &str) -> Answer {
    let mut a = check(state, inc, id);
    a.key = id.to_owned();
    a
}

/// The `t` and `k` parameters of `vapid t=..., k=...`.
fn vapid_params(auth: &str) -> Option<(&str, &str)> {
    let rest = auth.strip_prefix("vapid ")?;
    let (mut t, mut k) = (None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "t" => t = Some(value),
            "k" => k = Some(value),
            _ => {}
        }
    }
    Some((t?, k?))
}

fn check(state: &State, inc: &Incoming<'_>, id: &str) -> Answer {
    if id.is_empty() || id.contains('/') {
        return Answer::new(404, "no such subscription");
    }
    let Some((t, k)) = inc.header("authorization").and_then(vapid_params) else {
        return bad(401, "no `authorization: vapid t=<JWT>, k=<key>`");
    };
    let Some(configured) = lock(&state.keys).vapid.clone() else {
        return bad(403, "the sim has no VAPID key (call Sim::config)");
    };
    if b64url_decode(k).as_deref() != Some(configured.as_slice()) {
        return bad(403, "k is not the VAPID public key of the subscription");
    }
    if !state.seen_jwt(Provider::WebPush, t) {
        let jwt = match jwt::verify(t, "ES256", &configured) {
            Ok(j) => j,
            Err(e) => return bad(401, &e),
        };
        if jwt.claim_str("aud") != Some(state.origin.as_str()) {
            return bad(401, &format!("aud is not {}: {}", state.origin, jwt.claims));
        }
        let now = unix_now();
        match jwt.claim_u64("exp") {
            Some(exp) if exp > now && exp <= now + 24 * 3600 => {}
            _ => return bad(401, &format!("exp not within 24 h ahead: {}", jwt.claims)),
        }
        if !jwt
            .claim_str("sub")
            .is_some_and(|s| s.starts_with("mailto:") || s.starts_with("https://"))
        {
            return bad(
                401,
                &format!("sub is not a mailto: or https: URL: {}", jwt.claims),
            );
        }
        state.remember_jwt(Provider::WebPush, t);
    } else if let Some(exp) = jwt_exp(t) {
        if exp <= unix_now() {
            return bad(401, "the VAPID JWT has expired");
        }
    }
    if inc.header("ttl").is_none_or(|v| v.parse::<u64>().is_err()) {
        return bad(400, "TTL missing or not a non-negative integer");
    }
    if let Some(u) = inc.header("urgency") {
        if !matches!(u, "very-low" | "low" | "normal" | "high") {
            return bad(400, &format!("Urgency {u:?}"));
        }
    }
    if let Some(topic) = inc.header("topic") {
        let ok = topic.len() <= 32
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return bad(
                400,
                &format!("Topic {topic:?}: at most 32 base64url characters"),
            );
        }
    }
    if inc.header("content-encoding") != Some("aes128gcm") {
        return bad(415, "Content-Encoding is not aes128gcm");
    }
    let b = inc.body;
    if b.len() > 4096 {
        return bad(413, &format!("body of {} bytes, over 4096", b.len()));
    }
    if b.len() < 21 {
        return bad(400, "no aes128gcm header");
    }
    let rs = u32::from_be_bytes([b[16], b[17], b[18], b[19]]) as usize;
    let idlen = b[20] as usize;
    if rs < 18 {
        return bad(400, &format!("record size {rs} under 18"));
    }
    if idlen != 65 || b.len() < 21 + 65 || b[21] != 4 {
        return bad(400, "the key id is not a 65-byte uncompressed P-256 point");
    }
    let record = b.len() - 21 - 65;
    if record < 17 || record > rs {
        return bad(
            400,
            &format!("one record of {record} bytes with record size {rs}"),
        );
    }
    let script = state.script_for(id);
    let mut a = match script.reply {
        Reply::Accept => {
            Answer::new(201, "").header("location", format!("{}/msg/{id}", state.origin))
        }
        Reply::Gone => Answer::new(410, "push subscription has unsubscribed or expired"),
        Reply::BadDeviceToken => Answer::new(404, "no such subscription"),
        Reply::TooMany { retry_after_secs } => Answer::new(429, "too many requests")
            .header("retry-after", retry_after_secs.to_string()),
        Reply::ServerError => Answer::new(500, "internal error"),
    };
    a.delay = script.delay;
    a
}

fn jwt_exp(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let v: serde_json::Value = serde_json::from_slice(&b64url_decode(claims)?).ok()?;
    v.get("exp")?.as_u64()
}
