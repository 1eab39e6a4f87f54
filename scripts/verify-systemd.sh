#!/usr/bin/env bash
# Checks the units in systemd/ with `systemd-analyze verify`, offline: no
# running systemd is needed (works in a container). Installs systemd with
# apt-get if systemd-analyze is missing. Exits non-zero if verify fails or
# prints anything about our units (unknown keys, bad values, ...: verify
# itself exits 0 on those).
#
# verify insists that ExecStart's binary exists, and mailroom is not installed
# where the units expect it (/usr/local/bin). So each unit is verified as a
# copy, under its own name, whose ExecStart and ExecStartPre programs alone are replaced by an
# executable that exists everywhere (`true`); every other line is the unit's
# own. Usage: scripts/verify-systemd.sh [UNIT_FILE...] (default: systemd/*.service)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze not found; installing systemd" >&2
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
echo "using $(systemd-analyze --version | head -n1)"

units=("$@")
if [ ${#units[@]} -eq 0 ]; then units=(systemd/*.service); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The user manager wants a runtime directory, which a container or a CI job
# may not have.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  export XDG_RUNTIME_DIR="$work/runtime"
  mkdir -m 0700 "$XDG_RUNTIME_DIR"
fi
TRUE=$(type -P true)

failed=0
for unit in "${units[@]}"; do
  name=$(basename "$unit")
  mkdir -p "$work/units"
  copy="$work/units/$name"
  # Keep ExecStart's prefixes (-@:+!), swap the program only.
  sed -E "s#^(ExecStart|ExecStartPre)=([-@:+!]*)[^[:space:]]+#\\1=\\2$TRUE#" "$unit" >"$copy"
  if ! grep -q "^ExecStart=[-@:+!]*$TRUE" "$copy"; then
    echo "FAIL $unit: no ExecStart= line to check" >&2
    failed=1
    continue
  fi
  # A unit for `systemctl --user` is verified by the user manager's rules.
  mode=()
  if grep -q 'default\.target' "$copy" || [[ $name == *-user.service ]]; then
    mode=(--user)
  fi
  set +e
  out=$(systemd-analyze "${mode[@]}" verify --man=no "$copy" 2>&1)
  rc=$?
  set -e
  # Report in terms of the real file, not the temporary copy.
  out=${out//"$copy"/"$unit"}
  ours=$(grep -F -e "$name" -e "$unit" <<<"$out" || true)
  if [ $rc -ne 0 ] || [ -n "$ours" ]; then
    echo "FAIL $unit (systemd-analyze ${mode[*]:+${mode[*]} }verify exited $rc):" >&2
    printf '%s\n' "$out" >&2
    failed=1
  else
    echo "ok   $unit${mode:+ (--user)}"
    # Anything else verify printed is about other units on this machine.
    if [ -n "$out" ]; then printf '     note: %s\n' "$out"; fi
  fi
done
exit $failed
