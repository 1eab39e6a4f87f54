#!/usr/bin/env bash
# What one run keeper's start and exit costs, both ways: the main binary as
# `mailroom keeper RUN_DIR` and the small `mailroom-keeper RUN_DIR`, each
# running the agent `/bin/true` (durability relaxed, no slots), next to
# `/bin/true` alone. `perf stat -r N` per variant, ROUNDS rounds interleaved
# (A, B, true, A, B, true, ...) so that load on a shared machine hits all
# three alike. Prints CPU (task-clock: keeper + agent) and page faults per
# start, and their means over the rounds.
#
#   scripts/measure-keeper-exec.sh [N=200] [ROUNDS=3]
#
# Needs perf (linux-perf), bc and a release build (made if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
rounds=${2:-3}
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
[ -x "$bin/mailroom-keeper" ] || cargo build --release --locked --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/spec.json" <<JSON
{"run_id":"m","argv":["/bin/true"],"workdir":"$work","root":"$work",
 "stdout":"$work/stdout.log","stderr":"$work/stderr.log","output":null,
 "timeout_ms":60000,"grace_ms":1000,"max_output":1048576,"durable":false}
JSON

# perf stat's CSV: value,unit,event,... (means over the -r repeats).
stat() {
  perf stat -x, -e task-clock,page-faults -r "$n" "$@" </dev/null 2>&1 >/dev/null |
    awk -F, '$3 ~ /^task-clock/ {c=$1} $3 ~ /^page-faults/ {f=$1} END {printf "%.3f %.0f\n", c, f}'
}

ls -l "$bin/mailroom" "$bin/mailroom-keeper" | awk '{print $5, $9}'
printf '%-28s %6s %14s %12s\n' variant round "CPU ms/start" "page faults"
declare -A cpu faults
for r in $(seq 1 "$rounds"); do
  for v in main small true; do
    case $v in
      main) out=$(stat "$bin/mailroom" keeper "$work"); label="mailroom keeper RUN_DIR" ;;
      small) out=$(stat "$bin/mailroom-keeper" "$work"); label="mailroom-keeper RUN_DIR" ;;
      true) out=$(stat /bin/true); label="/bin/true alone" ;;
    esac
    [ -s "$work/outcome.json" ] || [ $v = true ] || { echo "no outcome.json from $v" >&2; exit 1; }
    rm -f "$work/outcome.json" "$work/keeper.json"
    read -r c f <<<"$out"
    printf '%-28s %6s %14s %12s\n' "$label" "$r" "$c" "$f"
    cpu[$v]=$(echo "${cpu[$v]:-0} + $c" | bc -l)
    faults[$v]=$(echo "${faults[$v]:-0} + $f" | bc -l)
  done
done
echo "means over $rounds rounds of $n starts:"
for v in main small true; do
  printf '  %-6s CPU %.3f ms, %.0f page faults\n' "$v" \
    "$(echo "${cpu[$v]} / $rounds" | bc -l)" "$(echo "${faults[$v]} / $rounds" | bc -l)"
done
