//! The server's static key (X25519): what the encrypted long link and sealed short-link
//! requests are encrypted to, and what clients pin.
//!
//! Kept as the hex private key on one line in `server_key_file` (default
//! `data_dir/server-key`), mode 0600, generated at the first start. Every gateway of a
//! cluster must load the same file (or a copy of it): clients pin one key for them all.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_proto::secure::StaticKey;

use crate::Config;

/// The file, inside the data folder, that keeps a generated key.
pub const FILE: &str = "server-key";

/// Where `cfg` keeps its key.
pub fn path(cfg: &Config) -> PathBuf {
    if cfg.server_key_file.as_os_str().is_empty() {
        cfg.data_dir.join(FILE)
    } else {
        cfg.server_key_file.clone()
    }
}

/// The key in `file`, or a new one written there (mode 0600) when there is none.
pub fn load_or_create(file: &Path) -> anyhow::Result<StaticKey> {
    match std::fs::read_to_string(file) {
        Ok(text) => return parse(&text).with_context(|| format!("reading {}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = StaticKey::generate().map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(file) {
        Ok(mut f) => {
            f.write_all(format!("{}\n", hex::encode(key.private)).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", file.display()))?;
            tracing::info!(file = %file.display(), "generated the server key");
            Ok(key)
        }
        // Another process made it between our read and our create: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(file),
        Err(e) => Err(e).with_context(|| format!("creating {}", file.display())),
    }
}

fn parse(text: &str) -> anyhow::Result<StaticKey> {
    let raw = hex::decode(text.trim())
        .ok()
        .filter(|b| b.len() == ferry_proto::secure::KEY_LEN)
        .context("not a server key (64 hex digits); delete it to have a new one made")?;
    StaticKey::from_private(&raw).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join(FILE);
        let a = load_or_create(&file).unwrap();
        let b = load_or_create(&file).unwrap();
        assert_eq!(a.public, b.public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Clients read the public half as 64 hex digits (`--server-key`).
        let pinned = ferry_client::Security::pinned_hex(&hex::encode(a.public)).unwrap();
        assert_eq!(pinned.key(), Some(a.public));
        std::fs::write(&file, "not hex\n").unwrap();
        let e = load_or_create(&file).unwrap_err();
        assert!(format!("{e:#}").contains("not a server key"), "{e:#}");
        assert!(ferry_client::Security::pinned_hex("abcd").is_err());
    }
}
