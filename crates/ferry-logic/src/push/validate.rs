//! Checks of a registered push target (`PushTarget`) before it is stored: each
//! provider's fields in their shape and size, the settings in range. A malformed field
//! is BAD_REQUEST naming the field; nothing here talks to a provider.

use ferry_proto::v1;
use ferry_push::Provider;

use crate::error::LogicError;

/// Longest platform token (APNs, FCM), in bytes.
pub const MAX_TOKEN: usize = 4096;
/// Longest Web Push endpoint, in bytes.
pub const MAX_ENDPOINT: usize = 2048;
/// Longest locale tag (BCP 47 allows 35 characters).
pub const MAX_LOCALE: usize = 35;
/// Longest APNs topic / FCM project id.
pub const MAX_APP_ID: usize = 255;

fn bad(msg: impl Into<String>) -> LogicError {
    LogicError::BadRequest(msg.into())
}

/// The provider a `PushProvider` value names.
pub fn provider_of(p: i32) -> Result<Provider, LogicError> {
    match v1::PushProvider::try_from(p) {
        Ok(v1::PushProvider::Apns) => Ok(Provider::Apns),
        Ok(v1::PushProvider::Fcm) => Ok(Provider::Fcm),
        Ok(v1::PushProvider::Webpush) => Ok(Provider::WebPush),
        Ok(v1::PushProvider::Unifiedpush) => Ok(Provider::UnifiedPush),
        _ => Err(bad(
            "target.provider must be APNS, FCM, WEBPUSH or UNIFIEDPUSH",
        )),
    }
}

/// The `PushProvider` value of a provider.
pub fn provider_value(p: Provider) -> v1::PushProvider {
    match p {
        Provider::Apns => v1::PushProvider::Apns,
        Provider::Fcm => v1::PushProvider::Fcm,
        Provider::WebPush => v1::PushProvider::Webpush,
        Provider::UnifiedPush => v1::PushProvider::Unifiedpush,
    }
}

/// Decodes base64url (RFC 4648 §5), with or without padding; None when it is not.
pub fn base64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone character left over (6 bits) is not base64.
    (bits < 6).then_some(out)
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// Checks a target; returns its provider.
pub fn target(t: &v1::PushTarget) -> Result<Provider, LogicError> {
    let provider = provider_of(t.provider)?;
    match provider {
        Provider::Apns => {
            if t.token.is_empty()
                || t.token.len() > MAX_TOKEN
                || t.token.len() & 1 == 1
                || !t.token.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad("target.token: an APNs device token is hex"));
            }
            if t.app_id.is_empty() {
                return Err(bad("target.app_id: APNs needs the app's bundle id (topic)"));
            }
        }
        Provider::Fcm => {
            if t.token.is_empty() || t.token.len() > MAX_TOKEN || !printable(&t.token) {
                return Err(bad(format!(
                    "target.token: an FCM registration token is 1-{MAX_TOKEN} printable characters"
                )));
            }
        }
        Provider::WebPush | Provider::UnifiedPush => {
            let host = t.endpoint.strip_prefix("https://").unwrap_or("");
            let host = host.split(['/', '?', '#']).next().unwrap_or("");
            if t.endpoint.len() > MAX_ENDPOINT
                || host.is_empty()
                || !printable(&t.endpoint)
                || host.contains('@')
            {
                return Err(bad(format!(
                    "target.endpoint: an https URL of at most {MAX_ENDPOINT} bytes"
                )));
            }
            match base64url(&t.p256dh) {
                Some(k) if k.len() == 65 && k[0] == 0x04 => {}
                _ => {
                    return Err(bad(
                        "target.p256dh: base64url of an uncompressed P-256 key (65 bytes)",
                    ))
                }
            }
            if base64url(&t.auth).map(|a| a.len()) != Some(16) {
                return Err(bad("target.auth: base64url of 16 bytes"));
            }
        }
    }
    if t.app_id.len() > MAX_APP_ID || !printable(&t.app_id) {
        return Err(bad(format!(
            "target.app_id: at most {MAX_APP_ID} printable characters"
        )));
    }
    if t.locale.chars().count() > MAX_LOCALE || !printable(&t.locale) {
        return Err(bad(format!(
            "target.locale: a language tag of at most {MAX_LOCALE} characters"
        )));
    }
    if v1::PushPreview::try_from(t.preview).is_err() {
        return Err(bad("target.preview: NONE, SENDER or FULL"));
    }
    if t.dnd_start_min >= 1440 || t.dnd_end_min >= 1440 {
        return Err(bad("target.dnd_*_min: minutes after midnight, below 1440"));
    }
    if t.utc_offset_min.abs() > 1440 {
        return Err(bad("target.utc_offset_min: at most a day either way"));
    }
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    fn web() -> v1::PushTarget {
        v1::PushTarget {
            provider: v1::PushProvider::Webpush as i32,
            endpoint: "https://push.example.net/wpush/v2/abc".into(),
            p256dh: P256.into(),
            auth: AUTH.into(),
            ..Default::default()
        }
    }

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url("aGk").unwrap(), b"hi");
        assert_eq!(base64url("aGk=").unwrap(), b"hi");
        assert_eq!(base64url(AUTH).unwrap().len(), 16);
        assert_eq!(base64url(P256).unwrap().len(), 65);
        assert!(base64url("a").is_none());
        assert!(base64url("a b").is_none());
    }

    #[test]
    fn each_provider_is_checked_in_its_own_terms() {
        assert_eq!(target(&web()).unwrap(), Provider::WebPush);
        let apns = v1::PushTarget {
            provider: v1::PushProvider::Apns as i32,
            token: "ab".repeat(32),
            app_id: "com.example.ferry".into(),
            ..Default::default()
        };
        assert_eq!(target(&apns).unwrap(), Provider::Apns);
        let fcm = v1::PushTarget {
            provider: v1::PushProvider::Fcm as i32,
            token: "fcm:token-1".into(),
            ..Default::default()
        };
        assert_eq!(target(&fcm).unwrap(), Provider::Fcm);

        let refused = |t: v1::PushTarget, field: &str| {
            let e = target(&t).unwrap_err();
            assert!(
                matches!(&e, LogicError::BadRequest(m) if m.contains(field)),
                "{field}: {e}"
            );
        };
        refused(v1::PushTarget::default(), "provider");
        refused(
            v1::PushTarget {
                provider: 9,
                ..web()
            },
            "provider",
        );
        refused(
            v1::PushTarget {
                token: "xyz".into(),
                ..apns.clone()
            },
            "token",
        );
        refused(
            v1::PushTarget {
                app_id: String::new(),
                ..apns
            },
            "app_id",
        );
        refused(
            v1::PushTarget {
                token: "x".repeat(MAX_TOKEN + 1),
                ..fcm.clone()
            },
            "token",
        );
        refused(
            v1::PushTarget {
                token: "has space".into(),
                ..fcm
            },
            "token",
        );
        refused(
            v1::PushTarget {
                endpoint: "http://push.example.net/x".into(),
                ..web()
            },
            "endpoint",
        );
        refused(
            v1::PushTarget {
                endpoint: format!("https://e.net/{}", "a".repeat(MAX_ENDPOINT)),
                ..web()
            },
            "endpoint",
        );
        refused(
            v1::PushTarget {
                p256dh: AUTH.into(),
                ..web()
            },
            "p256dh",
        );
        refused(
            v1::PushTarget {
                auth: P256.into(),
                ..web()
            },
            "auth",
        );
        refused(
            v1::PushTarget {
                locale: "x".repeat(36),
                ..web()
            },
            "locale",
        );
        refused(
            v1::PushTarget {
                dnd_start_min: 1440,
                ..web()
            },
            "dnd",
        );
        refused(
            v1::PushTarget {
                preview: 7,
                ..web()
            },
            "preview",
        );
    }
}
