#!/usr/bin/env bash
# A whole Ferry cluster on one machine, for trying it and for load tests:
# its own nats-server, a PostgreSQL database, L logic nodes and G gateways.
#
#   bench/cluster.sh                 # 2 gateways, 2 logic nodes, ports 9001, 9002
#   GATEWAYS=7 LOGICS=2 bench/cluster.sh
#
# Environment (all optional):
#   FERRY       the ferry binary            (default: target/release/ferry, built if missing)
#   GATEWAYS    gateway processes           (default 2); gateway i listens on BASE_PORT+i
#   LOGICS      logic processes             (default 2)
#   BASE_PORT   first gateway port - 1      (default 9000)
#   NATS_PORT   port of the cluster's NATS  (default 4322; started here, stopped on exit)
#   PGURL       PostgreSQL, admin database  (default host=127.0.0.1 user=postgres dbname=test)
#   DB          database to use/create      (default ferry_cluster; kept between runs)
#   NOFILE      open-file limit per process (default 20000)
#   RUN_SECS    stop by itself after this many seconds (default 0: until Ctrl-C)
#   STATE       where logs and pids go      (default a new temp folder)
#   CHEAP_PASSWORDS=1  argon2 at 8 KiB / 1 pass, so a load test registers 100 000
#               users in minutes (never in production)
#   LOAD_TEST=1 also lifts the per-address limits (connections, registrations, logins,
#               password attempts, sends): a load test comes from one address
#
# Prints "gateway gw-i 127.0.0.1:PORT pid N" for each gateway, then "cluster ready".
# Ctrl-C (or RUN_SECS) stops every process it started: gateways with SIGTERM first.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAYS=${GATEWAYS:-2}
LOGICS=${LOGICS:-2}
BASE_PORT=${BASE_PORT:-9000}
NATS_PORT=${NATS_PORT:-4322}
PGURL=${PGURL:-host=127.0.0.1 user=postgres dbname=test}
DB=${DB:-ferry_cluster}
NOFILE=${NOFILE:-20000}
RUN_SECS=${RUN_SECS:-0}
STATE=${STATE:-$(mktemp -d -t ferry-cluster.XXXXXX)}
mkdir -p "$STATE"
FERRY=${FERRY:-target/release/ferry}

if [ ! -x "$FERRY" ]; then
  cargo build --release -p ferry
fi
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
ulimit -n "$NOFILE"

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping" >&2
  # Gateways first (they drain), then logic nodes, then NATS.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -l "$STATE/nats.log" &
pids=("$!" "${pids[@]}")
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

psql "$PGURL" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || psql "$PGURL" -qc "CREATE DATABASE $DB"
dburl=$(echo "$PGURL" | sed "s/dbname=[^ ]*/dbname=$DB/")

cat > "$STATE/ferry.toml" <<EOF
[logic]
open_messaging = true
[cluster]
nats = "nats://127.0.0.1:$NATS_PORT"
postgres = "$dburl"
EOF
if [ "${LOAD_TEST:-0}" = 1 ]; then
  CHEAP_PASSWORDS=1
  off='{ per_sec = 0.0, burst = 0.0 }'
  printf '[gateway]\nmax_connections_per_ip = 0\n[logic.limits]\n' >> "$STATE/ferry.toml"
  for k in auth_per_user auth_per_ip register_per_ip login_per_ip sends_per_user; do
    echo "$k = $off" >> "$STATE/ferry.toml"
  done
fi
if [ "${CHEAP_PASSWORDS:-0}" = 1 ]; then
  printf '[logic.password]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n' >> "$STATE/ferry.toml"
fi

wait_line() { # file, text
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

for i in $(seq "$LOGICS"); do
  "$FERRY" logic --config "$STATE/ferry.toml" >"$STATE/logic-$i.out" 2>"$STATE/logic-$i.log" &
  pids=("$!" "${pids[@]}")
  wait_line "$STATE/logic-$i.out" "ferry logic ready"
  echo "logic logic-$i pid ${pids[0]}"
done
for i in $(seq "$GATEWAYS"); do
  port=$((BASE_PORT + i))
  "$FERRY" gateway --config "$STATE/ferry.toml" --id "gw-$i" --listen "127.0.0.1:$port" \
    >"$STATE/gw-$i.out" 2>"$STATE/gw-$i.log" &
  pid=$!
  pids=("$pid" "${pids[@]}")
  wait_line "$STATE/gw-$i.out" "ferry gateway"
  echo "gateway gw-$i 127.0.0.1:$port pid $pid"
done
echo "logs in $STATE"
echo "cluster ready"

# `sleep`/`wait` in the background and `wait` for it, so a signal is handled at once.
if [ "$RUN_SECS" -gt 0 ]; then
  sleep "$RUN_SECS" &
  wait $!
else
  wait
fi
