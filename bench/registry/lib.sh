# Helpers shared by run.sh and cluster.sh (sourced, not run). They expect $OUT (the
# run's directory) and the array PIDS (processes to stop at exit) to exist.

# stop_ours PID...: stops each PID that is still a process of this run (one of the
# binaries in $OUT/bin, or a direct child of this script), so that a PID the system has
# since given to another program is never signalled.
stop_ours() {
  local pid args ppid
  for pid in "$@"; do
    args=$(ps -o args= -p "$pid" 2>/dev/null) || continue
    ppid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')
    if [[ "$args" == *"$OUT/bin/"* ]] || [ "$ppid" = "$$" ]; then
      kill "$pid" 2>/dev/null || true
    fi
  done
}

# A port nothing listens on (30 tries at most).
pick_port() {
  local port
  for _ in $(seq 30); do
    port=$((20000 + RANDOM % 20000))
    [ -z "$(ss -ltnH "sport = :$port")" ] && { echo "$port"; return 0; }
  done
  echo "bench: found no free port" >&2
  return 1
}

# wait_until_listening PID PORT: until PID itself listens on PORT (10 s at most), so
# that no measurement ever goes to some other server on this machine.
wait_until_listening() {
  for _ in $(seq 100); do
    ss -ltnHp "sport = :$2" | grep -q "pid=$1," && return 0
    kill -0 "$1" 2>/dev/null || { echo "bench: process $1 exited before listening on $2" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: process $1 does not listen on $2" >&2
  return 1
}

# Waits until no rustc runs (10 min at most), so that the two cores are the
# benchmark's; other agents may build in this target directory.
quiet() {
  for _ in $(seq 120); do
    pgrep -x rustc >/dev/null || return 0
    sleep 5
  done
  echo "bench: a rustc is still running; measuring anyway (the row is marked)" >&2
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
    [ "$try" -lt "$tries" ] && echo "$json" >>"$OUT/disturbed.jsonl" && echo "bench: a rustc ran during the measurement; once more" >&2
  done
  echo "$json"
}

# build_binaries: `cargo build --release -p rtalpha -p rtalpha-bench`, then copies the
# two binaries to $OUT/bin and points RTALPHA and BENCH at the copies, so that another
# agent's build replacing target/release during the run cannot change the binary under
# test. SOURCE=worktree (the default) builds this working tree as it is. SOURCE=head (or
# any commit) builds that commit instead (crates and manifests as committed, bench/ as in
# the working tree), exported to target/bench-head/src with its own target directory, so
# that others' uncommitted work in crates/ is not what gets measured and a run can be
# repeated on the same code. Says what it built in $OUT/build.txt.
build_binaries() {
  local built=target/release
  mkdir -p "$OUT/bin"
  case ${SOURCE:-worktree} in
    worktree)
      cargo build --release -p rtalpha -p rtalpha-bench
      echo "built from: the working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes in crates/ or the manifests'): $(git status --short -- crates Cargo.toml Cargo.lock | paste -sd' ')" >"$OUT/build.txt"
      ;;
    *)
      local commit src=target/bench-head/src rev=$SOURCE
      [ "$rev" = head ] && rev=HEAD
      commit=$(git rev-parse --short "${rev}^{commit}") || { echo "bench: SOURCE is worktree, head or a commit" >&2; return 1; }
      rm -rf "$src"
      mkdir -p "$src"
      git archive --format=tar "$commit" | tar -x -C "$src"
      rm -rf "$src/bench"
      cp -r bench "$src/bench"
      (cd "$src" && CARGO_TARGET_DIR=../target cargo build --release -p rtalpha -p rtalpha-bench)
      built=target/bench-head/target/release
      echo "built from: $SOURCE = $commit as committed (crates/, Cargo.toml, Cargo.lock), with bench/ of the working tree" >"$OUT/build.txt"
      ;;
  esac
  cp "$built/rtalpha" "$built/rtalpha-bench" "$OUT/bin/"
  RTALPHA=$OUT/bin/rtalpha
  BENCH=$OUT/bin/rtalpha-bench
  echo "binaries: rtalpha $(sha256sum "$RTALPHA" | cut -c1-16), rtalpha-bench $(sha256sum "$BENCH" | cut -c1-16)" >>"$OUT/build.txt"
}

# Waits for other builds in this target directory to finish (10 min at most).
wait_for_builds() {
  for _ in $(seq 60); do
    pgrep -x rustc >/dev/null || return 0
    echo "bench: waiting for running rustc processes to finish" >&2
    sleep 10
  done
}

# The machine and the build, to stdout.
describe_machine() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -r)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes in crates/')"
  echo "last commit touching crates/registry or crates/runtime: $(git log -1 --format='%h %s' -- crates/registry crates/runtime)"
  echo "uncommitted in crates/ and the manifests: $(git status --short -- crates Cargo.toml Cargo.lock | paste -sd' ')"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "rustc running at start: $(pgrep -c -x rustc || true)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "busiest processes at start:"
  ps -eo pcpu,comm --sort=-pcpu | head -6
}

# Notes every 5 s, in $OUT/disturbance.log, whether a compiler or other load turned up
# during the run: the rustc count and the three busiest processes over the last half
# second. Adds itself to PIDS.
start_disturbance_log() {
  ( for _ in $(seq 1000); do
      busiest=$(top -bn2 -d0.5 -w 200 | awk '/^top -/ {frame++} frame == 2 && $1 ~ /^[0-9]+$/ {print $9 "%", $12}' | head -3 | paste -sd' ')
      echo "$(date +%s) rustc=$(pgrep -c -x rustc || true) load=$(cut -d' ' -f1 /proc/loadavg) busiest: $busiest"
      sleep 4.5
    done ) >"$OUT/disturbance.log" &
  PIDS+=($!)
}

# The end of a run, to stdout.
describe_end() {
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rustc running at end: $(pgrep -c -x rustc || true)"
  echo "samples (every 5 s) with a rustc running: $(grep -vc 'rustc=0 ' "$OUT/disturbance.log" || true) of $(wc -l <"$OUT/disturbance.log")"
}
