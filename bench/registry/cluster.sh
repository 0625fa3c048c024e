#!/usr/bin/env bash
# The registry cluster benchmark (bench/README.md, "Registry cluster", says what it
# measures and why).
#
#   bash bench/registry/cluster.sh [all|renewals|partition]   # from the workspace root, ~5 min
#
# Three `rtalpha registry` processes on loopback, next to a bare hyper server and a
# single registry, all on the same two cores as the load (wrk, a separate process):
#
#  (a) renewals: 10,000 instances seeded; three wrk processes (one thread and
#      CONNECTIONS/3 connections each) renew for DURATION: all three against the bare
#      hyper server, then all three against a single registry, then one against each
#      node of the cluster, where every accepted renewal is also replicated to the two
#      other nodes. While the cluster is under that load, `rtalpha-bench lag` registers
#      and cancels a probe instance on node A every 50 ms and times until SSE watchers
#      on B and C see it, and samples every node's /v1/status once a second. The same
#      probe runs first on the idle cluster.
#  (b) partition: a fresh cluster whose links to and from B go through
#      `rtalpha-bench proxy`; 10,000 seeded; B cut off for PARTITION_SECS while A and C
#      take 1,000 registrations and 1,000 cancellations (half on each) and B takes 500
#      registrations; then `rtalpha-bench converge` heals and polls all three
#      `GET /v1/apps` (gzip) until their instance sets are identical and as expected.
#      Once with the default cluster settings and once with anti-entropy every 1 s.
#
# Every node gets RTALPHA_TELEMETRY__LOG_LEVEL=warn; (b)'s second run adds FAST_ENV.
# Knobs (environment): SOURCE (worktree, head or a commit: build_binaries in lib.sh),
# N (10000), APPS (100), DURATION (20s, in s), CONNECTIONS (63), CPUS (0,1),
# PARTITION_SECS (30), OUT (target/bench-registry/cluster-<date>).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
N=${N:-10000}
APPS=${APPS:-100}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-63}
CPUS=${CPUS:-0,1}
PARTITION_SECS=${PARTITION_SECS:-30}
OUT=${OUT:-target/bench-registry/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
WHAT=${1:-all}
case $WHAT in
  all | renewals | partition) ;;
  *) echo "usage: $0 [all|renewals|partition]" >&2; exit 2 ;;
esac
FAST_ENV=(RTALPHA_REGISTRY__CLUSTER__ANTI_ENTROPY_INTERVAL=1s RTALPHA_REGISTRY__CLUSTER__RETRY_MAX=500ms)
PER=$((CONNECTIONS / 3))
SECS=${DURATION%s}

for tool in wrk curl taskset ss python3; do
  command -v "$tool" >/dev/null || { echo "cluster.sh: $tool is missing" >&2; exit 1; }
done

mkdir -p "$OUT"
RESULTS=$OUT/cluster.jsonl
: >"$RESULTS"

# shellcheck source=bench/registry/lib.sh
. bench/registry/lib.sh
PIDS=()
# Processes started inside a measurement run in a subshell, so they are also noted in
# this file for the cleanup.
: >"$OUT/.pids"
cleanup() {
  # shellcheck disable=SC2046
  stop_ours "${PIDS[@]}" $(cat "$OUT/.pids")
}
trap cleanup EXIT

wait_for_builds
build_binaries
{ describe_machine; cat "$OUT/build.txt"; } | tee "$OUT/machine.txt" >&2
start_disturbance_log

# record MEASUREMENT TARGET RESULT_JSON: appends a line; stops the run if the result is
# not JSON (a step of the measurement failed).
record() {
  if ! python3 -c 'import json, sys; json.loads(sys.argv[1])' "$3" 2>/dev/null; then
    echo "cluster.sh: $2 $1 failed; its output: $3" >&2
    exit 1
  fi
  printf '{"instances":%s,"measurement":"%s","target":"%s","result":%s}\n' "$N" "$1" "$2" "$3" >>"$RESULTS"
  echo "  $2 $1: $3" >&2
}

# status_number URL KEY: a top-level number of URL's /v1/status (empty when it does not answer).
status_number() {
  curl -fsS --max-time 5 "$1/v1/status" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || true
}

# start_node NAME PORT PEERS [ENV=VALUE...]: a registry on PORT; sets NODE_PID.
start_node() {
  local name=$1 port=$2 peers=$3
  shift 3
  local args=(registry --bind "127.0.0.1:$port")
  [ -n "$peers" ] && args+=(--peers "$peers")
  env RTALPHA_TELEMETRY__LOG_LEVEL=warn "$@" taskset -c "$CPUS" "$RTALPHA" "${args[@]}" 2>>"$OUT/$name.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  echo "$NODE_PID" >>"$OUT/.pids"
  wait_until_listening "$NODE_PID" "$port"
}

# wait_ready URL...: until each answers /ready with 200 (30 s at most).
wait_ready() {
  local url
  for url in "$@"; do
    for _ in $(seq 300); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/ready")" = 200 ] && continue 2
      sleep 0.1
    done
    echo "cluster.sh: $url not ready within 30 s" >&2
    return 1
  done
}

# wait_holding COUNT URL...: until each node holds COUNT instances and has no
# replication backlog (60 s at most).
wait_holding() {
  local count=$1 url
  shift
  for url in "$@"; do
    for _ in $(seq 600); do
      if curl -fsS --max-time 5 "$url/v1/status" 2>/dev/null | python3 -c "
import json, sys
s = json.load(sys.stdin)
ok = s['instances'] == $count and all(p['backlog'] == 0 for p in s.get('cluster', {}).get('peers', []))
sys.exit(0 if ok else 1)" 2>/dev/null; then
        continue 2
      fi
      sleep 0.1
    done
    echo "cluster.sh: $url does not hold $count instances within 60 s (holds $(status_number "$url" instances))" >&2
    return 1
  done
}

stop_nodes() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# wrk3 URL URL URL: three wrk processes renewing at once, one per URL; prints
# {"processes":[RESULT, RESULT, RESULT]}.
wrk3() {
  local i=0 pids=() url
  for url in "$@"; do
    taskset -c "$CPUS" wrk -t1 -c"$PER" -d"$DURATION" --timeout 30s -s bench/registry/load.lua "$url" \
      -- renew native "$N" "$APPS" plain $((i * N / 3)) >"$OUT/.wrk$i" &
    pids+=($!)
    i=$((i + 1))
  done
  wait "${pids[@]}"
  printf '{"processes":[%s]}\n' "$(grep -h '^RESULT ' "$OUT"/.wrk0 "$OUT"/.wrk1 "$OUT"/.wrk2 | cut -d' ' -f2- | paste -sd,)"
}

# statuses URL...: every node's /v1/status as a JSON array.
statuses() {
  local all=() url
  for url in "$@"; do all+=("$(curl -fsS --max-time 5 "$url/v1/status" || echo null)"); done
  local IFS=,
  echo "[${all[*]}]"
}

# renew_with_lag A B C: wrk3 on the three nodes and, from 2 s in until 2 s before the
# end, the lag probe; the nodes' status before the load, right after it and 5 s later.
renew_with_lag() {
  local before
  before=$(statuses "$@")
  wrk3 "$1" "$2" "$3" >"$OUT/.wrk3" &
  local load=$!
  sleep 2
  local lag
  lag=$(taskset -c "$CPUS" "$BENCH" lag --write "$1" --watch "$2" --watch "$3" \
    --status "$1" --status "$2" --status "$3" --interval 50ms --duration "$((SECS - 4))s")
  wait "$load"
  local after later
  after=$(statuses "$@")
  sleep 5
  later=$(statuses "$@")
  printf '{%s,"lag":%s,"status_before_load":%s,"status_after_load":%s,"status_5s_later":%s}\n' \
    "$(sed 's/^{//; s/}$//' "$OUT/.wrk3")" "$lag" "$before" "$after" "$later"
}

seed() {
  taskset -c "$CPUS" "$BENCH" seed --apps "$APPS" --concurrency 64 "$@"
}

# partition NAME [ENV=VALUE...]: scenario (b) on a fresh cluster; prints one JSON line.
partition() {
  local name=$1
  shift
  local pa pb pc ab cb ba bc ctl
  local ports=()
  while [ "${#ports[@]}" -lt 8 ]; do
    local p
    p=$(pick_port)
    [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
  done
  read -r pa pb pc ab cb ba bc ctl <<<"${ports[*]}"
  local url=http://127.0.0.1
  taskset -c "$CPUS" "$BENCH" proxy --control "127.0.0.1:$ctl" --max-run 30m \
    --link "127.0.0.1:$ab=127.0.0.1:$pb" --link "127.0.0.1:$cb=127.0.0.1:$pb" \
    --link "127.0.0.1:$ba=127.0.0.1:$pa" --link "127.0.0.1:$bc=127.0.0.1:$pc" 2>>"$OUT/proxy-$name.log" &
  local proxy=$!
  PIDS+=("$proxy")
  echo "$proxy" >>"$OUT/.pids"
  for p in "$ab" "$cb" "$ba" "$bc" "$ctl"; do wait_until_listening "$proxy" "$p"; done
  # B's links, both ways, go through the proxy; A and C reach each other directly.
  start_node "partition-$name-a" "$pa" "$url:$pa,$url:$ab,$url:$pc" "$@"
  local na=$NODE_PID
  start_node "partition-$name-b" "$pb" "$url:$ba,$url:$pb,$url:$bc" "$@"
  local nb=$NODE_PID
  start_node "partition-$name-c" "$pc" "$url:$pa,$url:$cb,$url:$pc" "$@"
  local nc=$NODE_PID
  wait_ready "$url:$pa" "$url:$pb" "$url:$pc" || return 1
  seed --registry "$url:$pa" --count "$N" >/dev/null || return 1
  wait_holding "$N" "$url:$pa" "$url:$pb" "$url:$pc" || return 1

  curl -fsS -o /dev/null -X POST "$url:$ctl/cut"
  local cut_at
  cut_at=$(date +%s.%N)
  local w1 w2 w3 w4 w5
  w1=$(seed --registry "$url:$pa" --first "$N" --count 500) || return 1
  w2=$(seed --registry "$url:$pc" --first $((N + 500)) --count 500) || return 1
  w3=$(seed --registry "$url:$pa" --cancel --first 0 --count 500) || return 1
  w4=$(seed --registry "$url:$pc" --cancel --first 500 --count 500) || return 1
  w5=$(seed --registry "$url:$pb" --first $((N + 1000)) --count 500) || return 1
  local held="[$(status_number "$url:$pa" instances),$(status_number "$url:$pb" instances),$(status_number "$url:$pc" instances)]"
  local left
  left=$(python3 -c "import time; print(max(0.0, $cut_at + $PARTITION_SECS - time.time()))")
  sleep "$left"
  local settle=32s
  [ "$#" -gt 0 ] && settle=3s
  local converge
  converge=$(taskset -c "$CPUS" "$BENCH" converge --node "$url:$pa" --node "$url:$pb" --node "$url:$pc" \
    --heal "$url:$ctl/pass" --expect-first 1000 --expect-count $((N - 1000 + 1000 + 500)) --apps "$APPS" \
    --poll 200ms --timeout 180s --settle "$settle") || return 1
  local proxy_counts
  proxy_counts=$(curl -fsS "$url:$ctl/")
  stop_nodes "$na" "$nb" "$nc" "$proxy"
  printf '{"partition_seconds":%s,"env":"%s","writes":{"register_a":%s,"register_c":%s,"cancel_a":%s,"cancel_c":%s,"register_b":%s},"held_during_partition":%s,"proxy":%s,"converge":%s}\n' \
    "$PARTITION_SECS" "$*" "$w1" "$w2" "$w3" "$w4" "$w5" "$held" "$proxy_counts" "$converge"
}

renewals() {
  HELLO_PORT=$(pick_port)
  HELLO=http://127.0.0.1:$HELLO_PORT
  taskset -c "$CPUS" "$BENCH" hello --bind "127.0.0.1:$HELLO_PORT" --max-run 2h &
  HELLO_PID=$!
  PIDS+=("$HELLO_PID")
  wait_until_listening "$HELLO_PID" "$HELLO_PORT"

  echo "== (a) renewals: bare hyper, single node, cluster" >&2
  record renew-split hello "$(measured 3 wrk3 "$HELLO" "$HELLO" "$HELLO")"
  stop_nodes "$HELLO_PID"

  PORT=$(pick_port)
  SINGLE=http://127.0.0.1:$PORT
  start_node single "$PORT" ""
  SINGLE_PID=$NODE_PID
  seed --registry "$SINGLE" --count "$N" >/dev/null
  record renew-split single "$(measured 3 wrk3 "$SINGLE" "$SINGLE" "$SINGLE")"
  stop_nodes "$SINGLE_PID"

  PA=$(pick_port)
  PB=$(pick_port)
  PC=$(pick_port)
  while [ "$PB" = "$PA" ]; do PB=$(pick_port); done
  while [ "$PC" = "$PA" ] || [ "$PC" = "$PB" ]; do PC=$(pick_port); done
  A=http://127.0.0.1:$PA
  B=http://127.0.0.1:$PB
  C=http://127.0.0.1:$PC
  PEERS=$A,$B,$C
  start_node node-a "$PA" "$PEERS"
  NODE_A=$NODE_PID
  start_node node-b "$PB" "$PEERS"
  NODE_B=$NODE_PID
  start_node node-c "$PC" "$PEERS"
  NODE_C=$NODE_PID
  wait_ready "$A" "$B" "$C"
  seed --registry "$A" --count "$N" >/dev/null
  wait_holding "$N" "$A" "$B" "$C"
  record lag-idle cluster "$(measured 3 taskset -c "$CPUS" "$BENCH" lag --write "$A" --watch "$B" --watch "$C" \
    --status "$A" --status "$B" --status "$C" --interval 50ms --duration 10s)"
  record renew-split cluster "$(measured 3 renew_with_lag "$A" "$B" "$C")"
  stop_nodes "$NODE_A" "$NODE_B" "$NODE_C"
}

if [ "$WHAT" != partition ]; then
  renewals
fi
if [ "$WHAT" != renewals ]; then
  echo "== (b) partition and convergence" >&2
  record partition defaults "$(measured 3 partition defaults)"
  record partition fast "$(measured 3 partition fast "${FAST_ENV[@]}")"
fi

describe_end | tee -a "$OUT/machine.txt" >&2
"$BENCH" report "$RESULTS" | tee "$OUT/report.md"
