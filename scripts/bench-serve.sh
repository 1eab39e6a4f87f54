#!/usr/bin/env bash
# How fast `mailroom serve` answers on a big tree, in a release build.
#
#   scripts/bench-serve.sh [N] [REPEATS]        # defaults: 100000 20
#
# Builds a tree with N task files (90% pending, 9% completed, 1% failed; one
# in a thousand has the label `rare` and the word `needle` in its
# description) and a completed_tasks.jsonl with one line per finished task,
# starts `mailroom serve` on a free loopback port, and times each route with
# curl (time_total: connect, request, render, transfer), REPEATS times after
# a first (cold) request. Prints the cold time and the median and max of the
# warm ones, in milliseconds; the cold request comes right after the server
# printed its address (it reads the listings in the background from then on).
# The directory listings are cached only once the directories' mtimes are 2 s
# old, so the script waits that long first. A last line times the overview of
# a live tree: a new task file lands in pending/ before each request.
#
# Env: SKIP_BUILD=1 uses the release binary as built; KEEP_WORK=1 keeps the tree.
set -euo pipefail
N=${1:-100000}
REPEATS=${2:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$here" && cargo build --release --locked --quiet)
fi
bin=$target/release/mailroom
work=$(mktemp -d "${TMPDIR:-/tmp}/mailroom-bench-serve.XXXXXX")
srv=
cleanup() {
    [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work"/tasks/{tmp,pending,assigned,completed,failed} "$work/context"
printf 'agents:\n  demo:\n    command: [true]\n' >"$work/mailroom.yaml"
python3 - "$work" "$N" <<'EOF'
import json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
log = open(os.path.join(root, "context", "completed_tasks.jsonl"), "w")
for i in range(n):
    st = "completed" if i % 100 < 9 else "failed" if i % 100 == 9 else "pending"
    body = "description: a rare needle\nlabels: [rare]\n" if i % 1000 == 7 else f"description: task {i}\n"
    with open(os.path.join(root, "tasks", st, f"bulk-{i:06}.yaml"), "w") as f:
        f.write(body)
    if st != "pending":
        log.write(json.dumps({"task": f"bulk-{i:06}", "status": st, "outcome": "success" if st == "completed" else "exit",
                              "agent": "demo", "attempts": 1, "finished_at": "2026-12-01T10:00:00.000Z",
                              "duration_ms": 1000 + i % 5000, "usage": {"cost_usd": 0.01, "input_tokens": 100}}) + "\n")
EOF
sleep 2.5 # let the directory stamps age past the racy window

out=$work/serve.out
"$bin" --root "$work" serve --listen 127.0.0.1:0 >"$out" 2>"$work/serve.err" &
srv=$!
for _ in $(seq 100); do
    grep -q '^listening on' "$out" 2>/dev/null && break
    sleep 0.1
done
base=$(sed -n 's/^listening on \(http:[^ ]*\)\/$/\1/p' "$out")
[[ -n $base ]] || { echo "serve did not start:" >&2; cat "$work/serve.err" >&2; exit 1; }

time_ms() { curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "$base$1"; }
printf '%-45s %8s %8s %8s\n' "route ($N tasks)" cold_ms median_ms max_ms
for route in / /api/overview /tasks "/tasks?page=1000" "/tasks?state=completed&page=50" \
    "/tasks?q=needle" "/tasks?label=rare" /agents /api/agents /graph; do
    read -r code cold < <(time_ms "$route")
    [[ $code == 200 ]] || { echo "$route: HTTP $code" >&2; exit 1; }
    warm=$(for _ in $(seq "$REPEATS"); do time_ms "$route" | cut -d' ' -f2; done | sort -n)
    med=$(sed -n "$(((REPEATS + 1) / 2))p" <<<"$warm")
    max=$(tail -1 <<<"$warm")
    awk -v r="$route" -v c="$cold" -v m="$med" -v x="$max" \
        'BEGIN { printf "%-45s %8.1f %8.1f %8.1f\n", r, c * 1000, m * 1000, x * 1000 }'
done

# A live tree: one more task file lands in pending/ before each request, so
# the pending listing is read again every time (its stamp is always new).
warm=$(for i in $(seq "$REPEATS"); do
    echo "description: live $i" >"$work/tasks/pending/live-$i.yaml"
    time_ms / | cut -d' ' -f2
done | sort -n)
awk -v m="$(sed -n "$(((REPEATS + 1) / 2))p" <<<"$warm")" -v x="$(tail -1 <<<"$warm")" \
    'BEGIN { printf "%-45s %8s %8.1f %8.1f\n", "/ (a task added before each)", "-", m * 1000, x * 1000 }'
