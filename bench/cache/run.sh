#!/usr/bin/env bash
# The cache benchmark: hit latency, invalidation propagation per transport, get_or_load
# throughput under a mixed load; each figure beside a baseline measured in the same run
# (see bench/README.md, "Cache"). Loopback only; bounded in time (about a minute after
# the build). RabbitMQ and Redis come from RTALPHA_TEST_AMQP_URL / RTALPHA_TEST_REDIS_URL
# (the machine's services by default); a transport whose URL is empty is skipped.
#
#   bash bench/cache/run.sh                 # ROUNDS=200 HITS=1000000 SECONDS_EACH=3
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-200}"
HITS="${HITS:-1000000}"
SECONDS_EACH="${SECONDS_EACH:-3}"
AMQP_URL="${RTALPHA_TEST_AMQP_URL-amqp://guest:guest@127.0.0.1:5672/%2f}"
REDIS_URL="${RTALPHA_TEST_REDIS_URL-redis://127.0.0.1:6379}"
OUT="target/bench-cache/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT/bin"

cargo build --release -p rtalpha-bench --bin rtalpha-bench-cache
# A copy, so that another build replacing target/release mid-run changes nothing here.
cp target/release/rtalpha-bench-cache "$OUT/bin/"
git rev-parse --short HEAD >"$OUT/commit.txt"
git status --porcelain -- crates/cache crates/bus crates/proto bench/src/bin/cache.rs >"$OUT/uncommitted.txt"

# Wait (10 min at most) until no rustc runs: other agents build in this target directory.
for _ in $(seq 120); do
  pgrep -x rustc >/dev/null || break
  sleep 5
done
( for _ in $(seq 600); do pgrep -x rustc >/dev/null && echo seen; sleep 0.5; done ) >"$OUT/rustc-samples" &
SAMPLER=$!
trap 'kill "$SAMPLER" 2>/dev/null || true' EXIT

args=(--rounds "$ROUNDS" --hits "$HITS" --seconds "$SECONDS_EACH")
[ -n "$AMQP_URL" ] && args+=(--amqp-url "$AMQP_URL")
[ -n "$REDIS_URL" ] && args+=(--redis-url "$REDIS_URL")
timeout 600 "$OUT/bin/rtalpha-bench-cache" "${args[@]}" | tee "$OUT/results.jsonl"

kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
echo "rustc seen in $(wc -l <"$OUT/rustc-samples") of the half-second samples during the run" | tee "$OUT/quiet.txt"
echo "results: $OUT/results.jsonl (commit $(cat "$OUT/commit.txt"))"
