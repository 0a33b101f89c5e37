//! Reading and verifying the compact JWTs the senders make (ES256 and RS256), for the
//! simulator's checks. It must not trust a JWT it could not verify with the key it was
//! given.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use serde_json::Value;

use crate::keys::b64url_decode;

/// A JWT's parts, verified.
pub struct Jwt {
    pub header: Value,
    pub claims: Value,
}

impl Jwt {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name)?.as_str()
    }

    pub fn claim_u64(&self, name: &str) -> Option<u64> {
        self.claims.get(name)?.as_u64()
    }
}

/// Splits and verifies `token` with `public` (a P-256 point for ES256, an RSAPublicKey
/// DER for RS256); Err: what is wrong with it.
pub fn verify(token: &str, alg: &str, public: &[u8]) -> Result<Jwt, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWT (three base64url parts)".into());
    };
    let json = |p: &str, what: &str| -> Result<Value, String> {
        let bytes = b64url_decode(p).ok_or_else(|| format!("JWT {what} is not base64url"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("JWT {what} is not JSON: {e}"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(format!("JWT {what} is not a JSON object"))
        }
    };
    let header = json(h, "header")?;
    let claims = json(c, "claims")?;
    if header.get("alg").and_then(Value::as_str) != Some(alg) {
        return Err(format!("JWT alg is not {alg}: {header}"));
    }
    let sig = b64url_decode(s).ok_or("JWT signature is not base64url")?;
    let input = &token.as_bytes()[..h.len() + 1 + c.len()];
    let ok = match alg {
        "ES256" => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public).verify(input, &sig),
        "RS256" => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public).verify(input, &sig),
        _ => return Err(format!("unknown alg {alg}")),
    };
    ok.map_err(|_| "JWT signature does not verify with the configured key".to_owned())?;
    Ok(Jwt { header, claims })
}
