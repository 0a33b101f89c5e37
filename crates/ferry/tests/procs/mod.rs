//! Processes for the cluster tests: a `nats-server` of the test's own on a free port, a
//! throw-away PostgreSQL database on 127.0.0.1:5432, and `ferry gateway` / `ferry logic`
//! nodes — each killed or dropped when the test ends. Shared by tests/cluster.rs and
//! tests/cluster_media.rs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` of our own; killed on drop.
pub struct Nats {
    pub child: Child,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Kills the server and starts a new one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        *self = Self::start_on(port);
    }

    pub fn start_on(port: u16) -> Self {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nats { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nats-server did not come up on port {port}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throw-away PostgreSQL database; dropped on drop.
pub struct Db {
    admin: String,
    name: String,
}

pub fn pg_admin() -> String {
    if let Ok(url) = std::env::var("FERRY_TEST_PG") {
        return url;
    }
    for user in ["postgres", "root"] {
        let url = format!("host=127.0.0.1 port=5432 user={user} dbname=test connect_timeout=5");
        if block_on_pg(&url, "SELECT 1").is_ok() {
            return url;
        }
    }
    panic!("no PostgreSQL on 127.0.0.1:5432 (user postgres or root, database test)");
}

pub fn block_on_pg(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
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

impl Db {
    pub fn create() -> Self {
        let admin = pg_admin();
        let name = format!("ferry_t_{:016x}", rand::random::<u64>());
        block_on_pg(&admin, &format!("CREATE DATABASE {name}")).unwrap();
        Db { admin, name }
    }

    pub fn url(&self) -> String {
        self.admin
            .replace("dbname=test", &format!("dbname={}", self.name))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = block_on_pg(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// A `ferry gateway` or `ferry logic` process; SIGKILLed on drop.
pub struct Node {
    pub child: Child,
    /// The gateway's listen address (empty for logic nodes).
    pub addr: String,
}

impl Node {
    pub fn spawn(args: &[&str], config: &Path, ready: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut addr = String::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("{args:?} exited before it was ready");
            }
            if let Some(a) = line.trim().strip_prefix("ferry listening on ") {
                addr = a.to_owned();
            }
            if line.starts_with(ready) {
                break;
            }
        }
        Node { child, addr }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for the graceful exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not exit within 5 s of SIGTERM");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
