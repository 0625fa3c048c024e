#!/usr/bin/env bash
# The client library's benchmarks: the breaker's closed-state cost (criterion),
# and the latency lb:// adds over a bare hyper call to the same upstream, with
# the cost of a pick (one JSON line). Loopback only, bounded by request count.
set -euo pipefail
cd "$(dirname "$0")/../.."
requests="${REQUESTS:-20000}"
echo "== breaker (criterion, closed path; median of the estimate)"
cargo bench -q -p rtalpha-resilience --bench breaker -- --measurement-time 3 --warm-up-time 1 2>/dev/null \
  | awk '/^breaker\// { name = $1 } /time:/ { print name, $(NF-3), $(NF-2) }'
echo "== lb:// over bare hyper, ${requests} requests each"
cargo run --release -q -p rtalpha-client --example lb_overhead -- "$requests"
