//! The README's *Try it* steps, run as written through the built binary against a real
//! server: the `ferry listen --count 1` line prints the message `ferry send` sent (the
//! friend request before it is printed but does not count).

use std::process::Command;

use ferry_testkit::*;

/// The `ferry …` lines of the README's *Try it* block, without comments, the
/// interactive `ferry chat` left out.
fn try_it_lines() -> Vec<Vec<String>> {
    let readme = include_str!("../../../../README.md");
    let start = readme
        .find("## Try it")
        .expect("README has a Try it section");
    let block = &readme[start..];
    let body = &block[block.find("```sh\n").expect("a sh block") + 6..];
    let body = &body[..body.find("```").expect("the block ends")];
    body.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("ferry ") && !l.starts_with("ferry chat"))
        .map(shell_words)
        .collect()
}

/// Splits a line as `sh` would for the README's simple quoting (double quotes only).
fn shell_words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_try_it_steps_work_as_written() {
    let ts = TestServer::start().await;
    let addr = ts.addr();
    let lines = try_it_lines();
    assert!(
        lines.len() >= 6 && lines.iter().any(|l| l[1] == "listen"),
        "{lines:?}"
    );
    let states = tempfile::tempdir().unwrap();
    for words in lines {
        let user = words
            .iter()
            .position(|w| w == "--user")
            .map(|i| words[i + 1].clone())
            .expect("every step names its user");
        let mut cmd = Command::new(crate::FERRY);
        cmd.args(&words[1..])
            .args(["--server", &addr])
            .env_remove("FERRY_SERVER_KEY")
            .env_remove("FERRY_SERVER");
        if words[1] != "register" {
            // Each user's client state (its device, its synckey) in a folder of its own.
            cmd.arg("--state").arg(states.path().join(&user));
        }
        if words[1] == "listen" {
            cmd.args(["--timeout", "20"]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("running ferry"))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{words:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if words[1] == "listen" {
            let last: serde_json::Value =
                serde_json::from_str(stdout.lines().last().expect("listen printed a line"))
                    .unwrap_or_else(|e| panic!("{e}: {stdout}"));
            assert_eq!(
                (last["from"].as_str(), last["text"].as_str()),
                (Some("alice"), Some("hello bob")),
                "the README promises the message: {stdout}"
            );
        }
    }
}
