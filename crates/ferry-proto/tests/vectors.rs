//! The independent check of docs/protocol.md's test vectors: `tests/vectors/check.py`
//! recomputes every vector block with PyPI's `noiseprotocol` and `cryptography`, not with
//! Ferry's code (the unit tests in `src/vectors.rs` check the same blocks against it).
//!
//! The script runs in a virtual environment under the target folder
//! (`target/vectors-venv`), made once with `pip install --require-hashes` from
//! `tests/vectors/requirements.txt` and made again when that file changes. `.ci/run`
//! makes sure `python3` with `venv` and `pip` is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The target folder this test binary was built in (`<target>/<profile>/deps/<binary>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the binary sits in <target>/<profile>/deps")
        .to_path_buf()
}

/// Runs `cmd` to its end, at most `limit`; its output, or why it failed.
fn run(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: still running after {limit:?}"));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what}: {}\n{text}", out.status))
    }
}

/// The virtual environment's python, made (again) when missing or when the pinned
/// requirements changed.
fn venv_python() -> PathBuf {
    let requirements = repo().join("tests/vectors/requirements.txt");
    let pins = std::fs::read_to_string(&requirements).expect("tests/vectors/requirements.txt");
    let venv = target_dir().join("vectors-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("ferry-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&pins) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let python3 = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python3).arg("-m").arg("venv").arg(&venv),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| {
        panic!("cannot make a Python virtual environment (python3 with venv, .ci/run installs it): {e}")
    });
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--require-hashes", "--only-binary=:all:", "-r"])
            .arg(&requirements),
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("cannot install tests/vectors/requirements.txt: {e}"));
    std::fs::write(&stamp, pins).expect("the venv's stamp");
    python
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
        Ok(out) => assert!(out.contains("4 vector blocks"), "{out}"),
        Err(e) => panic!("another implementation disagrees with docs/protocol.md:\n{e}"),
    }
}
