//! Keys and JWTs: reading PKCS#8 PEM keys, signing compact JWTs with ES256 (APNs, VAPID)
//! and RS256 (Google's OAuth2 assertion), base64url, the wall clock.
//!
//! Everything is ring: no OpenSSL, no second crypto stack. It must not cache anything
//! (the senders decide how long a JWT lives) nor read files other than the key it is
//! handed.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::ConfigError;

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url with or without padding (browsers and push libraries write both).
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The PKCS#8 DER inside a `-----BEGIN PRIVATE KEY-----` PEM text.
pub(crate) fn pkcs8_from_pem(pem: &str, what: &str) -> Result<Vec<u8>, ConfigError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| {
            ConfigError(format!(
                "{what}: not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----): {e:?}"
            ))
        })
}

pub(crate) fn read_file(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{what} {}: {e}", path.display())))
}

/// A P-256 key pair from PKCS#8 PEM (ES256). ring wants the public key inside the
/// PKCS#8 document, as Apple's `.p8` files and `openssl genpkey` write it.
pub(crate) fn p256_key(pem: &str, what: &str) -> Result<EcdsaKeyPair, ConfigError> {
    let der = pkcs8_from_pem(pem, what)?;
    EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
        &SystemRandom::new(),
    )
    .map_err(|e| {
        ConfigError(format!(
            "{what}: not a P-256 (ES256) PKCS#8 key with its public key: {e}"
        ))
    })
}

/// An RSA key pair from PKCS#8 PEM (RS256, at least 2048 bits).
pub(crate) fn rsa_key(pem: &str, what: &str) -> Result<RsaKeyPair, ConfigError> {
    let der = pkcs8_from_pem(pem, what)?;
    RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| ConfigError(format!("{what}: not an RSA PKCS#8 key: {e}")))
}

/// The uncompressed public point (65 bytes, 0x04 first) of a P-256 key pair.
pub(crate) fn p256_public(key: &EcdsaKeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// `header.claims.signature`, ES256 (the raw 64-byte r||s signature JWS wants).
pub(crate) fn jwt_es256(
    key: &EcdsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Option<String> {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).ok()?;
    Some(format!("{input}.{}", b64url(sig.as_ref())))
}

/// `header.claims.signature`, RS256 (RSASSA-PKCS1-v1_5 with SHA-256).
pub(crate) fn jwt_rs256(
    key: &RsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Option<String> {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .ok()?;
    Some(format!("{input}.{}", b64url(&sig)))
}
