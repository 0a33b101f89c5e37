//! The wire format's arithmetic (docs/webhooks.md): the signature header, the retry
//! delays, and the secrets.

use std::time::Duration;

use ring::hmac;

/// The `Ferry-Webhook-Signature` header value for `body` sent at `timestamp` (unix
/// seconds): `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` for each secret,
/// space separated (two during a rotation). A secret is used as the bytes of its text.
pub fn sign(secrets: &[&[u8]], timestamp: u64, body: &[u8]) -> String {
    let prefix = format!("{timestamp}.");
    let mut out = String::new();
    for s in secrets {
        let key = hmac::Key::new(hmac::HMAC_SHA256, s);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(prefix.as_bytes());
        ctx.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1=");
        out.push_str(&hex::encode(ctx.sign().as_ref()));
    }
    out
}

/// The delay before the attempt after `attempts` failed ones: `base × 2^attempts`,
/// capped at `max`, then "equal jitter": a uniform pick in its upper half (`jitter` in
/// [0, 1), so that endpoints failing together do not all come back at once).
pub fn backoff(attempts: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let d = base.saturating_mul(1u32 << attempts.min(30)).min(max);
    let half = d / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A new endpoint secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known vector, computed independently:
    /// `printf '1700000000.{"v":1}' | openssl dgst -sha256 -hmac whsec_test`.
    #[test]
    fn signature_matches_a_known_vector() {
        let sig = sign(&[b"whsec_test"], 1_700_000_000, b"{\"v\":1}");
        assert_eq!(
            sig,
            "v1=42265a8d94c87e30011ad1a24b449a875c60aeb921c05bbabcbc41385e6d1919"
        );
    }

    #[test]
    fn rotation_signs_with_both_secrets() {
        let one = sign(&[b"new"], 5, b"x");
        let two = sign(&[b"new", b"old"], 5, b"x");
        assert!(two.starts_with(&one), "{two}");
        assert_eq!(two.split(' ').count(), 2);
        assert_eq!(two.split(' ').nth(1).unwrap(), sign(&[b"old"], 5, b"x"));
        assert_ne!(sign(&[b"new"], 6, b"x"), one, "the timestamp is signed");
        assert_ne!(sign(&[b"new"], 5, b"y"), one, "the body is signed");
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_in_the_upper_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(backoff(0, base, max, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(0, base, max, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(12, base, max, 1.0), max);
        assert_eq!(backoff(1_000, base, max, 0.5), max / 2 + max / 4);
        let d = backoff(5, base, max, 0.3);
        assert!(d >= Duration::from_secs(16) && d <= Duration::from_secs(32));
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64, "{a}");
    }
}
