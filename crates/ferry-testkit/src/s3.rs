//! A real S3-compatible server for the media tests: moto's server mode (PyPI's `moto`,
//! `python -m moto.server`), started once per test process on a free loopback port.
//! Every test takes a bucket of its own ([`S3Server::bucket`]).
//!
//! moto runs in a virtual environment under the target folder (`target/s3-venv`), made
//! once with `pip install --require-hashes --only-binary=:all:` from
//! `tests/s3/requirements.txt` (exact versions, each wheel's SHA-256) and made again
//! when that file changes ([`crate::python::python_venv`]).
//! `.ci/run` makes sure `python3` with `venv` is installed. When the server cannot be
//! had (no python3, no venv, no registry, a server that never answers) the test that
//! asked for it fails with the reason: it never skips.
//!
//! Nothing is left behind: the server is started with `PR_SET_PDEATHSIG`, so it dies
//! with the test process however that ends, and an `atexit` hook stops it at a normal
//! exit. Its log is `<tmp>/ferry-testkit/moto-<pid>.log`.

// prctl(2), kill(2) and atexit(3) through libc, as in `pg.rs`.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::procs::free_port;

/// Access key and secret the tests sign with (moto accepts any).
pub const ACCESS_KEY_ID: &str = "ferry-test";
pub const SECRET_ACCESS_KEY: &str = "ferry-test-secret";
pub const REGION: &str = "us-east-1";

/// The running moto server of this test process.
pub struct S3Server {
    pub port: u16,
}

static SERVER: OnceLock<S3Server> = OnceLock::new();
static PID: AtomicU32 = AtomicU32::new(0);
static EXITED: AtomicBool = AtomicBool::new(false);

/// The server of this test process, started on first use. Panics (the test fails) when
/// it cannot be started, saying why.
pub fn s3() -> &'static S3Server {
    SERVER.get_or_init(S3Server::start)
}

impl S3Server {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new empty bucket (`ferry-t-<random>`), its name.
    pub fn bucket(&self) -> String {
        let name = format!("ferry-t-{:016x}", rand::random::<u64>());
        let (status, body) = request(self.port, "PUT", &format!("/{name}"))
            .unwrap_or_else(|e| panic!("creating bucket {name} on moto: {e}"));
        assert_eq!(status, 200, "creating bucket {name} on moto: {body}");
        name
    }

    /// The keys in `bucket` under `prefix` (up to 1000; moto checks no signature on
    /// listings either).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = request(
            self.port,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        )
        .unwrap_or_else(|e| panic!("listing bucket {bucket}: {e}"));
        assert_eq!(status, 200, "listing bucket {bucket}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    fn start() -> S3Server {
        let python = venv_python().unwrap_or_else(|e| panic!("no S3 test server (moto): {e}"));
        let root = std::env::temp_dir().join("ferry-testkit");
        let _ = std::fs::create_dir_all(&root);
        let log = root.join(format!("moto-{}.log", std::process::id()));
        for _ in 0..5 {
            let port = free_port();
            match spawn(&python, port, &log) {
                Ok(()) => {
                    // SAFETY: registers a plain `extern "C"` function with no arguments.
                    unsafe { libc::atexit(stop_at_exit) };
                    return S3Server { port };
                }
                Err(e) if e.contains("exited") => continue, // the port was taken: again
                Err(e) => panic!("{e}"),
            }
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("moto did not start (its log, {}):\n{text}", log.display());
    }
}

fn request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    Ok((status, answer))
}

/// Starts moto on `port` from a thread that lives as long as the process (the parent
/// `PR_SET_PDEATHSIG` watches is the thread that forked) and waits until it answers.
fn spawn(python: &Path, port: u16, log: &Path) -> Result<(), String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    EXITED.store(false, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ferry-testkit-moto".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            PID.store(child.id(), Ordering::SeqCst);
            let _ = tx.send(Ok(()));
            let _ = child.wait();
            EXITED.store(true, Ordering::SeqCst);
        })
        .map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("running {} -m moto.server: {e}", python.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if EXITED.load(Ordering::SeqCst) {
            return Err("moto exited before it answered".into());
        }
        if matches!(request(port, "GET", "/"), Ok((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!(
        "moto did not answer on port {port} within 60 s (its log):\n{text}"
    ))
}

fn stop() {
    let pid = PID.load(Ordering::SeqCst);
    if pid != 0 && !EXITED.load(Ordering::SeqCst) {
        // SAFETY: a signal to the child we started, not yet reaped (EXITED is not set).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

extern "C" fn stop_at_exit() {
    stop();
}

/// The venv's python with moto installed (see [`crate::python`]).
fn venv_python() -> Result<PathBuf, String> {
    crate::python::python_venv(
        "s3-venv",
        "tests/s3/requirements.txt",
        &["--only-binary=:all:"],
    )
}
