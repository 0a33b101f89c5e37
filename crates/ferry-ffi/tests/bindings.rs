//! The committed Kotlin, Swift and Python bindings are what the current code generates:
//! they are made again (as sdk/gen-bindings.sh makes them) into a temporary folder and
//! compared file by file. A difference fails with the command that fixes it.

mod common;

use std::process::Command;
use std::time::Duration;

/// Where uniffi-bindgen writes each file → where the repository keeps it (the same
/// mapping as sdk/gen-bindings.sh).
const FILES: &[(&str, &str)] = &[
    (
        "chat/ferry/ferry.kt",
        "sdk/kotlin/src/main/kotlin/chat/ferry/ferry.kt",
    ),
    ("Ferry.swift", "sdk/swift/Sources/Ferry/Ferry.swift"),
    (
        "FerryFFI.h",
        "sdk/swift/Sources/FerryFFI/include/FerryFFI.h",
    ),
    (
        "FerryFFI.modulemap",
        "sdk/swift/Sources/FerryFFI/include/module.modulemap",
    ),
    ("ferry.py", "sdk/python/ferry/ferry.py"),
];

#[test]
fn the_committed_bindings_are_what_the_code_generates() {
    let built = common::build(false);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&built.bindgen);
    cmd.current_dir(common::repo_root())
        .args(["generate", "--no-format", "--library"])
        .arg(&built.cdylib)
        .args(["--language", "kotlin", "--language", "swift"])
        .args(["--language", "python", "--out-dir"])
        .arg(out.path());
    if let Err(e) = common::run(&mut cmd, Duration::from_secs(300)) {
        panic!("uniffi-bindgen failed: {e}");
    }
    let mut stale = Vec::new();
    for (generated, committed) in FILES {
        let fresh = std::fs::read_to_string(out.path().join(generated))
            .unwrap_or_else(|e| panic!("uniffi-bindgen wrote no {generated}: {e}"));
        let kept = std::fs::read_to_string(common::repo_root().join(committed)).unwrap_or_default();
        if fresh != kept {
            stale.push(*committed);
        }
    }
    assert!(
        stale.is_empty(),
        "generated bindings differ from the committed ones: {stale:?}; run sdk/gen-bindings.sh and commit"
    );
}
