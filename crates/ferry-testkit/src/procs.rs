//! Processes the tests start and own: a free port, a `nats-server` of the test's own
//! (as async-nats' own tests do), and `ferry` processes (cluster nodes, a server to
//! SIGKILL). Every child is killed when its value drops, also when the test panics.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now (the kernel's pick, released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` of our own on 127.0.0.1; killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
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

    /// Kills the server (SIGKILL: the bus loses it without a word).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server and starts a new one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        *self = Self::start_on(port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `ferry` process (`serve`, `gateway`, `logic`); SIGKILLed on drop.
pub struct Node {
    pub child: Child,
    /// The address from its `ferry listening on …` line (empty for logic nodes).
    pub addr: String,
}

impl Node {
    /// Starts `cmd` (the `ferry` binary with its arguments; the test knows its path,
    /// `env!("CARGO_BIN_EXE_ferry")`) and waits for a line of its standard output that
    /// starts with `ready`.
    pub fn spawn(cmd: &mut Command, ready: &str) -> Node {
        let mut child = cmd
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the ferry binary");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut addr = String::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} exited before it was ready");
            }
            if let Some(a) = line.trim().strip_prefix("ferry listening on ") {
                addr = a.to_owned();
            }
            if line.starts_with(ready) {
                break;
            }
        }
        // Keep reading what it prints, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Node { child, addr }
    }

    /// SIGKILL: no shutdown code runs.
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
