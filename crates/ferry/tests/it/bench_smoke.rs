//! A short run of every `ferry bench` scenario through the built binary, so the tool
//! cannot rot: each must finish, write its JSON with the figures, and lose or duplicate
//! nothing. Numbers are small and runs last seconds; the speed figures are not judged
//! here (benchmarks, not timed tests).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(dir: &Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(crate::FERRY)
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--prefix")
        .arg(format!("s{name}"))
        .output()
        .expect("running ferry bench");
    assert!(
        out.status.success(),
        "ferry bench {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    serde_json::from_str(&text).expect("valid JSON")
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

#[test]
fn every_scenario_runs_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();

    let idle = bench(
        dir.path(),
        "idle",
        &[
            "idle",
            "--connections",
            "60",
            "--steps",
            "2",
            "--duration",
            "1",
        ],
    );
    assert_eq!(idle["connected"], 60, "{idle:#}");
    assert_eq!(idle["login_failed"], 0);
    assert_eq!(idle["dropped_while_idle"], 0);
    assert!(num(&idle, "connect_login_per_sec") > 0.0);
    assert!(num(&idle, "server_rss_after_kib") > 0.0);
    assert!(idle["server_bytes_per_connection"].is_number());
    assert_eq!(idle["points"].as_array().unwrap().len(), 3);

    // Closed loop, with workers split over two processes.
    let p2p = bench(
        dir.path(),
        "p2p",
        &["p2p", "--pairs", "6", "--duration", "2", "--workers", "2"],
    );
    assert!(num(&p2p, "received") > 0.0, "{p2p:#}");
    assert_eq!(p2p["lost"], 0, "{p2p:#}");
    assert_eq!(p2p["duplicated"], 0, "{p2p:#}");
    assert_eq!(p2p["errors"], 0, "{p2p:#}");
    assert!(num(&p2p, "delivered_per_sec") > 0.0);
    assert!(p2p["latency"]["p99_us"].is_u64());
    // The CPU of the measured window per delivered message: the bench's own server (its
    // PID known) and its workers both did work in it.
    for k in [
        "server_us_per_msg",
        "bench_us_per_msg",
        "server_cores",
        "bench_cores",
    ] {
        let v = num(&p2p["cpu"], k);
        assert!(v > 0.0 && v.is_finite(), "{k}: {:#}", p2p["cpu"]);
    }
    // Encrypted by default: one round trip, a HELLO of LOGIN + 104 B and its answer; a
    // "hello" to a 3-letter name on protocol 2 is one compact record of at most 40 B
    // (docs/protocol.md §1.6: a 7-byte client_msg_id; a random one may be shorter).
    assert_eq!(p2p["wire"]["encrypted"], true, "{:#}", p2p["wire"]);
    assert_eq!(p2p["wire"]["protocol"], 2, "{:#}", p2p["wire"]);
    assert_eq!(p2p["wire"]["login_round_trips"], 1, "{:#}", p2p["wire"]);
    assert!(
        num(&p2p["wire"], "hello_sent_bytes") - num(&p2p["wire"], "hello_to_bytes") + 3.0 <= 40.0,
        "{:#}",
        p2p["wire"]
    );
    // The handshake answer also carries a session resumption ticket (its TICKET frame,
    // ~116 B here, docs/protocol.md 1.5), counted apart: the login itself stays within 300 B.
    assert!(
        num(&p2p["wire"], "login_bytes") - num(&p2p["wire"], "login_ticket_bytes") <= 300.0,
        "{:#}",
        p2p["wire"]
    );
    assert!(num(&p2p["wire"], "login_ticket_bytes") > 0.0);
    // A resumed login: one round trip, no Noise handshake.
    let resumed = &p2p["wire"]["login_resumed"];
    assert_eq!(resumed["resumed"], true, "{resumed:#}");
    assert_eq!(resumed["round_trips"], 1, "{resumed:#}");
    // …within 300 B both ways: no new ticket in its answer, 16-byte nonces.
    assert!(
        num(resumed, "sent_bytes") + num(resumed, "received_bytes") <= 300.0,
        "{resumed:#}"
    );

    // Open loop at two rates, with the latency plot.
    let plots = dir.path().join("plots");
    let sweep = bench(
        dir.path(),
        "sweep",
        &[
            "p2p",
            "--pairs",
            "4",
            "--duration",
            "1",
            "--sweep",
            "50,100",
            "--plot-dir",
            plots.to_str().unwrap(),
        ],
    );
    for point in sweep["sweep"].as_array().unwrap() {
        assert_eq!(point["lost"], 0, "{point:#}");
        assert_eq!(point["duplicated"], 0, "{point:#}");
        assert!(num(point, "received") > 0.0, "{point:#}");
    }
    let svg = std::fs::read_to_string(plots.join("latency-ferry.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "an SVG plot");

    let login = bench(
        dir.path(),
        "login",
        &["login", "--clients", "10", "--duration", "1"],
    );
    assert!(num(&login, "logins") > 0.0, "{login:#}");
    assert_eq!(login["failed"], 0, "{login:#}");
    // Encrypted: a first pass got tickets, and the timed logins resumed from them.
    assert_eq!(login["resumption"], true, "{login:#}");
    assert_eq!(login["first_pass"]["tickets"], 10, "{login:#}");
    assert!(num(&login, "resumed") > 0.0, "{login:#}");
    assert_eq!(login["full_handshakes"], 0, "{login:#}");
    assert!(num(&login, "logins_per_sec") > 0.0);
    assert!(login["latency"]["p99_us"].is_u64());

    let rec = bench(
        dir.path(),
        "reconnect",
        &[
            "reconnect",
            "--clients",
            "6",
            "--rate",
            "10",
            "--duration",
            "3",
        ],
    );
    assert!(num(&rec, "acked") > 0.0, "{rec:#}");
    assert_eq!(rec["lost"], 0, "{rec:#}");
    assert_eq!(rec["duplicated"], 0, "{rec:#}");
    assert!(num(&rec, "all_synced_ms_after_restart") >= 0.0);
}

/// The reconnect storm against the bench's own cluster (the way it runs past one
/// process's open-file limit): every gateway and logic node is SIGKILLed and restarted,
/// the clients, spread over both gateways, come back and sync, and nothing is lost.
#[test]
fn reconnect_against_the_benchs_own_cluster_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = ferry_testkit::pg::postgres().admin_url();
    let rec = bench(
        dir.path(),
        "reccluster",
        &[
            "reconnect",
            "--clients",
            "8",
            "--rate",
            "10",
            "--duration",
            "4",
            "--gateways",
            "2",
            "--postgres",
            &pg,
        ],
    );
    assert_eq!(rec["server"]["gateways"], 2, "{rec:#}");
    assert_eq!(
        rec["server"]["addrs"].as_array().unwrap().len(),
        2,
        "{rec:#}"
    );
    assert!(num(&rec, "acked") > 0.0, "{rec:#}");
    assert_eq!(rec["lost"], 0, "{rec:#}");
    assert_eq!(rec["duplicated"], 0, "{rec:#}");
    assert!(num(&rec, "all_synced_ms_after_restart") >= 0.0, "{rec:#}");
    // Every client came back once, counted in the tenth of a second it did.
    let back: u64 = rec["back_per_tenth_after_kill"]
        .as_array()
        .expect("the clients back over time")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(back, 8, "{rec:#}");
}
