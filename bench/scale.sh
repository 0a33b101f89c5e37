#!/usr/bin/env bash
# The cluster scale run (issues 8 and 19): a cluster on this machine (bench/cluster.sh)
# holding CONNECTIONS live, logged-in, heartbeating, encrypted connections, with 1:1
# messages flowing between other clients of the same gateways while they are held.
#
#   bench/scale.sh                                   # 200 000 connections, 12 gateways
#   CONNECTIONS=50000 GATEWAYS=4 TAG=50k bench/scale.sh
#
# Environment (all optional): CONNECTIONS (200000), GATEWAYS (as few as hold
# CONNECTIONS at ≤ 18 000 each: a process may open 20 000 files here), LOGICS (2),
# WORKERS (bench processes; default: the bench's own choice, ≤ 15 000 connections
# each), HOLD (60 s), STEPS (8 memory samples while connecting), HEARTBEAT (smart: the
# SDK's smart heartbeat; learned; or seconds), PAIRS (100) and RATE (2000/s) of the
# message flow, OUT (folder for the JSON results, default docs/bench/results), TAG
# (file name part, default "run": OUT/scale-TAG-{idle,p2p}.json and
# scale-TAG-summary.txt), FERRY (the binary, default target/release/ferry). Every
# process is stopped at the end.
#
# Figures (printed, and in the summary file): the gateways' memory per connection as
# the slope of a least-squares line through their summed RSS at each step (the bench
# samples it with --server-pid for each gateway), the kernel's per connection (TCP
# buffer pages from /proc/net/sockstat and slab growth, both ends of each connection
# being on this machine), the message flow (sent / acknowledged / refused by error
# code / lost / duplicated, p50 / p99) and the load average. It fails — exit 1, saying
# which — when a figure is missing, a bench worker failed (the report is then
# PARTIAL) or a message was lost or duplicated.
set -euo pipefail
cd "$(dirname "$0")/.."

PER_GATEWAY_MAX=18000
CONNECTIONS=${CONNECTIONS:-200000}
GATEWAYS=${GATEWAYS:-$(((CONNECTIONS + PER_GATEWAY_MAX - 1) / PER_GATEWAY_MAX))}
LOGICS=${LOGICS:-2}
WORKERS=${WORKERS:-}
HOLD=${HOLD:-60}
STEPS=${STEPS:-8}
HEARTBEAT=${HEARTBEAT:-smart}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
OUT=${OUT:-docs/bench/results}
TAG=${TAG:-run}
FERRY=${FERRY:-target/release/ferry}
STATE=$(mktemp -d -t ferry-scale.XXXXXX)
mkdir -p "$OUT"
IDLE_JSON="$OUT/scale-$TAG-idle.json"
P2P_JSON="$OUT/scale-$TAG-p2p.json"
SUMMARY="$OUT/scale-$TAG-summary.txt"

if [ "$GATEWAYS" -lt 1 ] || [ $(((CONNECTIONS + GATEWAYS - 1) / GATEWAYS + 2 * PAIRS / GATEWAYS)) -gt "$PER_GATEWAY_MAX" ]; then
  echo "$CONNECTIONS connections over $GATEWAYS gateways is more than $PER_GATEWAY_MAX per gateway" \
    "(a process may open 20 000 files here); use GATEWAYS=$(((CONNECTIONS + PER_GATEWAY_MAX - 1) / PER_GATEWAY_MAX)) or more" >&2
  exit 2
fi
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 2; }
echo "scale run: $CONNECTIONS connections over $GATEWAYS gateways ($(((CONNECTIONS + GATEWAYS - 1) / GATEWAYS)) each), $LOGICS logic nodes, heartbeat $HEARTBEAT; logs in $STATE"

if [ ! -x "$FERRY" ]; then
  cargo build --release -p ferry
fi
ulimit -n 20000

GATEWAYS=$GATEWAYS LOGICS=$LOGICS LOAD_TEST=1 RUN_SECS=$((HOLD + 3600)) \
  STATE="$STATE" FERRY="$FERRY" bench/cluster.sh >"$STATE/cluster.out" 2>&1 &
cluster=$!
# The load average every 5 s, for the report.
(while sleep 5; do echo "$(date +%s) $(cut -d' ' -f1-3 /proc/loadavg)"; done) >>"$STATE/loadavg" &
sampler=$!
trap 'kill $sampler 2>/dev/null; kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT

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
  echo "$(date +%s) flow starts" >>"$STATE/loadavg"
  "$FERRY" bench "${servers[@]}" --duration $((HOLD / 2)) --prefix scalep \
    --json "$P2P_JSON" p2p --pairs "$PAIRS" --rate "$RATE" >"$STATE/p2p.out" 2>&1
  status=$?
  echo "$(date +%s) flow ends" >>"$STATE/loadavg"
  echo "logic nodes' RSS while the connections are held: $(logic_rss) KiB" >>"$STATE/p2p.out"
  exit $status
) &
flow=$!

set +e
workers=()
[ -n "$WORKERS" ] && workers=(--workers "$WORKERS")
"$FERRY" bench "${servers[@]}" "${pids[@]}" "${workers[@]}" --duration "$HOLD" \
  --prefix scalei --json "$IDLE_JSON" idle --connections "$CONNECTIONS" --steps "$STEPS" \
  --heartbeat "$HEARTBEAT" 2>&1 | tee "$STATE/idle.out"
idle=${PIPESTATUS[0]}
touch "$STATE/idle.done"
wait $flow
flow_status=$?
set -e
cat "$STATE/p2p.out"
echo "idle exit $idle, p2p exit $flow_status; logs in $STATE"

# The figures. Each must be there: a missing one fails the run, saying which.
missing=()
need() { # variable, file, jq path, name: sets the variable, or "?" and notes it missing
  local v
  v=$(jq -r "$3 // empty" "$2" 2>/dev/null || true)
  if [ -z "$v" ] || [ "$v" = null ]; then missing+=("$4 ($3 in $2)"); v="?"; fi
  printf -v "$1" '%s' "$v"
}
[ -s "$IDLE_JSON" ] || missing+=("the idle report $IDLE_JSON")
[ -s "$P2P_JSON" ] || missing+=("the flow report $P2P_JSON")
# Least-squares slope of y against connections over the samples taken with links up
# (the first sample, at 0, is left out: signing the users in grew the heap the first
# links then reuse), in bytes per connection; y in KiB.
slope() { # jq field of .points
  jq -r --arg f "$1" '[.points[] | select(.connections > 0 and (.[$f] != null))
      | {x: .connections, y: .[$f]}] as $p
    | ($p | length) as $n
    | if $n < 2 then empty else
        ($p | map(.x) | add / $n) as $mx | ($p | map(.y) | add / $n) as $my
        | ($p | map((.x - $mx) * (.y - $my)) | add) / ($p | map((.x - $mx) * (.x - $mx)) | add)
        | . * 1024 | floor end' "$IDLE_JSON" 2>/dev/null || true
}
r2() { # goodness of the fit, for the same field
  jq -r --arg f "$1" '[.points[] | select(.connections > 0 and (.[$f] != null))
      | {x: .connections, y: .[$f]}] as $p
    | ($p | length) as $n
    | if $n < 3 then empty else
        ($p | map(.x) | add / $n) as $mx | ($p | map(.y) | add / $n) as $my
        | ($p | map((.x - $mx) * (.y - $my)) | add) as $sxy
        | ($p | map((.x - $mx) * (.x - $mx)) | add) as $sxx
        | ($p | map((.y - $my) * (.y - $my)) | add) as $syy
        | if $syy == 0 then 1 else ($sxy * $sxy / ($sxx * $syy) * 1000 | floor) / 1000 end end' "$IDLE_JSON" 2>/dev/null || true
}
if [ -s "$IDLE_JSON" ]; then
  need connected "$IDLE_JSON" .connected "connections held"
  partial=$(jq -r '.partial' "$IDLE_JSON")
  [ "$partial" = false ] || missing+=("a complete idle report (PARTIAL: $(jq -c '[.workers_failed[] | .reason]' "$IDLE_JSON"))")
  gw_slope=$(slope server_rss_kib)
  gw_r2=$(r2 server_rss_kib)
  [ -n "$gw_slope" ] || missing+=("the gateways' RSS slope (no --server-pid samples?)")
  slab_slope=$(slope slab_kib)
  [ -n "$slab_slope" ] || missing+=("the slab slope")
  tcp_pages_slope=$(jq -r '[.points[] | select(.connections > 0)] as $p | if ($p | length) < 2 then empty else
      (($p[-1].tcp_mem_pages - $p[0].tcp_mem_pages) * 4096 / ($p[-1].connections - $p[0].connections)) | floor end' "$IDLE_JSON")
  [ -n "$tcp_pages_slope" ] || missing+=("the TCP buffer pages per connection")
  hb=$(jq -r '.heartbeat | "\(.mode): \(.start_interval_secs.mean) s at start, \(.end_interval_secs.mean) s at end; \(.sent) sent, \(.answered) answered; steady \(.steady_per_sec | floor)/s (links / interval)"' "$IDLE_JSON")
  need dropped "$IDLE_JSON" .dropped_while_idle "dropped while held"
  need login_failed "$IDLE_JSON" .login_failed "login failures"
  need rate "$IDLE_JSON" '.connect_login_per_sec | floor' "connect rate"
fi
if [ -s "$P2P_JSON" ]; then
  need flow_sent "$P2P_JSON" .sent "flow sent"
  need flow_acked "$P2P_JSON" .acked "flow acknowledged"
  need flow_received "$P2P_JSON" .received "flow delivered"
  need flow_lost "$P2P_JSON" .lost "flow lost"
  need flow_duplicated "$P2P_JSON" .duplicated "flow duplicated"
  need flow_errors "$P2P_JSON" .errors "flow refused"
  need flow_p50 "$P2P_JSON" '.latency.p50_us' "flow p50"
  need flow_p99 "$P2P_JSON" '.latency.p99_us' "flow p99"
  flow_refused=$(jq -c '.refused_by_code // {}' "$P2P_JSON")
  [ "$(jq -r '.partial' "$P2P_JSON")" = false ] || missing+=("a complete flow report (PARTIAL)")
  [ "${flow_lost:-1}" = 0 ] || missing+=("0 lost (got $flow_lost)")
  [ "${flow_duplicated:-1}" = 0 ] || missing+=("0 duplicated (got $flow_duplicated)")
fi
load_max=$(awk 'NF == 4 && $2 + 0 > m { m = $2 + 0 } END { print m + 0 }' "$STATE/loadavg")
load_flow=$(awk '/flow starts/ {on=1; next} /flow ends/ {on=0} on && NF == 4 && $2 + 0 > m { m = $2 + 0 } END { print m + 0 }' "$STATE/loadavg")
{
  echo "scale run $TAG: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $CONNECTIONS connections over $GATEWAYS gateways, $LOGICS logic nodes, held ${HOLD}s"
  echo "held:                 ${connected:-?} of $CONNECTIONS (login failures ${login_failed:-?}, dropped while held ${dropped:-?}), connect+login ${rate:-?}/s"
  echo "heartbeat:            ${hb:-?}"
  echo "gateways' RSS slope:  ${gw_slope:-?} B per connection (least squares over $STEPS samples, r² ${gw_r2:-?}; all gateways summed)"
  echo "kernel per connection: slab ${slab_slope:-?} B (both ends: client and server socket on this box), TCP buffers ${tcp_pages_slope:-?} B"
  echo "flow ($PAIRS pairs, $RATE/s offered): sent ${flow_sent:-?}, acked ${flow_acked:-?}, delivered ${flow_received:-?}, refused ${flow_errors:-?} ${flow_refused:-}, lost ${flow_lost:-?}, duplicated ${flow_duplicated:-?}"
  awk -v a="${flow_p50:-}" -v b="${flow_p99:-}" 'BEGIN { if (a != "" && a != "?") printf "flow latency:         p50 %.1f ms, p99 %.1f ms\n", a / 1000, b / 1000; else print "flow latency:         ?" }'
  echo "load average:         max $load_max (1 min), max $load_flow during the flow"
  grep -h "logic nodes' RSS" "$STATE/p2p.out" || true
} | tee "$SUMMARY"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "FAILED: missing or wrong figures:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
[ "$idle" = 0 ] && [ "$flow_status" = 0 ]
