#!/usr/bin/env python3
"""Captures the real agent CLIs' output against tests/mock_model.py, one run per mode.

    scripts/install-clis.sh && python3 tests/capture_cli_fixtures.py [claude|codex|gemini ...]

Writes tests/fixtures/cli/<cli>-<version>/<mode>.{stdout,stderr,exit} and CAPTURE.json (the
argv, env and prompt of every mode). `.exit` holds `code N` or `signal N`.

Everything runs in a fresh network namespace (`unshare -n`, loopback only; needs root or
unprivileged user namespaces), so no CLI can reach anything but the mock on 127.0.0.1.
Each CLI gets a fresh HOME and a fresh working directory that is not a git repository.
Machine-specific strings are replaced in the saved files: the repository path by <repo>,
the capture directory by <capture>, the mock's port by <port>.

Python 3 standard library only.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "tests", "clis", "node_modules", ".bin")
# aider is not installed by scripts/install-clis.sh (it is heavy): point AIDER_BIN at the bin
# directory of a venv with `pip install aider-chat==0.86.1`.
AIDER_BIN = os.environ.get("AIDER_BIN", "/tmp/aider-venv/bin")


def bin_dir(cli):
    return AIDER_BIN if cli == "aider" else BIN
OUT = os.path.join(REPO, "tests", "fixtures", "cli")
MOCK = os.path.join(REPO, "tests", "mock_model.py")

# How long a "hang" run is left before it gets SIGTERM (to its process group, as mailroom
# stops a run), and how long after that before SIGKILL.
HANG_SECS = 8
GRACE_SECS = 10
RUN_TIMEOUT = 600

QUIET_ENV = {
    # Nothing phones home (and the network namespace would stop it anyway).
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
}

PROMPT = "MOCK:{mode} Reply with one short sentence."
# The trap: the answer quotes limit messages, and so does the prompt (codex echoes it on
# stderr in its human-readable mode).
PROMPT_429 = ("MOCK:ok-429 Our log says '429 Too Many Requests' and 'rate limit reached'. "
              "Explain in one sentence.")
# no-session: a resume of a session the CLI never saved (what a run cut off by a limit on
# its first request leaves gemini).
NO_SESSION = "3f2a1b4c-0000-4000-8000-000000000000"
# A prompt that starts with an option of each CLI (-v: version/verbose).
PROMPT_DASH = "-v MOCK:ok this task description starts with a dash"
# A prompt with a URL (as an earlier task's error quoted in the context has): aider offers
# to scrape it, and --yes-always accepts (in the namespace the fetch fails).
PROMPT_URL = ("MOCK:garbage Reply with one short sentence. The last run said: You can find "
              "your API key at https://platform.openai.com/account/api-keys.")


# max-turns: the model calls a tool (the mock's write-outbox scenario, a path outside the
# CLI's workspace) in a run allowed one turn.
PROMPT_MAX_TURNS = ("MOCK:write-outbox Queue a follow-up task in "
                    "`/nonexistent-mailroom-capture/tasks/assigned/t/outbox`.")


def prompt_for(mode):
    if mode == "max-turns":
        return PROMPT_MAX_TURNS
    if mode.endswith("ok-429"):
        return PROMPT_429
    if mode.endswith("dash-v"):
        return PROMPT_DASH
    if mode == "garbage-url":
        return PROMPT_URL
    base = mode.split("-", 1)[1] if mode.startswith(("text-", "stream-")) else mode
    if base in ("untrusted", "no-git", "no-auth", "no-key", "refused", "bad-flag",
                "no-session"):
        base = "ok"
    return PROMPT.format(mode=base)


def version(cli):
    out = subprocess.run([os.path.join(bin_dir(cli), cli), "--version"], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    m = re.search(r"\d+\.\d+\.\d+", out)
    return m.group(0)


# ---- per-CLI command lines --------------------------------------------------------------

def claude(mode, port, home):
    # refused: nothing listens on port 1 (inside the capture's network namespace).
    url = "http://127.0.0.1:1" if mode == "refused" else f"http://127.0.0.1:{port}"
    env = {"HOME": home, "ANTHROPIC_BASE_URL": url,
           "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           # Claude retries every API error (401 included) 10 times over ~3 minutes; two
           # retries give the same final output much faster.
           "CLAUDE_CODE_MAX_RETRIES": "2"}
    if mode == "usage-limit":
        # A subscriber's limit: only a claude.ai login (an OAuth token) gets the
        # "You've hit your ... limit · resets ..." message from the unified limit headers.
        env["CLAUDE_CODE_OAUTH_TOKEN"] = "sk-ant-oat01-mock"
    else:
        env["ANTHROPIC_API_KEY"] = "sk-ant-mock"
    if mode.startswith("stream-"):
        fmt = ["--output-format", "stream-json", "--verbose"]
    elif mode.startswith("text-"):
        fmt = ["--output-format", "text"]
    else:
        fmt = ["--output-format", "json"]
    argv = ["claude", "-p", *fmt, "--permission-mode", "acceptEdits", "--", prompt_for(mode)]
    if mode == "bad-flag":
        argv.insert(1, "--no-such-flag")
    if mode == "no-session":
        argv[1:1] = ["--resume", NO_SESSION]
    if mode == "max-turns":
        argv[1:1] = ["--max-turns", "1"]
    return argv, env


CLAUDE_MODES = ["ok", "ok-429", "429", "usage-limit", "500", "401", "hang", "dash-v",
                "bad-flag", "stream-ok", "stream-429", "empty", "refused",
                "text-ok", "text-ok-429", "text-429", "text-401", "text-500",
                "cut", "garbage", "overloaded", "stream-cut", "no-session",
                "403", "max-tokens", "bad-sse", "max-turns"]


def codex(mode, port, home):
    env = {"HOME": home, "CODEX_HOME": home, "MOCK_OPENAI_KEY": "sk-mock"}
    if mode == "no-key":
        # The provider's env_key is not set.
        del env["MOCK_OPENAI_KEY"]
    # refused-hang: nothing listens on port 1 (inside the capture's network namespace);
    # codex reconnects until it is stopped.
    url_port = 1 if mode == "refused-hang" else port
    provider = ('model_providers.mock={name="mock",base_url="http://127.0.0.1:%d/v1",'
                'env_key="MOCK_OPENAI_KEY",wire_api="responses"}' % url_port)
    argv = ["codex", "exec"]
    if not mode.startswith("text-"):
        argv.append("--json")
    if mode != "no-git":
        argv.append("--skip-git-repo-check")
    argv += ["--sandbox", "workspace-write", "-c", "model_provider=mock", "-c", provider]
    if mode == "no-session":
        argv += ["resume", NO_SESSION]
    argv += ["--", prompt_for(mode)]
    if mode == "bad-flag":
        argv.insert(2, "--no-such-flag")
    return argv, env


CODEX_MODES = ["ok", "ok-429", "429", "usage-limit", "500", "401", "hang", "dash-v", "no-git",
               "bad-flag", "empty", "no-key", "refused-hang",
               "text-ok", "text-ok-429", "text-429", "text-usage-limit", "text-500",
               "text-401", "text-hang", "cut", "garbage", "overloaded", "no-session"]


def gemini_settings(home, auth=True):
    os.makedirs(os.path.join(home, ".gemini"), exist_ok=True)
    settings = {
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False,
                    # Gemini retries 429 and 5xx 10 times over ~5 minutes; two attempts
                    # give the same final output much faster.
                    "maxAttempts": 2},
        "telemetry": {"enabled": False},
    }
    if auth:
        settings["security"] = {"auth": {"selectedType": "gemini-api-key"}}
    with open(os.path.join(home, ".gemini", "settings.json"), "w") as f:
        json.dump(settings, f, indent=2)


def gemini(mode, port, home):
    if mode == "no-auth":
        home = home + "-noauth"
        gemini_settings(home, auth=False)
    # refused: nothing listens on port 1 (inside the capture's network namespace).
    url = "http://127.0.0.1:1" if mode == "refused" else f"http://127.0.0.1:{port}"
    env = {"HOME": home, "GEMINI_API_KEY": "mock-key",
           "GOOGLE_GEMINI_BASE_URL": url,
           "GEMINI_TELEMETRY_ENABLED": "false"}
    if mode == "no-key":
        # The API-key auth type is selected, but no key is set.
        del env["GEMINI_API_KEY"]
    fmt = "stream-json" if mode.startswith("stream-") else "json"
    argv = ["gemini"]
    if mode != "untrusted":
        argv.append("--skip-trust")
    argv += ["--output-format", fmt, "--approval-mode", "auto_edit",
             "--prompt=" + prompt_for(mode)]
    if mode == "no-session":
        argv += ["--resume", NO_SESSION]
    if mode == "bad-flag":
        argv.insert(1, "--no-such-flag")
    return argv, env


GEMINI_MODES = ["ok", "ok-429", "429", "usage-limit", "500", "401", "hang", "dash-v",
                "untrusted", "no-auth", "bad-flag", "stream-ok", "stream-429", "empty",
                "no-key", "cut", "garbage", "overloaded", "refused", "no-session"]

def aider(mode, port, home):
    # aider talks to the mock through litellm's OpenAI-compatible route (chat completions).
    # refused: nothing listens on port 1 (inside the capture's network namespace).
    url_port = 1 if mode == "refused" else port
    env = {"HOME": home, "OPENAI_API_BASE": f"http://127.0.0.1:{url_port}/v1",
           "OPENAI_API_KEY": "sk-mock", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "AIDER_ANALYTICS": "false", "AIDER_CHECK_UPDATE": "false"}
    argv = ["aider", "--model", "openai/mock-gpt", "--yes-always", "--no-auto-commits",
            "--no-pretty", "--no-git", "--no-show-model-warnings", "--no-check-update",
            "--analytics-disable", "--message=" + prompt_for(mode)]
    if mode == "bad-flag":
        argv.insert(1, "--no-such-flag")
    return argv, env


AIDER_MODES = ["ok", "ok-429", "429", "usage-limit", "500", "401", "hang", "dash-v",
               "bad-flag", "cut", "garbage", "overloaded", "refused", "garbage-url",
               "max-tokens", "403"]

CLIS = {"claude": (claude, CLAUDE_MODES), "codex": (codex, CODEX_MODES),
        "gemini": (gemini, GEMINI_MODES), "aider": (aider, AIDER_MODES)}


# ---- running ----------------------------------------------------------------------------

def start_mock(base):
    port_file = os.path.join(base, "port")
    log = os.path.join(base, "requests.jsonl")
    proc = subprocess.Popen([sys.executable, MOCK, "--port-file", port_file, "--log", log,
                             "--lifetime", "3600"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(port_file):
            break
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, int(f.read()), log


def wait_for_request(log, scenario, since, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with open(log) as f:
                for line in f:
                    d = json.loads(line)
                    if d["t"] >= since and d["scenario"] == scenario:
                        return True
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return False


def run(argv, env, cwd, mode, log):
    full_env = {"PATH": bin_dir(argv[0]) + ":/usr/local/bin:/usr/bin:/bin"}
    full_env.update(QUIET_ENV)
    full_env.update(env)
    t0 = time.time()
    with open(os.devnull) as stdin:
        proc = subprocess.Popen([os.path.join(bin_dir(argv[0]), argv[0])] + argv[1:], cwd=cwd,
                                env=full_env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    if mode.endswith("hang"):
        # refused-hang: a CLI that keeps reconnecting to nothing never reaches the mock.
        if not mode.startswith("refused"):
            wait_for_request(log, "hang", t0, 60)
        time.sleep(HANG_SECS)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=GRACE_SECS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    else:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the group
    except ProcessLookupError:
        pass
    rc = proc.returncode
    status = f"signal {-rc}" if rc < 0 else f"code {rc}"
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), status, \
        round(time.time() - t0, 1)


def sanitize(text, base, port):
    text = text.replace(REPO, "<repo>").replace(base, "<capture>")
    # Claude names its per-project state after the path, slashes turned into dashes.
    text = text.replace(base.replace("/", "-"), "-<capture>")
    text = re.sub(r"127\.0\.0\.1:%d\b" % port, "127.0.0.1:<port>", text)
    return text


def capture(cli, modes):
    make, all_modes = CLIS[cli]
    modes = modes or all_modes
    ver = version(cli)
    dest = os.path.join(OUT, f"{cli}-{ver}")
    os.makedirs(dest, exist_ok=True)
    base = tempfile.mkdtemp(prefix=f"mailroom-capture-{cli}-", dir="/var/tmp")
    home = os.path.join(base, "home")
    ws = os.path.join(base, "work")  # a fresh directory, not a git repository
    os.makedirs(home)
    os.makedirs(ws)
    os.makedirs(os.path.join(base, "tmp"))
    if cli == "gemini":
        gemini_settings(home)
    if cli == "aider":
        # aider fetches litellm's model price list from the internet once a day unless its
        # cache is fresh: an empty, fresh cache keeps it offline.
        os.makedirs(os.path.join(home, ".aider", "caches"))
        with open(os.path.join(home, ".aider", "caches",
                               "model_prices_and_context_window.json"), "w") as f:
            f.write("{}")
    mock, port, log = start_mock(base)
    meta_path = os.path.join(dest, "CAPTURE.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    meta.setdefault("cli", cli)
    meta["version"] = ver
    meta.setdefault("modes", {})
    try:
        for mode in modes:
            argv, env = make(mode, port, home)
            env = dict(env, TMPDIR=os.path.join(base, "tmp"))
            out, err, status, secs = run(argv, env, ws, mode, log)
            for ext, text in (("stdout", out), ("stderr", err), ("exit", status + "\n")):
                with open(os.path.join(dest, f"{mode}.{ext}"), "w") as f:
                    f.write(sanitize(text, base, port))
            meta["modes"][mode] = {
                "argv": [sanitize(a, base, port) for a in argv],
                "env": {k: sanitize(v, base, port) for k, v in sorted(env.items())},
                "stdin": "/dev/null",
                "cwd": "<capture>/work (empty, not a git repository)",
                "killed_after_secs": HANG_SECS if mode.endswith("hang") else None,
                "exit": status,
                "secs": secs,
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
            }
            print(f"{cli} {ver} {mode}: {status} in {secs}s", flush=True)
    finally:
        mock.terminate()
        meta["common_env"] = QUIET_ENV
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        shutil.rmtree(base, ignore_errors=True)


def main():
    args = sys.argv[1:]
    if os.environ.get("MAILROOM_CAPTURE_NETNS") != "1":
        env = dict(os.environ, MAILROOM_CAPTURE_NETNS="1")
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
               sys.executable, os.path.abspath(__file__), *args]
        return subprocess.run(cmd, env=env).returncode
    clis = [a for a in args if a in CLIS] or list(CLIS)
    modes = [a for a in args if a not in CLIS]
    for cli in clis:
        capture(cli, modes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
