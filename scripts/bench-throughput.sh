#!/usr/bin/env bash
# Throughput: N tasks whose agent is `true`, P slots, from the supervisor's
# start (all N files already in tasks/pending/) until the last task's commit,
# next to `xargs -P` starting the same number of `true` processes: the spawn
# limit. Prints tasks/s and the ratio. Usage: scripts/bench-throughput.sh [N] [P]
set -euo pipefail
N=${1:-2000}
P=${2:-4}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/mailroom
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
TRUE=$(command -v true)

now() { date +%s.%N; }

setup() { # $1 = root, $2 = durability
  rm -rf "$1"; mkdir -p "$1"
  "$BIN" --root "$1" init >/dev/null
  cat > "$1/mailroom.yaml" <<YAML
concurrency: $P
durability: $2
agents:
  t:
    command: ["$TRUE"]
    max_instances: $P
YAML
  python3 - "$1/tasks/pending" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"t{i:06}.yaml"), "w") as f:
        f.write(f"description: task {i}\n")
PY
}

run_mailroom() { # $1 = durability; prints seconds
  local root=$work/root-$1
  setup "$root" "$1"
  sync
  local t0 t1
  t0=$(now)
  "$BIN" --root "$root" -q run --exit-when-idle
  t1=$(now)
  local done
  done=$(find "$root/tasks/completed" -maxdepth 1 -name '*.yaml' | wc -l)
  [ "$done" -eq "$N" ] || { echo "only $done of $N completed" >&2; exit 1; }
  echo "$t1 - $t0" | bc -l
}

run_xargs() {
  local t0 t1
  t0=$(now)
  seq "$N" | xargs -P "$P" -n 1 "$TRUE"
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

command -v bc >/dev/null || { echo "needs bc (apt-get install bc)" >&2; exit 1; }
x=$(run_xargs)
s=$(run_mailroom strict)
r=$(run_mailroom relaxed)
printf '%-34s %10s %12s %8s\n' "N=$N P=$P" "seconds" "tasks/s" "ratio"
row() { printf '%-34s %10.2f %12.0f %8.2f\n' "$1" "$2" "$(echo "$N / $2" | bc -l)" "$(echo "$x / $2" | bc -l)"; }
row "xargs -P$P true (spawn limit)" "$x"
row "mailroom, durability: strict" "$s"
row "mailroom, durability: relaxed" "$r"
