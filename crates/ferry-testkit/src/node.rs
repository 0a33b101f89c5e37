//! The JavaScript suites' packages: `npm ci` from a folder's lockfile when its
//! `node_modules` is missing or older than the lockfile (npm's own marker,
//! `node_modules/.package-lock.json`, is written by every install).

use std::path::Path;
use std::process::Command;

/// Installs `dir`'s packages from its `package-lock.json` unless they are current.
/// Panics (a test's failure) when npm is missing or the install fails.
pub fn npm_ci(dir: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let lock = modified(&dir.join("package-lock.json"));
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    if matches!((installed, lock), (Some(i), Some(l)) if i >= l) {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("npm could not start ({e}): apt-get install nodejs npm"));
    assert!(
        status.success(),
        "npm ci in {} failed ({status})",
        dir.display()
    );
}
