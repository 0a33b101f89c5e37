#!/usr/bin/env bash
# The cluster's durable 1:1 throughput beside `ferry serve`'s, in one run (issue 19,
# "Measure first"): `ferry bench p2p` closed loop against the bench's own `ferry serve`
# (SQLite, fsync) and against a cluster of GATEWAYS gateways and LOGICS logic nodes on
# NATS and PostgreSQL (bench/cluster.sh, LOAD_TEST=1), interleaved — serve, cluster,
# serve, cluster… — so both see the same machine; then a small window sweep, also
# interleaved. Every run's JSON goes to OUT; a table of the figures, the
# cluster/serve ratio and the load average before each run is printed at the end
# (and written to OUT/cluster-vs-serve-summary.txt).
#
#   bench/cluster-vs-serve.sh
#   ROUNDS=3 SWEEP=1,4,16 GATEWAYS=3 bench/cluster-vs-serve.sh
#
# Environment (all optional): PAIRS (200), WINDOW (8), DURATION (10 s), ROUNDS (2
# closed-loop runs on each), SWEEP (windows, comma separated, "" for none; default
# 1,32), GATEWAYS (2), LOGICS (2), OUT (docs/bench/results), TAG (file name part,
# default "before"), FERRY (target/release/ferry, built if missing), NATS_PORT (4323),
# BASE_PORT (9100), DB (ferry_cvs: dropped and made again, so each run starts empty),
# LOGIN_CLIENTS (200 clients logging in again and again for 5 s on each, after the
# message runs; 0: none).
#
# For each cluster run it also writes OUT/cvs-TAG-NAME-pg.json: PostgreSQL's own
# counters for the database (pg_stat_database: commits, rows inserted/updated/read)
# per acknowledged message or per login, and the states of its sessions
# (pg_stat_activity: wait events, idle in transaction) sampled every 0.2 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-200}
WINDOW=${WINDOW:-8}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SWEEP=${SWEEP-1,32}
GATEWAYS=${GATEWAYS:-2}
LOGICS=${LOGICS:-2}
OUT=${OUT:-docs/bench/results}
TAG=${TAG:-before}
FERRY=${FERRY:-target/release/ferry}
NATS_PORT=${NATS_PORT:-4323}
BASE_PORT=${BASE_PORT:-9100}
DB=${DB:-ferry_cvs}
LOGIN_CLIENTS=${LOGIN_CLIENTS:-200}
PGURL=${PGURL:-host=127.0.0.1 user=postgres dbname=test}
STATE=$(mktemp -d -t ferry-cvs.XXXXXX)
mkdir -p "$OUT"

case "$GATEWAYS" in 2 | 3) ;; *) echo "GATEWAYS must be 2 or 3" >&2; exit 2 ;; esac
if [ ! -x "$FERRY" ]; then
  cargo build --release -p ferry
fi
for tool in jq psql; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done
ulimit -n 20000

# A fresh database: the users of earlier runs would make the inbox tables differ
# from one run to the next.
psql "$PGURL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
GATEWAYS=$GATEWAYS LOGICS=$LOGICS LOAD_TEST=1 RUN_SECS=7200 DB=$DB NATS_PORT=$NATS_PORT \
  BASE_PORT=$BASE_PORT STATE="$STATE/cluster" FERRY="$FERRY" PGURL="$PGURL" \
  bench/cluster.sh >"$STATE/cluster.out" 2>&1 &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "cluster ready" "$STATE/cluster.out" && break
  kill -0 $cluster 2>/dev/null || { cat "$STATE/cluster.out"; exit 1; }
  sleep 0.1
done
grep -q "cluster ready" "$STATE/cluster.out" || { cat "$STATE/cluster.out"; exit 1; }
servers=()
while read -r _ _ addr _ _; do servers+=(--server "$addr"); done < <(grep '^gateway ' "$STATE/cluster.out")
echo "cluster: ${servers[*]} ($LOGICS logic nodes); logs in $STATE"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
DBURL=$(echo "$PGURL" | sed "s/dbname=[^ ]*/dbname=$DB/")
# PostgreSQL's own counters for the cluster's database (commits, rollbacks, rows).
pgsnap() {
  psql "$DBURL" -Atc "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_returned
    FROM pg_stat_database WHERE datname = '$DB'"
}
# What the cluster's PostgreSQL sessions are doing, sampled every 0.2 s while a run lasts.
pgwait() { # file
  while sleep 0.2; do
    psql "$DBURL" -Atc "SELECT state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-')
      FROM pg_stat_activity WHERE datname = '$DB' AND pid <> pg_backend_pid() AND state <> 'idle'" 2>/dev/null
  done >>"$1"
}
rows=()
logins=()
failed=0
# pg_report NAME BEFORE COUNT WHAT: PostgreSQL's counters since BEFORE per COUNT, and the
# session states sampled, into OUT/cvs-TAG-NAME-pg.json.
pg_report() {
  local after
  after=$(pgsnap)
  jq -n --arg b "$2" --arg a "$after" --argjson n "$3" --arg what "$4" \
    --rawfile waits "$STATE/$1.waits" '
    ($b | split("|") | map(tonumber)) as $b | ($a | split("|") | map(tonumber)) as $a
    | ["commits", "rollbacks", "rows_inserted", "rows_updated", "rows_deleted", "rows_read"] as $k
    | {per: $what, count: $n,
       totals: ([range(0; 6)] | map({key: $k[.], value: ($a[.] - $b[.])}) | from_entries),
       per_one: ([range(0; 6)] | map({key: $k[.], value: ((($a[.] - $b[.]) / ([$n, 1] | max)) * 100 | round / 100)}) | from_entries),
       session_states_sampled: ($waits | split("\n") | map(select(length > 0))
         | group_by(.) | map({state: .[0], samples: length}) | sort_by(-.samples))}' \
    >"$OUT/cvs-$TAG-$1-pg.json"
  echo "   PostgreSQL per $4: $(jq -c '.per_one' "$OUT/cvs-$TAG-$1-pg.json")"
  echo "   busiest session states: $(jq -r '.session_states_sampled[:4] | map("\(.state) ×\(.samples)") | join(", ")' "$OUT/cvs-$TAG-$1-pg.json")"
}
# run TARGET WINDOW NAME: one closed-loop p2p run; appends a row.
run() {
  local target=$1 window=$2 name=$3 json="$OUT/cvs-$TAG-$3.json" load
  local args=()
  [ "$target" = cluster ] && args=("${servers[@]}")
  load=$(loadavg)
  echo "== $name: $target, window $window, load $load"
  local before="" sampler=""
  if [ "$target" = cluster ]; then
    before=$(pgsnap)
    : >"$STATE/$name.waits"
    pgwait "$STATE/$name.waits" &
    sampler=$!
  fi
  # The same user names on both: each target has its own store.
  if ! "$FERRY" bench "${args[@]}" --duration "$DURATION" --prefix "cvs$target" --json "$json" \
    p2p --pairs "$PAIRS" --window "$window" >"$STATE/$name.out" 2>&1; then
    [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
    echo "   FAILED (see $STATE/$name.out)"; tail -5 "$STATE/$name.out"
    failed=1
    rows+=("$name|$target|$window|FAILED|||||$load")
    return
  fi
  local row
  row=$(jq -r '[.delivered_per_sec, .acked_per_sec, .latency.p50_us, .latency.p99_us,
      .lost, .duplicated, .errors] | map(tostring) | join("|")' "$json")
  rows+=("$name|$target|$window|$row|$load")
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sleep 1.5 # backends flush their counters at most once a second
    local after acked
    after=$(pgsnap)
    acked=$(jq -r '.acked' "$json")
    # Per acknowledged message, over the whole run (its 400 sign-ins and logins too:
    # a few hundred against tens of thousands of messages).
    pg_report "$name" "$before" "$acked" "acked message"
  fi
  echo "   $(jq -r '"\(.delivered_per_sec|floor) msgs/s delivered, p50 \(.latency.p50_us/1000|floor) ms, p99 \(.latency.p99_us/1000|floor) ms, lost \(.lost), dup \(.duplicated), refused \(.errors)"' "$json")"
}

for r in $(seq "$ROUNDS"); do
  run serve "$WINDOW" "serve-w$WINDOW-r$r"
  run cluster "$WINDOW" "cluster-w$WINDOW-r$r"
done
IFS=, read -r -a sweep <<<"$SWEEP"
for w in "${sweep[@]}"; do
  [ -n "$w" ] || continue
  run serve "$w" "serve-w$w"
  run cluster "$w" "cluster-w$w"
done

# login_run TARGET NAME: token logins (resumed from tickets, as the SDK's), again and
# again for 5 s; logins/s, p99, and for the cluster PostgreSQL's work per login.
login_run() {
  local target=$1 name=$2 json="$OUT/cvs-$TAG-$2.json" load before="" sampler=""
  local args=()
  [ "$target" = cluster ] && args=("${servers[@]}")
  load=$(loadavg)
  echo "== $name: $target, $LOGIN_CLIENTS clients logging in again and again, load $load"
  if [ "$target" = cluster ]; then
    before=$(pgsnap)
    : >"$STATE/$name.waits"
    pgwait "$STATE/$name.waits" &
    sampler=$!
  fi
  if ! "$FERRY" bench "${args[@]}" --duration 5 --prefix "cvsl$target" --json "$json" \
    login --clients "$LOGIN_CLIENTS" >"$STATE/$name.out" 2>&1; then
    [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
    echo "   FAILED (see $STATE/$name.out)"; tail -5 "$STATE/$name.out"
    failed=1
    return
  fi
  logins+=("$name|$target|$(jq -r '[.logins_per_sec, .latency.p50_us, .latency.p99_us, .failed] | map(tostring) | join("|")' "$json")|$load")
  echo "   $(jq -r '"\(.logins_per_sec|floor) logins/s, p99 \(.latency.p99_us/1000|floor) ms, failed \(.failed)"' "$json")"
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sleep 1.5
    # Every login of the run: the timed ones and the first, full-handshake pass (one
    # per client); the clients' sign-ins over HTTP are in it too.
    pg_report "$name" "$before" "$(jq -r '.logins + .clients' "$json")" "login"
  fi
}
if [ "$LOGIN_CLIENTS" -gt 0 ]; then
  login_run serve login-serve
  login_run cluster login-cluster
fi

{
  echo "cluster ($GATEWAYS gateways, $LOGICS logic nodes, PostgreSQL) vs ferry serve (SQLite), $PAIRS pairs, ${DURATION}s each, closed loop"
  echo "machine: $(nproc) cores; $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load average after: $(loadavg)"
  printf '%-22s %-8s %6s %12s %12s %10s %10s %5s %4s %7s  %s\n' run target window "delivered/s" "acked/s" p50_ms p99_ms lost dup refused "load before"
  for row in "${rows[@]}"; do
    IFS='|' read -r name target window del ack p50 p99 lost dup err load <<<"$row"
    ms() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { printf "%.1f", v / 1000 }'; }
    printf '%-22s %-8s %6s %12.0f %12.0f %10s %10s %5s %4s %7s  %s\n' "$name" "$target" "$window" \
      "${del:-0}" "${ack:-0}" "$(ms "$p50")" "$(ms "$p99")" "$lost" "$dup" "$err" "$load"
  done
  for row in "${logins[@]}"; do
    IFS='|' read -r name target per p50 p99 lfailed load <<<"$row"
    printf '%-22s %-8s %6s %12.0f logins/s  p50 %s ms  p99 %s ms  failed %s  load before %s\n' "$name" "$target" - \
      "$per" "$(awk -v v="$p50" 'BEGIN { printf "%.1f", v / 1000 }')" "$(awk -v v="$p99" 'BEGIN { printf "%.1f", v / 1000 }')" "$lfailed" "$load"
  done
  # The ratio per window: mean over the runs of each target.
  echo
  for w in "$WINDOW" "${sweep[@]}"; do
    [ -n "$w" ] || continue
    s=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v w="$w" '$2=="serve" && $3==w && $4!="FAILED" {t+=$4; n++} END {if (n) printf "%.0f", t/n}')
    c=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v w="$w" '$2=="cluster" && $3==w && $4!="FAILED" {t+=$4; n++} END {if (n) printf "%.0f", t/n}')
    if [ -n "$s" ] && [ -n "$c" ] && [ "$s" != 0 ]; then
      echo "window $w: serve $s msgs/s, cluster $c msgs/s: cluster/serve = $(awk -v c="$c" -v s="$s" 'BEGIN { printf "%.3f (serve %.1fx faster)", c / s, s / (c > 0 ? c : 1) }')"
    fi
  done
} | tee "$OUT/cvs-$TAG-summary.txt"
# Errors the cluster logged, for the profile.
for f in "$STATE"/cluster/logic-*.log "$STATE"/cluster/gw-*.log; do
  [ -e "$f" ] || continue
  n=$(grep -c -i "error\|warn" "$f" || true)
  [ "$n" = 0 ] || echo "$(basename "$f"): $n warnings/errors, e.g. $(grep -i -m1 "error\|warn" "$f" | sed "s/\x1b\[[0-9;]*m//g" | cut -c1-200)"
done
exit $failed
