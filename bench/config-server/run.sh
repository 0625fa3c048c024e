#!/usr/bin/env bash
# The config server benchmark (results in bench/README.md).
#
#   bash bench/config-server/run.sh        # from the workspace root; ~3 min
#
# 1. GET /{application}/{profile} requests/s and latency, wrk against the config server and
#    against the bare hyper baseline (`rtalpha-bench hello`) in the same run, same script,
#    same connections; both servers and wrk share the machine's 2 cores.
# 2. Commit -> refresh event at a bus subscriber: a local repository (file system watch),
#    and a git:// remote (a real git daemon) told by a webhook (POST /monitor).
# 1b. The same at 4 connections (below saturation) for the latency tail.
# 3. Resident memory with a repository of 1,000 files, after serving all 1,000 applications.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-50}
for tool in wrk curl git python3 taskset; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done
cargo build --release -p rtalpha -p rtalpha-bench
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# A repository of 1,000 files: application.yml and app-N.yml with 20 keys each.
REPO=$WORK/repo
mkdir -p "$REPO" && git -C "$REPO" init -q -b main
python3 - "$REPO" <<'PY'
import sys
repo = sys.argv[1]
open(f"{repo}/application.yml", "w").write("shared:\n" + "".join(f"  key{k}: value {k}\n" for k in range(20)))
for n in range(1, 1000):
    open(f"{repo}/app-{n}.yml", "w").write("".join(f"app.key{k}: value {n}-{k}\n" for k in range(20)))
PY
echo "foo: 0" > "$REPO/foo.yml"
git -C "$REPO" add -A && git -C "$REPO" -c user.name=b -c user.email=b@example.invalid commit -qm seed

HELLO_PORT=$(free_port); CONFIG_PORT=$(free_port)
taskset -c 0,1 target/release/rtalpha-bench hello --bind 127.0.0.1:$HELLO_PORT --max-run 30m >/dev/null 2>&1 &
RTALPHA_TELEMETRY__LOG_LEVEL=warn RTALPHA_CONFIG_SERVER__GIT__BASEDIR=$WORK/clone \
  RTALPHA_CONFIG_SERVER__GIT__REFRESH_RATE=1h taskset -c 0,1 \
  target/release/rtalpha config-server --bind 127.0.0.1:$CONFIG_PORT --git-uri "$REPO" >/dev/null 2>&1 &
CONFIG_PID=$!
wait_up $HELLO_PORT; wait_up $CONFIG_PORT
RSS_START=$(rss_kb $CONFIG_PID)
# A second baseline answers the config server's own answer, byte for byte: on loopback the
# kernel's cost grows with the answer, and this baseline pays it too.
curl -sf -o "$WORK/answer.json" "http://127.0.0.1:$CONFIG_PORT/app-7/default"
SAME_PORT=$(free_port)
taskset -c 0,1 target/release/rtalpha-bench hello --bind 127.0.0.1:$SAME_PORT --max-run 30m --body-file "$WORK/answer.json" >/dev/null 2>&1 &
wait_up $SAME_PORT
echo "answer: $(wc -c < "$WORK/answer.json") bytes"

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) commit: $(git rev-parse --short HEAD) nproc: $(nproc) cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
port_of() { case $1 in hello) echo $HELLO_PORT;; same-size-hello) echo $SAME_PORT;; *) echo $CONFIG_PORT;; esac; }
for target in hello same-size-hello config hello same-size-hello config; do
  port=$(port_of $target)
  out=$(taskset -c 0,1 wrk -t2 -c$CONNECTIONS -d$DURATION --latency "http://127.0.0.1:$port/app-7/default")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "environment $target: $rps req/s, p50 $p50, p99 $p99"
done

# Latency below saturation: 4 connections leave the cores to the servers, so the tail shows
# the service time rather than the run queue of wrk and the server sharing two cores.
for target in hello same-size-hello config; do
  port=$(port_of $target)
  out=$(taskset -c 0,1 wrk -t1 -c4 -d$DURATION --latency "http://127.0.0.1:$port/app-7/default")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "environment $target at 4 connections: $rps req/s, p50 $p50, p99 $p99"
done

for n in $(seq 1 999); do curl -s -o /dev/null "http://127.0.0.1:$CONFIG_PORT/app-$n/default"; done
echo "rss: at start ${RSS_START} kB, after serving 1,000 applications $(rss_kb $CONFIG_PID) kB"

echo "commit->event, local repository (watch): $(python3 bench/config-server/commit_to_event.py http://127.0.0.1:$CONFIG_PORT "$REPO" $ROUNDS)"

# A git:// remote, which the server cannot watch: the webhook tells it.
DAEMON_PORT=$(free_port); WEBHOOK_PORT=$(free_port)
mkdir -p "$WORK/served" && git clone -q --bare "$REPO" "$WORK/served/config.git" && git -C "$WORK/served/config.git" config receive.denyCurrentBranch ignore
git daemon --reuseaddr --export-all --listen=127.0.0.1 --port=$DAEMON_PORT --base-path="$WORK/served" "$WORK/served" &
sleep 0.5
RTALPHA_TELEMETRY__LOG_LEVEL=warn RTALPHA_CONFIG_SERVER__GIT__BASEDIR=$WORK/clone2 RTALPHA_CONFIG_SERVER__GIT__REFRESH_RATE=1h \
  target/release/rtalpha config-server --bind 127.0.0.1:$WEBHOOK_PORT --git-uri "git://127.0.0.1:$DAEMON_PORT/config.git" >/dev/null 2>&1 &
wait_up $WEBHOOK_PORT
WT=$WORK/worktree; git clone -q "$WORK/served/config.git" "$WT"
git -C "$WT" config push.default current
# Commits in the work tree are pushed to the served repository before the webhook.
cat > "$WORK/push-hook" <<'HOOK'
#!/bin/sh
git push -q origin HEAD:main
HOOK
chmod +x "$WORK/push-hook"; cp "$WORK/push-hook" "$WT/.git/hooks/post-commit"
echo "commit->event, git:// remote and webhook: $(python3 bench/config-server/commit_to_event.py http://127.0.0.1:$WEBHOOK_PORT "$WT" $ROUNDS webhook)"
