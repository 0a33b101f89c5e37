//! The Python SDK's test suite (sdk/python/tests, pytest) against a real `ferry serve`:
//! builds the library and the server, installs pytest (hash-pinned, into a venv under
//! the target folder), puts the package with this build's library on PYTHONPATH, and
//! fails when pytest fails. It never skips: a missing python3 or registry fails it.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn the_python_sdk_passes_its_tests_against_a_real_server() {
    let built = common::build(true);
    let python = ferry_testkit::python_venv(
        "ffi-python-venv",
        "sdk/python/requirements-test.txt",
        &["--only-binary=:all:"],
    )
    .unwrap_or_else(|e| panic!("pytest's venv: {e}"));

    // The package as committed, with this build's library beside it.
    let root = common::repo_root();
    let pkg = tempfile::tempdir().unwrap();
    let dest = pkg.path().join("ferry");
    std::fs::create_dir(&dest).unwrap();
    for f in ["__init__.py", "ferry.py"] {
        std::fs::copy(root.join("sdk/python/ferry").join(f), dest.join(f))
            .unwrap_or_else(|e| panic!("sdk/python/ferry/{f}: {e}"));
    }
    let lib_name = built.cdylib.file_name().unwrap();
    std::fs::copy(&built.cdylib, dest.join(lib_name)).unwrap();

    // pytest through the venv's python, from the folder holding the copy: its first
    // sys.path entry is then that copy, not sdk/python (the package without a library).
    // Not the venv's `pytest` script: the venv is made under a temporary name and moved
    // into place (ferry_testkit::python_venv), so its scripts' `#!` lines name a folder
    // that is gone.
    let result = common::run(
        Command::new(&python)
            .current_dir(pkg.path())
            .args([
                "-c",
                "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
            ])
            .arg(root.join("sdk/python"))
            .arg(root.join("sdk/python/tests"))
            .env("PYTHONPATH", pkg.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("TEST_FERRY_BIN", &built.ferry),
        Duration::from_secs(300),
    );
    match result {
        Ok(out) => println!("{out}"),
        Err(e) => panic!("the Python SDK's tests failed:\n{e}"),
    }
}
