#!/usr/bin/env python3
"""A mock model API for running the real agent CLIs (claude, codex, gemini) offline.

One server answers all three wire formats on 127.0.0.1:

  POST /v1/messages[?beta=true]                   Anthropic Messages API (SSE when "stream": true,
                                                  else one JSON message); /v1/messages/count_tokens
  POST /v1/responses                              OpenAI Responses API (SSE when "stream": true)
  POST /v1/chat/completions                       OpenAI Chat Completions (SSE when "stream": true)
  POST /v1beta/models/MODEL:streamGenerateContent Gemini (?alt=sse), :generateContent, :countTokens
  GET  /v1/models, /v1beta/models                 small model lists

The scenario of a request is the last `MOCK:<name>` marker found in its body (so the prompt
chooses it), else the server's default (--scenario, or $MOCK_SCENARIO, else "ok"):

  ok          a short answer, with usage
  ok-429      an ok answer whose text quotes rate-limit and usage-limit messages (a trap for
              classifiers that read the answer)
  empty       a well-formed answer with no text (a CLI must not call that a result)
  429         the API's rate-limit error (HTTP 429), with a short retry-after
  usage-limit the subscription / quota "usage limit" error, with a reset time (HTTP 429)
  429-once    "429" for the first request that carries it (of the server's life), then "ok":
              a limit on a run's first request, gone by the next attempt
  500         an internal server error (HTTP 500)
  401         an authentication error (Anthropic and OpenAI: HTTP 401; Gemini, like the real
              API: HTTP 400 API_KEY_INVALID)
  hang        starts the response, then sends nothing more until the client goes away
  silent      accepts the request and never answers: no status line, no headers, until the
              client goes away
  hang-until-continued
              "hang" until the request also carries mailroom's continuation prompt ("was
              cut off"), then "ok": a run cut off by its timeout and resumed in its session
              sends the earlier conversation (with this marker) and the continuation
  cut         a dropped connection mid-answer: HTTP 200, the stream starts (chunked, a first
              text delta "MOCK ANSWER: "), then the server closes the connection without
              the final chunk or the final event (no message_stop, response.completed,
              [DONE] or finishReason); a plain JSON answer is cut after its first half
  garbage     HTTP 200 whose body is not the API's: an HTML error page of a proxy
              (Content-Type: text/html), for streaming and plain requests alike
  overloaded  the provider is overloaded: Anthropic HTTP 529 overloaded_error; OpenAI HTTP
              503 server_error "overloaded"; Gemini HTTP 503 UNAVAILABLE "The model is
              overloaded"
  403         a permission error: Anthropic HTTP 403 permission_error; OpenAI HTTP 403
              (the key may not use the model); Gemini HTTP 403 PERMISSION_DENIED
  max-tokens  the reply stops at the output-token limit, mid-sentence: Anthropic stop_reason
              max_tokens; OpenAI Responses status "incomplete" (max_output_tokens), Chat
              finish_reason "length"; Gemini finishReason MAX_TOKENS
  huge        an ok answer of about 2 MiB (HUGE_BYTES)
  ansi        an ok answer carrying ANSI escapes (colour, clear screen, a title) and a NUL
  bad-sse     HTTP 200 text/event-stream whose first event's data is not JSON (cut mid
              object), then the end of the stream; a plain JSON request gets the same
              broken JSON as application/json
  500-once, overloaded-once, cut-once, garbage-once, bad-sse-once
              as 429-once: the fault for the first request that carries the marker, then ok
  write-outbox
              the model uses the CLI's own file tool to write a follow-up task: a request
              whose conversation carries no tool result yet is answered with one tool call
              that writes `<outbox>/next.yaml` (OUTBOX_TASK), <outbox> being the first
              absolute `.../tasks/assigned/.../outbox` path in the request (mailroom's prompt
              names $MAILROOM_OUTBOX); once the tool's result (success or refusal) is in the
              conversation, an answer quoting it ("MOCK ANSWER: wrote the follow-up task;
              the tool said: ..."). Anthropic: a `tool_use` of `Write` {file_path, content},
              stop_reason tool_use. OpenAI Responses (codex): a `custom_tool_call` of codex's
              `exec` (code mode: JavaScript calling the nested tools) running
              `tools.apply_patch` with an "Add File" patch (without code mode: a
              `custom_tool_call` of `apply_patch`). Gemini: a `functionCall` of `write_file`
              {file_path, content}. A request that does not offer that tool (a side call),
              or names no outbox, gets the ok answer.
  write-outbox-shell
              the same through the CLI's shell tool, the command `printf '%s' CONTENT >
              PATH`: Anthropic `Bash` {command}; codex `exec` running `tools.exec_command`
              {cmd}; Gemini `run_shell_command` {command}
  tool-hang, tool-hang-setsid, tool-hang-nohup, tool-hang-detach, tool-hang-trap,
  tool-hang-detach-trap
              the model runs, through the CLI's shell tool (as write-outbox-shell), a command
              that does not end or leaves a process behind (HANG_COMMANDS): `sleep 600`;
              `setsid sleep 600 &` (a new session that keeps the tool's output open); `nohup
              sleep 600 >/dev/null 2>&1 & exit 0` (backgrounded, the command itself ends);
              `setsid sleep 600 </dev/null >/dev/null 2>&1 & exit 0` (a new session, the
              command ends); `trap '' TERM; sleep 600` (ignores SIGTERM, as does its sleep);
              the detached one in a shell that ignores SIGTERM (`setsid sh -c "trap '' TERM;
              sleep 600" ... & exit 0`).
              Once a tool result is in the conversation: an answer quoting it ("MOCK ANSWER:
              ran the command; the tool said: ..."). A request that does not offer the shell
              tool gets the ok answer

An unreachable endpoint (nothing listening, connection refused) is not a scenario: point the
CLI at a port where no server listens.

Lifetime: the server exits when its parent process dies, after --lifetime seconds (default
900), or on SIGTERM/SIGINT. The port (0 = pick a free one) is printed on stdout as
"PORT <n>" and, with --port-file, written to that file (atomically). With --log, every
request is appended to that file as one JSON line (method, path, scenario, body: its first
20000 characters, tail: the last 20000 of a longer one).

Python 3 standard library only.
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The tool-hang scenarios: the command the model runs in the CLI's shell tool.
HANG_COMMANDS = {
    "tool-hang": "sleep 600",
    "tool-hang-setsid": "setsid sleep 600 &",
    "tool-hang-nohup": "nohup sleep 600 >/dev/null 2>&1 & exit 0",
    "tool-hang-detach": "setsid sleep 600 </dev/null >/dev/null 2>&1 & exit 0",
    "tool-hang-trap": "trap '' TERM; sleep 600",
    "tool-hang-detach-trap": "setsid sh -c \"trap '' TERM; sleep 600\" </dev/null >/dev/null "
                             "2>&1 & exit 0",
}
# The scenarios whose model calls a tool of the CLI (outbox_call).
TOOL_SCENARIOS = ("write-outbox", "write-outbox-shell") + tuple(HANG_COMMANDS)
SCENARIOS = ("ok", "ok-429", "empty", "429", "usage-limit", "500", "401", "403", "hang",
             "silent", "hang-until-continued", "cut", "garbage", "overloaded", "max-tokens", "huge",
             "ansi", "bad-sse", "write-outbox", "write-outbox-shell") + tuple(HANG_COMMANDS)
# The scenarios that "<name>-once" makes one-off: "<name>" for the first request that
# carries the marker (of the server's life), then "ok".
ONCE = ("429", "500", "overloaded", "cut", "garbage", "bad-sse")
# mailroom's continuation prompt, in a resumed session (src/adapter/session.rs).
CONTINUED = "was cut off"
MARKER = re.compile(r"MOCK:([a-z0-9-]+)")

# Fixed usage numbers, so the adapters' tests can check them.
IN_TOKENS = 1200
OUT_TOKENS = 34
CACHE_READ = 300
CACHE_WRITE = 50
# How long a 429 asks the client to wait, in seconds. Real APIs say more; the CLIs retry
# 429s themselves, and a short wait keeps captures fast.
RETRY_AFTER = 1
# Reset of the usage-limit scenario: by default a fixed instant, 2030-01-01T12:00:00Z, so
# captured output does not depend on the day; --reset-in SECS (or $MOCK_RESET_IN) makes it
# that many seconds from each request instead (end-to-end tests of cooldowns).
RESET_AT = 1893499200

ANSWERS = {
    "ok": "MOCK ANSWER: the task is done.",
    "empty": "",
    "ok-429": (
        "MOCK ANSWER: the upstream service answered 429 Too Many Requests earlier and "
        "the log said rate limit reached (API Error: Rate limit reached; "
        "You've hit your limit · resets 1pm; Claude AI usage limit reached|1893499200; "
        "exceeded retry limit, last status: 429; RESOURCE_EXHAUSTED; RateLimitError). "
        "I added a backoff, so the task is done."
    ),
}

# The huge scenario's answer: about this many bytes, in lines of 64.
HUGE_BYTES = 2 * 1024 * 1024
ANSWERS["huge"] = "MOCK ANSWER: a huge answer follows.\n" + "".join(
    "line %07d of the huge answer, padded out to sixty-four bytes.\n" % i
    for i in range(HUGE_BYTES // 64)) + "MOCK END OF HUGE ANSWER"
ANSWERS["ansi"] = ("MOCK ANSWER: \x1b[31mred\x1b[0m text, a clear screen \x1b[2J\x1b[H, "
                   "a title \x1b]0;pwned\x07, and a NUL \x00 byte.")
# The max-tokens scenario's reply: cut mid-sentence where the limit stopped it.
ANSWERS["max-tokens"] = "MOCK ANSWER: the reply was cut at the token limit, in the middle of"
# The bad-sse scenario's body: an event whose JSON stops half way.
BAD_SSE = b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_\n\n'

# The write-outbox scenario: the follow-up task the model writes, and where.
OUTBOX_TASK = "description: follow-up from the mock\n"
OUTBOX_FILE = "next.yaml"
# An absolute outbox path as mailroom's prompt gives it: in backticks (so it may hold
# spaces), else without white space, quotes or backslashes (JSON escapes) around it.
OUTBOX = (re.compile(r"`(/[^`\\]*?/tasks/assigned/[^`\\]*?/outbox)`"),
          re.compile(r"(/[^\s`'\"\\]*?/tasks/assigned/[^\s`'\"\\]*?/outbox)(?![\w.-])"))


def outbox_target(body):
    """The file the write-outbox scenarios write: `<outbox>/next.yaml`, or None."""
    for pattern in OUTBOX:
        m = pattern.search(body)
        if m:
            return m.group(1) + "/" + OUTBOX_FILE
    return None


def tool_result_of(req):
    """In the write-outbox scenario: the text of the tool result the conversation already
    carries (Anthropic tool_result, Responses *_call_output, Gemini functionResponse), else
    None (the model is yet to call its tool)."""
    found = None
    for m in req.get("messages") or []:  # Anthropic
        for b in m.get("content") if isinstance(m.get("content"), list) else []:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                found = b.get("content")
    for it in req.get("input") if isinstance(req.get("input"), list) else []:  # Responses
        if isinstance(it, dict) and it.get("type") in ("function_call_output",
                                                       "custom_tool_call_output"):
            found = it.get("output")
    for c in req.get("contents") or []:  # Gemini
        for part in c.get("parts") or []:
            if isinstance(part, dict) and "functionResponse" in part:
                found = part["functionResponse"].get("response")
    if found is None:
        return None
    text = found if isinstance(found, str) else json.dumps(found)
    return " ".join(text.split())[:600]


def offered_tools(req):
    """The names of the tools a request offers (found at any depth below a `tools` or
    `functionDeclarations` key: codex nests its tools in namespaces)."""
    names = set()

    def walk(o, inside):
        if isinstance(o, dict):
            if inside and isinstance(o.get("name"), str):
                names.add(o["name"])
            for k, v in o.items():
                walk(v, inside or k in ("tools", "functionDeclarations"))
        elif isinstance(o, list):
            for v in o:
                walk(v, inside)

    walk(req, False)
    return names


def add_file_patch(path, content):
    """An apply_patch patch that creates `path` with `content`."""
    lines = "".join("+" + line + "\n" for line in content.splitlines())
    return "*** Begin Patch\n*** Add File: %s\n%s*** End Patch\n" % (path, lines)


def outbox_call(req, scenario, wire):
    """The next move of the write-outbox (and tool-hang) scenarios on `wire` ("anthropic",
    "responses", "gemini"): (tool, input) for a tool call that writes `<outbox>/next.yaml`
    (or runs the scenario's HANG_COMMANDS), or (None, text) for an answer: once the tool's
    result is in, or when the request does not offer the tool or names no outbox."""
    result = tool_result_of(req)
    hang = HANG_COMMANDS.get(scenario)
    if result is not None:
        done = "ran the command" if hang else "wrote the follow-up task"
        return None, "MOCK ANSWER: %s; the tool said: %s" % (done, result)
    offered = offered_tools(req)
    if hang:
        shell, cmd = True, hang
    else:
        path = outbox_target(json.dumps(req))
        if path is None:
            return None, ANSWERS["ok"]
        shell = scenario == "write-outbox-shell"
        cmd = "printf '%%s' %s > %s" % (shlex.quote(OUTBOX_TASK), shlex.quote(path))
    if wire == "anthropic":
        what = "Run a command" if hang else "Queue a follow-up task"
        call = ("Bash", {"command": cmd, "description": what}) if shell \
            else ("Write", {"file_path": path, "content": OUTBOX_TASK})
    elif wire == "gemini":
        call = ("run_shell_command", {"command": cmd}) if shell \
            else ("write_file", {"file_path": path, "content": OUTBOX_TASK})
    elif "exec" in offered:  # codex's code mode
        nested = ("tools.exec_command(%s)" % json.dumps({"cmd": cmd})) if shell \
            else ("tools.apply_patch(%s)" % json.dumps(add_file_patch(path, OUTBOX_TASK)))
        call = ("exec", "const r = await %s;\n"
                        "text(typeof r === \"string\" ? r : JSON.stringify(r));\n" % nested)
    else:
        call = ("apply_patch", add_file_patch(path, OUTBOX_TASK))
        if shell:
            call = (None, None)
    if call[0] not in offered:
        return None, ANSWERS["ok"]
    return call

# The body of the garbage scenario: what a proxy or captive portal answers, with status 200.
GARBAGE = (b"<!DOCTYPE html>\n<html><head><title>Proxy error</title></head>\n<body><h1>Proxy "
           b"error</h1><p>The proxy server received an invalid response from an upstream "
           b"server.</p><hr><address>mock-proxy/1.0</address></body></html>\n")

ARGS = None


def log_request(method, path, scenario, body):
    if not ARGS.log:
        return
    # A long body (codex sends long instructions first) keeps its head and its tail,
    # where the conversation's latest messages are.
    line = json.dumps({"t": round(time.time(), 3), "method": method, "path": path,
                       "scenario": scenario, "body": body[:20000],
                       "tail": body[-20000:] if len(body) > 20000 else ""})
    with LOG_LOCK:
        with open(ARGS.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


LOG_LOCK = threading.Lock()
# The "-once" scenarios seen (a list: appended to under LOG_LOCK).
ONCE_SEEN = []


def scenario_of(body):
    found = MARKER.findall(body)
    for name in reversed(found):
        if name == "hang-until-continued":
            return "ok" if CONTINUED in body else "hang"
        if name.endswith("-once") and name[:-5] in ONCE:
            with LOG_LOCK:
                first = name not in ONCE_SEEN
                ONCE_SEEN.append(name)
            return name[:-5] if first else "ok"
        if name in SCENARIOS:
            return name
    return ARGS.scenario


def reset_at():
    """When the usage-limit scenario's limit resets (unix seconds)."""
    if ARGS.reset_in > 0:
        return int(time.time()) + ARGS.reset_in
    return RESET_AT


def answer_text(scenario):
    return ANSWERS.get(scenario, ANSWERS["ok"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-model/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    # ---- plumbing -------------------------------------------------------------------

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding", "") in ("gzip",):
            import gzip
            raw = gzip.decompress(raw)
        elif self.headers.get("Content-Encoding", "") == "zstd":
            raw = b""  # not supported: no scenario marker then
        return raw.decode("utf-8", "replace")

    def send_json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_sse(self, headers=None, chunked=False):
        """Starts an SSE response, its end marked by closing the connection; `chunked`: in
        chunked transfer encoding instead, as real APIs send it (the cut scenario)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        self.chunked = chunked

    def sse(self, data, event=None):
        chunk = ""
        if event:
            chunk += f"event: {event}\n"
        chunk += f"data: {json.dumps(data)}\n\n"
        raw = chunk.encode()
        if getattr(self, "chunked", False):
            raw = b"%x\r\n%s\r\n" % (len(raw), raw)
        self.wfile.write(raw)
        self.wfile.flush()

    def cut(self):
        """Drops the connection: no final chunk, no final event (the cut scenario)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def send_cut_json(self, obj):
        """A plain JSON answer whose connection drops after half of its body."""
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.cut()

    def send_garbage(self):
        """A 200 whose body is a proxy's HTML page (the garbage scenario)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(GARBAGE)))
        self.end_headers()
        self.wfile.write(GARBAGE)
        self.wfile.flush()

    def send_bad_sse(self, req):
        """A 200 whose stream (or JSON body) breaks off inside its first JSON object."""
        if not req.get("stream") and "alt=sse" not in self.path:
            body = BAD_SSE.split(b"data: ", 1)[1].strip()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        self.start_sse()
        self.wfile.write(BAD_SSE)
        self.wfile.flush()

    def silent(self):
        """Sends nothing at all until the client hangs up or the server ends."""
        deadline = time.time() + ARGS.lifetime
        self.close_connection = True
        while time.time() < deadline:
            try:
                if not self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return  # the client hung up
            except BlockingIOError:
                pass
            except OSError:
                return
            time.sleep(0.5)

    def hang(self):
        """Keeps the connection open, sending nothing, until the client goes or the server ends."""
        deadline = time.time() + ARGS.lifetime
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                # A comment line keeps an SSE stream alive without any content.
                self.wfile.write(b": waiting\n\n")
                self.wfile.flush()
            except OSError:
                return

    def do_GET(self):
        path = self.path.split("?")[0]
        log_request("GET", self.path, None, "")
        if path in ("/v1/models", "/models"):
            self.send_json(200, {"object": "list", "data": [
                {"id": "mock-gpt", "object": "model", "created": 0, "owned_by": "mock"}]})
        elif path.startswith("/v1beta/models"):
            self.send_json(200, {"models": [{"name": "models/gemini-2.5-pro"}]})
        else:
            self.send_json(404, {"error": {"message": f"mock: no route for GET {path}"}})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.read_body()
        path = self.path.split("?")[0]
        scenario = scenario_of(body)
        log_request("POST", self.path, scenario, body)
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        try:
            if scenario == "silent" and path != "/v1/messages/count_tokens" \
                    and not path.endswith((":countTokens", ":embedContent")):
                return self.silent()
            if scenario == "garbage" and path != "/v1/messages/count_tokens" \
                    and not path.endswith((":countTokens", ":embedContent")):
                return self.send_garbage()
            if scenario == "bad-sse" and path != "/v1/messages/count_tokens" \
                    and not path.endswith((":countTokens", ":embedContent")):
                return self.send_bad_sse(req)
            if path == "/v1/messages/count_tokens":
                self.send_json(200, {"input_tokens": IN_TOKENS})
            elif path == "/v1/messages":
                self.anthropic(req, scenario)
            elif path in ("/v1/responses", "/responses"):
                self.openai_responses(req, scenario)
            elif path in ("/v1/chat/completions", "/chat/completions"):
                self.openai_chat(req, scenario)
            elif ":" in path and "/models/" in path:
                model, _, method = path.rsplit("/", 1)[1].partition(":")
                self.gemini(req, scenario, model, method)
            else:
                self.send_json(404, {"error": {"message": f"mock: no route for POST {path}"}})
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- Anthropic ------------------------------------------------------------------

    def anthropic_error(self, scenario):
        rid = "req_mock" + uuid.uuid4().hex[:16]
        if scenario == "429":
            return 429, {"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "This request would exceed the rate limit for your organization "
                           "(mock-org) of 50 input tokens per minute. For details, refer to: "
                           "https://docs.claude.com/en/api/rate-limits. You can see the response "
                           "headers for current usage. Please reduce the prompt length or the "
                           "maximum tokens requested, or try again later."},
                "request_id": rid}, {"retry-after": str(RETRY_AFTER), "request-id": rid}
        if scenario == "usage-limit":
            # What a Claude subscription's limit looks like on the wire: a 429 whose unified
            # rate-limit headers say "rejected" and when the window resets.
            return 429, {"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "Claude AI usage limit reached|%d" % reset_at()},
                "request_id": rid}, {
                "request-id": rid,
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(reset_at()),
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
                "anthropic-ratelimit-unified-5h-status": "rejected",
                "anthropic-ratelimit-unified-5h-reset": str(reset_at()),
                "anthropic-ratelimit-unified-5h-utilization": "1.0",
                "anthropic-ratelimit-unified-fallback": "unavailable",
                "anthropic-ratelimit-unified-overage-status": "rejected",
                "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled"}
        if scenario == "500":
            return 500, {"type": "error", "error": {"type": "api_error",
                                                    "message": "Internal server error"},
                         "request_id": rid}, {"request-id": rid}
        if scenario == "401":
            return 401, {"type": "error", "error": {"type": "authentication_error",
                                                    "message": "invalid x-api-key"},
                         "request_id": rid}, {"request-id": rid}
        if scenario == "403":
            return 403, {"type": "error", "error": {
                "type": "permission_error",
                "message": "Your API key does not have permission to use the specified "
                           "resource."}, "request_id": rid}, {"request-id": rid}
        if scenario == "overloaded":
            return 529, {"type": "error", "error": {"type": "overloaded_error",
                                                    "message": "Overloaded"},
                         "request_id": rid}, {"request-id": rid, "x-should-retry": "true"}
        return None

    def anthropic(self, req, scenario):
        err = self.anthropic_error(scenario)
        if err:
            status, obj, headers = err
            return self.send_json(status, obj, headers)
        model = req.get("model") or "claude-sonnet-4-5"
        mid = "msg_mock" + uuid.uuid4().hex[:20]
        text = answer_text(scenario)
        usage = {"input_tokens": IN_TOKENS, "cache_creation_input_tokens": CACHE_WRITE,
                 "cache_read_input_tokens": CACHE_READ, "output_tokens": OUT_TOKENS}
        if scenario in TOOL_SCENARIOS:
            tool, args = outbox_call(req, scenario, "anthropic")
            if tool:
                return self.anthropic_tool_use(req, model, mid, usage, tool, args)
            text = args
        if not req.get("stream"):
            message = {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "max_tokens" if scenario == "max-tokens" else "end_turn",
                "stop_sequence": None, "usage": usage}
            if scenario == "cut":
                return self.send_cut_json(message)
            return self.send_json(200, message)
        self.start_sse({"request-id": "req_mock" + uuid.uuid4().hex[:16]},
                       chunked=scenario == "cut")
        self.sse({"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}},
            "message_start")
        self.sse({"type": "content_block_start", "index": 0,
                  "content_block": {"type": "text", "text": ""}}, "content_block_start")
        self.sse({"type": "ping"}, "ping")
        if scenario == "hang":
            self.sse({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": "Working"}}, "content_block_delta")
            return self.hang()
        for piece in chunks(text):
            self.sse({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
            if scenario == "cut":
                return self.cut()
        self.sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        stop = "max_tokens" if scenario == "max-tokens" else "end_turn"
        self.sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                     "stop_sequence": None},
                  "usage": {"output_tokens": OUT_TOKENS}}, "message_delta")
        self.sse({"type": "message_stop"}, "message_stop")

    def anthropic_tool_use(self, req, model, mid, usage, name, args):
        """An answer that is one tool call (stop_reason tool_use)."""
        tid = "toolu_mock" + uuid.uuid4().hex[:20]
        if not req.get("stream"):
            return self.send_json(200, {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "tool_use", "id": tid, "name": name, "input": args}],
                "stop_reason": "tool_use", "stop_sequence": None, "usage": usage})
        self.start_sse({"request-id": "req_mock" + uuid.uuid4().hex[:16]})
        self.sse({"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}},
            "message_start")
        self.sse({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": tid, "name": name, "input": {}}}, "content_block_start")
        raw = json.dumps(args)
        for piece in (raw[:len(raw) // 2], raw[len(raw) // 2:]):
            self.sse({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "input_json_delta", "partial_json": piece}},
                     "content_block_delta")
        self.sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self.sse({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                     "stop_sequence": None},
                  "usage": {"output_tokens": OUT_TOKENS}}, "message_delta")
        self.sse({"type": "message_stop"}, "message_stop")

    # ---- OpenAI ---------------------------------------------------------------------

    def openai_error(self, scenario):
        if scenario == "429":
            return 429, {"error": {
                "message": "Rate limit reached for mock-gpt in organization org-mock on tokens "
                           "per min (TPM): Limit 30000, Used 30000, Requested 1200. Please try "
                           "again in %ds. Visit https://platform.openai.com/account/rate-limits "
                           "to learn more." % RETRY_AFTER,
                "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}, {
                "retry-after": str(RETRY_AFTER), "x-request-id": "req_mock"}
        if scenario == "usage-limit":
            # A ChatGPT plan's Codex usage limit.
            return 429, {"error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": reset_at(),
                "resets_in_seconds": max(0, reset_at() - int(time.time()))}}, {
                "x-request-id": "req_mock"}
        if scenario == "500":
            return 500, {"error": {
                "message": "The server had an error while processing your request. Sorry about "
                           "that!", "type": "server_error", "param": None, "code": None}}, {}
        if scenario == "401":
            return 401, {"error": {
                "message": "Incorrect API key provided: sk-mock. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, {}
        if scenario == "403":
            return 403, {"error": {
                "message": "You have insufficient permissions for this operation. Missing "
                           "scopes: api.responses.write. Check that you have the correct role "
                           "in your organization (Reader, Writer, Owner) and project (Member, "
                           "Owner), and if you're using a restricted API key, that it has the "
                           "necessary scopes.", "type": "invalid_request_error", "param": None,
                "code": None}}, {}
        if scenario == "overloaded":
            return 503, {"error": {
                "message": "The server is overloaded or not ready yet.", "type": "server_error",
                "param": None, "code": "server_is_overloaded"}}, {}
        return None

    def openai_responses(self, req, scenario):
        err = self.openai_error(scenario)
        if err:
            status, obj, headers = err
            return self.send_json(status, obj, headers)
        model = req.get("model") or "mock-gpt"
        rid = "resp_mock" + uuid.uuid4().hex[:20]
        iid = "msg_mock" + uuid.uuid4().hex[:20]
        text = answer_text(scenario)
        created = int(time.time())
        usage = {"input_tokens": IN_TOKENS + CACHE_READ,
                 "input_tokens_details": {"cached_tokens": CACHE_READ},
                 "output_tokens": OUT_TOKENS,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": IN_TOKENS + CACHE_READ + OUT_TOKENS}
        if scenario in TOOL_SCENARIOS:
            tool, code = outbox_call(req, scenario, "responses")
            if tool:
                return self.responses_tool_call(req, model, rid, created, usage, tool, code)
            text = code
        item_done = {"id": iid, "type": "message", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": text, "annotations": []}]}
        resp = {"id": rid, "object": "response", "created_at": created, "model": model,
                "status": "in_progress", "output": [], "usage": None}
        if not req.get("stream"):
            whole = dict(resp, status="completed", output=[item_done], usage=usage)
            if scenario == "cut":
                return self.send_cut_json(whole)
            return self.send_json(200, whole)
        self.start_sse(chunked=scenario == "cut")
        seq = iter(range(10**6))
        self.responses_begin(resp, seq)
        self.sse({"type": "response.output_item.added", "sequence_number": next(seq),
                  "output_index": 0, "item": {"id": iid, "type": "message",
                                              "status": "in_progress", "role": "assistant",
                                              "content": []}}, "response.output_item.added")
        self.sse({"type": "response.content_part.added", "sequence_number": next(seq),
                  "item_id": iid, "output_index": 0, "content_index": 0,
                  "part": {"type": "output_text", "text": "", "annotations": []}},
                 "response.content_part.added")
        if scenario == "hang":
            self.sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                      "item_id": iid, "output_index": 0, "content_index": 0,
                      "delta": "Working"}, "response.output_text.delta")
            return self.hang()
        for piece in chunks(text):
            self.sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                      "item_id": iid, "output_index": 0, "content_index": 0, "delta": piece},
                     "response.output_text.delta")
            if scenario == "cut":
                return self.cut()
        self.sse({"type": "response.output_text.done", "sequence_number": next(seq),
                  "item_id": iid, "output_index": 0, "content_index": 0, "text": text},
                 "response.output_text.done")
        self.sse({"type": "response.content_part.done", "sequence_number": next(seq),
                  "item_id": iid, "output_index": 0, "content_index": 0,
                  "part": {"type": "output_text", "text": text, "annotations": []}},
                 "response.content_part.done")
        if scenario == "max-tokens":
            item_done = dict(item_done, status="incomplete")
        self.sse({"type": "response.output_item.done", "sequence_number": next(seq),
                  "output_index": 0, "item": item_done}, "response.output_item.done")
        if scenario == "max-tokens":
            return self.sse({"type": "response.incomplete", "sequence_number": next(seq),
                             "response": dict(resp, status="incomplete", output=[item_done],
                                              usage=usage, incomplete_details={
                                                  "reason": "max_output_tokens"})},
                            "response.incomplete")
        self.sse({"type": "response.completed", "sequence_number": next(seq),
                  "response": dict(resp, status="completed", output=[item_done], usage=usage)},
                 "response.completed")

    def responses_begin(self, resp, seq):
        """The first two events of a streamed Responses answer."""
        self.sse({"type": "response.created", "sequence_number": next(seq), "response": resp},
                 "response.created")
        self.sse({"type": "response.in_progress", "sequence_number": next(seq),
                  "response": resp}, "response.in_progress")

    def responses_tool_call(self, req, model, rid, created, usage, name, code):
        """A response whose one output item is a custom (freeform) tool call."""
        iid = "ctc_mock" + uuid.uuid4().hex[:20]
        item = {"id": iid, "type": "custom_tool_call", "status": "completed",
                "call_id": "call_mock" + uuid.uuid4().hex[:20], "name": name, "input": code}
        resp = {"id": rid, "object": "response", "created_at": created, "model": model,
                "status": "in_progress", "output": [], "usage": None}
        done = dict(resp, status="completed", output=[item], usage=usage)
        if not req.get("stream"):
            return self.send_json(200, done)
        self.start_sse()
        seq = iter(range(10**6))
        self.responses_begin(resp, seq)
        self.sse({"type": "response.output_item.added", "sequence_number": next(seq),
                  "output_index": 0, "item": dict(item, status="in_progress", input="")},
                 "response.output_item.added")
        self.sse({"type": "response.custom_tool_call_input.delta",
                  "sequence_number": next(seq), "item_id": iid, "output_index": 0,
                  "delta": code}, "response.custom_tool_call_input.delta")
        self.sse({"type": "response.custom_tool_call_input.done",
                  "sequence_number": next(seq), "item_id": iid, "output_index": 0,
                  "input": code}, "response.custom_tool_call_input.done")
        self.sse({"type": "response.output_item.done", "sequence_number": next(seq),
                  "output_index": 0, "item": item}, "response.output_item.done")
        self.sse({"type": "response.completed", "sequence_number": next(seq),
                  "response": done}, "response.completed")

    def openai_chat(self, req, scenario):
        err = self.openai_error(scenario)
        if err:
            status, obj, headers = err
            return self.send_json(status, obj, headers)
        model = req.get("model") or "mock-gpt"
        cid = "chatcmpl-mock" + uuid.uuid4().hex[:16]
        text = answer_text(scenario)
        usage = {"prompt_tokens": IN_TOKENS + CACHE_READ, "completion_tokens": OUT_TOKENS,
                 "total_tokens": IN_TOKENS + CACHE_READ + OUT_TOKENS,
                 "prompt_tokens_details": {"cached_tokens": CACHE_READ}}
        if not req.get("stream"):
            whole = {
                "id": cid, "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": text}}], "usage": usage}
            if scenario == "cut":
                return self.send_cut_json(whole)
            return self.send_json(200, whole)
        self.start_sse(chunked=scenario == "cut")
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model}
        self.sse(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None}]))
        if scenario == "hang":
            return self.hang()
        for piece in chunks(text):
            self.sse(dict(base, choices=[{"index": 0, "delta": {"content": piece},
                                          "finish_reason": None}]))
            if scenario == "cut":
                return self.cut()
        finish = "length" if scenario == "max-tokens" else "stop"
        self.sse(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}],
                      usage=usage))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    # ---- Gemini ---------------------------------------------------------------------

    def gemini_error(self, scenario, model):
        if scenario == "429":
            # A per-minute quota: retryable, with a short RetryInfo.
            return 429, {"error": {
                "code": 429,
                "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric":
                            "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "60"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                     "retryDelay": "%ds" % RETRY_AFTER}]}}
        if scenario == "usage-limit":
            # A daily quota: not retryable until the next day.
            return 429, {"error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and billing "
                           "details. For more information on this error, head to: "
                           "https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota "
                           "exceeded for metric: generativelanguage.googleapis.com/"
                           "generate_content_free_tier_requests, limit: 100, model: %s" % model,
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric":
                            "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "100"}]},
                    {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}]}}
        if scenario == "500":
            return 500, {"error": {"code": 500, "message": "Internal error encountered.",
                                   "status": "INTERNAL"}}
        if scenario == "overloaded":
            return 503, {"error": {"code": 503, "message": "The model is overloaded. Please try "
                                   "again later.", "status": "UNAVAILABLE"}}
        if scenario == "403":
            return 403, {"error": {
                "code": 403, "message": "Permission denied: Consumer 'api_key:mock-key' has "
                                        "been suspended.", "status": "PERMISSION_DENIED",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "CONSUMER_SUSPENDED", "domain": "googleapis.com"}]}}
        if scenario == "401":
            return 400, {"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                             "metadata": {"service": "generativelanguage.googleapis.com"}}]}}
        return None

    def gemini(self, req, scenario, model, method):
        if method == "countTokens":
            return self.send_json(200, {"totalTokens": IN_TOKENS})
        if method == "embedContent":
            return self.send_json(200, {"embedding": {"values": [0.0] * 8}})
        err = self.gemini_error(scenario, model)
        if err:
            status, obj = err
            return self.send_json(status, obj)
        gen = req.get("generationConfig") or {}
        schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
        if gen.get("responseMimeType") == "application/json" or schema:
            # Internal helper calls (model routing, next-speaker checks): a JSON object that
            # fits the schema, first enum value for enums.
            text = json.dumps(from_schema(schema or {}))
        else:
            text = answer_text(scenario)
        usage = {"promptTokenCount": IN_TOKENS + CACHE_READ, "candidatesTokenCount": OUT_TOKENS,
                 "cachedContentTokenCount": CACHE_READ,
                 "totalTokenCount": IN_TOKENS + CACHE_READ + OUT_TOKENS}
        rid = "mock" + uuid.uuid4().hex[:16]
        if scenario in TOOL_SCENARIOS and not (
                gen.get("responseMimeType") == "application/json" or schema):
            tool, args = outbox_call(req, scenario, "gemini")
            if not tool:
                text = args
            else:
                call = {"functionCall": {"name": tool, "args": args}}
                whole = {"candidates": [{"content": {"role": "model", "parts": [call]},
                                         "finishReason": "STOP", "index": 0}],
                         "usageMetadata": usage, "modelVersion": model, "responseId": rid}
                if method == "generateContent":
                    return self.send_json(200, whole)
                self.start_sse()
                return self.sse(whole)
        finish = "MAX_TOKENS" if scenario == "max-tokens" else "STOP"
        if method == "generateContent":
            whole = {
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": finish, "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": rid}
            if scenario == "cut":
                return self.send_cut_json(whole)
            return self.send_json(200, whole)
        # streamGenerateContent (?alt=sse)
        self.start_sse(chunked=scenario == "cut")
        if scenario == "hang":
            self.sse({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Working"}]}, "index": 0}], "modelVersion": model, "responseId": rid})
            return self.hang()
        pieces = chunks(text)
        for i, piece in enumerate(pieces):
            cand = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
            ev = {"candidates": [cand], "modelVersion": model, "responseId": rid}
            if i == len(pieces) - 1:
                cand["finishReason"] = finish
                ev["usageMetadata"] = usage
            self.sse(ev)
            if scenario == "cut":
                return self.cut()


def from_schema(schema):
    t = (schema.get("type") or "").lower()
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if t == "object" or "properties" in schema:
        return {k: from_schema(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return []
    if t in ("integer", "number"):
        return schema.get("minimum", 1)
    if t == "boolean":
        return False
    return "mock"


def chunks(text, n=3):
    """Splits text into about n pieces (at spaces) so streams have several deltas."""
    words = text.split(" ")
    size = max(1, len(words) // n)
    out = []
    for i in range(0, len(words), size):
        part = " ".join(words[i:i + size])
        out.append(part if i + size >= len(words) else part + " ")
    return out or [""]


def watch_parent(ppid, lifetime):
    deadline = time.time() + lifetime
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid or time.time() > deadline:
            os._exit(0)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: pick one)")
    p.add_argument("--port-file", help="write the port here (atomically)")
    p.add_argument("--scenario", default=os.environ.get("MOCK_SCENARIO", "ok"),
                   choices=SCENARIOS, help="scenario when a request carries no MOCK: marker")
    p.add_argument("--lifetime", type=float, default=900, help="exit after this many seconds")
    p.add_argument("--log", help="append each request to this file (JSON lines)")
    p.add_argument("--reset-in", type=int, default=int(os.environ.get("MOCK_RESET_IN", "0")),
                   help="usage-limit resets this many seconds after the request (0: fixed)")
    ARGS = p.parse_args()

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # clients that hang up (a killed CLI) are normal here

    server = Server(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if ARGS.port_file:
        tmp = ARGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, ARGS.port_file)
    print(f"PORT {port}", flush=True)

    threading.Thread(target=watch_parent, args=(os.getppid(), ARGS.lifetime),
                     daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    sys.exit(main())
