//! The configuration file as the binary reads it: a misspelt key or a wrong type stops
//! every role before it starts, naming the key, its table and the file; the defaults
//! `ferry config default` prints pass `ferry config check`; an unknown `FERRY_*`
//! variable is warned about. (This file names misspelt variables on purpose.)

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ferry <args>` to its end (at most 60 s): exit code, stdout, stderr.
fn ferry(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = Command::new(crate::FERRY)
        .args(args)
        .envs(env.iter().copied())
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ferry {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_misspelt_key_stops_every_role_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "[gateway]\nalow_plaintext = true\n");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for args in [
        &["serve", "--listen", "127.0.0.1:0", "--data", data][..],
        &["gateway", "--listen", "127.0.0.1:0"],
        &["logic"],
        &["config", "check"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--config", &file]);
        let (code, out, err) = ferry(&args, &[]);
        assert_eq!(code, Some(1), "ferry {args:?}: {out}{err}");
        assert!(!out.contains("listening"), "{out}");
        for want in [
            file.as_str(),
            "unknown key `alow_plaintext` in [gateway]",
            "did you mean `allow_plaintext`?",
        ] {
            assert!(
                err.contains(want),
                "ferry {args:?}: {err:?} should say {want:?}"
            );
        }
    }
    assert!(!Path::new(data).exists(), "nothing was created");
}

#[test]
fn a_wrong_type_or_value_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (text, want) in [
        (
            "[gateway]\nallow_plaintext = \"yes\"\n",
            &["line 2", "allow_plaintext", "expected a boolean"][..],
        ),
        ("[gatway]\nid = \"a\"\n", &["unknown table [gatway]"]),
        ("durability = \"sometimes\"\n", &["durability", "sometimes"]),
    ] {
        let file = write(dir.path(), text);
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
            "--config",
            &file,
        ];
        let (code, out, err) = ferry(&args, &[]);
        assert_eq!(code, Some(1), "{text:?}: {out}{err}");
        assert!(err.contains(&file), "{err}");
        for w in want {
            assert!(err.contains(w), "{text:?}: {err:?} should say {w:?}");
        }
    }
}

#[test]
fn the_printed_defaults_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (code, defaults, err) = ferry(&["config", "default"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        defaults.contains("[logic.limits.sends_per_user]"),
        "{defaults}"
    );
    assert!(
        defaults.contains("ticket_lifetime_secs = 86400"),
        "{defaults}"
    );
    let file = write(dir.path(), &defaults);
    let (code, out, err) = ferry(&["config", "check", "--config", &file], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{file}: ok\n"));
    assert_eq!(err, "", "no warnings");
}

#[test]
fn environment_overrides_are_checked_and_unknown_ones_warned_about() {
    let (code, _, err) = ferry(&["config", "check"], &[("FERRY_ALLOW_PLAINTEXT", "yes")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("FERRY_ALLOW_PLAINTEXT (true/false)"), "{err}");

    let misspelt = "FERRY_ALLOW_PLAINTXT";
    let (code, out, err) = ferry(&["config", "check"], &[(misspelt, "true")]);
    assert_eq!(code, Some(0), "a warning, not a refusal: {err}");
    assert_eq!(out, "defaults and environment: ok\n");
    assert!(
        err.contains(
            "unknown environment variable FERRY_ALLOW_PLAINTXT is ignored \
             (did you mean FERRY_ALLOW_PLAINTEXT?)"
        ),
        "{err}"
    );
}
