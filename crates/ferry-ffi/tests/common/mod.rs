#![allow(dead_code)] // each test binary uses part of it
//! What the binding tests share: the SDK's library, the bindgen binary and the `ferry`
//! server binary of this very checkout, in the test binary's own target folder and
//! profile.
//!
//! `cargo test` builds them itself: the library (crate type `cdylib`) and
//! `uniffi-bindgen` for this crate's tests, and, under `cargo test --workspace` (as
//! `.ci/run` does), `ferry` for the server crate's tests. Each is used when it is newer
//! than every source file of the workspace; a missing or older one is built here with
//! `cargo build` (a different feature set from the test build's, so it may compile
//! much), so a stale library or server is never tested. A build that fails fails the
//! test: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

pub use ferry_testkit::python::{repo_root, run};

/// The built artifacts a binding test needs.
pub struct Built {
    /// `libferry_ffi.so` (or `.dylib`).
    pub cdylib: PathBuf,
    pub bindgen: PathBuf,
    /// The `ferry` binary (`ferry serve`).
    pub ferry: PathBuf,
}

/// The newest modification time of the workspace's sources (crates, proto, manifests).
fn newest_source() -> SystemTime {
    fn walk(dir: &Path, newest: &mut SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if name == "target" || name == "tests" || name == "benches" {
                continue;
            }
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                let ext = path.extension().and_then(|x| x.to_str());
                if matches!(ext, Some("rs" | "toml" | "proto" | "lock")) && t > *newest {
                    *newest = t;
                }
            }
        }
    }
    let root = repo_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for d in ["crates", "proto"] {
        walk(&root.join(d), &mut newest);
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(t) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    newest
}

fn fresh(artifact: &Path, newest: SystemTime) -> bool {
    std::fs::metadata(artifact)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= newest)
}

/// The library, bindgen and server binaries, built first when missing or older than the
/// sources.
pub fn build() -> Built {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("a profile folder")
        .to_owned();
    let cdylib_at = || {
        ["libferry_ffi.so", "libferry_ffi.dylib"]
            .iter()
            .map(|f| profile_dir.join(f))
            .find(|p| p.exists())
    };
    let built = |cdylib: PathBuf| Built {
        cdylib,
        bindgen: PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen")),
        ferry: profile_dir.join("ferry"),
    };
    let newest = newest_source();
    if let Some(lib) = cdylib_at() {
        let b = built(lib);
        if fresh(&b.cdylib, newest) && fresh(&b.ferry, newest) {
            return b;
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args([
        "build",
        "-p",
        "ferry",
        "--bin",
        "ferry",
        "-p",
        "ferry-ffi",
        "--lib",
    ]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Err(e) = run(&mut cmd, Duration::from_secs(40 * 60)) {
        panic!("building the library and the server failed: {e}");
    }
    let lib = cdylib_at().unwrap_or_else(|| panic!("no libferry_ffi in {}", profile_dir.display()));
    built(lib)
}
