#!/usr/bin/env bash
# Installs the pinned aider (aider-chat 0.86.1, from PyPI) that the end-to-end tests run,
# into a venv of its own: $MAILROOM_AIDER_VENV, else ~/.cache/mailroom/aider-0.86.1 (about
# 750 MB, a minute). Idempotent: does nothing when that venv's aider already runs. Quiet
# unless something fails. With --print-bin, prints the path of the aider it installed.
#
# Needs python3 with venv and pip (Debian: python3-venv) and PyPI the first time.
set -euo pipefail

version=0.86.1
venv="${MAILROOM_AIDER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/aider-$version}"
aider="$venv/bin/aider"

if ! "$aider" --version >/dev/null 2>&1; then
    # Only a venv this script made (its marker inside) is made anew; a
    # directory of somebody else's is never removed.
    if [[ -e "$venv" && ! -e "$venv/.mailroom-aider" ]]; then
        echo "install-aider: $venv exists but has no working aider and was not made by" \
             "this script; remove it or set MAILROOM_AIDER_VENV" >&2
        exit 1
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    touch "$venv/.mailroom-aider"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aider-chat==$version"
    if ! "$aider" --version >/dev/null 2>&1; then
        echo "install-aider: aider does not run after install" >&2
        exit 1
    fi
fi
if [[ "${1:-}" == --print-bin ]]; then
    echo "$aider"
fi
