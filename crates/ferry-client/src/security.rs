//! How the SDK knows the server's static key (docs/security.md, "Trust").
//!
//! - [`Security::Pinned`]: a key given out of band (the app ships it, `--server-key`).
//!   The only mode that stops an active attacker on the first contact.
//! - [`Security::TrustOnFirstUse`] (the default, for the CLI and development): the first
//!   key the server shows (`GET /v1/server-key`) is kept in `state_dir/server-key` and
//!   pinned from then on: a server holding another key refuses the handshake, and the
//!   client stops with that error. Without a state folder the key is pinned for the life
//!   of the client.
//! - [`Security::Plaintext`]: no encryption, for a server started with
//!   `gateway.allow_plaintext = true` (local development only).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::{ClientConfig, ClientError};

/// The file, in the state folder, that keeps a key trusted on first use.
pub const KEY_FILE: &str = "server-key";

/// How the link and the short link are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Encrypt to this server key (X25519 public key).
    Pinned([u8; 32]),
    /// Learn the key at the first contact, then pin it.
    TrustOnFirstUse,
    /// Plaintext (the server must allow it).
    Plaintext,
}

impl Security {
    /// The key to encrypt to, once resolved; `None` for plaintext.
    pub fn key(&self) -> Option<[u8; 32]> {
        match self {
            Security::Pinned(k) => Some(*k),
            _ => None,
        }
    }

    /// A pinned key from 64 hex digits.
    pub fn pinned_hex(hex_key: &str) -> Result<Security, ClientError> {
        parse_key(hex_key).map(Security::Pinned)
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], ClientError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            ClientError::protocol(format!("{text:?} is not a server key (64 hex digits)"))
        })
}

/// `cfg` with its security resolved: `Pinned` or `Plaintext`, never `TrustOnFirstUse`.
/// A key kept from the first use is pinned without asking anyone (a server holding
/// another key then refuses the handshake); otherwise every server is asked at once and
/// the first answer is kept.
pub(crate) async fn resolve(mut cfg: ClientConfig) -> Result<ClientConfig, ClientError> {
    if cfg.security != Security::TrustOnFirstUse {
        return Ok(cfg);
    }
    if let Some(dir) = &cfg.state_dir {
        if let Some(k) = read_stored(dir)? {
            cfg.security = Security::Pinned(k);
            return Ok(cfg);
        }
    }
    let limit = cfg.connect_timeout + cfg.request_timeout;
    let mut asks = tokio::task::JoinSet::new();
    for server in cfg.all_servers() {
        asks.spawn(async move {
            tokio::time::timeout(limit, fetch(&server))
                .await
                .unwrap_or(Err(ClientError::timeout()))
        });
    }
    let mut last = ClientError::protocol("no server to ask for its key");
    while let Some(done) = asks.join_next().await {
        match done {
            Ok(Ok(seen)) => {
                if let Some(dir) = &cfg.state_dir {
                    store(dir, &seen)?;
                }
                cfg.security = Security::Pinned(seen);
                return Ok(cfg);
            }
            Ok(Err(e)) => last = e,
            Err(e) => last = ClientError::protocol_source("asking for the server key", e),
        }
    }
    Err(last)
}

fn read_stored(dir: &Path) -> Result<Option<[u8; 32]>, ClientError> {
    match std::fs::read_to_string(dir.join(KEY_FILE)) {
        Ok(text) => parse_key(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn store(dir: &Path, key: &[u8; 32]) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(KEY_FILE), format!("{}\n", hex::encode(key)))?;
    Ok(())
}

/// `GET /v1/server-key` from `server` (`HOST:PORT`): trust on first use only — a key
/// learned over the network it protects stops passive listeners, not an active attacker.
pub async fn fetch(server: &str) -> Result<[u8; 32], ClientError> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::get(format!("http://{server}/v1/server-key"))
        .body(Full::new(Bytes::new()))
        .map_err(ClientError::http_source)?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| ClientError::timeout())?
        .map_err(ClientError::http_source)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(ClientError::http_source)?
        .to_bytes();
    if !status.is_success() {
        return Err(ClientError::http(format!("server key: HTTP {status}")));
    }
    parse_key(&String::from_utf8_lossy(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_store() {
        let k = [7u8; 32];
        assert_eq!(
            Security::pinned_hex(&hex::encode(k)).unwrap(),
            Security::Pinned(k)
        );
        assert!(Security::pinned_hex("zz").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_stored(dir.path()).unwrap(), None);
        store(dir.path(), &k).unwrap();
        assert_eq!(read_stored(dir.path()).unwrap(), Some(k));
    }
}
