#!/usr/bin/env bash
# Ferry beside XMPP, same machine, one run.
#
# Installs ejabberd from Debian when it is missing, runs it on loopback only with its own
# configuration in a temporary folder (never the system's /etc/ejabberd, never the
# system service), then runs the same idle, p2p and login workloads with `ferry bench`
# against ejabberd (`--protocol xmpp`) and against a fresh Ferry, and prints both side
# by side (`ferry bench compare`). Plots go to docs/bench/.
#
#   bench/xmpp-compare.sh                # defaults below
#   CONNECTIONS=5000 DURATION=5 bench/xmpp-compare.sh
#
# The closed loop runs ROUNDS times for each server, in turn (ejabberd, Ferry, ejabberd,
# Ferry …; ejabberd idles meanwhile, taking no CPU), and the comparison gives the median
# of each and of the ratios round by round: this box's speed drifts by a fifth within
# minutes, enough for one round each to move the ratio by ± 15 %.
#
# Traffic goes to 127.0.0.1 only; every bench run is bounded by its --duration plus a
# fixed drain; ejabberd is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-10000}   # idle connections (≤ ~15 000: ejabberd's process limit)
PAIRS=${PAIRS:-200}                 # p2p pairs
CLIENTS=${CLIENTS:-500}             # login: clients logging in at once
DURATION=${DURATION:-10}            # seconds per measured run
ROUNDS=${ROUNDS:-3}                 # closed-loop rounds per server, interleaved (1–9)
SWEEP=${SWEEP:-2000,5000,10000,15000,20000,25000}
PORT=${XMPP_PORT:-15222}
OUT=${OUT:-target/bench-compare}
PLOTS=${PLOTS:-docs/bench}
FERRY=${FERRY:-target/release/ferry}

log() { printf '== %s\n' "$*" >&2; }
case "$ROUNDS" in [1-9]) ;; *) echo "ROUNDS must be 1 to 9"; exit 2 ;; esac

if [ ! -x "$FERRY" ]; then
  log "building ferry (release)"
  cargo build --release -p ferry
fi

if ! command -v ejabberdctl >/dev/null; then
  log "installing ejabberd from Debian"
  # Install without starting the system service: this script runs its own instance.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ejabberd >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
VERSION=$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo unknown)

TMP=$(mktemp -d /tmp/ferry-xmpp-bench.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/db" "$TMP/log" "$OUT"
# An earlier run's closed-loop rounds would count as rounds of this one.
rm -f "$OUT"/p2p-*.json
NODE="ferrybench$$@localhost"
cat > "$TMP/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$NODE
INET_DIST_INTERFACE=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
ERL_MAX_PORTS=65536
EOF
cat > "$TMP/ejabberd.yml" <<EOF
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
certfiles: []
acme:
  auto: false
listen:
  -
    port: $PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    backlog: 1024
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  register:
    allow: all
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages: 5000
  c2s_shaper: none
auth_method: internal
auth_password_format: plain
registration_timeout: infinity
modules:
  mod_register:
    ip_access: all
    access: register
  mod_disco: {}
EOF
printf '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n' > "$TMP/inetrc"
if id ejabberd >/dev/null 2>&1; then chown -R ejabberd: "$TMP"; fi
# ejabberdctl switches to the ejabberd user with su, whose PAM session drops the
# open-files limit to 1024 (ejabberd then dies at ~1000 connections). setpriv switches
# user without PAM and keeps this shell's limit.
AS=()
if [ "$(id -u)" = 0 ] && id ejabberd >/dev/null 2>&1; then
  AS=(setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME="$(getent passwd ejabberd | cut -d: -f6)")
fi
CTL=("${AS[@]}" ejabberdctl --config-dir "$TMP" --config "$TMP/ejabberd.yml" --ctl-config "$TMP/ejabberdctl.cfg"
     --spool "$TMP/db" --logs "$TMP/log" --node "$NODE")

stop_ejabberd() {
  log "stopping ejabberd"
  "${CTL[@]}" stop >/dev/null 2>&1 || true
  timeout 30 "${CTL[@]}" stopped >/dev/null 2>&1 || true
}
trap stop_ejabberd EXIT

log "starting ejabberd $VERSION on 127.0.0.1:$PORT (config in $TMP)"
"${CTL[@]}" start
timeout 60 "${CTL[@]}" started
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.2
done
# The control tool works: one user registered through it. The bench users themselves
# are created by in-band registration (one ejabberdctl call per user would take hours).
"${CTL[@]}" register ferrybench-check localhost check-password-1 >/dev/null 2>&1 || true
PID=$(ss -ltnpH "sport = :$PORT" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1)
[ -n "$PID" ] || { echo "could not find ejabberd's PID"; exit 1; }
log "ejabberd is PID $PID"

X=(--protocol xmpp --server "127.0.0.1:$PORT" --server-pid "$PID")
run() { log "ferry bench $*"; "$FERRY" bench "$@"; }

# The same workloads, XMPP first (so ejabberd is fresh), then Ferry; the closed loop in
# rounds, each server in turn.
run idle --connections "$CONNECTIONS" --duration 5 "${X[@]}" --json "$OUT/idle-xmpp.json"
for i in $(seq 1 "$ROUNDS"); do
  run p2p --pairs "$PAIRS" --duration "$DURATION" "${X[@]}" --json "$OUT/p2p-$i-xmpp.json"
  run p2p --pairs "$PAIRS" --duration "$DURATION" --json "$OUT/p2p-$i-ferry.json"
done
run p2p --pairs "$PAIRS" --duration "$DURATION" --sweep "$SWEEP" "${X[@]}" --json "$OUT/sweep-xmpp.json"
run login --clients "$CLIENTS" --duration "$DURATION" "${X[@]}" --json "$OUT/login-xmpp.json"
stop_ejabberd
trap - EXIT

run idle --connections "$CONNECTIONS" --duration 5 --json "$OUT/idle-ferry.json"
run p2p --pairs "$PAIRS" --duration "$DURATION" --sweep "$SWEEP" --json "$OUT/sweep-ferry.json"
run login --clients "$CLIENTS" --duration "$DURATION" --json "$OUT/login-ferry.json"

"$FERRY" bench plot --out "$PLOTS" "$OUT"/idle-*.json "$OUT"/sweep-*.json
"$FERRY" bench compare "$OUT"/*-ferry.json "$OUT"/*-xmpp.json --json "$OUT/compare.json"
echo "ejabberd $VERSION; reports in $OUT; plots in $PLOTS"
rm -rf "$TMP"
