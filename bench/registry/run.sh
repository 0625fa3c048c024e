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
# Knobs (environment): SOURCE (worktree, head or a commit: build_binaries in lib.sh),
# COUNTS ("10000 100000"), APPS (100), DURATION (10s), CONNECTIONS (64), THREADS (2),
# WATCHERS (100), ROUNDS (200), CPUS (0,1), OUT (target/bench-registry/<date>);
# BEFORE (an earlier run's results.jsonl) and BEFORE_LABEL (its commit) add that run's
# figures to the tables as a "before" column.
# Other servers may be running on this machine: the script checks that each port it
# uses is free and is then held by its own process.
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

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# shellcheck source=bench/registry/lib.sh
. bench/registry/lib.sh
PIDS=()
cleanup() {
  stop_ours "${PIDS[@]}"
}
trap cleanup EXIT

# Other builds in this target directory would steal the two cores: wait (10 min at most).
wait_for_builds
build_binaries
{ describe_machine; cat "$OUT/build.txt"; } | tee "$OUT/machine.txt" >&2
start_disturbance_log

# record INSTANCES MEASUREMENT TARGET RESULT_JSON
record() {
  printf '{"instances":%s,"measurement":"%s","target":"%s","result":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
  echo "  $3 $2 @ $1: $4" >&2
}

# load INSTANCES MEASUREMENT TARGET URL ACTION API [ENCODING]
load() {
  local tries=3
  # Registering again would grow the registry's table further: one try only there (the
  # baseline holds nothing and may try again).
  [ "$5" = register ] && [ "$3" = registry ] && tries=1
  record "$1" "$2" "$3" "$(measured "$tries" wrk_result "$4" "$5" "$6" "$1" "${7:-plain}")"
}

# wrk_result URL ACTION API INSTANCES ENCODING: one wrk run, its RESULT line's JSON.
wrk_result() {
  taskset -c "$CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 30s \
    -s bench/registry/load.lua "$1" -- "$2" "$3" "$4" "$APPS" "$5" | grep '^RESULT ' | cut -d' ' -f2-
}

# rss INSTANCES WHEN: VmRSS now and VmHWM, the peak since the previous reading: after
# each reading the peak is reset (`5` to /proc/PID/clear_refs, Linux 4.0 and later), so
# that each row's peak belongs to what ran between it and the row before. Where the
# reset is refused, the peak is the process's whole life ("hwm_reset":false).
rss() {
  local held kb hwm reset=true
  held=$(curl -fsS "$REGISTRY/v1/status" | grep -o '"instances":[0-9]*' | cut -d: -f2)
  kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$REGISTRY_PID/status")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$REGISTRY_PID/status")
  echo 5 2>/dev/null >"/proc/$REGISTRY_PID/clear_refs" || reset=false
  record "$1" rss registry "{\"when\":\"$2\",\"instances_held\":$held,\"vm_rss_kb\":$kb,\"vm_hwm_kb\":$hwm,\"hwm_reset\":$reset}"
}

# first_fetch INSTANCES API PATH: the first fetch after a change encodes (asked with
# gzip, so that its time is the encoding's); the next one, asked without gzip, is served
# from the held encoding, inflated. curl does not inflate: the bytes are the wire's.
first_fetch() {
  local timing
  quiet
  timing=$(curl -fsS -o /dev/null -H 'Accept: application/json' -H 'Accept-Encoding: gzip' \
    -w '%{time_total} %{size_download}' "$REGISTRY$3")
  record "$1" "first-fetch-$2" registry "{\"seconds\":${timing% *},\"bytes\":${timing#* },\"encoding\":\"gzip\"}"
  timing=$(curl -fsS -o /dev/null -H 'Accept: application/json' -w '%{time_total} %{size_download}' "$REGISTRY$3")
  record "$1" "cached-fetch-$2" registry "{\"seconds\":${timing% *},\"bytes\":${timing#* },\"encoding\":\"plain\"}"
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
  # Each format and encoding in turn, with the memory after each; the gzip runs first,
  # so that their peaks are not raised by what the plain runs leave resident.
  rss "$N" "after the first fetches (both encodings held)"
  load "$N" fetch-native-gzip hello "$HELLO" fetch native gzip
  load "$N" fetch-native-gzip registry "$REGISTRY" fetch native gzip
  rss "$N" "after the native fetch run (gzip)"
  load "$N" fetch-eureka-gzip hello "$HELLO" fetch eureka gzip
  load "$N" fetch-eureka-gzip registry "$REGISTRY" fetch eureka gzip
  rss "$N" "after the Eureka JSON fetch run (gzip)"
  load "$N" fetch-native hello "$HELLO" fetch native plain
  load "$N" fetch-native registry "$REGISTRY" fetch native plain
  rss "$N" "after the native fetch run (plain)"
  load "$N" fetch-eureka hello "$HELLO" fetch eureka plain
  load "$N" fetch-eureka registry "$REGISTRY" fetch eureka plain
  rss "$N" "after the Eureka JSON fetch run (plain; all fetch runs done)"

  record "$N" propagation registry "$(measured 1 taskset -c "$CPUS" "$BENCH" propagation --registry "$REGISTRY" --watchers "$WATCHERS" --rounds "$ROUNDS" --apps "$APPS")"

  if [ "$N" -ge 100000 ]; then
    # Once the delta retention has passed the sweep prunes the log of the seeding's
    # changes: this is the memory of 100,000 instances at rest.
    left=$((SEEDED_AT + RETENTION_WAIT - $(date +%s)))
    [ "$left" -gt 0 ] && sleep "$left"
    rss "$N" "${RETENTION_WAIT} s after seeding (change log pruned)"
    # A change, then 64 clients fetch at once on the stale cache (plain, so that each
    # also inflates its own copy).
    curl -fsS -o /dev/null -X DELETE "$REGISTRY/v1/apps/BENCH-$((ROUNDS % APPS))/i-$ROUNDS"
    taskset -c "$CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s --timeout 30s -s bench/registry/load.lua "$REGISTRY" -- fetch native "$N" "$APPS" plain >/dev/null
    rss "$N" "after 64 concurrent native fetches (plain) on a stale cache"
  fi

  # Last, because it grows the table past N.
  load "$N" register hello "$HELLO" register native
  load "$N" register registry "$REGISTRY" register native
  rss "$N" "after the registration run"

  kill "$REGISTRY_PID"
  wait "$REGISTRY_PID" 2>/dev/null || true
done

describe_end | tee -a "$OUT/machine.txt" >&2
"$BENCH" report "$RESULTS" ${BEFORE:+--before "$BEFORE" --before-label "$BEFORE_LABEL"} | tee "$OUT/report.md"
