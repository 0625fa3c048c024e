#!/usr/bin/env bash
# Installs the real third-party Eureka clients that the compatibility tests
# (crates/rtalpha/tests/eureka_clients.rs) drive: py-eureka-client into a Python venv
# and eureka-js-client into a node_modules directory, both pinned (requirements.txt,
# package.json + package-lock.json beside this script).
#
# Usage: bash compat/setup.sh [TARGET_DIR]      (default: .compat at the repo root)
#
# Afterwards the tests find the clients through two environment variables:
#   RTALPHA_TEST_PYTHON=TARGET_DIR/venv/bin/python
#   RTALPHA_TEST_NODE_MODULES=TARGET_DIR/node/node_modules
# e.g.  RTALPHA_TEST_PYTHON=$PWD/.compat/venv/bin/python \
#       RTALPHA_TEST_NODE_MODULES=$PWD/.compat/node/node_modules \
#       cargo test -p rtalpha --test eureka_clients
# Unset, each test says it is skipped; with CI=true an unset variable fails the test.
#
# Idempotent: each half is redone only when its pins or the interpreter changed (a
# stamp file records what was installed), so a second run takes well under a second.
# Needs python3 (with venv), node and npm on PATH, and access to PyPI and npm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${1:-$root/.compat}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

python="${PYTHON:-python3}"
for tool in "$python" node npm sha256sum; do
    command -v "$tool" >/dev/null || { echo "setup.sh: $tool is not on PATH" >&2; exit 1; }
done

fingerprint() { # the files' hashes and a tool's version, on one line
    local version="$1"; shift
    echo "$(cat "$@" | sha256sum | cut -d' ' -f1) $version"
}

# --- Python: TARGET/venv -------------------------------------------------------------
venv="$target/venv"
py_stamp="$target/venv.stamp"
py_want="$(fingerprint "$("$python" --version 2>&1)" "$here/requirements.txt")"
if [[ -x "$venv/bin/python" && -f "$py_stamp" && "$(cat "$py_stamp")" == "$py_want" ]]; then
    echo "setup.sh: Python venv up to date ($venv)"
else
    echo "setup.sh: creating the Python venv in $venv"
    rm -rf "$venv" "$py_stamp"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$here/requirements.txt"
    "$venv/bin/python" -c 'import py_eureka_client.eureka_client'
    echo "$py_want" >"$py_stamp"
fi

# --- Node: TARGET/node/node_modules --------------------------------------------------
node_dir="$target/node"
node_stamp="$target/node.stamp"
node_want="$(fingerprint "$(node --version)" "$here/package.json" "$here/package-lock.json")"
if [[ -d "$node_dir/node_modules" && -f "$node_stamp" && "$(cat "$node_stamp")" == "$node_want" ]]; then
    echo "setup.sh: node_modules up to date ($node_dir/node_modules)"
else
    echo "setup.sh: installing node modules in $node_dir"
    rm -rf "$node_dir" "$node_stamp"
    mkdir -p "$node_dir"
    cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    node -e 'require(process.argv[1])' "$node_dir/node_modules/eureka-js-client"
    echo "$node_want" >"$node_stamp"
fi

echo "setup.sh: done"
echo "  RTALPHA_TEST_PYTHON=$venv/bin/python"
echo "  RTALPHA_TEST_NODE_MODULES=$node_dir/node_modules"
