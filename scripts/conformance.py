#!/usr/bin/env python3
"""Protocol conformance check for a supervisor of a mailroom tree (PROTOCOL.md).

Drives a fresh tree through the protocol's cases and checks, on disk only, what
any compatible supervisor must leave behind. Run it against mailroom or against
a tool of your own:

    scripts/conformance.py --supervisor 'mailroom --root {root} run --exit-when-idle'

`{root}` is replaced by the tree's path; the command must process the tree and
exit once idle (within --timeout seconds). The agent it must run is configured
in the tree's mailroom.yaml as `agents.ok` (a shell command that prints its
prompt and exits 0) and `agents.bad` (exits 3). A tool that reads its own
config can take the same two agents from there.

Prints one line per check, `ok` or `FAIL`, and a closing `N passed, M failed`;
exits 1 if any check failed. Needs only Python 3's standard library.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

STATES = ["pending", "assigned", "completed", "failed"]
RESULTS = []


def check(name, cond, detail=""):
    RESULTS.append(bool(cond))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  ({detail})"))


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def tree(root):
    for d in ["tmp", "pending", "assigned", "completed", "failed"]:
        os.makedirs(os.path.join(root, "tasks", d), exist_ok=True)
    os.makedirs(os.path.join(root, "context", "agent_outputs"), exist_ok=True)
    write(root, "mailroom.yaml", """retries: 1
retry_delay: 10ms
settle: 200ms
rescan_interval: 500ms
default_agent: ok
agents:
  ok:
    command: ["/bin/sh", "-c", "echo \\"answer: $MAILROOM_TASK\\"; echo '[SUMMARY]done[/SUMMARY]'"]
  bad:
    command: ["/bin/sh", "-c", "echo failing >&2; exit 3"]
""")


def where(root, name):
    """The state directories holding a task file of this name."""
    found = []
    for s in STATES:
        d = os.path.join(root, "tasks", s)
        for f in os.listdir(d):
            stem, _, ext = f.rpartition(".")
            if stem == name and ext in ("yaml", "yml"):
                found.append(s)
    return found


def record(root, state, name):
    try:
        with open(os.path.join(root, "tasks", state, name + ".result.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supervisor", required=True, help="command; {root} is the tree")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="mailroom-conformance-")
    tree(root)
    p = lambda rel: os.path.join(root, rel)
    # The cases.
    write(root, "tasks/pending/plain.yaml", "description: a plain task\n")
    write(root, "tasks/pending/string.yaml", "\"a task that is only a string\"\n")
    write(root, "tasks/pending/seed.yaml", "id: seed\ndescription: the seed format\npriority: high\n"
          "created_at: 2024-01-01T00:00:00Z\ndependencies: []\ncontext_files: []\n")
    write(root, "tasks/pending/first.yaml", "description: runs first\n")
    write(root, "tasks/pending/second.yaml", "description: runs after first\nafter: [first]\n")
    write(root, "tasks/pending/fails.yaml", "description: always fails\nagent: bad\n")
    write(root, "tasks/pending/typo.yaml", "description: x\npriorty: high\n")
    write(root, "tasks/pending/broken.yaml", "description: [unclosed\n")
    write(root, "tasks/pending/needs-broken.yaml", "description: x\nafter: [fails]\n")
    write(root, "tasks/pending/.hidden.yaml", "description: a dotfile is never a task\n")
    write(root, "tasks/pending/notes.txt", "not a task\n")
    write(root, "tasks/pending/swap.yaml.swp", "editor swap file\n")
    # A clash: the name is already completed.
    write(root, "tasks/completed/done.yaml", "description: finished long ago\n")
    write(root, "tasks/completed/done.result.json", json.dumps({
        "version": 2, "task": "done", "status": "completed", "outcome": "success",
        "attempts": 1, "finished_at": "2024-01-01T00:00:00.000Z", "host": "h", "run_id": "r0"}))
    write(root, "tasks/pending/done.yaml", "description: a second task named done\n")
    # A symlink and a FIFO are refused, never followed or read.
    write(root, "outside.yaml", "description: outside the queue\n")
    os.symlink(p("outside.yaml"), p("tasks/pending/link.yaml"))
    os.mkfifo(p("tasks/pending/fifo.yaml"))
    # A submission the Maildir way: staged in tmp/, renamed in.
    write(root, "tasks/tmp/staged.yaml", "description: staged then renamed\n")
    os.rename(p("tasks/tmp/staged.yaml"), p("tasks/pending/staged.yaml"))

    cmd = shlex.split(args.supervisor.replace("{root}", root))
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=args.timeout)
        check("the supervisor exits when idle", out.returncode == 0,
              f"exit {out.returncode}: {out.stderr.decode(errors='replace')[-500:]}")
    except subprocess.TimeoutExpired:
        check("the supervisor exits when idle", False, f"still running after {args.timeout} s")

    # Every task in exactly one state, where the protocol puts it.
    want = {
        "plain": "completed", "string": "completed", "seed": "completed", "first": "completed",
        "second": "completed", "staged": "completed", "fails": "failed", "typo": "failed",
        "broken": "failed", "needs-broken": "failed", "link": "failed", "fifo": "failed",
    }
    for name, state in want.items():
        got = where(root, name)
        check(f"{name} ends in {state}/ and nowhere else", got == [state], f"found in {got}")
        rec = record(root, state, name)
        check(f"{name} has a result record", rec is not None and rec.get("task") == name
              and rec.get("status") == state, f"{rec}")
    check("the completed task `done` is untouched", where(root, "done") == ["completed"]
          and record(root, "completed", "done")["run_id"] == "r0", "overwritten or moved")
    clash = [f for f in os.listdir(p("tasks/failed")) if f.startswith("done.clash-") and f.endswith(".yaml")]
    check("the second `done` is filed under a clash name", len(clash) == 1, f"{clash}")
    check("the symlink's target was not moved or changed",
          open(p("outside.yaml")).read() == "description: outside the queue\n", "changed")
    for f in [".hidden.yaml", "notes.txt", "swap.yaml.swp"]:
        check(f"{f} is left alone in pending/", os.path.exists(p("tasks/pending/" + f)), "gone")

    # Records say why.
    r = record(root, "failed", "fails") or {}
    check("a failing agent is retried, then failed", r.get("attempts") == 2 and r.get("outcome") == "exit",
          f"attempts {r.get('attempts')}, outcome {r.get('outcome')}")
    check("every attempt is in the history", len(r.get("history", [])) == 2, f"{r.get('history')}")
    r = record(root, "failed", "typo") or {}
    check("an unknown key is refused, with its position",
          r.get("outcome") == "invalid" and (r.get("error_location") or {}).get("line") == 2, f"{r}")
    r = record(root, "failed", "needs-broken") or {}
    check("a failed dependency fails its dependant", r.get("outcome") == "dependency", f"{r.get('outcome')}")
    r1, r2 = record(root, "completed", "first") or {}, record(root, "completed", "second") or {}
    check("`after` orders runs", r1.get("finished_at", "~") <= r2.get("started_at", ""),
          f"first finished {r1.get('finished_at')}, second started {r2.get('started_at')}")

    # Nothing half-done is left behind.
    leftovers = [f for f in os.listdir(p("tasks/assigned"))]
    check("assigned/ is empty", not leftovers, f"{leftovers}")
    temps = [os.path.join(d, f) for d, _, fs in os.walk(p("tasks")) for f in fs
             if f.startswith(".") and f.endswith(".tmp")]
    check("no temp file is left", not temps, f"{temps}")

    # The context.
    log = p("context/completed_tasks.jsonl")
    lines = [json.loads(l) for l in open(log)] if os.path.exists(log) else []
    names = [l.get("task") for l in lines]
    check("completed_tasks.jsonl has one line per finished run",
          len(names) == len(set(zip(names, [l.get("run_id") for l in lines]))) and "plain" in names,
          f"{names}")
    check("agent_outputs has the answer", os.path.exists(p("context/agent_outputs/plain.md"))
          and "answer: plain" in open(p("context/agent_outputs/plain.md")).read(), "missing")
    check("current_state.md is regenerated", os.path.exists(p("context/current_state.md")), "missing")

    passed, failed = sum(RESULTS), len(RESULTS) - sum(RESULTS)
    print(f"{passed} passed, {failed} failed")
    print(f"tree kept at {root}" if failed else "", end="")
    if not failed:
        subprocess.run(["rm", "-rf", root])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
