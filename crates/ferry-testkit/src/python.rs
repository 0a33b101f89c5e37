//! Python virtual environments for the tests that check Ferry against another
//! implementation or run a server written in Python (moto for S3, the protocol vectors'
//! second implementation, the Web Push decryption check).
//!
//! A venv lives under the target folder (`target/<name>`), made with
//! `python3 -m venv` and `pip install --require-hashes -r <requirements>` (exact
//! versions, each file's SHA-256), and made again when the requirements file changes (a
//! copy of it in the venv is the stamp). It is made in a folder of its own and then
//! renamed into place, so two test processes never share a half-made one. `.ci/run`
//! makes sure `python3` with `venv` and `pip` is installed; `FERRY_PYTHON` names
//! another interpreter.
//!
//! It must not skip: when the venv cannot be had (no python3, no registry, a hash that
//! does not match) the caller gets the reason and its test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The target folder the running test binary was built in
/// (`<target>/<profile>/deps/<binary>`).
pub fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the test binary's path: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))
}

/// Runs `cmd` (stdin closed) to its end, at most `limit`: its stdout and stderr, or why
/// it failed (with both).
pub fn run(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    // Read the pipes while waiting, so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = std::io::Read::read_to_end(o, &mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = std::io::Read::read_to_end(e, &mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: still running after {limit:?}"));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if status.success() {
        Ok(format!("{stdout}{stderr}"))
    } else {
        Err(format!("{what}: {status}\n{stdout}{stderr}"))
    }
}

/// The python of the venv `target/<name>` with `requirements` (a path from the
/// repository's root) installed, made (again) when missing or when the requirements
/// changed. `pip_args` go to `pip install` before `--require-hashes -r <file>` (e.g.
/// `--only-binary=:all:`). Run tools through that python (`python -m tool`, or
/// `python -c`): the venv is made under a temporary name and then moved into place, so
/// the `#!` lines of its scripts (`bin/pytest`, …) name a folder that is gone.
pub fn python_venv(name: &str, requirements: &str, pip_args: &[&str]) -> Result<PathBuf, String> {
    let requirements = repo_root().join(requirements);
    let pins = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let venv = target_dir()?.join(name);
    let stamp = "ferry-requirements.txt";
    let ready = |dir: &Path| {
        dir.join("bin/python").exists()
            && std::fs::read_to_string(dir.join(stamp)).ok().as_deref() == Some(pins.as_str())
    };
    if ready(&venv) {
        return Ok(venv.join("bin/python"));
    }
    let fresh = venv.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    let python3 = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python3).args(["-m", "venv"]).arg(&fresh),
        Duration::from_secs(120),
    )
    .map_err(|e| {
        format!("cannot make a Python virtual environment (python3 with venv; .ci/run installs it): {e}")
    })?;
    run(
        Command::new(fresh.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(pip_args)
            .args(["--require-hashes", "-r"])
            .arg(&requirements),
        Duration::from_secs(600),
    )
    .map_err(|e| format!("cannot install {}: {e}", requirements.display()))?;
    std::fs::write(fresh.join(stamp), &pins).map_err(|e| e.to_string())?;
    if !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
        // Another process may have put its own in place meanwhile: then use that one.
        if std::fs::rename(&fresh, &venv).is_err() && !ready(&venv) {
            return Err(format!("cannot move the venv to {}", venv.display()));
        }
    }
    let _ = std::fs::remove_dir_all(&fresh);
    Ok(venv.join("bin/python"))
}
