#!/usr/bin/env bash
# Two (or more) mailroom binaries side by side, with `xargs -P4` as the
# reference in every round: the narrow before/after of a change.
#
#   scripts/bench-ab.sh N ROUNDS DURABILITY BIN...
#   scripts/bench-ab.sh 1000 4 strict old/mailroom target/release/mailroom
#
# Each round runs xargs and every binary once, in a shuffled order, on N task
# files of `true` already in tasks/pending/ (4 slots, run keepers on, the
# given durability), and prints tasks/s and CPU ms per task (user+sys from
# /usr/bin/time, keepers and agents included). Each binary uses the
# `mailroom-keeper` beside it when there is one (as installed).
#
# Nothing is removed before the end, and the work directory is left behind
# with KEEP_WORK=1: on ext4 without a journal every file created scans the
# inodes freed in the last few minutes, so removals between runs would slow
# the runs after them (see BENCHMARKS.md). Wait a few minutes after removing
# many files before you measure.
#
# FRESH_FS=1 (root, mkfs.ext4 and loop devices) runs each binary's round on
# a file system of its own, made for it (ext4 without a journal, like this
# machine's disk), with TMPDIR inside it: no run then pays for the inodes an
# earlier one freed (a build's own per-task removals included), and the
# order of the rounds stops mattering.
set -euo pipefail
N=${1:?N}
ROUNDS=${2:?ROUNDS}
DUR=${3:?durability: strict or relaxed}
shift 3
[ $# -ge 1 ] || { echo "usage: $0 N ROUNDS DURABILITY BIN..." >&2; exit 2; }
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }
TRUE=$(type -P true)
work=$(mktemp -d "${TMPDIR:-/tmp}/mailroom-bench-ab.XXXXXX")
cleanup() {
  for m in "$work"/fs-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

mkroot() { # bin root
  "$1" --root "$2" -q init >/dev/null
  cat >"$2/mailroom.yaml" <<EOF
concurrency: 4
durability: $DUR
run_keeper: true
agents:
  t:
    command: ["$TRUE"]
    max_instances: 4
EOF
  local i
  for ((i = 0; i < N; i++)); do
    printf 'description: task %d\n' "$i" >"$2/tasks/pending/t$(printf %06d "$i").yaml"
  done
}

report() { # round label "wall user sys"
  awk -v n="$N" -v r="$1" -v b="$2" '{
    printf "round %d  %-40s %6.0f tasks/s  %6.2f ms CPU per task\n", r, b, n / $1, ($2 + $3) * 1000 / n }' <<<"$3"
}

echo "N=$N rounds=$ROUNDS durability=$DUR; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
seq=0
for ((r = 1; r <= ROUNDS; r++)); do
  for v in $( (echo xargs; seq 1 $#) | shuf); do
    if [ "$v" = xargs ]; then
      t=$({ "$TIME" -f '%e %U %S' bash -c "yes x | head -n $N | xargs -P4 -n1 '$TRUE'"; } 2>&1 | tail -1)
      report "$r" "xargs -P4 true" "$t"
    else
      bin=$(realpath "${!v}")
      seq=$((seq + 1))
      root=$work/$v-$seq
      tmp=${TMPDIR:-/tmp}
      if [ "${FRESH_FS:-0}" = 1 ]; then
        mnt=$work/fs-$seq
        mkdir -p "$mnt"
        truncate -s 4G "$work/fs.img"
        mkfs.ext4 -q -O ^has_journal -F "$work/fs.img"
        mount -o loop "$work/fs.img" "$mnt"
        root=$mnt/root
        tmp=$mnt/tmp
        mkdir -p "$tmp"
      fi
      mkroot "$bin" "$root"
      sync
      t=$({ TMPDIR=$tmp "$TIME" -f '%e %U %S' "$bin" --root "$root" -q run --exit-when-idle; } 2>&1 | tail -1)
      done_n=$(find "$root/tasks/completed" -maxdepth 1 -name '*.yaml' | wc -l)
      if [ "${FRESH_FS:-0}" = 1 ]; then
        umount "$mnt"
        rm -f "$work/fs.img"
      fi
      [ "$done_n" -eq "$N" ] || { echo "$bin: $done_n of $N completed" >&2; exit 1; }
      report "$r" "${!v}" "$t"
    fi
  done
done
