#!/usr/bin/env bash
# The run keeper's cost and mailroom's throughput next to its peers, all in
# one run so that the ratios hold on a noisy, shared machine.
#
#   scripts/bench-keeper.sh [N] [P] [ROUNDS]        # defaults: 1000 4 5
#
# Every round runs every variant once, in a shuffled order (interleaved), and
# the summary gives the median over the rounds and the spread (min-max); GNU
# parallel's rounds come after all the others (see below why):
#
#   - `xargs -P$P -n1 true`: the reference (the spawn limit);
#   - task-spooler (one `tsp true` per job, $P slots), GNU parallel
#     (`parallel -j$P -N0 true`) and pueue (one `pueue add true` per job,
#     $P parallel; fewer jobs since it is slow) where installed; missing
#     peers are named and skipped;
#   - mailroom, `durability: strict` and `relaxed`, with `run_keeper: true`
#     and `false` (all N task files already in tasks/pending/).
#   - the same mailroom variants with 1 slot and N1 tasks (default 200), next
#     to `xargs -P1`: with no overlap, the added wall time per run is the
#     keeper's latency;
#   - mailroom with one `mailroom add` process per task against a running
#     supervisor (strict and relaxed, keepers on), next to one `tsp true` per
#     job: the other submission path;
#   - with BASE_BIN=path/to/an/older/mailroom, that binary's batch variants
#     too (`mailroom(base) ...`), for a before/after in the same run.
#
# CPU is user+sys from /usr/bin/time over the whole command (children and
# grandchildren that were waited for included); for the daemons (tsp, pueued),
# the server's own and its children's CPU from /proc/PID/stat is added.
#
# Then, once: the memory of one keeper (agent `sleep 5`) next to the
# supervisor's and the agent's, from /proc (VmRSS, VmHWM, Pss and private
# from smaps_rollup), and the syscalls per task from `strace -f -c` over
# STRACE_N tasks (default 200), keeper on and off, next to xargs.
#
# Env: APT=1 installs task-spooler, parallel, strace and time with apt-get;
# PUEUE_BIN=dir holds pueue and pueued if not on PATH; PUEUE_N (default 100);
# N1 (default 200); STRACE_N (default 200); SKIP_STRACE=1; SKIP_BUILD=1;
# KEEP_WORK=1; BASE_BIN=an older mailroom binary to compare with.
set -euo pipefail
N=${1:-1000}
P=${2:-4}
ROUNDS=${3:-5}
N1=${N1:-200}
PUEUE_N=${PUEUE_N:-100}
STRACE_N=${STRACE_N:-200}
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [ "${APT:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q task-spooler parallel strace time bc >/dev/null
fi
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet
BIN=$TARGET/release/mailroom
TRUE=$(type -P true) # the program: `command -v` names the builtin
SLEEP=$(type -P sleep)
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/mailroom-bench-keeper.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
results=$work/results.tsv # round variant n seconds cpu_s median_run_ms
: > "$results"
TICK=$(getconf CLK_TCK)

log() { echo "$*" >&2; }

# Every variant gets a fresh directory, and none is removed before the end:
# ext4 without a journal (this machine's disk) scans every recently freed
# inode of a block group at each file it creates, so removing one variant's
# thousands of files would slow the next variant's every create, and mostly
# mailroom's (it makes about ten files per task; xargs makes none).
SEQN=0
fresh() { SEQN=$((SEQN + 1)); echo "$work/$1-$SEQN"; }

# --- peers -----------------------------------------------------------------
PATH_PUEUE=${PUEUE_BIN:+$PUEUE_BIN:}$PATH
have_tsp=0; have_parallel=0; have_pueue=0
command -v tsp >/dev/null && have_tsp=1
command -v parallel >/dev/null && have_parallel=1
PATH=$PATH_PUEUE command -v pueue >/dev/null && PATH=$PATH_PUEUE command -v pueued >/dev/null && have_pueue=1
log "peers: xargs: found ($(xargs --version | head -1))"
if [ $have_tsp = 1 ]; then log "peers: task-spooler: found ($(command -v tsp))"
else log "peers: task-spooler: NOT FOUND, skipped (apt-get install task-spooler)"; fi
if [ $have_parallel = 1 ]; then log "peers: GNU parallel: found ($(parallel --version | head -1))"
else log "peers: GNU parallel: NOT FOUND, skipped (apt-get install parallel)"; fi
if [ $have_pueue = 1 ]; then log "peers: pueue: found ($(PATH=$PATH_PUEUE pueue --version | head -1)), $PUEUE_N jobs per round"
else log "peers: pueue: NOT FOUND, skipped (cargo install pueue --locked; PUEUE_BIN=its bin dir)"; fi

# /proc/PID/stat: own + waited-for children's CPU, in seconds.
proc_cpu() {
  python3 - "$1" "$TICK" <<'PY'
import sys
s = open(f"/proc/{sys.argv[1]}/stat").read()
f = s[s.rindex(")") + 2:].split()
print(sum(int(x) for x in f[11:15]) / int(sys.argv[2]))
PY
}

# Runs "$@" under /usr/bin/time; sets T_WALL and T_CPU (seconds).
timed() {
  local tf=$work/time.out
  "$TIME" -f '%e %U %S' -o "$tf" "$@"
  read -r T_WALL u s < "$tf"
  T_CPU=$(echo "$u + $s" | bc -l)
}

record() { # round variant n wall cpu [median_run_ms]
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >> "$results"
  log "  round $1: $2: $3 tasks in ${4}s, cpu ${5}s ${6:+(median run ${6} ms)}"
}

mkroot() { # root durability keeper slots n agent...
  local root=$1 dur=$2 keeper=$3 slots=$4 n=$5; shift 5
  rm -rf "$root"; mkdir -p "$root"
  "$BIN" --root "$root" init >/dev/null
  local cmd
  cmd=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@")
  cat > "$root/mailroom.yaml" <<YAML
concurrency: $slots
durability: $dur
run_keeper: $keeper
agents:
  t:
    command: $cmd
    max_instances: $slots
YAML
  python3 - "$root/tasks/pending" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"t{i:07}.yaml"), "w") as f:
        f.write(f"description: task {i}\n")
PY
  sync
}

median_run_ms() { # root: median duration_ms of the completed records
  python3 - "$1/tasks/completed" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
ms = [json.load(open(os.path.join(d, f)))["duration_ms"] for f in os.listdir(d) if f.endswith(".result.json")]
print(statistics.median(ms) if ms else "")
PY
}

run_mailroom() { # round durability keeper slots n [bin label]
  local round=$1 dur=$2 keeper=$3 slots=$4 n=$5 bin=${6:-$BIN} label=${7:-mailroom}
  local root; root=$(fresh root)
  mkroot "$root" "$dur" "$keeper" "$slots" "$n" "$TRUE"
  timed "$bin" --root "$root" -q run --exit-when-idle
  local done
  done=$(find "$root/tasks/completed" -maxdepth 1 -name '*.yaml' | wc -l)
  [ "$done" -eq "$n" ] || { log "mailroom: only $done of $n completed"; exit 1; }
  local k=on; [ "$keeper" = true ] || k=off
  record "$round" "$label P=$slots $dur keeper=$k" "$n" "$T_WALL" "$T_CPU" "$(median_run_ms "$root")"
}

add_submit() { # bin root n: one `mailroom add` per task, then wait for all
  local i
  for ((i = 0; i < $3; i++)); do "$1" --root "$2" -q add --name "a$i" "task $i" >/dev/null; done
  while [ "$(find "$2/tasks/completed" -maxdepth 1 -name '*.yaml' | wc -l)" -lt "$3" ]; do sleep 0.005; done
}

run_mailroom_add() { # round durability: a running supervisor, one `mailroom add` per task
  local round=$1 dur=$2
  local root; root=$(fresh addroot)
  mkroot "$root" "$dur" true "$P" 0 "$TRUE"
  "$BIN" --root "$root" -q run &
  local sup=$!
  local i
  for ((i = 0; i < 400; i++)); do [ -n "$(ls "$root/tasks/supervisors" 2>/dev/null)" ] && break; sleep 0.01; done
  local c0; c0=$(proc_cpu "$sup")
  export -f add_submit
  timed bash -c 'add_submit "$@"' _ "$BIN" "$root" "$N"
  local c1; c1=$(proc_cpu "$sup")
  kill -TERM "$sup"; wait "$sup" || true
  record "$round" "mailroom P=$P $dur, mailroom add per task" "$N" "$T_WALL" "$(echo "$T_CPU + $c1 - $c0" | bc -l)"
}

run_xargs() { # round slots n
  seq "$3" > "$work/seq"
  timed xargs -P "$2" -n 1 -a "$work/seq" "$TRUE"
  record "$1" "xargs -P$2 true" "$3" "$T_WALL" "$T_CPU"
}

run_parallel() { # round
  seq "$N" > "$work/seq"
  timed parallel --will-cite -j "$P" -N0 -a "$work/seq" "$TRUE"
  record "$1" "GNU parallel -j$P" "$N" "$T_WALL" "$T_CPU"
}

tsp_submit() { # n true: one `tsp true` per job, then wait until none is left
  local i
  for ((i = 0; i < $1; i++)); do tsp "$2" >/dev/null; done
  tsp -w >/dev/null 2>&1 || true
  while tsp -l | grep -qE ' (running|queued) '; do sleep 0.01; done
}

run_tsp() { # round
  local d; d=$(fresh tsp); mkdir -p "$d/tmp"
  export TS_SOCKET=$d/socket TMPDIR=$d/tmp TS_MAXFINISHED=$((N + 10))
  tsp -S "$P"
  # The server: the tsp process holding the listening socket at $TS_SOCKET.
  local spid="" p inode
  inode=$(awk -v s="$TS_SOCKET" '$8 == s { print $7; exit }' /proc/net/unix)
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = tsp ] || continue
    ls -l "$p/fd" 2>/dev/null | grep -qF "socket:[$inode]" && spid=${p#/proc/}
  done
  [ -n "$spid" ] || { log "tsp: cannot find the server"; exit 1; }
  local c0; c0=$(proc_cpu "$spid")
  export -f tsp_submit
  timed bash -c 'tsp_submit "$@"' _ "$N" "$TRUE"
  local c1; c1=$(proc_cpu "$spid")
  local fin; fin=$(tsp -l | grep -c ' finished ' || true)
  [ "$fin" -eq "$N" ] || { log "tsp: $fin of $N finished"; exit 1; }
  tsp -K || true
  unset TS_SOCKET TS_MAXFINISHED
  export TMPDIR=${OLD_TMPDIR:-/tmp}
  record "$1" "task-spooler, tsp per job" "$N" "$T_WALL" "$(echo "$T_CPU + $c1 - $c0" | bc -l)"
  : # kept until the end (see fresh)
}

pueue_submit() { # n true
  local i
  for ((i = 0; i < $1; i++)); do pueue add -- "$2" >/dev/null; done
  pueue wait >/dev/null
}

run_pueue() { # round
  local d; d=$(fresh pueue); mkdir -p "$d/home" "$d/config" "$d/data" "$d/run"
  (
    export PATH=$PATH_PUEUE HOME=$d/home XDG_CONFIG_HOME=$d/config XDG_DATA_HOME=$d/data XDG_RUNTIME_DIR=$d/run
    pueued >"$d/pueued.log" 2>&1 &
    local spid=$!
    local i
    for ((i = 0; i < 200; i++)); do pueue status >/dev/null 2>&1 && break; sleep 0.05; done
    pueue parallel "$P" >/dev/null
    local c0; c0=$(proc_cpu "$spid")
    export -f pueue_submit
    timed bash -c 'pueue_submit "$@"' _ "$PUEUE_N" "$TRUE"
    local c1; c1=$(proc_cpu "$spid")
    local ok; ok=$(pueue status --json | python3 -c 'import json,sys; t=json.load(sys.stdin)["tasks"]; print(sum(1 for v in t.values() if "Done" in v["status"]))')
    pueue shutdown >/dev/null 2>&1 || kill "$spid"
    wait "$spid" 2>/dev/null || true
    [ "$ok" -eq "$PUEUE_N" ] || { log "pueue: $ok of $PUEUE_N done"; exit 1; }
    record "$1" "pueue, pueue add per job" "$PUEUE_N" "$T_WALL" "$(echo "$T_CPU + $c1 - $c0" | bc -l)"
  )
  : # kept until the end (see fresh)
}

OLD_TMPDIR=${TMPDIR:-/tmp}

# --- the rounds --------------------------------------------------------------
variants=("xargs" "xargs1")
[ $have_tsp = 1 ] && variants+=("tsp")
[ $have_pueue = 1 ] && variants+=("pueue")
for d in strict relaxed; do for k in true false; do
  variants+=("mr:$d:$k:$P:$N" "mr:$d:$k:1:$N1")
  [ -n "${BASE_BIN:-}" ] && variants+=("base:$d:$k:$P:$N")
done; variants+=("add:$d"); done

# The keeper scans /proc for its children: its cost grows with the host's processes.
log "N=$N P=$P rounds=$ROUNDS N1=$N1; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg); $(ls /proc | grep -c '^[0-9]') processes"
for ((r = 1; r <= ROUNDS; r++)); do
  mapfile -t order < <(printf '%s\n' "${variants[@]}" | shuf)
  for v in "${order[@]}"; do
    case $v in
      xargs) run_xargs "$r" "$P" "$N" ;;
      xargs1) run_xargs "$r" 1 "$N1" ;;
      tsp) run_tsp "$r" ;;
      parallel) run_parallel "$r" ;;
      pueue) run_pueue "$r" ;;
      mr:*) IFS=: read -r _ dur keeper slots n <<<"$v"; run_mailroom "$r" "$dur" "$keeper" "$slots" "$n" ;;
      base:*) IFS=: read -r _ dur keeper slots n <<<"$v"; run_mailroom "$r" "$dur" "$keeper" "$slots" "$n" "$BASE_BIN" "mailroom(base)" ;;
      add:*) run_mailroom_add "$r" "${v#add:}" ;;
    esac
  done
done
# GNU parallel runs after the rounds, not among them: it creates and removes
# two temporary files per job, and on ext4 without a journal every file
# created in the next minutes (by whichever variant ran next) scans past the
# inodes it freed. Interleaved, that made any variant after it up to twice as
# slow, at random.
if [ $have_parallel = 1 ]; then
  for ((r = 1; r <= ROUNDS; r++)); do run_parallel "$r"; done
fi

# --- one keeper's memory -------------------------------------------------------
mem() { # pid: VmRSS VmHWM (kB) Pss Private (kB)
  python3 - "$1" <<'PY'
import sys
p = sys.argv[1]
st = {l.split()[0].rstrip(":"): l.split()[1] for l in open(f"/proc/{p}/status") if len(l.split()) > 1}
sm = {}
try:
    for l in open(f"/proc/{p}/smaps_rollup"):
        parts = l.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            sm[parts[0][:-1]] = int(parts[1])
except OSError:
    pass
priv = sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0)
print(st.get("VmRSS", "?"), st.get("VmHWM", "?"), sm.get("Pss", "?"), priv)
PY
}
memfile=$work/mem.txt; : > "$memfile"
root=$work/memroot
mkroot "$root" strict true 1 1 sh -c "exec $SLEEP 5" "{task}"
"$BIN" --root "$root" -q run --exit-when-idle &
sup=$!
kpid=""; apid=""
for ((i = 0; i < 300; i++)); do
  for c in $(cat /proc/$sup/task/*/children 2>/dev/null); do
    # `mailroom-keeper RUN_DIR`, or `mailroom keeper RUN_DIR` without it.
    if tr '\0' ' ' 2>/dev/null < /proc/$c/cmdline | grep -Eq '(mailroom-keeper|mailroom keeper) '; then kpid=$c; fi
  done
  if [ -n "$kpid" ]; then
    apid=$(cat /proc/$kpid/task/*/children 2>/dev/null | tr ' ' '\n' | grep -m1 . || true)
    [ -n "$apid" ] && break
  fi
  sleep 0.02
done
sleep 1 # let both settle while the agent sleeps
if [ -n "$kpid" ] && [ -n "$apid" ]; then
  echo "supervisor $(mem "$sup")" >> "$memfile"
  echo "keeper $(mem "$kpid")" >> "$memfile"
  echo "agent $(mem "$apid")" >> "$memfile"
else
  log "memory: could not find the keeper or the agent"
fi
wait "$sup"
rm -rf "$root"

# --- syscalls per task ---------------------------------------------------------
stracedir=$work/strace; mkdir -p "$stracedir"
if [ "${SKIP_STRACE:-0}" != 1 ] && command -v strace >/dev/null; then
  seq "$STRACE_N" > "$work/seq"
  strace -f -c -o "$stracedir/xargs" xargs -P "$P" -n 1 -a "$work/seq" "$TRUE"
  for k in true false; do
    root=$work/straceroot
    mkroot "$root" strict "$k" "$P" "$STRACE_N" "$TRUE"
    strace -f -c -o "$stracedir/keeper-$k" "$BIN" --root "$root" -q run --exit-when-idle
    rm -rf "$root"
  done
else
  log "strace: skipped"
fi

# --- summary -------------------------------------------------------------------
python3 - "$results" "$memfile" "$stracedir" "$N" "$P" "$STRACE_N" <<'PY'
import os, re, statistics, sys
results, memfile, stracedir, N, P, SN = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows = {}
for line in open(results):
    r, v, n, wall, cpu, run_ms = line.rstrip("\n").split("\t")
    rows.setdefault(v, []).append((int(r), int(n), float(wall), float(cpu), float(run_ms) if run_ms else None))
by_round = {v: {x[0]: x for x in xs} for v, xs in rows.items()}

def med(xs): return statistics.median(xs)
def spread(xs, fmt): return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}"

def ratio(v, ref):
    """Per round: tasks/s of v over tasks/s of ref (same round)."""
    out = []
    for r, x in by_round[v].items():
        y = by_round[ref].get(r)
        if y: out.append((x[1] / x[2]) / (y[1] / y[2]))
    return out

print(f"\n### Throughput: `true` tasks, {P} slots (N={N}; {len(by_round['xargs -P%d true' % P])} interleaved rounds; median, min–max)\n")
print("| system | tasks | tasks/s | ratio to `xargs -P%d` | CPU ms per task |" % P)
print("|---|---|---|---|---|")
ref = f"xargs -P{P} true"
order = [ref, "task-spooler, tsp per job", f"GNU parallel -j{P}", "pueue, pueue add per job"] + \
    [f"{m} P={P} {d} keeper={k}" for m in ("mailroom(base)", "mailroom") for d in ("relaxed", "strict") for k in ("off", "on")] + \
    [f"mailroom P={P} {d}, mailroom add per task" for d in ("relaxed", "strict")]
for v in order:
    if v not in rows: continue
    xs = rows[v]
    tps = [x[1] / x[2] for x in xs]
    cpu = [1000 * x[3] / x[1] for x in xs]
    rt = ratio(v, ref)
    rf = "{:.3f}" if med(rt) < 0.1 else "{:.2f}"
    print(f"| {v} | {xs[0][1]} | {med(tps):.0f} ({spread(tps, '{:.0f}')}) | {rf.format(med(rt))} ({spread(rt, rf)}) | {med(cpu):.2f} ({spread(cpu, '{:.2f}')}) |")

print(f"\n### The keeper's cost per run (paired per round: keeper on minus off; median, min–max)\n")
print("| durability, slots | added wall ms per task (throughput) | added CPU ms per task | median run duration ms, off → on | throughput ratio on/off |")
print("|---|---|---|---|---|")
for d in ("strict", "relaxed"):
    for slots in (P, 1):
        on, off = f"mailroom P={slots} {d} keeper=on", f"mailroom P={slots} {d} keeper=off"
        if on not in by_round or off not in by_round: continue
        dw, dc, ro = [], [], []
        for r, x in by_round[on].items():
            y = by_round[off].get(r)
            if not y: continue
            dw.append(1000 * (x[2] / x[1] - y[2] / y[1]))
            dc.append(1000 * (x[3] / x[1] - y[3] / y[1]))
            ro.append((x[1] / x[2]) / (y[1] / y[2]))
        run_on = med([x[4] for x in by_round[on].values()]); run_off = med([x[4] for x in by_round[off].values()])
        print(f"| {d}, {slots} slot{'s' if slots > 1 else ''} | {med(dw):.2f} ({spread(dw, '{:.2f}')}) | {med(dc):.2f} ({spread(dc, '{:.2f}')}) | {run_off:.0f} → {run_on:.0f} | {med(ro):.2f} ({spread(ro, '{:.2f}')}) |")
x1 = f"xargs -P1 true"
if x1 in rows:
    t = [1000 * x[2] / x[1] for x in rows[x1]]; c = [1000 * x[3] / x[1] for x in rows[x1]]
    print(f"\nReference, `xargs -P1 true`: {med(t):.2f} ms wall and {med(c):.2f} ms CPU per spawn.")

if os.path.getsize(memfile):
    print("\n### Memory, one run (agent `sleep 5`), kB\n")
    print("| process | VmRSS | VmHWM | Pss | private |")
    print("|---|---|---|---|---|")
    for line in open(memfile):
        who, rss, hwm, pss, priv = line.split()
        print(f"| {who} | {rss} | {hwm} | {pss} | {priv} |")

def strace_counts(path):
    c = {}
    for line in open(path):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total": c[m.group(2)] = c.get(m.group(2), 0) + int(m.group(1))
    return c
files = {k: os.path.join(stracedir, f) for k, f in (("xargs", "xargs"), ("off", "keeper-false"), ("on", "keeper-true"))}
if all(os.path.exists(f) for f in files.values()):
    c = {k: strace_counts(f) for k, f in files.items()}
    names = sorted(set(c["on"]) | set(c["off"]), key=lambda s: -(c["on"].get(s, 0) + c["off"].get(s, 0)))
    print(f"\n### Syscalls per task (`strace -f -c`, {SN} tasks, strict, {P} slots; agents and keepers included)\n")
    print("| syscall | xargs | keeper off | keeper on | on − off |")
    print("|---|---|---|---|---|")
    tot = {k: sum(v.values()) / SN for k, v in c.items()}
    print(f"| **total** | {tot['xargs']:.1f} | {tot['off']:.1f} | {tot['on']:.1f} | {tot['on'] - tot['off']:+.1f} |")
    for s in names[:25]:
        a, b, x = c["off"].get(s, 0) / SN, c["on"].get(s, 0) / SN, c["xargs"].get(s, 0) / SN
        print(f"| {s} | {x:.1f} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")

# The targets of issue #15, each as measured here (medians of per-round ratios).
tsp = "task-spooler, tsp per job"
def mr(v): return med(ratio(v, ref)) if v in by_round else None
print("\n### Targets (median of per-round ratios to `xargs -P%d`)\n" % P)
print("| target | measured | met |")
print("|---|---|---|")
t = mr(tsp)
for name, v, want in [
    ("batch drop, strict, keepers on: at least task-spooler's ratio", f"mailroom P={P} strict keeper=on", t),
    ("batch drop, relaxed, keepers on: at least 0.6", f"mailroom P={P} relaxed keeper=on", 0.6),
    ("one `mailroom add` per task (strict): at least 0.8 x task-spooler's", f"mailroom P={P} strict, mailroom add per task", None if t is None else 0.8 * t),
]:
    got = mr(v)
    if got is None or want is None: continue
    print(f"| {name} (want {want:.2f}) | {got:.2f} | {'yes' if got >= want else 'no'} |")
if ref in rows and f"mailroom P={P} strict keeper=on" in rows:
    xc = med([1000 * x[3] / x[1] for x in rows[ref]])
    for v in (f"mailroom P={P} strict keeper=on", f"mailroom P={P} relaxed keeper=on"):
        mc = med([1000 * x[3] / x[1] for x in rows[v]])
        print(f"| CPU per task at most 2x a bare spawn of `true` (xargs: {xc:.2f} ms), {v.split(' ', 2)[2]} | {mc:.2f} ms ({mc / xc:.1f}x) | {'yes' if mc <= 2 * xc else 'no'} |")
PY
