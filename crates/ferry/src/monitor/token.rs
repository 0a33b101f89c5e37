//! The admin token that guards the dashboard, its data and `/metrics`.
//!
//! Taken from the config (`admin_token`) when set; otherwise generated at the first
//! start and kept in `data_dir/admin-token` (mode 0600), so it survives restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file, inside the data folder, that keeps a generated token.
pub const FILE: &str = "admin-token";

/// Shortest token accepted from the config or the file.
const MIN_LEN: usize = 16;

/// Where a data folder keeps its generated token.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The configured token, else the stored one, else a new one (stored).
pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = configured.map(str::trim).filter(|t| !t.is_empty()) {
        anyhow::ensure!(
            t.len() >= MIN_LEN,
            "admin_token must be at least {MIN_LEN} characters"
        );
        return Ok(t.to_owned());
    }
    let file = path(data_dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let t = text.trim();
            anyhow::ensure!(
                t.len() >= MIN_LEN,
                "{} holds no usable token; delete it to have a new one made",
                file.display()
            );
            return Ok(t.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let token = random_hex(24).context("reading /dev/urandom")?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(&file) {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", file.display()))?;
            tracing::info!(file = %file.display(), "generated an admin token");
            Ok(token)
        }
        // Another process made it between our read and our create: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(None, data_dir),
        Err(e) => Err(e).with_context(|| format!("creating {}", file.display())),
    }
}

fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without an early exit, so the time taken says nothing about the token.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(None, dir.path()).unwrap();
        let b = load_or_create(None, dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 48);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let c = load_or_create(Some("configured-token-123"), dir.path()).unwrap();
        assert_eq!(c, "configured-token-123");
        assert!(load_or_create(Some("short"), dir.path()).is_err());
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(matches("abcdef", "abcdef"));
        assert!(!matches("abcdef", "abcdeg"));
        assert!(!matches("abcdef", "abcde"));
        assert!(!matches("abcdef", "abcdefg"));
        assert!(!matches("abcdef", ""));
    }
}
