//! A throw-away PostgreSQL server, so that the PostgreSQL and cluster tests need no
//! server set up beforehand: the first [`Db::create`] of a test process runs `initdb`
//! into a temporary folder and starts `postgres` on a free loopback port (trust
//! authentication, superuser `postgres`, durability off: a test's data never has to
//! survive a crash of the machine). Every test gets a fresh database of its own, dropped
//! when its [`Db`] drops.
//!
//! The server binaries are the installed ones: `FERRY_PG_BIN` (a folder), else the
//! newest `/usr/lib/postgresql/*/bin` (Debian's layout), else `pg_config --bindir`, else
//! the folder of `initdb` on the PATH. PostgreSQL refuses to run as root: when the tests
//! run as root, the folder is handed to the `postgres` system user and both programs
//! run as that user.
//!
//! Nothing is left behind. The postmaster is started by a thread that lives as long as
//! the process, with `PR_SET_PDEATHSIG` (SIGINT, PostgreSQL's fast shutdown): when the
//! test process ends in any way — even SIGKILL — the kernel stops the server. At a
//! normal exit an `atexit` hook also stops it and removes its folder; a folder left by a
//! process that was killed is removed by the next test process that starts a server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::procs::free_port;

/// The running server of this test process.
pub struct Postgres {
    pub port: u16,
    /// `<tmp>/ferry-testkit/pg-<pid>-<nonce>`: the data folder and the server's log.
    folder: PathBuf,
    pid: u32,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
/// Set by the thread that owns the postmaster once it has exited (and been reaped).
static STOPPED: AtomicBool = AtomicBool::new(false);

/// The server of this test process, started on first use.
pub fn postgres() -> &'static Postgres {
    SERVER.get_or_init(Postgres::start)
}

impl Postgres {
    /// The admin connection string (database `postgres`).
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// A connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5",
            self.port
        )
    }

    /// Runs `sql` on the admin connection. Works from any thread, async or not: it runs
    /// on a thread and runtime of its own.
    pub fn execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        execute(&self.admin_url(), sql)
    }

    fn start() -> Postgres {
        let bin = bin_dir();
        let root = std::env::temp_dir().join("ferry-testkit");
        std::fs::create_dir_all(&root).unwrap();
        // Shared by every user's test runs, like /tmp itself.
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
        remove_stale(&root);
        let folder = root.join(format!(
            "pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&folder).unwrap();
        let user = run_as();
        if let Some((uid, gid)) = user {
            chown(&folder, uid, gid);
        }
        let data = folder.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        let out = as_user(&mut initdb, user, &folder)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken by someone else before the server binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            if let Some(pid) = spawn_postmaster(&bin, &folder, port, user) {
                let pg = Postgres { port, folder, pid };
                // SAFETY: registers a plain `extern "C"` function with no arguments.
                unsafe { libc::atexit(stop_at_exit) };
                return pg;
            }
        }
        let log = std::fs::read_to_string(folder.join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start (its log):\n{log}");
    }
}

/// Starts the postmaster on `port` from a thread that outlives every test (the parent
/// that `PR_SET_PDEATHSIG` watches is the thread that forked, not the process). Returns
/// its pid once it answers a query, None when it exited first.
fn spawn_postmaster(bin: &Path, folder: &Path, port: u16, user: Option<(u32, u32)>) -> Option<u32> {
    let log = std::fs::File::create(folder.join("log")).unwrap();
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(folder.join("data"))
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", folder.display()))
        // Durability off: throw-away data, and fast CREATE DATABASE and commits.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        // Many tests at once, each with pools of a few connections per logic node.
        .args(["-c", "max_connections=400"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    as_user(&mut cmd, user, folder);
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs in the child
    // between fork and exec. It runs after the switch of user (which would clear it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ferry-testkit-postgres".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(child.id()));
            let _ = child.wait();
            STOPPED.store(true, Ordering::SeqCst);
        })
        .unwrap();
    let pid = match rx.recv().unwrap() {
        Ok(pid) => pid,
        Err(e) => panic!("running {}: {e}", bin.join("postgres").display()),
    };
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if STOPPED.swap(false, Ordering::SeqCst) {
            return None; // It exited (the port was taken, or worse: see the log).
        }
        if execute(&url, "SELECT 1").is_ok() {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Up but not answering for 30 s: give up on this one.
    // SAFETY: a signal to the child we started, not yet reaped (STOPPED is not set).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    while !STOPPED.swap(false, Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// At a normal exit: a fast shutdown, then the folder goes.
extern "C" fn stop_at_exit() {
    let Some(pg) = SERVER.get() else { return };
    // SAFETY: a signal to the postmaster we started (its pid is not reused: our own
    // thread has not reaped it until STOPPED is set).
    unsafe { libc::kill(pg.pid as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !STOPPED.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&pg.folder);
}

/// Removes the folders of test processes that are gone (killed before their exit hook).
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pg-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The uid and gid to run PostgreSQL as: the `postgres` system user when we are root
/// (PostgreSQL refuses root), else None (ourselves).
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = c"postgres";
    // SAFETY: a valid C string; the result is read at once, before any other getpw* call
    // of this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root and there is no `postgres` user to run PostgreSQL as \
         (apt-get install postgresql creates it)"
    );
    // SAFETY: not null, checked above.
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

/// Runs `cmd` as `user` (when given) from `folder`, which that user owns (the test's
/// working folder may be closed to it).
fn as_user<'a>(cmd: &'a mut Command, user: Option<(u32, u32)>, folder: &Path) -> &'a mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.current_dir(folder)
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Where `initdb` and `postgres` are.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_PG_BIN") {
        return PathBuf::from(dir);
    }
    // Debian: /usr/lib/postgresql/<major>/bin, the newest major.
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return dir;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(initdb) = dir.join("initdb").canonicalize() {
                return initdb.parent().unwrap().to_path_buf();
            }
        }
    }
    panic!(
        "no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql, \
         or set FERRY_PG_BIN to their folder"
    );
}

/// Runs `sql` on `url` on a thread and runtime of its own.
fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client.batch_execute(&sql).await
        })
    })
    .join()
    .unwrap()
}

/// A fresh database on the test process's server; dropped on drop (even after a panic).
pub struct Db {
    name: String,
}

impl Db {
    pub fn create() -> Self {
        let name = format!("ferry_t_{:016x}", rand::random::<u64>());
        postgres()
            .execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Db { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's port (to put a proxy in front of it).
    pub fn port(&self) -> u16 {
        postgres().port
    }

    /// The connection string of this database.
    pub fn url(&self) -> String {
        postgres().url(&self.name)
    }

    /// The connection string of this database through `port` on 127.0.0.1 (a proxy's).
    pub fn url_via(&self, port: u16) -> String {
        self.url()
            .replace(&format!("port={}", self.port()), &format!("port={port}"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = postgres().execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}
