#!/usr/bin/env bash
# Follow-up experiments behind the explanations in bench/README.md (run.sh measures
# the targets; this asks why they are missed).
#
#   bash bench/registry/experiments.sh [memory|stall|stampede|layers|profile|all]
#
# memory   RSS of 100,000 instances: change log on/off, glibc malloc vs jemalloc
#          (Debian's libjemalloc2, by LD_PRELOAD; nothing is linked in), before and
#          after one native and one Eureka full fetch.
# stall    renewals measured while one Eureka full fetch encodes 100,000 instances
#          and one registration waits for the write lock.
# stampede 1 and 3 Eureka full fetches at once on a stale cache: each miss encodes.
# layers   the platform's middleware alone: wrk on /health (same layers, no table)
#          next to the bare hyper baseline and a renewal.
# profile  perf (cpu-clock samples) of the registry under the renewal load.
# Every server is started here on a free port and stopped at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WHAT=${1:-all}
OUT=${OUT:-target/bench-registry/experiments-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
BENCH=target/release/rtalpha-bench
RTALPHA=target/release/rtalpha
JEMALLOC=${JEMALLOC:-/usr/lib/x86_64-linux-gnu/libjemalloc.so.2}
cargo build --release -p rtalpha -p rtalpha-bench
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes in crates/'), $(date -u +%Y-%m-%dT%H:%M:%SZ), rustc running: $(pgrep -c -x rustc || true)"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

pick_port() {
  local port
  for _ in $(seq 30); do
    port=$((20000 + RANDOM % 20000))
    [ -z "$(ss -ltnH "sport = :$port")" ] && { echo "$port"; return 0; }
  done
  return 1
}

# start NAME [ENV=VALUE...] -- ARGS...: starts a server on a free port, sets PID and URL.
start() {
  local name=$1 port
  shift
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  port=$(pick_port)
  env "${env[@]}" "$@" --bind "127.0.0.1:$port" 2>"$OUT/$name.log" &
  PID=$!
  PIDS+=("$PID")
  URL=http://127.0.0.1:$port
  for _ in $(seq 100); do
    ss -ltnHp "sport = :$port" | grep -q "pid=$PID," && return 0
    sleep 0.1
  done
  echo "experiments.sh: $name did not come up" >&2
  return 1
}

stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

mib() { awk "/^$1:/ {printf \"%.0f\", \$2/1024}" "/proc/$PID/status"; }
rss() { echo "| $LABEL | $1 | $(mib VmRSS) | $(mib VmHWM) |"; }

seed() { "$BENCH" seed --registry "$URL" --count "$1" --apps 100 --concurrency 64 >/dev/null; }

wrk_line() {
  wrk -t2 -c64 -d"$1" --timeout 30s -s bench/registry/load.lua "$2" -- "$3" "$4" "$5" 100 \
    | grep '^RESULT ' | cut -d' ' -f2-
}

memory() {
  printf '[registry]\ndelta_retention = "1s"\n' >"$OUT/short-retention.toml"
  echo "| allocator, change log | when | VmRSS MiB | VmHWM MiB |"
  echo "|---|---|---:|---:|"
  for allocator in glibc jemalloc; do
    for log in "180 s (default)" "1 s"; do
      local env=() config=()
      [ "$allocator" = jemalloc ] && env=("LD_PRELOAD=$JEMALLOC")
      [ "$log" = "1 s" ] && config=(--config "$OUT/short-retention.toml")
      LABEL="$allocator, $log"
      start registry "${env[@]}" -- "$RTALPHA" registry "${config[@]}"
      seed 100000
      rss "seeded 100,000"
      curl -fsS -o /dev/null "$URL/v1/apps"
      rss "after 1 native fetch"
      curl -fsS -o /dev/null -H 'Accept: application/json' "$URL/eureka/apps"
      rss "after 1 Eureka JSON fetch"
      stop
    done
  done
}

stall() {
  start registry -- "$RTALPHA" registry
  seed 100000
  echo "renewals at 100,000, 8 s, 64 connections; after 2 s: one cancel (the cache goes"
  echo "stale), one Eureka JSON full fetch, 0.3 s later one registration, 0.2 s later /health."
  echo "(The renewals of the cancelled i-1 answer 404: the non-2xx count.)"
  echo
  (sleep 2
   curl -fsS -o /dev/null -X DELETE "$URL/v1/apps/BENCH-1/i-1"
   curl -fsS -o /dev/null -H 'Accept: application/json' -w 'eureka fetch: %{time_total} s\n' "$URL/eureka/apps" &
   sleep 0.3
   curl -fsS -o /dev/null -w 'registration during it: %{time_total} s\n' -H 'Content-Type: application/json' \
     -d '{"instance_id":"stall-1","host_name":"stall","port":1}' "$URL/v1/apps/STALL" &
   sleep 0.2
   curl -fsS -o /dev/null -w '/health asked 0.2 s after the registration: %{time_total} s\n' "$URL/health"
   wait) &
  local side=$!
  echo "renewals with the fetch and registration: $(wrk_line 8s "$URL" renew native 100000)"
  wait "$side"
  echo "renewals alone, right after:            $(wrk_line 8s "$URL" renew native 100000)"
  stop
}

stampede() {
  # Kept to 3 concurrent misses: each Eureka encode of 100,000 instances peaks at
  # about 1.3 GB, and this machine is shared.
  echo "| concurrent Eureka JSON fetches on a stale cache (100,000 instances) | slowest s | VmRSS MiB after | VmHWM MiB |"
  echo "|---:|---:|---:|---:|"
  for clients in 1 3; do
    start registry -- "$RTALPHA" registry
    seed 100000
    local times=()
    for c in $(seq "$clients"); do
      curl -fsS -o /dev/null -H 'Accept: application/json' -w '%{time_total}\n' "$URL/eureka/apps" >"$OUT/stampede-$c" &
    done
    wait $(jobs -p | grep -v "^$PID\$") 2>/dev/null || true
    local slowest
    slowest=$(cat "$OUT"/stampede-* | sort -n | tail -1)
    rm -f "$OUT"/stampede-*
    echo "| $clients | $slowest | $(mib VmRSS) | $(mib VmHWM) |"
    stop
  done
}

layers() {
  start hello -- "$BENCH" hello
  echo "bare hyper GET /health: $(wrk_line 10s "$URL/health" get native 1)"
  echo "bare hyper heartbeat:   $(wrk_line 10s "$URL" renew native 10000)"
  stop
  start registry -- "$RTALPHA" registry
  seed 10000
  echo "registry GET /health:   $(wrk_line 10s "$URL/health" get native 1)"
  echo "registry heartbeat:     $(wrk_line 10s "$URL" renew native 10000)"
  stop
}

profile() {
  command -v perf >/dev/null || { echo "perf is not installed"; return 0; }
  start registry -- "$RTALPHA" registry
  seed 10000
  wrk -t2 -c64 -d14s -s bench/registry/load.lua "$URL" -- renew native 10000 100 >/dev/null &
  local load=$!
  sleep 2
  perf record -e cpu-clock -F 1999 -g --call-graph dwarf,32768 -p "$PID" -o "$OUT/renew.perf" -- sleep 5 2>/dev/null >/dev/null || true
  wait "$load"
  stop
  echo "flat profile (self time), top 40:"
  perf report -i "$OUT/renew.perf" --no-children --sort symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -40
  echo
  echo "by subtree (children), top 60:"
  perf report -i "$OUT/renew.perf" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -60
}

case $WHAT in
  memory) memory ;;
  stall) stall ;;
  layers) layers ;;
  profile) profile ;;
  stampede) stampede ;;
  all) memory; echo; stall; echo; stampede; echo; layers; echo; profile ;;
  *) echo "usage: $0 [memory|stall|stampede|layers|profile|all]" >&2; exit 2 ;;
esac
