//! The TypeScript SDK's tests (sdk/js/test, node's test runner) against this build's
//! `ferry`: `npm ci` when sdk/js/node_modules is missing or older than the lock file,
//! `npm run build`, then `node --test` with `FERRY_BIN` set to the binary under test.
//! Node ≥ 20 and npm are required: without them this test fails (it never skips).

use std::path::{Path, PathBuf};
use std::process::Command;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/js")
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: could not start it: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

#[test]
fn js_sdk_node_tests() {
    let dir = sdk_dir();
    let out = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "node (≥ 20) is required to test the TypeScript SDK in sdk/js, and it was not \
             found: {e}. Install node 20 or later with npm."
            )
        });
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the TypeScript SDK needs node ≥ 20, found {version:?}"
    );

    ferry_testkit::npm_ci(&dir);
    run(
        Command::new("npm").args(["run", "build"]).current_dir(&dir),
        "npm run build in sdk/js",
    );
    let mut tests: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("sdk/js/test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no tests in sdk/js/test");
    run(
        Command::new("node")
            .args(["--test", "--test-timeout=120000"])
            .args(&tests)
            .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
            .current_dir(&dir),
        "the TypeScript SDK's node tests (sdk/js/test)",
    );
}
