#!/usr/bin/env python3
"""Soak test for mailroom (not run in CI).

Builds the release binary, creates a temporary tree, and pushes many tasks
(default 20,000) through a supervisor for --minutes N (default 30) while things
go wrong on purpose:

  * a fake agent that, at random, succeeds, fails (exit 1), hangs past its
    short timeout, or prints a usage-limit message ("429 Too Many Requests,
    try again in 2s", which cools the agent down and requeues for free);
  * this script SIGKILLs the supervisor at random intervals (every 3-5 minutes
    by default) and restarts it, so recovery runs again and again;
  * it also SIGKILLs a random running agent now and then.

Every minute it samples the running supervisor's memory (VmRSS), open file
descriptors (entries of /proc/PID/fd) and threads, with the queue's size, and
prints a table. The supervisor restarts after every kill, so memory and
descriptors are judged per supervisor process: the table ends with each run's
first and last samples.

At the end (after the minutes are up, kills stop and the queue drains) it
checks the invariants: every submitted task is in exactly one terminal state
(completed/ or failed/, with its result record), nothing is left in
tasks/assigned/, there are no temp files, and no agent outlived its run.

Usage:
  scripts/soak.py [--minutes 30] [--tasks 20000] [--bin target/release/mailroom]
                  [--kill-every 180-300] [--keep] [--seed N]

Exit status 0 when the invariants hold and no supervisor run grew
noticeably, 1 otherwise.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AGENT = r"""#!/bin/bash
# Soak agent: succeeds, fails, hangs past its timeout, or reports a usage limit.
r=$((RANDOM % 100))
if [ "$r" -lt 65 ]; then
  echo "done: $MAILROOM_TASK (attempt $MAILROOM_ATTEMPT)"
  printf '[SUMMARY]soak %s[/SUMMARY]\n' "$MAILROOM_TASK" > "$MAILROOM_OUTPUT"
  exit 0
elif [ "$r" -lt 85 ]; then  # 20%: fails
  echo "something broke on attempt $MAILROOM_ATTEMPT" >&2
  exit 1
elif [ "$r" -lt 90 ]; then
  sleep 30          # past the agent's timeout: stopped by mailroom
  exit 0
elif [ "$r" -lt 95 ]; then
  echo "Error: 429 Too Many Requests, try again in 2s" >&2
  exit 1
else
  sleep 0.$((RANDOM % 5 + 1))
  echo "slow but fine"
  exit 0
fi
"""

CONFIG = """\
concurrency: {concurrency}
default_agent: a
retries: 2
retry_delay: 200ms
retry_delay_max: 2s
rescan_interval: 5s
settle: 500ms
shutdown_grace: 5s
durability: {durability}
agents:
  a:
    command: [{agent}]
    timeout: 1s
    grace: 300ms
    cooldown: 2s
    fallback: [b]
  b:
    command: [{agent}]
    timeout: 1s
    grace: 300ms
    cooldown: 2s
"""


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def proc_status(pid):
    """(VmRSS in kB, open fds, threads) of a live process, or None."""
    try:
        rss = threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, threads
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def count_tasks(d):
    n = 0
    try:
        with os.scandir(d) as it:
            for e in it:
                if not e.name.startswith(".") and e.name.endswith((".yaml", ".yml")):
                    n += 1
    except FileNotFoundError:
        pass
    return n


def agents_of(root):
    """Pids of live processes whose environment names this root."""
    want = f"MAILROOM_ROOT={root}".encode()
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{p}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if want in env and state not in ("Z", "X"):
            pids.append(int(p))
    return pids


class Supervisor:
    def __init__(self, binary, root, logdir):
        self.binary, self.root, self.logdir = binary, root, logdir
        self.proc = None
        self.run_no = 0
        self.started = None

    def start(self):
        self.run_no += 1
        logf = open(os.path.join(self.logdir, f"sup-{self.run_no:03d}.log"), "wb")
        env = dict(os.environ)
        env.pop("MAILROOM_ROOT", None)
        env.pop("MAILROOM_TASK", None)
        self.proc = subprocess.Popen(
            [self.binary, "--root", self.root, "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=logf,
            env=env,
        )
        logf.close()
        self.started = time.time()
        log(f"supervisor run {self.run_no} started, pid {self.proc.pid}")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            log(f"supervisor run {self.run_no} (pid {self.proc.pid}) killed with SIGKILL")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def feeder(root, total, seconds, done, submitted):
    """Submits `total` tasks evenly over `seconds` with the writer protocol."""
    tmp = os.path.join(root, "tasks", "tmp")
    pending = os.path.join(root, "tasks", "pending")
    t0 = time.time()
    prios = ["high", "normal", "normal", "normal", "low"]
    for i in range(total):
        if done.is_set():
            return
        due = t0 + seconds * i / total
        now = time.time()
        if due > now:
            time.sleep(due - now)
        name = f"soak-{i:06d}"
        staged = os.path.join(tmp, f".{name}.soak.tmp")
        with open(staged, "w") as f:
            f.write(f"description: soak task {i}\npriority: {random.choice(prios)}\n")
        os.rename(staged, os.path.join(pending, name + ".yaml"))
        submitted.append(name)


def check_invariants(root, names):
    problems = []
    tasks = os.path.join(root, "tasks")
    where = {}
    for st in ("pending", "assigned", "completed", "failed"):
        with os.scandir(os.path.join(tasks, st)) as it:
            for e in it:
                n = e.name
                if n.startswith(".") or not n.endswith((".yaml", ".yml")):
                    continue
                stem = n.rsplit(".", 1)[0]
                if stem in where:
                    problems.append(f"{stem} is in both {where[stem]} and {st}")
                where[stem] = st
    missing = [n for n in names if n not in where]
    if missing:
        problems.append(f"{len(missing)} tasks lost, e.g. {missing[:5]}")
    extra = sorted(set(where) - set(names))
    if extra:
        problems.append(f"{len(extra)} unexpected task files, e.g. {extra[:5]}")
    not_terminal = [(n, s) for n, s in where.items() if s not in ("completed", "failed")]
    if not_terminal:
        problems.append(f"{len(not_terminal)} tasks not terminal, e.g. {not_terminal[:5]}")
    no_record = []
    for n, s in where.items():
        if s in ("completed", "failed"):
            p = os.path.join(tasks, s, n + ".result.json")
            try:
                with open(p) as f:
                    rec = json.load(f)
                if rec.get("task") != n or rec.get("status") != s:
                    no_record.append(n)
            except (OSError, ValueError):
                no_record.append(n)
    if no_record:
        problems.append(f"{len(no_record)} terminal tasks without a matching record, e.g. {no_record[:5]}")
    left = os.listdir(os.path.join(tasks, "assigned"))
    if left:
        problems.append(f"{len(left)} entries left in tasks/assigned/, e.g. {sorted(left)[:5]}")
    temps = []
    for d in ("tasks/tmp", "tasks/pending", "tasks/assigned", "tasks/completed",
              "tasks/failed", "tasks/cooldowns", "context", "context/agent_outputs"):
        for n in os.listdir(os.path.join(root, d)):
            if n.endswith(".tmp"):
                temps.append(f"{d}/{n}")
    if temps:
        problems.append(f"{len(temps)} temp files left, e.g. {temps[:5]}")
    stray = agents_of(root)
    if stray:
        problems.append(f"agents still running: {stray}")
    counts = {s: sum(1 for v in where.values() if v == s) for s in ("completed", "failed")}
    return problems, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="how long to run with faults (default 30)")
    ap.add_argument("--tasks", type=int, default=20000, help="tasks to submit (default 20000)")
    ap.add_argument("--bin", help="use this mailroom binary instead of building one")
    ap.add_argument("--kill-every", default="180-300",
                    help="seconds between supervisor SIGKILLs, MIN-MAX (default 180-300)")
    ap.add_argument("--agent-kill-every", default="20-60",
                    help="seconds between agent SIGKILLs, MIN-MAX (default 20-60)")
    ap.add_argument("--sample-every", type=float, default=60, help="seconds between samples (default 60)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--durability", default="strict", choices=["strict", "relaxed"])
    ap.add_argument("--drain-minutes", type=float, default=20, help="how long the final drain may take")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    kmin, kmax = (float(x) for x in args.kill_every.split("-"))
    amin, amax = (float(x) for x in args.agent_kill_every.split("-"))

    if args.bin:
        binary = os.path.abspath(args.bin)
    else:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        binary = os.path.join(REPO, "target", "release", "mailroom")
    root = os.path.realpath(tempfile.mkdtemp(prefix="mailroom-soak-"))
    logdir = os.path.join(root, "logs")
    os.makedirs(logdir)
    # A private copy: a rebuild during the soak must not change the binary
    # that restarted supervisors run.
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(binary, os.path.join(root, "bin", "mailroom"))
    binary = os.path.join(root, "bin", "mailroom")
    subprocess.run([binary, "init", root], check=True, stdout=subprocess.DEVNULL)
    for f in os.listdir(os.path.join(root, "tasks", "pending")):
        os.remove(os.path.join(root, "tasks", "pending", f))
    agent = os.path.join(root, "soak-agent.sh")
    with open(agent, "w") as f:
        f.write(AGENT)
    os.chmod(agent, 0o755)
    with open(os.path.join(root, "mailroom.yaml"), "w") as f:
        f.write(CONFIG.format(concurrency=args.concurrency, durability=args.durability,
                              agent=json.dumps(agent)))
    log(f"tree: {root}; binary: {binary}; {args.tasks} tasks over {args.minutes} min")

    sup = Supervisor(binary, root, logdir)
    sup.start()
    done = threading.Event()
    submitted = []
    feed_secs = args.minutes * 60 * 0.9
    feed = threading.Thread(target=feeder, args=(root, args.tasks, feed_secs, done, submitted), daemon=True)
    feed.start()

    samples = []  # (elapsed_s, run, pid, uptime_s, rss_kb, fds, threads, pending, assigned, completed, failed)
    header = f"{'min':>6} {'run':>4} {'pid':>8} {'up(s)':>6} {'rss_kB':>8} {'fds':>5} {'thr':>4} " \
             f"{'submit':>7} {'pend':>6} {'asgn':>5} {'done':>6} {'fail':>5}"
    print(header, flush=True)
    t0 = time.time()
    end = t0 + args.minutes * 60
    next_sample = t0 + args.sample_every
    next_kill = t0 + rng.uniform(kmin, kmax)
    next_agent_kill = t0 + rng.uniform(amin, amax)
    agent_kills = sup_kills = 0
    tasks = os.path.join(root, "tasks")

    def sample():
        st = proc_status(sup.proc.pid) if sup.alive() else None
        if st is None:
            return
        rss, fds, thr = st
        row = (
            (time.time() - t0) / 60, sup.run_no, sup.proc.pid, time.time() - sup.started, rss, fds, thr,
            len(submitted), count_tasks(os.path.join(tasks, "pending")),
            count_tasks(os.path.join(tasks, "assigned")), count_tasks(os.path.join(tasks, "completed")),
            count_tasks(os.path.join(tasks, "failed")),
        )
        samples.append(row)
        print(f"{row[0]:6.1f} {row[1]:4d} {row[2]:8d} {row[3]:6.0f} {row[4]:8d} {row[5]:5d} {row[6]:4d} "
              f"{row[7]:7d} {row[8]:6d} {row[9]:5d} {row[10]:6d} {row[11]:5d}", flush=True)

    try:
        while time.time() < end:
            now = time.time()
            if not sup.alive():
                log(f"supervisor run {sup.run_no} exited by itself with {sup.proc.returncode}; restarting")
                sup.start()
            if now >= next_sample:
                sample()
                next_sample += args.sample_every
            if now >= next_kill:
                sup.kill9()
                sup_kills += 1
                time.sleep(rng.uniform(0, 2))
                sup.start()
                next_kill = time.time() + rng.uniform(kmin, kmax)
            if now >= next_agent_kill:
                pids = agents_of(root)
                if pids and sup.alive():
                    victim = rng.choice([p for p in pids if p != sup.proc.pid] or [None])
                    if victim:
                        try:
                            os.kill(victim, signal.SIGKILL)
                            agent_kills += 1
                        except ProcessLookupError:
                            pass
                next_agent_kill = time.time() + rng.uniform(amin, amax)
            time.sleep(0.5)
        feed.join()
        log(f"fault phase over ({sup_kills} supervisor kills, {agent_kills} agent kills); draining")
        drain_end = time.time() + args.drain_minutes * 60
        while time.time() < drain_end:
            if not sup.alive():
                sup.start()
            terminal = count_tasks(os.path.join(tasks, "completed")) + count_tasks(os.path.join(tasks, "failed"))
            if terminal >= len(submitted) and count_tasks(os.path.join(tasks, "assigned")) == 0 \
                    and count_tasks(os.path.join(tasks, "pending")) == 0:
                break
            if time.time() >= next_sample:
                sample()
                next_sample += args.sample_every
            time.sleep(1)
        sample()
        sup.stop()
        # Give agents stopped by the shutdown a moment to be reaped.
        deadline = time.time() + 10
        while agents_of(root) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        done.set()
        sup.kill9()

    # Per-run memory and descriptor trend.
    print("\nper supervisor run (samples inside one process):", flush=True)
    print(f"{'run':>4} {'pid':>8} {'n':>3} {'first rss_kB':>12} {'last rss_kB':>11} {'max rss_kB':>10} "
          f"{'first fds':>9} {'last fds':>8} {'max fds':>7} {'span(min)':>9}")
    runs = {}
    for s in samples:
        runs.setdefault((s[1], s[2]), []).append(s)
    grew = []
    for (run, pid), ss in sorted(runs.items()):
        first, last = ss[0], ss[-1]
        span = (last[3] - first[3]) / 60
        print(f"{run:4d} {pid:8d} {len(ss):3d} {first[4]:12d} {last[4]:11d} {max(s[4] for s in ss):10d} "
              f"{first[5]:9d} {last[5]:8d} {max(s[5] for s in ss):7d} {span:9.1f}")
        if len(ss) >= 3 and (last[4] > first[4] * 1.25 + 4096 or last[5] > first[5] + 16):
            grew.append(run)
    if samples:
        print(f"\nall samples: rss {min(s[4] for s in samples)}-{max(s[4] for s in samples)} kB, "
              f"fds {min(s[5] for s in samples)}-{max(s[5] for s in samples)}, "
              f"threads {min(s[6] for s in samples)}-{max(s[6] for s in samples)}")

    problems, counts = check_invariants(root, list(submitted))
    print(f"\nsubmitted {len(submitted)}; completed {counts['completed']}, failed {counts['failed']}; "
          f"{sup_kills} supervisor kills, {agent_kills} agent kills, {sup.run_no} supervisor runs")
    if grew:
        print(f"memory or descriptors grew within runs {grew} (over 25% + 4 MiB RSS, or 16 fds)")
    if problems:
        print("INVARIANTS VIOLATED:")
        for p in problems:
            print("  -", p)
    else:
        print("invariants hold: every task in exactly one terminal state with its record, "
              "nothing in assigned/, no temp files, no stray agents")
    if args.keep or problems:
        print(f"tree kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if problems or grew else 0)


if __name__ == "__main__":
    main()
