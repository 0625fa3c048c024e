#!/usr/bin/env bash
# The registry benchmark (bench/README.md says what it measures and why).
#
#   bash bench/registry/run.sh            # from the workspace root
#
# Builds release, starts the bare hyper baseline (`rtalpha-bench hello`) and, once per
# instance count, a fresh registry, each as its own process; the load comes from wrk
# (Debian's `wrk` package), another process. Every rate is measured against the
# baseline right before the registry, with the same script, duration and connection
# count. Results go to $OUT/results.jsonl and the Markdown tables to stdout.
#
# Knobs (environment): COUNTS ("10000 100000"), APPS (100), DURATION (10s),
# CONNECTIONS (64), THREADS (2), WATCHERS (100), ROUNDS (200), CPUS (0,1),
# OUT
# (target/bench-registry/<date>). Other servers may be running on this machine: the
# script checks that each port it uses is free and is then held by its own process.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
COUNTS=${COUNTS:-"10000 100000"}
APPS=${APPS:-100}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WATCHERS=${WATCHERS:-100}
ROUNDS=${ROUNDS:-200}
CPUS=${CPUS:-0,1}
OUT=${OUT:-target/bench-registry/$(date -u +%Y%m%dT%H%M%SZ)}
# The change log keeps each change this long (registry.delta_retention, default 180 s);
# memory is read again once it has passed.
RETENTION_WAIT=${RETENTION_WAIT:-190}

for tool in wrk curl taskset ss; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (apt-get install -y wrk curl util-linux)" >&2; exit 1; }
done

cargo build --release -p rtalpha -p rtalpha-bench
BENCH=target/release/rtalpha-bench
RTALPHA=target/release/rtalpha
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# Other builds in this target directory would steal the two cores: wait (10 min at most).
for _ in $(seq 60); do
  pgrep -x rustc >/dev/null || break
  echo "run.sh: waiting for running rustc processes to finish" >&2
  sleep 10
done
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -r)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes in crates/')"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "rustc running at start: $(pgrep -c -x rustc || true)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "busiest processes at start:"
  ps -eo pcpu,comm --sort=-pcpu | head -6
} | tee "$OUT/machine.txt" >&2

PIDS=()
# Notes every 5 s whether a compiler or other load turned up during the run: the
# rustc count and the three busiest processes over the last half second.
( for _ in $(seq 1000); do
    busiest=$(top -bn2 -d0.5 -w 200 | awk '/^top -/ {frame++} frame == 2 && $1 ~ /^[0-9]+$/ {print $9 "%", $12}' | head -3 | paste -sd' ')
    echo "$(date +%s) rustc=$(pgrep -c -x rustc || true) load=$(cut -d' ' -f1 /proc/loadavg) busiest: $busiest"
    sleep 4.5
  done ) >"$OUT/disturbance.log" &
PIDS+=($!)
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# A port nothing listens on (30 tries at most).
pick_port() {
  local port
  for _ in $(seq 30); do
    port=$((20000 + RANDOM % 20000))
    [ -z "$(ss -ltnH "sport = :$port")" ] && { echo "$port"; return 0; }
  done
  echo "run.sh: found no free port" >&2
  return 1
}

# wait_until_listening PID PORT: until PID itself listens on PORT (10 s at most), so
# that no measurement ever goes to some other server on this machine.
wait_until_listening() {
  for _ in $(seq 100); do
    ss -ltnHp "sport = :$2" | grep -q "pid=$1," && return 0
    kill -0 "$1" 2>/dev/null || { echo "run.sh: process $1 exited before listening on $2" >&2; return 1; }
    sleep 0.1
  done
  echo "run.sh: process $1 does not listen on $2" >&2
  return 1
}

# Waits until no rustc runs (10 min at most), so that the two cores are the
# benchmark's; other agents may build in this target directory.
quiet() {
  for _ in $(seq 120); do
    pgrep -x rustc >/dev/null || return 0
    sleep 5
  done
  echo "run.sh: a rustc is still running; measuring anyway (the row is marked)" >&2
}

# measured TRIES COMMAND...: runs a measurement after quiet(), and prints its JSON
# result with `rustc_samples`, how many of the half-second looks during it found a
# rustc. A disturbed measurement is tried again, up to TRIES times in all (1 for those
# that change the registry); the disturbed tries go to $OUT/disturbed.jsonl.
measured() {
  local tries=$1 json seen sampler
  shift
  for try in $(seq "$tries"); do
    quiet
    ( for _ in $(seq 1200); do pgrep -x rustc >/dev/null && echo seen; sleep 0.5; done ) >"$OUT/.rustc" &
    sampler=$!
    json=$("$@")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    seen=$(wc -l <"$OUT/.rustc")
    json="{\"rustc_samples\":$seen,\"try\":$try,${json#\{}"
    [ "$seen" -eq 0 ] && break
    [ "$try" -lt "$tries" ] && echo "$json" >>"$OUT/disturbed.jsonl" && echo "run.sh: a rustc ran during the measurement; once more" >&2
  done
  echo "$json"
}

# record INSTANCES MEASUREMENT TARGET RESULT_JSON
record() {
  printf '{"instances":%s,"measurement":"%s","target":"%s","result":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
  echo "  $3 $2 @ $1: $4" >&2
}

# load INSTANCES MEASUREMENT TARGET URL ACTION API
load() {
  local tries=3
  # Registering again would grow the table further: one try only.
  [ "$5" = register ] && tries=1
  record "$1" "$2" "$3" "$(measured "$tries" wrk_result "$4" "$5" "$6" "$1")"
}

# wrk_result URL ACTION API INSTANCES: one wrk run, its RESULT line's JSON.
wrk_result() {
  taskset -c "$CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 30s \
    -s bench/registry/load.lua "$1" -- "$2" "$3" "$4" "$APPS" | grep '^RESULT ' | cut -d' ' -f2-
}

# rss INSTANCES WHEN
rss() {
  local held kb hwm
  held=$(curl -fsS "$REGISTRY/v1/status" | grep -o '"instances":[0-9]*' | cut -d: -f2)
  kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$REGISTRY_PID/status")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$REGISTRY_PID/status")
  record "$1" rss registry "{\"when\":\"$2\",\"instances_held\":$held,\"vm_rss_kb\":$kb,\"vm_hwm_kb\":$hwm}"
}

# first_fetch INSTANCES API PATH: the first fetch after a change encodes; later ones hit the cache.
first_fetch() {
  local timing
  quiet
  timing=$(curl -fsS -o /dev/null -H 'Accept: application/json' -w '%{time_total} %{size_download}' "$REGISTRY$3")
  record "$1" "first-fetch-$2" registry "{\"seconds\":${timing% *},\"bytes\":${timing#* }}"
}

HELLO_PORT=${HELLO_PORT:-$(pick_port)}
HELLO=http://127.0.0.1:$HELLO_PORT
taskset -c "$CPUS" "$BENCH" hello --bind "127.0.0.1:$HELLO_PORT" --max-run 2h &
PIDS+=($!)
wait_until_listening "$!" "$HELLO_PORT"

for N in $COUNTS; do
  echo "== $N instances" >&2
  # A fresh registry per count, so each starts from the same empty state.
  REGISTRY_PORT=$(pick_port)
  REGISTRY=http://127.0.0.1:$REGISTRY_PORT
  taskset -c "$CPUS" "$RTALPHA" registry --bind "127.0.0.1:$REGISTRY_PORT" 2>"$OUT/registry-$N.log" &
  REGISTRY_PID=$!
  PIDS+=("$REGISTRY_PID")
  wait_until_listening "$REGISTRY_PID" "$REGISTRY_PORT"

  record "$N" seed hello "$(measured 1 taskset -c "$CPUS" "$BENCH" seed --registry "$HELLO" --count "$N" --apps "$APPS" --concurrency "$CONNECTIONS")"
  record "$N" seed registry "$(measured 1 taskset -c "$CPUS" "$BENCH" seed --registry "$REGISTRY" --count "$N" --apps "$APPS" --concurrency "$CONNECTIONS")"
  SEEDED_AT=$(date +%s)
  rss "$N" "after seeding"

  load "$N" renew-native hello "$HELLO" renew native
  load "$N" renew-native registry "$REGISTRY" renew native
  load "$N" renew-eureka hello "$HELLO" renew eureka
  load "$N" renew-eureka registry "$REGISTRY" renew eureka

  first_fetch "$N" native /v1/apps
  first_fetch "$N" eureka /eureka/apps
  load "$N" fetch-native hello "$HELLO" fetch native
  load "$N" fetch-native registry "$REGISTRY" fetch native
  load "$N" fetch-eureka hello "$HELLO" fetch eureka
  load "$N" fetch-eureka registry "$REGISTRY" fetch eureka
  rss "$N" "after the fetch runs (two encodings cached)"

  record "$N" propagation registry "$(measured 1 taskset -c "$CPUS" "$BENCH" propagation --registry "$REGISTRY" --watchers "$WATCHERS" --rounds "$ROUNDS" --apps "$APPS")"

  if [ "$N" -ge 100000 ]; then
    # Once the delta retention has passed the sweep prunes the log of the seeding's
    # changes: this is the memory of 100,000 instances at rest.
    left=$((SEEDED_AT + RETENTION_WAIT - $(date +%s)))
    [ "$left" -gt 0 ] && sleep "$left"
    rss "$N" "${RETENTION_WAIT} s after seeding (change log pruned)"
    # A change, then 64 clients fetch at once on the stale cache.
    curl -fsS -o /dev/null -X DELETE "$REGISTRY/v1/apps/BENCH-$((ROUNDS % APPS))/i-$ROUNDS"
    taskset -c "$CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s --timeout 30s -s bench/registry/load.lua "$REGISTRY" -- fetch native "$N" "$APPS" >/dev/null
    rss "$N" "after 64 concurrent fetches on a stale cache"
  fi

  # Last, because it grows the table past N.
  load "$N" register hello "$HELLO" register native
  load "$N" register registry "$REGISTRY" register native
  rss "$N" "after the registration run"

  kill "$REGISTRY_PID"
  wait "$REGISTRY_PID" 2>/dev/null || true
done

{
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rustc running at end: $(pgrep -c -x rustc || true)"
  echo "samples (every 5 s) with a rustc running: $(grep -vc 'rustc=0 ' "$OUT/disturbance.log" || true) of $(wc -l <"$OUT/disturbance.log")"
} | tee -a "$OUT/machine.txt" >&2
"$BENCH" report "$RESULTS" | tee "$OUT/report.md"
