#![allow(dead_code)] // each test binary uses part of it
//! What the binding tests share: the SDK's library, the bindgen binary and the `ferry`
//! server binary of this very checkout, in the test binary's own target folder and
//! profile.
//!
//! `cargo test` builds them itself: the library (crate type `cdylib`) and
//! `uniffi-bindgen` for this crate's tests, and, under `cargo test --workspace` (as
//! `.ci/run` does), `ferry` for the server crate's tests. Each is used when it is newer
//! than the sources it is made from; a missing or older one is built here with
//! `cargo build` (a different feature set from the test build's, so it may compile
//! much: `cargo test -p ferry-ffi` alone after changing the server), so a stale library
//! or server is never tested. A build that fails fails the
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
    /// The `ferry` binary (`ferry serve`), when asked for.
    pub ferry: PathBuf,
}

/// The newest modification time of the workspace's sources (crates, proto, manifests),
/// leaving out the crates named in `except`.
fn newest_source(except: &[&str]) -> SystemTime {
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
                // Cargo.lock by name: a test's server may leave other `.lock` files
                // (tantivy's) behind, and those are no source.
                let ext = path.extension().and_then(|x| x.to_str());
                let source = matches!(ext, Some("rs" | "toml" | "proto")) || name == "Cargo.lock";
                if source && t > *newest {
                    *newest = t;
                }
            }
        }
    }
    let root = repo_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for c in crates.flatten() {
            if !except.iter().any(|x| c.file_name() == *x) {
                walk(&c.path(), &mut newest);
            }
        }
    }
    walk(&root.join("proto"), &mut newest);
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(t) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    newest
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `cargo build <args>` in the test binary's profile; a failure fails the test.
fn cargo_build(profile: &str, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).arg("build").args(args);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Err(e) = run(&mut cmd, Duration::from_secs(40 * 60)) {
        panic!("building for the binding tests failed: {e}");
    }
}

/// The library, bindgen and (with `server`) server binaries, each built first when
/// missing or older than the sources it is made from.
pub fn build(server: bool) -> Built {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test binary>
    let deps = exe
        .parent()
        .expect("the test binary's folder")
        .to_path_buf();
    let profile_dir = deps
        .parent()
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("a profile folder")
        .to_owned();
    // The test build leaves the cdylib in deps/; `cargo build` also copies it up.
    let cdylib = || {
        [&deps, &profile_dir]
            .iter()
            .flat_map(|d| ["libferry_ffi.so", "libferry_ffi.dylib"].map(|f| d.join(f)))
            .filter_map(|p| Some((modified(&p)?, p)))
            .max()
    };
    let all = newest_source(&[]);
    if cdylib().is_none_or(|(t, _)| t < all) {
        cargo_build(&profile, &["-p", "ferry-ffi", "--lib"]);
    }
    let ferry = profile_dir.join("ferry");
    // The server does not link ferry-ffi: its changes do not make the server stale.
    if server && modified(&ferry).is_none_or(|t| t < newest_source(&["ferry-ffi"])) {
        cargo_build(&profile, &["-p", "ferry", "--bin", "ferry"]);
    }
    let (_, cdylib) =
        cdylib().unwrap_or_else(|| panic!("no libferry_ffi in {}", profile_dir.display()));
    Built {
        cdylib,
        bindgen: PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen")),
        ferry,
    }
}
