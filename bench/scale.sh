#!/usr/bin/env bash
# The cluster scale run (issue 8): a cluster on this machine (bench/cluster.sh) holding
# CONNECTIONS live, logged-in, heartbeating, encrypted connections, with 1:1 messages
# flowing between other clients of the same gateways while they are held.
#
#   bench/scale.sh                          # 100 000 connections over 7 gateways
#   CONNECTIONS=20000 GATEWAYS=2 bench/scale.sh
#
# Environment (all optional): CONNECTIONS (100000), GATEWAYS (7), LOGICS (2), WORKERS
# (8 bench processes, ≤ 20 000 files each), HOLD (60 s), PAIRS (100) and RATE (2000/s)
# of the message flow, OUT (folder for the JSON results, default docs/bench/results),
# FERRY (the binary, default target/release/ferry). Every process is stopped at the end.
#
# The idle bench sums the gateways' resident memory (--server-pid for each), sampled
# while the connections are held; the p2p bench runs against the same gateways once
# every connection is up, and must lose nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-100000}
GATEWAYS=${GATEWAYS:-7}
LOGICS=${LOGICS:-2}
WORKERS=${WORKERS:-8}
HOLD=${HOLD:-60}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
OUT=${OUT:-docs/bench/results}
FERRY=${FERRY:-target/release/ferry}
STATE=$(mktemp -d -t ferry-scale.XXXXXX)
mkdir -p "$OUT"

if [ ! -x "$FERRY" ]; then
  cargo build --release -p ferry
fi
ulimit -n 20000

GATEWAYS=$GATEWAYS LOGICS=$LOGICS LOAD_TEST=1 RUN_SECS=$((HOLD + 1800)) \
  STATE="$STATE" FERRY="$FERRY" bench/cluster.sh >"$STATE/cluster.out" 2>&1 &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT

for _ in $(seq 600); do
  grep -q "cluster ready" "$STATE/cluster.out" && break
  kill -0 $cluster 2>/dev/null || { cat "$STATE/cluster.out"; exit 1; }
  sleep 0.1
done
grep -q "cluster ready" "$STATE/cluster.out" || { cat "$STATE/cluster.out"; exit 1; }

servers=() pids=()
while read -r _ _ addr _ pid; do
  servers+=(--server "$addr")
  pids+=(--server-pid "$pid")
done < <(grep '^gateway ' "$STATE/cluster.out")
echo "gateways: ${servers[*]}"
logic_pids=$(awk '/^logic / {print $4}' "$STATE/cluster.out")
logic_rss() { # total VmRSS of the logic nodes, KiB
  local t=0 p
  for p in $logic_pids; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
  echo "$t"
}
echo "logic nodes' RSS before: $(logic_rss) KiB"

# The message flow starts once the idle connections are up, and ends before they go.
(
  # Both ends of every connection are on this machine: 2 sockets per connection.
  # Start once 99 % are up (a few logins may still be retrying).
  for _ in $(seq 3600); do
    inuse=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)
    [ "$inuse" -ge $((2 * CONNECTIONS * 99 / 100)) ] && break
    [ -e "$STATE/idle.done" ] && exit 0
    sleep 0.5
  done
  sleep 2
  "$FERRY" bench "${servers[@]}" --duration $((HOLD / 2)) --prefix scalep \
    --json "$OUT/scale-p2p.json" p2p --pairs "$PAIRS" --rate "$RATE" >"$STATE/p2p.out" 2>&1
  status=$?
  echo "logic nodes' RSS while the connections are held: $(logic_rss) KiB" >>"$STATE/p2p.out"
  exit $status
) &
flow=$!

set +e
"$FERRY" bench "${servers[@]}" "${pids[@]}" --workers "$WORKERS" --duration "$HOLD" \
  --prefix scalei --json "$OUT/scale-idle.json" idle --connections "$CONNECTIONS" --steps 4
idle=$?
touch "$STATE/idle.done"
wait $flow
flow_status=$?
set -e
cat "$STATE/p2p.out"
echo "idle exit $idle, p2p exit $flow_status; logs in $STATE"
[ "$idle" = 0 ] && [ "$flow_status" = 0 ]
