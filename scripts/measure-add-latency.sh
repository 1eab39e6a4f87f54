#!/bin/sh
# Measures submit-to-spawn latency of `mailroom add` next to `cp` in the same
# run, and the start order of 20 tasks added in a row (issue 12).
#
#   scripts/measure-add-latency.sh [ROUNDS]     (default 10 rounds of each)
#
# MAILROOM names the binary (default: target/release/mailroom, else
# target/debug/mailroom). The agent records the time it starts; latency is that
# minus the time just before the submitting command ran. One agent slot, so
# starts are strictly ordered.
set -eu
rounds=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MAILROOM:-}
if [ -z "$bin" ]; then
    for b in "${CARGO_TARGET_DIR:-$here/target}/release/mailroom" "${CARGO_TARGET_DIR:-$here/target}/debug/mailroom"; do
        [ -x "$b" ] && { bin=$b; break; }
    done
fi
[ -x "${bin:-}" ] || { echo "no mailroom binary: build it or set MAILROOM" >&2; exit 1; }
root=$(mktemp -d "${TMPDIR:-/tmp}/mailroom-latency.XXXXXX")
sup=
cleanup() {
    [ -n "$sup" ] && kill -TERM "$sup" 2>/dev/null && wait "$sup" 2>/dev/null
    rm -rf "$root"
}
trap cleanup EXIT INT TERM
mkdir -p "$root/tasks/pending" "$root/tasks/tmp"
stamps="$root/stamps.log"
: > "$stamps"
cat > "$root/mailroom.yaml" <<YAML
agents:
  a:
    command: ["sh", "-c", "echo \"\$MAILROOM_TASK \$(date +%s%N)\" >> $stamps"]
    max_instances: 1
YAML
printf 'description: x\n' > "$root/src.yaml"
NO_COLOR=1 "$bin" --root "$root" run 2> "$root/run.log" &
sup=$!
until grep -q "supervisor ready" "$root/run.log" 2>/dev/null; do sleep 0.05; done

count() { wc -l < "$stamps"; }
wait_for() { while [ "$(count)" -lt "$1" ]; do sleep 0.002; done; }
# The start time of the n-th (1-based) stamp.
nth() { sed -n "${1}p" "$stamps" | cut -d' ' -f2; }

: > "$root/lat"
i=0
while [ "$i" -lt "$rounds" ]; do
    for how in add cp; do
        n=$(( $(count) + 1 ))
        t0=$(date +%s%N)
        if [ "$how" = add ]; then
            "$bin" --root "$root" add x --name "add$i" > /dev/null
        else
            cp "$root/src.yaml" "$root/tasks/pending/cp$i.yaml"
        fi
        wait_for "$n"
        echo "$how $(( ($(nth "$n") - t0) / 1000 ))" >> "$root/lat"
    done
    i=$((i + 1))
done
for how in add cp; do
    grep "^$how " "$root/lat" | cut -d' ' -f2 | sort -n | awk -v how="$how" '
        { v[NR] = $1 }
        END { printf "%-4s submit-to-spawn over %d runs: median %.1f ms, min %.1f ms, max %.1f ms\n",
              how, NR, v[int((NR + 1) / 2)] / 1000, v[1] / 1000, v[NR] / 1000 }'
done

# Twenty in a row, as fast as add goes.
base=$(count)
j=0
while [ "$j" -lt 20 ]; do
    "$bin" --root "$root" add x --name "$(printf 'row%02d' "$j")" > /dev/null
    j=$((j + 1))
done
wait_for $((base + 20))
order=$(tail -n 20 "$stamps" | cut -d' ' -f1 | tr '\n' ' ')
expected=$(j=0; while [ "$j" -lt 20 ]; do printf 'row%02d ' "$j"; j=$((j + 1)); done)
echo "start order of 20 tasks added in a row: $order"
if [ "$order" = "$expected" ]; then echo "FIFO: yes"; else echo "FIFO: NO (expected $expected)"; exit 1; fi
