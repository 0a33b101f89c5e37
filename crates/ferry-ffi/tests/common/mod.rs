#![allow(dead_code)] // each test binary uses part of it
//! What the binding tests share: building the SDK's library, the bindgen binary and the
//! `ferry` server binary of this very checkout (the test binary's own target folder and
//! profile), and finding them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use ferry_testkit::python::{repo_root, run};

/// The built artifacts a binding test needs.
pub struct Built {
    /// `libferry_ffi.so` (or `.dylib`).
    pub cdylib: PathBuf,
    pub bindgen: PathBuf,
    /// The `ferry` binary (`ferry serve`).
    pub ferry: PathBuf,
}

/// Builds (or finds up to date) the cdylib, uniffi-bindgen and `ferry` with `cargo build`
/// in the test binary's own profile, so a stale library is never tested. A build that
/// fails fails the test.
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
        "--bin",
        "uniffi-bindgen",
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
    let cdylib = ["libferry_ffi.so", "libferry_ffi.dylib"]
        .iter()
        .map(|f| profile_dir.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no libferry_ffi in {}", profile_dir.display()));
    Built {
        cdylib,
        bindgen: profile_dir.join("uniffi-bindgen"),
        ferry: profile_dir.join("ferry"),
    }
}
