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

    // The `pytest` script, not `python -m pytest`, which would put sdk/python (the
    // package without a library) ahead of the copy on PYTHONPATH.
    let pytest = python.with_file_name("pytest");
    let result = common::run(
        Command::new(pytest)
            .current_dir(root.join("sdk/python"))
            .args(["-q", "-p", "no:cacheprovider", "tests"])
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
