#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECS to change).
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On stable Rust it runs with
# RUSTC_BOOTSTRAP=1; the sanitizer is off (ASan needs nightly's -Zsanitizer).
# A crash leaves its input in fuzz/artifacts/<target>/: turn it into a regression test
# (crates/ferry-proto/tests/fuzz_regressions.rs) and fix it.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECS:-60}"
export RUSTC_BOOTSTRAP=1
status=0
for t in frame sniff requests secure; do
  echo "== fuzzing $t for ${secs}s"
  if ! cargo fuzz run "$t" --sanitizer none -- -max_total_time="$secs" -rss_limit_mb=1024 -max_len=70000 2>&1 | tail -n 5; then
    echo "!! $t failed"; status=1
  fi
done
exit $status
