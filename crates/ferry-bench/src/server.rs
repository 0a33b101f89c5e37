//! The bench's own server: `ferry serve` as a child process on 127.0.0.1, with a
//! temporary data folder and cheap password hashing (so thousands of bench users
//! register in seconds). Being a child, its PID is known (memory from /proc) and it can
//! be SIGKILLed and restarted on the same port and data (the reconnect scenario).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct OwnServer {
    child: Child,
    /// `IP:PORT` it listens on (fixed after the first start, so restarts keep it).
    pub addr: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The data folder (in `dir` unless the caller chose one).
    data: PathBuf,
}

impl OwnServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start(durability: &str) -> anyhow::Result<OwnServer> {
        OwnServer::start_with(durability, None, "").await
    }

    /// As [`OwnServer::start`], with the data folder at `data` (e.g. on a small file
    /// system) and `extra` appended to the config file (TOML).
    pub async fn start_with(
        durability: &str,
        data: Option<PathBuf>,
        extra: &str,
    ) -> anyhow::Result<OwnServer> {
        OwnServer::start_logic(durability, data, "", extra).await
    }

    /// As [`OwnServer::start_with`], with `logic` (TOML keys) added to its `[logic]`
    /// table.
    pub async fn start_logic(
        durability: &str,
        data: Option<PathBuf>,
        logic: &str,
        extra: &str,
    ) -> anyhow::Result<OwnServer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-")
            .tempdir()
            .context("making a temporary data folder")?;
        let config = dir.path().join("ferry.toml");
        let text = bench_config(durability, logic, extra)?;
        std::fs::write(&config, text)?;
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let mut me = OwnServer {
            child: spawn(&config, &data, "127.0.0.1:0", &dir)?,
            addr: String::new(),
            dir,
            config,
            data,
        };
        let log = me.log();
        me.addr = wait_listening(&mut me.child, &log).await?;
        Ok(me)
    }

    /// The server's data folder.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// The body of `GET path` on the server's port, with its admin token (`None` when
    /// the request fails or is not answered 200 within 10 s).
    pub async fn admin_get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let token = std::fs::read_to_string(self.data.join("admin-token")).ok()?;
        let mut s = tokio::net::TcpStream::connect(&self.addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL: no shutdown, no drain, as a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("killing the server")?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(())
    }

    /// Starts the server again on the same address and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let log = self.log();
        let child = rebinding(|| async {
            let mut child = spawn(&self.config, &self.data, &self.addr, &self.dir)?;
            match wait_listening(&mut child, &log).await {
                Ok(_) => Ok(child),
                Err(e) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    Err(e)
                }
            }
        })
        .await?;
        self.child = child;
        Ok(())
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not left within 10 s.
    pub async fn stop(self) {
        terminate(self.child).await;
    }

    /// The last lines the server logged (for error messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

/// The config file of the bench's servers: durability as asked, every per-address and
/// per-user limit lifted (a load test comes from one address), cheap password hashing,
/// with `logic` (TOML keys) added to `[logic]` and `extra` appended; then the file
/// `FERRY_BENCH_SERVER_CONFIG` names, if set, merged over it (its keys win), to bench
/// other settings than the defaults.
pub fn bench_config(durability: &str, logic: &str, extra: &str) -> anyhow::Result<String> {
    let text = format!(
        "durability = {durability:?}\n\
         [gateway]\nmax_connections_per_ip = 0\n\
         [logic]\nopen_messaging = true\n{logic}\n\
         [logic.limits]\nauth_per_user = {{ per_sec = 0.0, burst = 0.0 }}\n\
         auth_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
         register_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
         login_per_ip = {{ per_sec = 0.0, burst = 0.0 }}\n\
         sends_per_user = {{ per_sec = 0.0, burst = 0.0 }}\n\
         [logic.password]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n\
         {extra}\n"
    );
    let Some(path) = std::env::var_os("FERRY_BENCH_SERVER_CONFIG") else {
        return Ok(text);
    };
    let own = std::fs::read_to_string(&path)
        .with_context(|| format!("reading FERRY_BENCH_SERVER_CONFIG ({path:?})"))?;
    let own: toml::Table = own
        .parse()
        .with_context(|| format!("FERRY_BENCH_SERVER_CONFIG ({path:?})"))?;
    let mut config: toml::Table = text.parse().context("the bench's own config")?;
    merge(&mut config, own);
    Ok(toml::to_string(&config)?)
}

/// `over`'s keys into `base`, tables merged key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Runs `start` (a process binding a port that was just released) until it works:
/// binding the port again may need a few tries. 50 tries, 100 ms apart.
pub(crate) async fn rebinding<T, F, Fut>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    const TRIES: usize = 50;
    for attempt in 1.. {
        match start().await {
            Ok(t) => return Ok(t),
            Err(e) if attempt < TRIES => {
                tracing::debug!(error = %e, attempt, "restart failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.context(format!("not restarted after {TRIES} tries"))),
        }
    }
    unreachable!("the loop returns")
}

/// SIGTERM to a child, then SIGKILL if it has not left within 10 s.
#[allow(unsafe_code)] // kill(2)
pub async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a PID we own (our child, not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

fn spawn(
    config: &std::path::Path,
    data: &std::path::Path,
    listen: &str,
    dir: &tempfile::TempDir,
) -> anyhow::Result<Child> {
    let args = [
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        listen.as_ref(),
    ];
    ferry_child(&args, &dir.path().join("server.log"), None)
}

/// A `ferry` child of the bench (the executable it runs in) with `args`: stderr appended
/// to `log`, stdout piped for [`wait_ready`], in `cwd` if given, killed when dropped.
/// Its log filter is `FERRY_BENCH_SERVER_LOG` (default `warn`), and it takes plaintext
/// links: the bench speaks plaintext frames where it measures the protocol's own
/// figures; the encrypted link has its own measurements.
pub(crate) fn ferry_child(
    args: &[&std::ffi::OsStr],
    log: &Path,
    cwd: Option<&Path>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("FERRY_ALLOW_PLAINTEXT", "true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.spawn()
        .with_context(|| format!("starting ferry {}", args[0].to_string_lossy()))
}

/// Reads a [`ferry_child`]'s stdout until a line holding `ready` (30 s at most) and
/// keeps draining it after. Returns the last `ferry listening on ADDR` address seen up
/// to and including that line, if any. The error carries the tail of its `log`.
pub(crate) async fn wait_ready(
    child: &mut Child,
    ready: &str,
    log: &Path,
) -> anyhow::Result<Option<String>> {
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut addr = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(a) = line.strip_prefix("ferry listening on ") {
                addr = Some(a.trim().to_owned());
            }
            if line.contains(ready) {
                return Ok::<_, std::io::Error>(Some(addr));
            }
        }
        Ok(None)
    })
    .await;
    let addr = match found {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => bail!("it exited before {ready:?}:\n{}", tail(log)),
        Ok(Err(e)) => bail!("reading its output: {e}"),
        Err(_) => bail!("no {ready:?} within 30 s:\n{}", tail(log)),
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

/// Reads `ferry serve`'s stdout until `ferry listening on ADDR`: that address.
async fn wait_listening(child: &mut Child, log: &Path) -> anyhow::Result<String> {
    wait_ready(child, "ferry listening on ", log)
        .await
        .context("ferry serve did not start listening")?
        .context("ferry serve named no address")
}

/// The last 10 lines of a log file (for error messages).
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time a process has used (user + system), in microseconds, from `/proc/PID/stat`.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after its closing one. utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // Linux reports them in USER_HZ, 100 a second on every common configuration.
    Some((utime + stime) * 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of one's own is merged table by table over the bench's config, also into
    /// a table a scenario wrote itself (overload's `[logic.admission]`), its keys winning.
    #[test]
    fn an_own_config_is_merged_over_the_benchs() {
        let text = bench_config("fsync", "", "[logic.admission]\nmax_in_flight = 128\n").unwrap();
        let mut config: toml::Table = text.parse().unwrap();
        let own: toml::Table = "[logic.admission]\nnew_session_retry_min_ms = 1000\n\
                                [logic.password]\nmemory_kib = 64\n\
                                [gateway]\nmax_handshakes = 8\n"
            .parse()
            .unwrap();
        merge(&mut config, own);
        let back: toml::Table = toml::to_string(&config).unwrap().parse().unwrap();
        let logic = back["logic"].as_table().unwrap();
        let admission = logic["admission"].as_table().unwrap();
        assert_eq!(admission["max_in_flight"].as_integer(), Some(128));
        assert_eq!(
            admission["new_session_retry_min_ms"].as_integer(),
            Some(1000)
        );
        assert_eq!(logic["password"]["memory_kib"].as_integer(), Some(64));
        assert_eq!(logic["password"]["iterations"].as_integer(), Some(1));
        assert_eq!(logic["open_messaging"].as_bool(), Some(true));
        let gateway = back["gateway"].as_table().unwrap();
        assert_eq!(gateway["max_handshakes"].as_integer(), Some(8));
        assert_eq!(gateway["max_connections_per_ip"].as_integer(), Some(0));
        assert_eq!(back["durability"].as_str(), Some("fsync"));
    }
}
