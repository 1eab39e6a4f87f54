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
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$here/tests/clis"
bin="$dir/node_modules/.bin"
stamp="$dir/node_modules/.mailroom-lock.sha256"

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
    echo "$bin"
fi
