#!/usr/bin/env python3
"""mailroom's benchmark suite: every figure next to its reference, measured in
the same run, so that ratios hold on a noisy machine.

    python3 scripts/bench.py            # everything (about 5 minutes)
    python3 scripts/bench.py --quick    # smaller sizes (about 1 minute)
    python3 scripts/bench.py throughput submit latency scale idle merge   # a subset

Needs: a release build (made here), python3, inotify-tools (inotifywait) for
the latency reference; task-spooler (`tsp`) and GNU parallel for the peers'
rows (`apt-get install task-spooler parallel`; a missing one is a row that
says so). Prints a Markdown table. MAILROOM_BENCH_BIN=PATH measures another
build of `mailroom` (with its `mailroom-keeper` beside it).

MAILROOM_BENCH_FRESH_FS=1 (root, mkfs.ext4, loop devices) gives every work
directory a file system of its own, made for it (ext4 without a journal),
and points TMPDIR into it: on such a disk every file created skips the
inodes freed in the last minutes, so otherwise each measure pays for what
the ones before it freed, mailroom's own per-task removals included.
"""
import json, os, resource, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MAILROOM_BENCH_BIN") or os.path.join(ROOT, "target", "release", "mailroom")
TRUE = shutil.which("true")
QUICK = "--quick" in sys.argv
MEASURES = ["throughput", "submit", "latency", "scale", "idle", "merge"]
WANT = [a for a in sys.argv[1:] if not a.startswith("--")] or MEASURES
rows = []
# Directories are removed only at the end: on ext4 without a journal, every
# file created scans the inodes freed in the last few minutes, so removing one
# measure's thousands of files would slow the next measure's creates.
LATER = []


FRESH_FS = os.environ.get("MAILROOM_BENCH_FRESH_FS") == "1"
MOUNTS = []


def workdir(prefix):
    """A new work directory: with FRESH_FS, on a file system made for it,
    whose tmp/ becomes TMPDIR for what runs next."""
    if not FRESH_FS:
        return tempfile.mkdtemp(prefix=prefix)
    base = tempfile.mkdtemp(prefix=prefix + "fs-", dir="/var/tmp")
    img, mnt = base + ".img", os.path.join(base, "mnt")
    os.mkdir(mnt)
    subprocess.run(["truncate", "-s", "8G", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-O", "^has_journal", "-i", "8192", "-F", img], check=True)
    subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
    MOUNTS.append((base, mnt, img))
    tmp = os.path.join(mnt, "tmp")
    os.mkdir(tmp)
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    return tempfile.mkdtemp(prefix=prefix)


def unmount_all():
    for base, mnt, img in MOUNTS:
        subprocess.run(["umount", mnt], check=False)
        shutil.rmtree(base, ignore_errors=True)
        try:
            os.remove(img)
        except OSError:
            pass


def discard(d):
    LATER.append(d)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def row(what, value, reference="", ratio="", target=""):
    rows.append((what, value, reference, ratio, target))
    print(f"  {what}: {value}  {reference}  {ratio}  {target}", file=sys.stderr, flush=True)


def target(text, met):
    """A target of issue 15, and whether this run met it."""
    return f"{text}: {'met' if met else 'not met'}"


def mkroot(config, n_tasks=0, make_tasks=True):
    d = workdir("mailroom-bench-")
    subprocess.run([BIN, "--root", d, "-q", "init"], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "mailroom.yaml"), "w") as f:
        f.write(config)
    pend = os.path.join(d, "tasks", "pending")
    if make_tasks:
        for i in range(n_tasks):
            with open(os.path.join(pend, f"t{i:07}.yaml"), "w") as f:
                f.write(f"description: task {i}\n")
    return d


def agent_cfg(cmd, p, extra="", env=None):
    # Agents get an allowlisted environment: pass what they need in `env:`.
    env_line = f"    env: {json.dumps(env)}\n" if env else ""
    return (f"concurrency: {p}\n{extra}\nagents:\n  t:\n    command: {json.dumps(cmd)}\n"
            f"    max_instances: {p}\n{env_line}")


def completed(d):
    return sum(1 for f in os.listdir(os.path.join(d, "tasks", "completed")) if f.endswith(".yaml"))


def throughput():
    n = 2000 if QUICK else 10000
    p = 4
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run(["xargs", "-P", str(p), "-n", "1", TRUE], input="\n".join(["x"] * n),
                   text=True, check=True)
    ref, ref_cpu = time.perf_counter() - t0, children_cpu() - c0
    tsp = peers(n, p, ref, ref_cpu)
    for mode in ["strict", "relaxed"]:
        d = mkroot(agent_cfg([TRUE], p, f"durability: {mode}"), n)
        t0, c0 = time.perf_counter(), children_cpu()
        subprocess.run([BIN, "--root", d, "-q", "run", "--exit-when-idle"], check=True)
        took, cpu = time.perf_counter() - t0, children_cpu() - c0
        assert completed(d) == n, "not every task completed"
        discard(d)
        if mode == "relaxed":
            goal = target("≥ 0.6x", ref / took >= 0.6)
        elif tsp:
            goal = target(f"≥ task-spooler's {ref / tsp:.2f}x", took <= tsp)
        else:
            goal = "≥ task-spooler's ratio (not installed here)"
        row(f"throughput, {n} tasks of `true`, P={p}, durability {mode}",
            f"{n / took:.0f} tasks/s", f"xargs -P{p}: {n / ref:.0f} /s", f"{ref / took:.2f}x", goal)
        row(f"CPU per task (user+sys, agents and keepers included), durability {mode}",
            f"{cpu * 1000 / n:.2f} ms", f"xargs -P{p}: {ref_cpu * 1000 / n:.2f} ms",
            f"{cpu / ref_cpu:.1f}x", target("≤ 2x", cpu <= 2 * ref_cpu))


def proc_cpu(pid):
    """CPU seconds (user+sys) of a process that is not our child."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_tsp(n, p):
    """n jobs of `true` through task-spooler with p slots, one `tsp` process
    per job from a shell loop (as `mailroom add` in `submit`), until all
    finished: (seconds, CPU seconds of server, clients and jobs), or None
    when `tsp` is not installed."""
    if not shutil.which("tsp"):
        return None
    work = workdir("mailroom-bench-tsp-")
    os.makedirs(os.path.join(work, "tmp"))
    env = dict(os.environ, TS_SOCKET=os.path.join(work, "socket"),
               TMPDIR=os.path.join(work, "tmp"), TS_MAXFINISHED=str(n + 10))
    subprocess.run(["tsp", "-S", str(p)], env=env, check=True)
    # The server: the process of comm `tsp` that holds the listening socket.
    server = None
    inode = next((l.split()[6] for l in open("/proc/net/unix")
                  if l.split()[-1] == env["TS_SOCKET"]), None)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "tsp" and any(
                    os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"
                    for fd in os.listdir(f"/proc/{pid}/fd")):
                server = int(pid)
        except OSError:
            pass
    s0 = proc_cpu(server) if server else 0.0
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run(["bash", "-c", f'for ((i = 0; i < {n}; i++)); do tsp "{TRUE}" >/dev/null; done; '
                    "tsp -w >/dev/null 2>&1; "
                    "while tsp -l | grep -qE ' (running|queued) '; do sleep 0.01; done"],
                   env=env, check=True)
    took = time.perf_counter() - t0
    cpu = children_cpu() - c0 + (proc_cpu(server) - s0 if server else 0.0)
    finished = subprocess.run(["tsp", "-l"], env=env, capture_output=True,
                              text=True).stdout.count(" finished ")
    subprocess.run(["tsp", "-K"], env=env)
    discard(work)
    assert finished == n, f"task-spooler: {finished} of {n} finished"
    return took, cpu


def peers(n, p, ref, ref_cpu):
    """task-spooler and GNU parallel on the same n as xargs. Returns
    task-spooler's seconds for n jobs, or None."""
    tsp = run_tsp(n, p)
    if tsp:
        took, cpu = tsp
        row(f"peer: task-spooler, {n} jobs of `true` (one `tsp` per job), {p} slots",
            f"{n / took:.0f} jobs/s", f"xargs -P{p}: {n / ref:.0f} /s", f"{ref / took:.2f}x")
        row("peer: task-spooler, CPU per job (server, clients, jobs)", f"{cpu * 1000 / n:.2f} ms",
            f"xargs -P{p}: {ref_cpu * 1000 / n:.2f} ms", f"{cpu / ref_cpu:.1f}x")
    else:
        row("peer: task-spooler", "not installed (apt-get install task-spooler)")
    if shutil.which("parallel"):
        t0, c0 = time.perf_counter(), children_cpu()
        subprocess.run(["parallel", "--will-cite", "-j", str(p), "-N0", TRUE],
                       input="\n".join(["x"] * n), text=True, check=True, stdout=subprocess.DEVNULL)
        took, cpu = time.perf_counter() - t0, children_cpu() - c0
        row(f"peer: GNU parallel -j{p}, {n} jobs of `true`", f"{n / took:.0f} jobs/s",
            f"xargs -P{p}: {n / ref:.0f} /s", f"{ref / took:.2f}x")
    else:
        row("peer: GNU parallel", "not installed (apt-get install parallel)")
    return tsp[0] if tsp else None


def submit():
    """One `mailroom add` process per task against a running supervisor
    (durability strict, the default), next to one `tsp true` per job."""
    n = 500 if QUICK else 2000
    p = 4
    tsp = run_tsp(n, p)
    d = mkroot(agent_cfg([TRUE], p, "durability: strict"), 0)
    sup = subprocess.Popen([BIN, "--root", d, "-q", "run"])
    try:
        deadline = time.time() + 20
        beats = os.path.join(d, "tasks", "supervisors")
        while not (os.path.isdir(beats) and os.listdir(beats)):
            if time.time() > deadline:
                raise SystemExit("submit: the supervisor did not start")
            time.sleep(0.01)
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", f'for ((i = 0; i < {n}; i++)); do "{BIN}" --root "{d}" -q add '
                        f'--name "a$i" "task $i" >/dev/null || exit 1; done'], check=True)
        deadline = time.time() + 600
        while completed(d) < n:
            if time.time() > deadline:
                raise SystemExit("submit: not every task completed")
            time.sleep(0.005)
        took = time.perf_counter() - t0
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
    discard(d)
    what = f"one `mailroom add` per task, {n} tasks of `true`, P={p}, strict (submit to done)"
    if tsp:
        row(what, f"{n / took:.0f} tasks/s", f"one `tsp true` per job: {n / tsp[0]:.0f} /s",
            f"{tsp[0] / took:.2f}x", target("≥ 0.8x", tsp[0] / took >= 0.8))
    else:
        row(what, f"{n / took:.0f} tasks/s", "task-spooler not installed", "", "≥ 0.8x of task-spooler's")


AGENT_STAMP = """#!/bin/sh
date +%s%N >> "$STAMPS"
"""


def stamp_agent(work):
    """An agent whose first act is to record the time (ns) in $STAMPS."""
    agent = os.path.join(work, "stamp.sh")
    with open(agent, "w") as f:
        f.write(AGENT_STAMP)
    os.chmod(agent, 0o755)
    return agent


def latency():
    drops = 100 if QUICK else 500
    work = workdir("mailroom-lat-")
    agent = stamp_agent(work)

    def measure(dropdir, stamps, start_watcher):
        lat = []
        for i in range(drops):
            before = sum(1 for _ in open(stamps)) if os.path.exists(stamps) else 0
            tmp = os.path.join(dropdir, "..", "tmp", f"d{i}.yaml")
            with open(tmp, "w") as f:
                f.write(f"description: drop {i}\n")
            t = time.time_ns()
            os.rename(tmp, os.path.join(dropdir, f"d{i}.yaml"))
            deadline = time.time() + 10
            while True:
                if os.path.exists(stamps):
                    lines = open(stamps).read().split()
                    if len(lines) > before:
                        lat.append((int(lines[-1]) - t) / 1e6)
                        break
                if time.time() > deadline:
                    raise SystemExit("latency: a drop was never picked up")
                time.sleep(0.0005)
            time.sleep(0.01)
        return lat

    # Reference: inotifywait, then fork/exec of the same agent.
    ref_dir = os.path.join(work, "ref", "pending")
    os.makedirs(ref_dir)
    os.makedirs(os.path.join(work, "ref", "tmp"))
    ref_stamps = os.path.join(work, "ref.stamps")
    env = dict(os.environ, STAMPS=ref_stamps)
    w = subprocess.Popen(["sh", "-c", f'inotifywait -q -m -e moved_to --format %f "{ref_dir}" | '
                          f'while read f; do "{agent}"; done'], env=env)
    try:
        time.sleep(0.5)
        ref = measure(ref_dir, ref_stamps, None)
    finally:
        w.terminate()
        subprocess.run(["pkill", "-f", f"inotifywait -q -m -e moved_to --format %f {ref_dir}"])

    stamps = os.path.join(work, "mr.stamps")
    d = mkroot(agent_cfg([agent], 4, "settle: 2s", {"STAMPS": stamps}), 0)
    env = dict(os.environ, STAMPS=stamps)
    sup = subprocess.Popen([BIN, "--root", d, "-q", "run"], env=env)
    try:
        time.sleep(1.0)
        got = measure(os.path.join(d, "tasks", "pending"), stamps, None)
    finally:
        # Never leave a supervisor behind, even when a measure fails.
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=30)
    discard(d)
    discard(work)

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(len(v) * p))]
    row(f"drop-to-spawn latency, {drops} drops, p50", f"{q(got, .5):.2f} ms",
        f"inotifywait+exec: {q(ref, .5):.2f} ms", "", target("≤ 3 ms", q(got, .5) <= 3))
    row("drop-to-spawn latency, p99", f"{q(got, .99):.2f} ms", f"inotifywait+exec: {q(ref, .99):.2f} ms",
        "", target("≤ 10 ms", q(got, .99) <= 10))
    row("drop-to-spawn latency, max", f"{max(got):.2f} ms", f"inotifywait+exec: {max(ref):.2f} ms")


def rss_peak_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None


def scale():
    n = 20000 if QUICK else 100000
    work = workdir("mailroom-scale-")
    agent = stamp_agent(work)
    stamps = os.path.join(work, "stamps")
    d = mkroot(agent_cfg([agent], 4, "", {"STAMPS": stamps}), n)
    subprocess.run(["sync"])
    # Reference for start-up: listing and reading every file once (find + cat).
    t0 = time.perf_counter()
    subprocess.run(f'find "{d}/tasks/pending" -name "*.yaml" -exec cat {{}} + > /dev/null', shell=True, check=True)
    ref_read = time.perf_counter() - t0
    # status and add, before the supervisor runs, next to `ls | wc -l`.
    t0 = time.perf_counter()
    subprocess.run(f'ls "{d}/tasks/pending" | wc -l', shell=True, check=True, stdout=subprocess.DEVNULL)
    ref_ls = time.perf_counter() - t0
    for args, label in [(["status"], "status"), (["status", "--json"], "status --json"),
                        (["add", "one more task"], "add")]:
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([BIN, "--root", d, "-q"] + args, check=True, stdout=subprocess.DEVNULL)
            ts.append(time.perf_counter() - t0)
        limit = 20 if label == "add" else 50
        row(f"`mailroom {label}` with {n} pending (median of 5)", f"{statistics.median(ts) * 1000:.1f} ms",
            f"`ls | wc -l`: {ref_ls * 1000:.1f} ms", "",
            target(f"≤ {limit} ms", statistics.median(ts) * 1000 <= limit))
    env = dict(os.environ, STAMPS=stamps)
    t0 = time.perf_counter()
    t0ns = time.time_ns()
    sup = subprocess.Popen([BIN, "--root", d, "-q", "run"], env=env)
    try:
        while not (os.path.exists(stamps) and os.path.getsize(stamps) > 0):
            time.sleep(0.002)
            if time.perf_counter() - t0 > 120:
                raise SystemExit("scale: no first claim within 120 s")
        first = (int(open(stamps).read().split()[0]) - t0ns) / 1e9
        # Claims per second once running: count completions over 10 s.
        c0 = completed(d)
        t1 = time.perf_counter()
        time.sleep(5 if QUICK else 10)
        rate = (completed(d) - c0) / (time.perf_counter() - t1)
        peak = rss_peak_kb(sup.pid)
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
    row(f"start-up to first claim, {n} pending", f"{first:.2f} s", f"cat of every file: {ref_read:.2f} s",
        "", target("≤ 2 s", first <= 2))
    row(f"peak RSS with {n} pending", f"{peak / 1024:.1f} MiB", "", "",
        target("≤ 100 MB", peak * 1024 <= 100e6))
    row(f"claims per second with {n} pending (agent: sh + date)", f"{rate:.0f} /s")
    discard(d)
    discard(work)


def cpu_ns(pid):
    """CPU time of every thread of pid, in ns (schedstat: exact, where the
    clock ticks of /proc/PID/stat are 10 ms apart)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            pass
    return total


def switches(pid):
    v = nv = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("voluntary_ctxt_switches"):
            v = int(line.split()[1])
        if line.startswith("nonvoluntary_ctxt_switches"):
            nv = int(line.split()[1])
    return v + nv


def task_switches(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        for line in open(f"/proc/{pid}/task/{t}/status"):
            if "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


def idle():
    secs = 15 if QUICK else 60
    d = mkroot(agent_cfg([TRUE], 4, "rescan_interval: 30s"), 0)
    sup = subprocess.Popen([BIN, "--root", d, "-q", "run"])
    ref = subprocess.Popen(["sleep", str(secs + 30)])
    time.sleep(1.0)
    c0, s0, r0 = cpu_ns(sup.pid), task_switches(sup.pid), task_switches(ref.pid)
    time.sleep(secs)
    c1, s1, r1 = cpu_ns(sup.pid), task_switches(sup.pid), task_switches(ref.pid)
    rss = 0
    for line in open(f"/proc/{sup.pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    sup.send_signal(signal.SIGTERM)
    sup.wait(timeout=30)
    ref.kill()
    ref.wait()
    ms = (c1 - c0) / 1e6
    row(f"idle for {secs} s: CPU time", f"{ms:.1f} ms", "", "",
        target("≈ 0 (≤ 0.1% of a core)", ms <= secs))
    row(f"idle for {secs} s: wake-ups (context switches, all threads)", f"{s1 - s0}",
        f"`sleep`: {r1 - r0}; a heartbeat every 5 s, a rescan every 30 s")
    row("idle RSS", f"{rss / 1024:.1f} MiB")
    discard(d)


def merge():
    n = 300 if QUICK else 1000
    history = 10000
    times = {}
    # Alternate the two, twice, and keep each one's best: the first run of a
    # batch pays for cold caches.
    for hist in [0, history, 0, history]:
        d = mkroot(agent_cfg([TRUE], 4, "durability: relaxed"), n)
        if hist:
            with open(os.path.join(d, "context", "completed_tasks.jsonl"), "w") as f:
                for i in range(hist):
                    f.write(json.dumps({"totals": {"completed": i + 1, "failed": 0}, "task": f"old{i}",
                                        "status": "completed", "run_id": f"r{i}",
                                        "finished_at": "2026-01-01T00:00:00Z"}) + "\n")
            cdir = os.path.join(d, "tasks", "completed")
            for i in range(hist):
                open(os.path.join(cdir, f"old{i}.yaml"), "w").write("description: old\n")
                open(os.path.join(cdir, f"old{i}.result.json"), "w").write("{}")
        t0 = time.perf_counter()
        subprocess.run([BIN, "--root", d, "-q", "run", "--exit-when-idle"], check=True)
        took = (time.perf_counter() - t0) / n
        times[hist] = min(times.get(hist, took), took)
        discard(d)
    row(f"per finished task with {history} entries of history", f"{times[history] * 1000:.2f} ms",
        f"with none: {times[0] * 1000:.2f} ms", f"{times[history] / times[0]:.2f}x",
        target("must not grow (≤ 1.2x)", times[history] <= 1.2 * times[0]))


def main():
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__.strip())
        return
    unknown = [w for w in WANT if w not in MEASURES]
    if unknown:
        raise SystemExit(f"bench.py: no measure named {', '.join(unknown)} (see --help)")
    if not os.environ.get("MAILROOM_BENCH_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    machine = f"{os.cpu_count()} cores, " + open("/proc/meminfo").readline().split(":")[1].strip()
    try:
        for name in WANT:
            print(f"== {name}", file=sys.stderr, flush=True)
            globals()[name]()
    finally:
        for d in LATER:
            shutil.rmtree(d, ignore_errors=True)
        unmount_all()
    fs = "; each work directory on a file system of its own" if FRESH_FS else ""
    print(f"\nMachine: {machine}; {'quick' if QUICK else 'full'} run{fs}.\n")
    print("| measure | mailroom | reference (same run) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")


if __name__ == "__main__":
    main()
