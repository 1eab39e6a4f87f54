#!/usr/bin/env bash
# End-to-end check of the aider preset, every case: the test suite runs the quick ones
# (tests/it/clis.rs, aider_answers_and_errors_are_filed_right); this script adds the faults
# aider's own retry loop holds for a minute or more each (a rate limit, a 500, a cut stream,
# an overloaded provider, a refused connection), too slow for the test command. Installs
# aider-chat 0.86.1 from PyPI into a venv of its own (scripts/install-aider.sh),
# starts tests/mock_model.py on 127.0.0.1, and runs mailroom with
# examples/presets/aider/mailroom.yaml (plus what the mock needs: the model, its base URL
# and a key) on a fresh `mailroom init` tree. Each case must be filed as the adapter says:
#
#   ok          completed, the answer in context/agent_outputs/
#   ok-429      completed (an answer that quotes rate limits is just an answer)
#   dash        completed (a description starting with -v is the prompt, not a flag)
#   401         failed, misconfigured (error_class auth), one attempt
#   500         failed, error_class transient (aider exits 0 on API errors; litellm
#               retries a 500 itself for about 90 s first)
#   cut         failed, transient (the stream drops after its first words; those words
#               are no answer), after litellm's retries (about 70 s)
#   garbage     failed, no answer (a proxy's HTML page with status 200: aider reads an
#               empty reply)
#   overloaded  failed, transient (503), after litellm's retries (about 80 s)
#   refused     (a tree of its own, nothing listening) failed, transient
#   429         (a tree of its own) the agent cools down, the task is requeued for free
#
# Usage: scripts/e2e-aider.sh [--venv DIR] [--bin MAILROOM] [--keep]
#   --venv DIR   where aider is installed (default: ~/.cache/mailroom/aider-0.86.1)
#   --bin PATH   the mailroom binary (default: built with `cargo build`)
#   --keep       keep the temporary trees for inspection
# Needs python3 (with venv and pip) and the network to PyPI the first time.
# Ends with "N passed, M failed" and exits non-zero when a case failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/aider-0.86.1"
bin=""
keep=0
while (($#)); do
    case "$1" in
        --venv) venv=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "e2e-aider: unknown argument $1" >&2; exit 2 ;;
    esac
done

MAILROOM_AIDER_VENV="$venv" bash "$here/scripts/install-aider.sh"
if [[ -z "$bin" ]]; then
    (cd "$here" && cargo build --locked --quiet)
    bin="${CARGO_TARGET_DIR:-$here/target}/debug/mailroom"
fi

work=$(mktemp -d -t mailroom-e2e-aider.XXXXXX)
mock_pid=""
cleanup() {
    [[ -n "$mock_pid" ]] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
    if ((keep)); then
        echo "e2e-aider: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

python3 "$here/tests/mock_model.py" --port-file "$work/mock.port" --log "$work/mock.jsonl" \
    --lifetime 900 >/dev/null &
mock_pid=$!
for _ in $(seq 100); do [[ -s "$work/mock.port" ]] && break; sleep 0.1; done
port=$(cat "$work/mock.port")

# A tree with the preset's agent, pointed at the mock (or at PORT). JSON is YAML.
make_tree() { # DIR [PORT]
    "$bin" init "$1" >/dev/null
    mkdir -p "$work/home"
    python3 - "$here/examples/presets/aider/mailroom.yaml" "$1/mailroom.yaml" "${2:-$port}" \
        "$work/home" "$venv/bin" <<'EOF'
import json, re, sys
preset, out, port, home, venv_bin = sys.argv[1:]
text = open(preset).read()
# The preset's command, as written in its `command:` list.
block = text.split("    command:\n", 1)[1]
argv = []
for line in block.splitlines():
    m = re.match(r'\s+- (.*?)\s*(#.*)?$', line)
    if not m:
        break
    argv.append(m.group(1).strip('"'))
argv[1:1] = ["--model", "openai/mock-gpt", "--no-show-model-warnings"]
argv[0] = venv_bin + "/aider"
cfg = {
    "concurrency": 1, "default_agent": "aider", "retries": 0, "retry_delay": "100ms",
    "settle": "200ms", "rescan_interval": "1s",
    "env_allow": ["LITELLM_*"],
    "agents": {"aider": {
        "command": argv, "kind": "aider", "timeout": "300s", "grace": "5s", "cooldown": "1h",
        "env": {"HOME": home, "OPENAI_API_BASE": f"http://127.0.0.1:{port}/v1",
                "OPENAI_API_KEY": "sk-mock", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "AIDER_ANALYTICS": "false", "AIDER_CHECK_UPDATE": "false", "NO_COLOR": "1"}}},
}
open(out, "w").write(json.dumps(cfg, indent=2))
EOF
}

task() { # TREE NAME DESCRIPTION
    printf 'description: %s\n' "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$3")" \
        >"$1/tasks/pending/$2.yaml"
}

run() { # TREE
    timeout 600 "$bin" --root "$1" run --exit-when-idle 2>"$1/../$(basename "$1").log"
}

main=$work/tree
make_tree "$main"
task "$main" ok "MOCK:ok Reply with one short sentence."
task "$main" quotes "MOCK:ok-429 Our log says '429 Too Many Requests' and 'rate limit reached'. Explain in one sentence."
task "$main" dash "-v MOCK:ok this task description starts with a dash"
task "$main" badkey "MOCK:401 Reply with one short sentence."
task "$main" servererr "MOCK:500 Reply with one short sentence."
for fault in cut garbage overloaded; do
    task "$main" "$fault" "MOCK:$fault Reply with one short sentence."
done
run "$main"

# Nothing listens on a port the kernel just gave out and took back.
closed=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
refused=$work/refused
make_tree "$refused" "$closed"
task "$refused" nowhere "MOCK:ok Reply with one short sentence."
run "$refused"

limited=$work/limited
make_tree "$limited"
task "$limited" limited "MOCK:429 Reply with one short sentence."
# The cooldown keeps the task pending: stop the supervisor once it has cooled down.
timeout 600 "$bin" --root "$limited" run 2>"$work/limited.log" &
sup=$!
for _ in $(seq 600); do
    [[ -e "$limited/tasks/cooldowns/aider.json" && -e "$limited/tasks/pending/limited.yaml" ]] && break
    sleep 0.2
done
kill -TERM "$sup" 2>/dev/null || true
wait "$sup" 2>/dev/null || true

python3 - "$main" "$limited" "$refused" <<'EOF'
import json, os, sys
main, limited, refused = sys.argv[1:]
passed = failed = 0
def rec(tree, state, name):
    p = os.path.join(tree, "tasks", state, name + ".result.json")
    return json.load(open(p)) if os.path.exists(p) else None
def check(case, ok, detail):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} aider {case}: {detail}")
    if ok: passed += 1
    else: failed += 1
for name, case in [("ok", "ok"), ("quotes", "ok-429"), ("dash", "dash-v")]:
    r = rec(main, "completed", name)
    out = open(os.path.join(main, "context/agent_outputs", name + ".md")).read() if r else ""
    check(case, r is not None and "MOCK ANSWER" in out,
          r and f"completed, outcome {r['outcome']}" or "not completed")
r = rec(main, "failed", "badkey")
check("401", bool(r) and r["outcome"] == "misconfigured" and r.get("error_class") == "auth"
      and r["attempts"] == 1, r and f"{r['outcome']} {r.get('error_class')} attempts={r['attempts']}")
r = rec(main, "failed", "servererr")
check("500", bool(r) and r.get("error_class") == "transient",
      r and f"{r['outcome']} {r.get('error_class')} attempts={r['attempts']}")
def no_answer(tree, name):
    out = open(os.path.join(tree, "context/agent_outputs", name + ".md")).read()
    return "(no answer" in out and "MOCK ANSWER" not in out
for tree, name, case, cls in [(main, "cut", "cut", "transient"),
                              (main, "garbage", "garbage", "task"),
                              (main, "overloaded", "overloaded", "transient"),
                              (refused, "nowhere", "refused", "transient")]:
    r = rec(tree, "failed", name)
    check(case, bool(r) and r.get("error_class") == cls and no_answer(tree, name),
          r and f"{r['outcome']} {r.get('error_class')}: {r.get('error', '')[:160]}"
          or "not failed")
check("no cooldown from answers", not os.listdir(os.path.join(main, "tasks/cooldowns")),
      str(os.listdir(os.path.join(main, "tasks/cooldowns"))))
st = os.path.join(limited, "tasks/assigned/limited.state.json")
hist = json.load(open(st)).get("history", []) if os.path.exists(st) else []
check("429", os.path.exists(os.path.join(limited, "tasks/cooldowns/aider.json"))
      and any(a["outcome"] == "limited" for a in hist),
      f"history {[a['outcome'] for a in hist]}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
