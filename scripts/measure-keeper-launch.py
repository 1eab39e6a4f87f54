#!/usr/bin/env python3
"""What a run keeper adds per run, started both ways a supervisor starts it:
by exec (`mailroom-keeper RUN_DIR`, as with MAILROOM_KEEPER_LAUNCHER=off)
and forked by the keeper launcher (`mailroom-keeper --launcher`, the
default), each running the agent `/bin/true`, next to `/bin/true` alone.

    python3 scripts/measure-keeper-launch.py [N=300] [ROUNDS=5]

Each run is started and awaited in turn, N per variant, the variants
interleaved round by round. CPU is the user+sys time of this script's
children (keepers, agents and the launcher, which is reaped at the end of
its round), divided by N; wall is the time from request to the keeper's end.
Durability relaxed (no fsync), no slots: the keeper's own cost. Needs a
release build (target/release/mailroom-keeper; MAILROOM_KEEPER_BIN=PATH for
another).
"""
import array, json, os, resource, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEPER = os.environ.get("MAILROOM_KEEPER_BIN") or os.path.join(ROOT, "target", "release", "mailroom-keeper")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
TRUE = "/bin/true"

work = tempfile.mkdtemp(prefix="mailroom-keeper-launch-")
spec = {"run_id": "m", "argv": [TRUE], "workdir": work, "root": work,
        "stdout": work + "/stdout.log", "stderr": work + "/stderr.log", "output": None,
        "timeout_ms": 60000, "grace_ms": 1000, "max_output": 1 << 20, "durable": False}
with open(os.path.join(work, "spec.json"), "w") as f:
    json.dump(spec, f)
env = dict(os.environ)
outcome = os.path.join(work, "outcome.json")


def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ran():
    if not os.path.exists(outcome):
        raise SystemExit("a keeper wrote no outcome.json")
    os.unlink(outcome)


def by_exec():
    for _ in range(N):
        subprocess.run([KEEPER, work], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=work, env=env, check=True)
        ran()


def by_launcher():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    launcher = subprocess.Popen([KEEPER, "--launcher"], stdin=theirs.fileno(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    if ours.recv(16)[:1] != b"h":
        raise SystemExit("the launcher did not greet (no PR_SET_MM_MAP?)")
    # The request: a mask of handed descriptors (none), the run directory,
    # the root, then the environment, NUL-separated (see src/run/launcher.rs).
    body = b"\0" + work.encode() + b"\0" + work.encode() + b"\0" + b"".join(
        f"{k}={v}".encode() + b"\0" for k, v in env.items())
    for _ in range(N):
        ours.send(body)
        msg, anc, _, _ = ours.recvmsg(16, socket.CMSG_SPACE(4))
        if msg[:1] != b"p":
            raise SystemExit(f"unexpected reply {msg!r}")
        for _, _, data in anc:
            fds = array.array("i")
            fds.frombytes(data[:4])
            os.close(fds[0])
        if ours.recv(16)[:1] != b"x":
            raise SystemExit("no exit report")
        ran()
    ours.close()
    launcher.wait()


def alone():
    for _ in range(N):
        subprocess.run([TRUE], check=True)


variants = [("keeper by exec", by_exec), ("keeper forked by the launcher", by_launcher),
            ("/bin/true alone", alone)]
got = {name: [] for name, _ in variants}
print(f"{KEEPER}: N={N}, {ROUNDS} rounds, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
for r in range(ROUNDS):
    for name, fn in variants:
        c0, t0 = cpu(), time.monotonic()
        fn()
        c, t = (cpu() - c0) * 1000 / N, (time.monotonic() - t0) * 1000 / N
        got[name].append((c, t))
        print(f"round {r + 1}  {name:32s} CPU {c:.3f} ms  wall {t:.3f} ms per run")
print("\n| started as | CPU ms per run (median, min–max) | wall ms per run | CPU added to `/bin/true` |")
print("|---|---|---|---|")
base = statistics.median(c for c, _ in got["/bin/true alone"])
for name, _ in variants:
    cs = [c for c, _ in got[name]]
    ws = [w for _, w in got[name]]
    added = "" if name == "/bin/true alone" else f"{statistics.median(cs) - base:.3f}"
    print(f"| {name} | {statistics.median(cs):.3f} ({min(cs):.3f}–{max(cs):.3f}) | "
          f"{statistics.median(ws):.3f} | {added} |")
