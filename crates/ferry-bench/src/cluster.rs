//! The bench's own cluster, for loads one process cannot hold (each process here may
//! keep at most 20 000 files open, so 20 000 links need more than one gateway): a
//! `nats-server` of its own on a free loopback port, a fresh database on the PostgreSQL
//! it is given, `logics` logic nodes and `gateways` gateways, all children of the bench
//! with the bench's cheap passwords and lifted limits. [`OwnCluster::kill`] SIGKILLs
//! every Ferry process (not NATS, not PostgreSQL: they stand for the infrastructure a
//! crash leaves running) and [`OwnCluster::restart`] starts them again on the same
//! ports and database, as the reconnect scenario needs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::server::{bench_config, ferry_child, rebinding, tail, wait_ready};

/// One Ferry process of the cluster: how to start it again, and the running child.
struct Node {
    /// `logic`, or `gateway --id gw-N --listen ADDR`.
    args: Vec<String>,
    /// The line on its stdout that says it is ready.
    ready: &'static str,
    /// Its log file (stderr), for error messages.
    log: PathBuf,
    child: Option<Child>,
}

pub struct OwnCluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    nats: Child,
    logics: Vec<Node>,
    gateways: Vec<Node>,
    /// `IP:PORT` of each gateway (fixed after the first start).
    pub addrs: Vec<String>,
    admin_url: String,
    db: String,
}

impl OwnCluster {
    /// Starts NATS, makes a database on the PostgreSQL at `admin_url` (a libpq URL of a
    /// database to connect to while creating it), then the logic nodes and the gateways.
    pub async fn start(
        durability: &str,
        admin_url: &str,
        gateways: usize,
        logics: usize,
    ) -> anyhow::Result<OwnCluster> {
        anyhow::ensure!(
            gateways >= 1 && logics >= 1,
            "a cluster needs a gateway and a logic node"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-cluster-")
            .tempdir()
            .context("making a temporary folder")?;
        let nats_port = free_port()?;
        let nats = start_nats(dir.path(), nats_port).await?;
        let db = format!(
            "ferry_bench_{}_{}",
            std::process::id(),
            super::unix_s() as u64 % 1_000_000
        );
        admin(admin_url, &format!("CREATE DATABASE {db}")).await?;
        let db_url = with_dbname(admin_url, &db);
        let config = dir.path().join("ferry.toml");
        let text = format!(
            "{}\n[cluster]\nnats = \"nats://127.0.0.1:{nats_port}\"\npostgres = {db_url:?}\n",
            bench_config(durability, "", "")?
        );
        std::fs::write(&config, text)?;
        let mut me = OwnCluster {
            config,
            nats,
            logics: (0..logics)
                .map(|i| Node {
                    args: vec!["logic".into()],
                    ready: "ferry logic ready",
                    log: dir.path().join(format!("logic-{i}.log")),
                    child: None,
                })
                .collect(),
            gateways: Vec::new(),
            addrs: Vec::new(),
            dir,
            admin_url: admin_url.into(),
            db,
        };
        me.start_logics().await?;
        for i in 0..gateways {
            let id = format!("gw-{i}");
            let mut node = Node {
                args: vec![
                    "gateway".into(),
                    "--id".into(),
                    id.clone(),
                    "--listen".into(),
                ],
                ready: "ferry gateway ",
                log: me.dir.path().join(format!("{id}.log")),
                child: None,
            };
            node.args.push("127.0.0.1:0".into());
            let addr = me.spawn(&mut node).await?;
            let addr = addr.context("the gateway named no address")?;
            // Restarts listen where the first start did.
            *node.args.last_mut().expect("the listen address") = addr.clone();
            me.addrs.push(addr);
            me.gateways.push(node);
        }
        Ok(me)
    }

    /// Every Ferry process's PID (gateways first).
    pub fn pids(&self) -> Vec<u32> {
        self.gateways
            .iter()
            .chain(&self.logics)
            .filter_map(|n| n.child.as_ref()?.id())
            .collect()
    }

    /// SIGKILL to every gateway and logic node at once: no drain, as a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        for n in self.gateways.iter_mut().chain(&mut self.logics) {
            if let Some(c) = n.child.as_mut() {
                c.start_kill().context("killing a cluster node")?;
            }
        }
        for n in self.gateways.iter_mut().chain(&mut self.logics) {
            if let Some(mut c) = n.child.take() {
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
        }
        Ok(())
    }

    /// Starts the logic nodes, then the gateways on their old addresses (each started
    /// side by side, as a restarted machine's service manager would).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.start_logics().await?;
        let mut gateways = std::mem::take(&mut self.gateways);
        let started = futures_util::future::join_all(gateways.iter_mut().map(|n| {
            let this = &*self;
            async move {
                let (child, _) = rebinding(|| this.start_node(n)).await?;
                n.child = Some(child);
                anyhow::Ok(())
            }
        }))
        .await;
        self.gateways = gateways;
        started.into_iter().collect()
    }

    async fn start_logics(&mut self) -> anyhow::Result<()> {
        let mut logics = std::mem::take(&mut self.logics);
        let started =
            futures_util::future::join_all(logics.iter_mut().map(|n| self.spawn(n))).await;
        self.logics = logics;
        for r in started {
            r?;
        }
        Ok(())
    }

    /// Starts `node` and waits for its ready line; the address it printed last, if any.
    async fn spawn(&self, node: &mut Node) -> anyhow::Result<Option<String>> {
        let (child, addr) = self.start_node(node).await?;
        node.child = Some(child);
        Ok(addr)
    }

    /// A running `node` that said it is ready, and the address it printed last.
    async fn start_node(&self, node: &Node) -> anyhow::Result<(Child, Option<String>)> {
        let mut args: Vec<&std::ffi::OsStr> = node.args.iter().map(|a| a.as_ref()).collect();
        args.extend(["--config".as_ref(), self.config.as_os_str()]);
        // Each node's data folder (server key, admin token, search index) is
        // `ferry-data` under the cluster's folder: the gateways share the key.
        let mut child = ferry_child(&args, &node.log, Some(self.dir.path()))?;
        let addr = wait_ready(&mut child, node.ready, &node.log)
            .await
            .with_context(|| format!("starting `ferry {}`", node.args[0]))?;
        Ok((child, addr))
    }

    /// The last lines every node logged (for error messages).
    pub fn log_tail(&self) -> String {
        self.logics
            .iter()
            .chain(&self.gateways)
            .map(|n| format!("{}:\n{}", n.log.display(), tail(&n.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to every node (gateways first), NATS stopped, the database dropped.
    pub async fn stop(mut self) {
        for n in self.gateways.iter_mut().chain(&mut self.logics) {
            if let Some(c) = n.child.take() {
                super::server::terminate(c).await;
            }
        }
        let _ = self.nats.start_kill();
        let _ = self.nats.wait().await;
        if let Err(e) = admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        )
        .await
        {
            eprintln!("could not drop the bench's database {}: {e:#}", self.db);
        }
    }
}

/// A port free on 127.0.0.1 just now.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn start_nats(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-l"])
        .arg(dir.join("nats.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server (apt-get install nats-server)")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("nats-server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not listen on port {port} within 5 s")
}

/// Runs one statement on the PostgreSQL at `url`.
async fn admin(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({url}); --postgres says where"))?;
    let task = tokio::spawn(conn);
    let done = client
        .batch_execute(sql)
        .await
        .with_context(|| sql.to_owned());
    drop(client);
    let _ = task.await;
    done
}

/// `url` (key=value form) with its `dbname` set to `db`.
fn with_dbname(url: &str, db: &str) -> String {
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|p| !p.starts_with("dbname="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("dbname={db}"));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn the_database_name_is_replaced_or_added() {
        assert_eq!(
            with_dbname("host=127.0.0.1 user=postgres dbname=test", "b1"),
            "host=127.0.0.1 user=postgres dbname=b1"
        );
        assert_eq!(
            with_dbname("host=/tmp port=5433", "b2"),
            "host=/tmp port=5433 dbname=b2"
        );
    }
}
