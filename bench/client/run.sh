#!/usr/bin/env bash
# The client library's benchmarks: the breaker's closed-state cost (criterion),
# and the latency lb:// adds over a bare hyper call to the same upstream, with
# the cost of a pick (one JSON line). Loopback only, bounded by request count.
set -euo pipefail
cd "$(dirname "$0")/../.."
requests="${REQUESTS:-20000}"
echo "== breaker (criterion, closed path)"
cargo bench -p rtalpha-resilience --bench breaker -- --measurement-time 3 --warm-up-time 1 2>&1 \
  | grep -E "^breaker/|time:" | paste - - | awk '{print $1, $4, $5, $6}' || true
echo "== lb:// over bare hyper, ${requests} requests each"
cargo run --release -q -p rtalpha-client --example lb_overhead -- "$requests"
