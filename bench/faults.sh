#!/usr/bin/env bash
# Fault injection: SDK client pairs send to each other through Ferry's user-space fault
# proxy (this kernel has no netem and no iptables) while one fault at a time is applied,
# then every fault stops and the run settles. Checks: no acknowledged message lost, none
# duplicated, every send acknowledged in the end (clients recovered), server still up.
#
#   bench/faults.sh                      # every fault, 10 s each
#   FAULTS="cut half-open" SECS=20 PAIRS=20 RATE=10 bench/faults.sh
#
# Faults: none delay stall chunk cut half-open kill disk (see `ferry bench faults --help`;
# `disk` needs root to mount a small tmpfs), and logic-stop (not in the default list):
#
#   FAULTS=logic-stop bench/faults.sh    # SECS=20 by default for it
#
# starts a cluster (bench/cluster.sh: its own nats-server, PostgreSQL at $PGURL, 1 gateway,
# 2 logic nodes), sends steadily through the gateway, SIGSTOPs one logic node for SECS
# seconds (after SECS/2 of normal traffic), SIGCONTs it, and reports acks/s during vs
# before, p99, lost/duplicated, and the routes the node dropped on waking ("gateway
# silent" in its log). Targets: >= 80 % of the rate, p99 <= 1.5 s, no route dropped.
# CLUSTER_FERRY=path runs the cluster on another binary than the bench (to compare builds). Traffic stays on 127.0.0.1. Every run is
# bounded: SECS of load, at most 30 s to settle, and a hard timeout per run.
# Results (JSON per fault) go to $OUT (default target/faults). FERRY=path/to/ferry runs
# that binary instead of building one.
set -u -o pipefail
cd "$(dirname "$0")/.."

FAULTS=${FAULTS:-"none delay stall chunk cut half-open kill disk"}
SECS_GIVEN=${SECS:-}
SECS=${SECS:-10}
PAIRS=${PAIRS:-10}
RATE=${RATE:-5}
OUT=${OUT:-target/faults}
PROFILE=${PROFILE:-release}
mkdir -p "$OUT"

if [ -n "${FERRY:-}" ]; then
    :   # a binary given: no build
elif [ "$PROFILE" = release ]; then
    cargo build --release -q -p ferry || exit 1
    FERRY=target/release/ferry
else
    cargo build -q -p ferry || exit 1
    FERRY=target/debug/ferry
fi

child=
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi; exit 130' INT TERM

printf '%-10s %8s %8s %9s %5s %4s %8s %7s %8s %6s  %s\n' \
    fault sent acked delivered lost dup unacked discon settle_s server verdict
failed=0
logic_stop() {
    local secs=${SECS_GIVEN:-20} json="$OUT/logic-stop.json" state="$OUT/cluster"
    rm -rf "$json" "$state"; mkdir -p "$state"
    FERRY="${CLUSTER_FERRY:-$FERRY}" GATEWAYS=1 LOGICS=2 LOAD_TEST=1 STATE="$state" BASE_PORT=${BASE_PORT:-9100} \
        RUN_SECS=$((secs * 2 + 120)) bench/cluster.sh >"$state/cluster.out" 2>&1 &
    local cluster=$!
    for _ in $(seq 300); do grep -q "cluster ready" "$state/cluster.out" && break; sleep 0.1; done
    if ! grep -q "cluster ready" "$state/cluster.out"; then
        echo "logic-stop: the cluster did not start:"; cat "$state/cluster.out"
        kill -TERM "$cluster" 2>/dev/null; wait "$cluster"; return 1
    fi
    local pid addr
    pid=$(awk '/^logic logic-1 pid/ {print $4}' "$state/cluster.out")
    addr=$(awk '/^gateway gw-1 / {print $3}' "$state/cluster.out")
    local load_before; load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    timeout -k 5 $((secs * 2 + 120)) "$FERRY" bench faults --fault logic-stop --server "$addr" \
        --stop-pid "$pid" --pairs "$PAIRS" --rate "$RATE" --duration "$secs" --json "$json" \
        >"$OUT/logic-stop.log" 2>&1
    local rc=$?
    local load_after; load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    local dropped; dropped=$(cat "$state"/logic-*.log | grep -c "gateway silent")
    local paused; paused=$(cat "$state"/logic-*.log | grep -c "was paused")
    kill -TERM "$cluster" 2>/dev/null; wait "$cluster"
    cat "$OUT/logic-stop.log"
    echo "load average before: $load_before; after: $load_after"
    echo "routes dropped on waking (\"gateway silent\" in the logic logs): $dropped; pauses noticed: $paused"
    [ "$rc" -eq 0 ] && [ "$dropped" -eq 0 ]
}

for f in $FAULTS; do
    if [ "$f" = logic-stop ]; then
        logic_stop || failed=$((failed + 1))
        continue
    fi
    json="$OUT/$f.json"
    rm -f "$json"
    # A hard bound on top of the bench's own: load + settle + set-up.
    timeout -k 5 $((SECS + 120)) "$FERRY" bench faults --fault "$f" --pairs "$PAIRS" \
        --rate "$RATE" --duration "$SECS" --json "$json" >"$OUT/$f.log" 2>&1 &
    child=$!
    wait "$child"
    rc=$?
    child=
    if [ ! -s "$json" ]; then
        # The bench prints its table even when the checks fail; no JSON means it could
        # not run (or the disk fault could not mount).
        printf '%-10s %s\n' "$f" "did not run (exit $rc): $(grep -m1 -iE 'error|fail' "$OUT/$f.log")"
        failed=$((failed + 1))
        continue
    fi
    python3 - "$json" "$f" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); o = r["outcome"]
print("%-10s %8d %8d %9d %5d %4d %8d %7d %8.2f %6s  %s" % (
    sys.argv[2], o["sent"], o["acked"], o["received"], o["lost"], o["duplicated"],
    o["unacked"], o["disconnects"], o["settle_secs"],
    "up" if r["server_alive"] else "DOWN", "PASS" if r["ok"] else "FAIL"))
EOF
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
done
echo
if [ "$failed" -gt 0 ]; then
    echo "$failed fault run(s) failed; logs in $OUT/"
    exit 1
fi
echo "every fault: 0 lost, 0 duplicated, every send acknowledged, server up"
