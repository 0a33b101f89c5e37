//! The independent check of docs/protocol.md's test vectors: `tests/vectors/check.py`
//! recomputes every vector block with PyPI's `noiseprotocol` and `cryptography`, not with
//! Ferry's code (the unit tests in `src/vectors.rs` check the same blocks against it).
//!
//! The script runs in a virtual environment under the target folder
//! (`target/vectors-venv`), made once with `pip install --require-hashes` from
//! `tests/vectors/requirements.txt` and made again when that file changes
//! (`ferry_testkit::python_venv`). `.ci/run` makes sure `python3` with `venv` and `pip`
//! is installed.

use std::process::Command;
use std::time::Duration;

use ferry_testkit::python::{python_venv, repo_root as repo, run};

/// The virtual environment's python (see `ferry_testkit::python`).
fn venv_python() -> std::path::PathBuf {
    python_venv("vectors-venv", "tests/vectors/requirements.txt", &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn python_recomputes_the_vectors() {
    let python = venv_python();
    match run(
        Command::new(&python)
            .arg(repo().join("tests/vectors/check.py"))
            .arg(repo().join("docs/protocol.md")),
        Duration::from_secs(120),
    ) {
        Ok(out) => assert!(out.contains("5 vector blocks"), "{out}"),
        Err(e) => panic!("another implementation disagrees with docs/protocol.md:\n{e}"),
    }
}
