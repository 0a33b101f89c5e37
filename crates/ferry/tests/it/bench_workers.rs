//! `ferry bench` workers never die silently: a worker that goes says why (its last
//! report line is `leaving`, with a reason and an exit code), and the run reports what
//! it measured with the others, marked PARTIAL, and exits non-zero.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `bench-worker` children of process `pid`.
fn workers_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("bench-worker") && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out.sort_unstable();
    out
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

#[test]
fn a_worker_killed_mid_run_gives_a_partial_report_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("idle.json");
    let child = Command::new(crate::FERRY)
        .args([
            "bench",
            "--workers",
            "3",
            "--duration",
            "6",
            "--prefix",
            "bwk",
            "--json",
        ])
        .arg(&json)
        .args(["idle", "--connections", "30", "--steps", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ferry bench");
    let pid = child.id();

    // Once the three workers hold their connections (the server's log is quiet; wait
    // for the workers, then give them time to connect 30 links), kill one with SIGKILL
    // (it cannot say anything: its exit status tells) and one with SIGTERM (it says so).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut workers = Vec::new();
    while Instant::now() < deadline {
        workers = workers_of(pid);
        if workers.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(workers.len(), 3, "the bench did not start 3 workers");
    std::thread::sleep(Duration::from_secs(3));
    signal(workers[0], "-KILL");
    signal(workers[1], "-TERM");

    let out = child.wait_with_output().expect("waiting for ferry bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!out.status.success(), "a partial run must fail\n{ctx}");
    assert!(stdout.contains("PARTIAL"), "the table says PARTIAL\n{ctx}");
    assert!(stderr.contains("PARTIAL run"), "{ctx}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report, written"))
            .expect("valid JSON");
    assert_eq!(report["partial"], true, "{report:#}");
    assert_eq!(report["workers"], 3, "{report:#}");
    let failed = report["workers_failed"].as_array().expect("workers_failed");
    assert_eq!(failed.len(), 2, "{report:#}");
    let by_worker = |w: u64| {
        failed
            .iter()
            .find(|f| f["worker"] == w)
            .unwrap_or_else(|| panic!("worker {w} not among the failed: {report:#}"))
    };
    // Worker 0: SIGKILLed, no leaving line; the exit status says what happened.
    let killed = by_worker(0);
    assert!(
        killed["status"].as_str().unwrap().contains("SIGKILL"),
        "{killed:#}"
    );
    assert!(
        killed["reason"]
            .as_str()
            .unwrap()
            .contains("without a leaving line"),
        "{killed:#}"
    );
    assert_eq!(killed["code"], Value::Null, "{killed:#}");
    // Worker 1: SIGTERM, caught; it said so in its leaving line, and on stderr.
    let termed = by_worker(1);
    assert_eq!(termed["reason"], "got SIGTERM", "{termed:#}");
    assert_eq!(termed["code"], 143, "{termed:#}");
    assert!(
        termed["status"].as_str().unwrap().contains("code 143"),
        "{termed:#}"
    );
    assert!(
        termed["stderr_tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("got SIGTERM")),
        "its stderr tail is kept: {termed:#}"
    );
    // What the third worker measured is still there: its connections, heartbeats at
    // the SDK's interval, and the server's memory.
    assert_eq!(report["connections_requested"], 30);
    assert!(report["server_rss_after_kib"].as_u64().unwrap() > 0);
    let hb = &report["heartbeat"];
    assert_eq!(hb["mode"], "smart", "{hb:#}");
    assert!(
        hb["start_interval_secs"]["mean"].as_f64().unwrap() >= 60.0,
        "minutes, not a fixed 30 s: {hb:#}"
    );
}

/// Runs `ferry bench-worker SPEC`; its stdin is closed after `close_after`, or kept
/// open until it has gone (a closed stdin is a reason of its own to leave). Its report
/// lines and exit status.
fn worker_lines(
    spec: &str,
    close_after: Option<Duration>,
) -> (Vec<Value>, std::process::ExitStatus) {
    let mut child = Command::new(crate::FERRY)
        .args(["bench-worker", spec])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a bench worker");
    let input = child.stdin.take().unwrap();
    let closer = close_after.map(|d| {
        std::thread::spawn(move || {
            std::thread::sleep(d);
            drop(input);
        })
    });
    let mut lines = Vec::new();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().take(10_000) {
        let line = line.unwrap();
        if line.trim().is_empty() {
            continue;
        }
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let status = child.wait().unwrap();
    if let Some(t) = closer {
        t.join().unwrap();
    }
    (lines, status)
}

#[test]
fn a_worker_always_says_why_it_leaves() {
    // An unreadable spec.
    let (lines, st) = worker_lines("{not json", None);
    let last = lines.last().expect("a leaving line");
    assert_eq!(last["type"], "leaving", "{lines:?}");
    assert!(last["reason"].as_str().unwrap().contains("spec"), "{last}");
    assert_eq!(st.code(), Some(2));
    assert_eq!(last["code"], 2);

    // A scenario it does not know: the error, then leaving with code 1.
    let spec = serde_json::json!({
        "scenario": "nonsense", "protocol": "ferry", "servers": ["127.0.0.1:9"],
        "worker": 0, "first_user": 0, "users": 0, "prefix": "x", "password": "p",
        "domain": "localhost", "rate_per_conn": null, "window": 1,
    })
    .to_string();
    let (lines, st) = worker_lines(&spec, None);
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    assert!(types.contains(&"error"), "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "leaving", "{lines:?}");
    assert!(last["reason"].as_str().unwrap().contains("nonsense"));
    assert_eq!(st.code(), Some(1));

    // Its orchestrator gone (stdin closed before Stop) while it waits on a server that
    // accepts and never answers (10 s before that fails): it leaves at once, saying so.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the worker opens one connection, maybe a few.
        for s in silent.incoming().take(16).flatten() {
            held.push(s);
        }
    });
    let idle = spec
        .replace("nonsense", "idle")
        .replace("127.0.0.1:9", &addr)
        .replace("\"users\":0", "\"users\":1");
    assert!(
        idle.contains(&addr) && idle.contains("\"users\":1"),
        "{idle}"
    );
    let t0 = Instant::now();
    let (lines, st) = worker_lines(&idle, Some(Duration::from_millis(300)));
    let last = lines.last().expect("a leaving line");
    assert_eq!(last["type"], "leaving", "{lines:?}");
    assert_eq!(last["code"], 4, "{last}");
    assert!(
        last["reason"].as_str().unwrap().contains("before Stop"),
        "{last}"
    );
    assert_eq!(st.code(), Some(4));
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}
