//! End to end with the real agent CLIs (issue #10): the pinned claude, codex and gemini
//! from tests/clis/package.json, each run by mailroom with its shipped preset
//! (examples/presets/<cli>/mailroom.yaml) on a fresh `mailroom init` tree that is not a git
//! repository, against tests/mock_model.py on 127.0.0.1. The preset's agent is taken as
//! shipped; only what the mock needs is added: the base URL and a key in the agent's `env`,
//! a HOME with the CLI's settings, codex's model provider (`-c`), and low retry counts so
//! that an API error ends the run in seconds. The prompt picks the mock's answer with a
//! `MOCK:<scenario>` marker.
//!
//! The CLIs are installed once per test binary by scripts/install-clis.sh (npm, from the
//! lockfile). Without node and npm the tests fail, or say `SKIPPED` with
//! MAILROOM_TEST_SKIP_MISSING=1 (see `common::require`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::common::{self, BIN, Root, SIGTERM, Sup, run_bounded, wait_for};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The answers of tests/mock_model.py.
const OK_ANSWER: &str = "MOCK ANSWER: the task is done.";
const OK_429_ANSWER: &str = "MOCK ANSWER: the upstream service answered 429 Too Many Requests";

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The bin directories (a PATH fragment) of the installed CLIs, or None (the test then
/// returns) when node or npm is missing. Installs them on first use.
fn clis() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if !common::require(
        have("node") && have("npm"),
        "node and npm (to install the agent CLIs)",
    ) || !common::require(have("python3"), "python3 (for tests/mock_model.py)")
    {
        return None;
    }
    Some(installed("install-clis.sh", &INSTALLED))
}

/// What `scripts/<script> --print-bin` prints, run once per test process (`once`); a
/// failed install fails every test that needs it.
fn installed(script: &str, once: &OnceLock<Result<PathBuf, String>>) -> PathBuf {
    let r = once.get_or_init(|| {
        let o = Command::new(format!("{REPO}/scripts/{script}"))
            .arg("--print-bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/{script}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "scripts/{script} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// tests/mock_model.py on 127.0.0.1, a port of its own; killed on drop.
struct Mock {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mock {
    fn start(dir: &Path) -> Mock {
        let port_file = dir.join("mock.port");
        let log = dir.join("mock-requests.jsonl");
        let child = Command::new("python3")
            .arg(format!("{REPO}/tests/mock_model.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            // The usage-limit scenario resets an hour after the request.
            .args(["--reset-in", "3600", "--lifetime", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 tests/mock_model.py");
        let mut port = 0;
        wait_for(Duration::from_secs(20), "the mock's port file", || {
            port = fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            port != 0
        });
        Mock { child, port, log }
    }

    /// The scenarios of the requests the mock has seen, in order.
    fn scenarios(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["scenario"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cli {
    Claude,
    Codex,
    Gemini,
}

impl Cli {
    fn name(self) -> &'static str {
        match self {
            Cli::Claude => "claude",
            Cli::Codex => "codex",
            Cli::Gemini => "gemini",
        }
    }
}

/// What a case changes in the setup.
#[derive(Default)]
struct Opts {
    /// `retries:` of the tree (else the preset's).
    retries: Option<u32>,
    /// The agent's `timeout:` (else the preset's).
    timeout: Option<&'static str>,
    /// A trivial shell agent `ok` as the CLI agent's fallback.
    fallback: bool,
    /// claude: log in with a subscription token (only that gets the usage-limit message).
    oauth: bool,
    /// Point the CLI at a port of 127.0.0.1 where nothing listens (connection refused).
    unreachable: bool,
    /// codex: no writes to /tmp or $TMPDIR from its sandbox (where the test trees are,
    /// which would hide a refused write).
    codex_no_tmp: bool,
    /// codex: the command carries `--add-dir HOME` (which `exec resume` refuses).
    codex_add_dir: bool,
    /// Options added to the preset's command before its `--` (or at its end).
    extra: &'static [&'static str],
    /// The agent's `cooldown:` after a limit with no reset time (else the preset's).
    cooldown: Option<&'static str>,
}

/// A port of 127.0.0.1 where nothing listens: one the kernel just gave out and took back.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A fresh `mailroom init` tree (not a git repository) whose mailroom.yaml runs the
/// shipped preset of `cli` against `mock`, plus a HOME for the CLI.
struct Setup {
    root: Root,
    home: PathBuf,
    bin: PathBuf,
    cli: Cli,
}

fn setup(cli: Cli, mock: &Mock, bin: &Path, o: &Opts) -> Setup {
    // Root::new makes a tree by hand: replace it with what `mailroom init` makes.
    let base = Root::new();
    let tree = base.p("tree");
    let out = run_bounded(
        {
            let mut c = Command::new(BIN);
            c.arg("init").arg(&tree);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "init: {}", common::stderr(&out));
    assert!(!tree.join(".git").exists());
    let home = base.p("home");
    fs::create_dir_all(&home).unwrap();

    let preset = fs::read_to_string(format!(
        "{REPO}/examples/presets/{}/mailroom.yaml",
        cli.name()
    ))
    .unwrap();
    let c = mailroom::parse::config::Config::parse(preset.as_bytes(), "mailroom.yaml").unwrap();
    let name = c.default_agent.clone();
    let a = &c.agents[&name];
    let mut command = a.command.clone();
    let port = if o.unreachable {
        closed_port()
    } else {
        mock.port
    };
    let url = format!("http://127.0.0.1:{port}");
    let home_s = home.display().to_string();
    let mut env = serde_json::Map::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), json!(v));
    };
    set("HOME", &home_s);
    set("NO_COLOR", "1");
    match cli {
        Cli::Claude => {
            set("ANTHROPIC_BASE_URL", &url);
            if o.oauth {
                set("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-mock");
            } else {
                set("ANTHROPIC_API_KEY", "sk-ant-mock");
            }
            set("CLAUDE_CODE_MAX_RETRIES", "0");
            set("DISABLE_AUTOUPDATER", "1");
            set("DISABLE_TELEMETRY", "1");
            set("DISABLE_ERROR_REPORTING", "1");
            set("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        }
        Cli::Codex => {
            let codex_home = home.join(".codex");
            fs::create_dir_all(&codex_home).unwrap();
            set("CODEX_HOME", &codex_home.display().to_string());
            set("MOCK_OPENAI_KEY", "sk-mock");
            let provider = format!(
                "model_providers.mock={{name=\"mock\",base_url=\"{url}/v1\",\
                 env_key=\"MOCK_OPENAI_KEY\",wire_api=\"responses\",\
                 request_max_retries=0,stream_max_retries=0}}"
            );
            let at = command.iter().position(|w| w == "exec").unwrap() + 1;
            command.splice(
                at..at,
                [
                    "-c".to_owned(),
                    "model_provider=mock".to_owned(),
                    "-c".to_owned(),
                    provider,
                ],
            );
            if o.codex_add_dir {
                command.splice(at..at, ["--add-dir".to_owned(), home_s.clone()]);
            }
            if o.codex_no_tmp {
                command.splice(
                    at..at,
                    [
                        "-c",
                        "sandbox_workspace_write.exclude_slash_tmp=true",
                        "-c",
                        "sandbox_workspace_write.exclude_tmpdir_env_var=true",
                    ]
                    .map(str::to_owned),
                );
            }
        }
        Cli::Gemini => {
            set("GEMINI_API_KEY", "mock-key");
            set("GOOGLE_GEMINI_BASE_URL", &url);
            set("GEMINI_TELEMETRY_ENABLED", "false");
            fs::create_dir_all(home.join(".gemini")).unwrap();
            // A model named here (not "auto") skips gemini's model router, whose
            // classifier call retries on its own (about a minute on a 429 or 500)
            // whatever `maxAttempts` says.
            let settings = json!({
                "model": {"name": "gemini-2.5-flash"},
                "security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": false},
                "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false,
                            "maxAttempts": 1},
                "telemetry": {"enabled": false},
            });
            fs::write(
                home.join(".gemini/settings.json"),
                serde_json::to_string_pretty(&settings).unwrap(),
            )
            .unwrap();
        }
    }
    if !o.extra.is_empty() {
        let at = command
            .iter()
            .position(|w| w == "--")
            .unwrap_or(command.len());
        command.splice(at..at, o.extra.iter().map(|s| (*s).to_owned()));
    }
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut agent = json!({
        "command": command,
        "kind": a.kind,
        "max_instances": a.max_instances,
        "timeout": o.timeout.map(str::to_owned).unwrap_or_else(|| ms(a.timeout)),
        "grace": ms(a.grace),
        "cooldown": o.cooldown.map(str::to_owned).unwrap_or_else(|| ms(a.cooldown)),
        "env": env,
    });
    let mut agents = serde_json::Map::new();
    if o.fallback {
        agent["fallback"] = json!(["ok"]);
        agents.insert(
            "ok".into(),
            json!({"command": ["sh", "-c", "echo FALLBACK ANSWER"]}),
        );
    }
    agents.insert(name.clone(), agent);
    let cfg = json!({
        "concurrency": c.concurrency,
        "default_agent": name,
        "retries": o.retries.unwrap_or(c.retries),
        "retry_delay": "100ms",
        "settle": "200ms",
        "rescan_interval": "1s",
        "shutdown_grace": "20s",
        "agents": agents,
    });
    // JSON is YAML.
    fs::write(
        tree.join("mailroom.yaml"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let root = Root { path: tree };
    let v = root.mailroom(&["validate", root.p("mailroom.yaml").to_str().unwrap()]);
    assert!(v.status.success(), "validate: {}", common::stdout(&v));
    // `base` goes, `root` (inside it) is removed with it on drop: keep one owner.
    std::mem::forget(base);
    Setup {
        root,
        home,
        bin: bin.to_owned(),
        cli,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The tree's parent (made by Root::new) holds the HOME too.
        if !std::thread::panicking()
            && let Some(p) = self.root.path.parent()
        {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl Setup {
    /// `mailroom run` (or other args) with a clean environment: the CLIs' bin directory
    /// first on PATH, nothing of the tester's own keys or settings.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.root.cmd(args);
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        );
        c.env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("TZ", "UTC")
            .env("RUST_LOG", "debug");
        c
    }

    fn task(&self, name: &str, description: &str) {
        self.root.write(
            &format!("tasks/pending/{name}.yaml"),
            &format!("description: {}\n", json!(description)),
        );
    }

    /// `run --exit-when-idle` to the end (bounded); its log is kept in the tree's parent.
    fn run_until_idle(&self) -> Output {
        let t = Instant::now();
        let out = run_bounded(
            self.cmd(&["run", "--exit-when-idle"]),
            Duration::from_secs(100),
        );
        if let Some(p) = self.root.path.parent() {
            let _ = fs::write(p.join("run.log"), &out.stderr);
        }
        assert!(
            out.status.success(),
            "{:?}: supervisor failed after {:?}: {}",
            self.cli,
            t.elapsed(),
            common::stderr(&out)
        );
        out
    }

    fn record(&self, state: &str, name: &str) -> Value {
        assert!(
            self.root
                .exists(&format!("tasks/{state}/{name}.result.json")),
            "{:?}: {name} is not {state}: pending {:?}, completed {:?}, failed {:?}; {}",
            self.cli,
            self.root.names("pending"),
            self.root.names("completed"),
            self.root.names("failed"),
            self.run_dirs(name)
        );
        self.root.record(state, name)
    }

    /// The stdout and stderr of a task's runs, for failure messages.
    fn run_dirs(&self, name: &str) -> String {
        let mut s = String::new();
        for state in ["completed", "failed", "pending", "assigned"] {
            let dir = self.root.p(&format!("tasks/{state}/{name}.run"));
            for f in walk(&dir) {
                if f.extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(&f).unwrap_or_default();
                    let tail: String = text
                        .chars()
                        .rev()
                        .take(1500)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    s.push_str(&format!("\n--- {}:\n{tail}", f.display()));
                }
            }
        }
        s
    }

    fn cooldowns(&self) -> Vec<String> {
        self.root
            .entries("tasks/cooldowns")
            .into_iter()
            .filter(|e| e.ends_with(".json"))
            .collect()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// A place for a case's mock (its port file and request log).
fn scratch() -> Root {
    Root::new()
}

/// A case's tree on the CLI, its mock model and its scratch directory (bound in this
/// order, `Case { _scratch, mock, t }`, so that they are dropped tree first).
struct Case {
    _scratch: Root,
    mock: Mock,
    t: Setup,
}

/// The CLIs, the mock and a tree for `cli` with `o`; None (the test returns) without
/// the CLIs.
fn case(cli: Cli, o: &Opts) -> Option<Case> {
    let bin = clis()?;
    let s = scratch();
    let mock = Mock::start(&s.path);
    let t = setup(cli, &mock, &bin, o);
    Some(Case {
        _scratch: s,
        mock,
        t,
    })
}

// ---- the cases ------------------------------------------------------------------------

/// One line per case (seen with `--nocapture`): the outcome as filed.
fn note(cli: Cli, case: &str, state: &str, rec: &Value) {
    let history: Vec<String> = rec["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|a| format!("{}:{}", a["agent"], a["outcome"]).replace('"', ""))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "CASE {} {case}: {state} outcome={} error_class={} attempts={} history=[{}]",
        cli.name(),
        rec["outcome"],
        rec["error_class"],
        rec["attempts"],
        history.join(", ")
    );
}

/// ok, an answer that quotes rate limits, a prompt starting with `-v`, 401 and 500, in one
/// tree: each is filed right, and no cooldown comes of any.
fn answers_and_errors(cli: Cli) {
    let Some(Case {
        _scratch,
        mock: _mock,
        t,
    }) = case(cli, &Opts::default())
    else {
        return;
    };
    t.task("ok", "MOCK:ok Reply with one short sentence.");
    t.task(
        "dash",
        "-v MOCK:ok this task description starts with a dash",
    );
    t.task(
        "quotes",
        "MOCK:ok-429 Our log says '429 Too Many Requests' and 'rate limit reached'. \
         Explain in one sentence.",
    );
    t.task("badkey", "MOCK:401 Reply with one short sentence.");
    t.task("forbidden", "MOCK:403 Reply with one short sentence.");
    t.task("servererr", "MOCK:500 Reply with one short sentence.");
    t.task("empty", "MOCK:empty Reply with one short sentence.");
    t.task("maxtok", "MOCK:max-tokens Reply with one short sentence.");
    let started = Instant::now();
    t.run_until_idle();
    let secs = started.elapsed();

    // (a) ok: completed, the answer (not the JSON envelope) in context/, usage and session
    // in the record.
    let rec = t.record("completed", "ok");
    note(cli, "ok", "completed", &rec);
    assert_eq!(rec["outcome"], "success", "{cli:?}: {rec}");
    let out = t.root.read("context/agent_outputs/ok.md");
    assert!(out.contains(OK_ANSWER), "{cli:?}: {out}");
    assert!(
        !out.trim_start().starts_with('{') && !out.contains("\"type\""),
        "{cli:?}: the CLI's JSON reached the context:\n{out}"
    );
    assert!(
        rec["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{cli:?}: no session: {rec}"
    );
    let usage = &rec["usage"];
    assert!(
        usage["input_tokens"].as_u64().is_some_and(|n| n > 0)
            && usage["output_tokens"].as_u64().is_some_and(|n| n > 0),
        "{cli:?}: no token usage: {rec}"
    );

    // (b) a description starting with `-v` is the prompt, not an option.
    let rec = t.record("completed", "dash");
    note(cli, "dash-v", "completed", &rec);
    let out = t.root.read("context/agent_outputs/dash.md");
    assert!(out.contains(OK_ANSWER), "{cli:?}: {out}\n{rec}");

    // (c) an answer that talks about 429s is an answer.
    let rec = t.record("completed", "quotes");
    note(cli, "ok-429", "completed", &rec);
    assert_eq!(rec["outcome"], "success", "{cli:?}: {rec}");
    let out = t.root.read("context/agent_outputs/quotes.md");
    assert!(out.contains(OK_429_ANSWER), "{cli:?}: {out}");

    // (d) a rejected key: misconfigured at once, no retries.
    let rec = t.record("failed", "badkey");
    note(cli, "401", "failed", &rec);
    assert_eq!(rec["outcome"], "misconfigured", "{cli:?}: {rec}");
    assert_eq!(rec["error_class"], "auth", "{cli:?}: {rec}");
    assert_eq!(rec["attempts"], 1, "{cli:?}: {rec}");

    // A key that may not use the model (403): misconfigured at once too, never a
    // limit nor a failure retried.
    let rec = t.record("failed", "forbidden");
    note(cli, "403", "failed", &rec);
    assert_eq!(
        (&rec["outcome"], &rec["error_class"], &rec["attempts"]),
        (&json!("misconfigured"), &json!("auth"), &json!(1)),
        "{cli:?}: {rec}"
    );
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("fix: the key was accepted but may not use")),
        "{cli:?}: a 403 asks for another key: {rec}"
    );

    // A reply stopped at the output-token limit: claude and codex say so (a failure,
    // the partial reply is no answer); gemini 0.61 reports no finish reason and prints
    // the partial reply as its response, which mailroom cannot tell from an answer.
    if cli == Cli::Gemini {
        let rec = t.record("completed", "maxtok");
        note(cli, "max-tokens", "completed", &rec);
    } else {
        let rec = t.record("failed", "maxtok");
        note(cli, "max-tokens", "failed", &rec);
        assert_eq!(rec["error_class"], "task", "{cli:?}: {rec}");
        let error = rec["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(if cli == Cli::Claude {
                "exceeded the 64000 output token maximum"
            } else {
                "Incomplete response returned, reason: max_output_tokens"
            }),
            "{cli:?}: {rec}"
        );
        assert_no_answer(&t, "maxtok");
    }

    // A server error: retried (the preset's retries), then failed as a transient error
    // (`exit` when the CLI exited non-zero, `agent_error` when it exited 0).
    let rec = t.record("failed", "servererr");
    note(cli, "500", "failed", &rec);
    assert!(
        rec["outcome"] == "exit" || rec["outcome"] == "agent_error",
        "{cli:?}: {rec}"
    );
    assert_eq!(rec["error_class"], "transient", "{cli:?}: {rec}");
    assert!(
        rec["attempts"].as_u64().is_some_and(|n| n > 1),
        "{cli:?}: {rec}"
    );

    // An empty result is no answer: a failure, whatever the CLI called it.
    let rec = t.record("failed", "empty");
    note(cli, "empty", "failed", &rec);
    assert_eq!(rec["outcome"], "agent_error", "{cli:?}: {rec}");

    // Failed runs have no answer: the context says so, and never shows the
    // CLI's JSON in its place.
    for name in ["badkey", "servererr", "empty"] {
        let out = t.root.read(&format!("context/agent_outputs/{name}.md"));
        assert!(
            out.contains("(no answer") && !out.contains("\"type\"") && !out.contains("{\""),
            "{cli:?}: {name}: the CLI's JSON reached the context:\n{out}"
        );
    }

    assert_eq!(t.cooldowns(), Vec::<String>::new(), "{cli:?}: a cooldown");
    eprintln!("{cli:?}: answers and errors filed in {secs:?}");
}

/// A 429 and a usage limit (each in a tree of its own: a cooldown holds for the whole
/// tree): the agent cools down, on disk, and the task is not charged an attempt: with
/// `retries: 0` it still completes, on the fallback.
fn limits(cli: Cli) {
    for scenario in ["429", "usage-limit"] {
        let Some(Case { _scratch, mock, t }) = case(
            cli,
            &Opts {
                retries: Some(0),
                fallback: true,
                oauth: scenario == "usage-limit",
                ..Opts::default()
            },
        ) else {
            return;
        };
        t.task(
            "limited",
            &format!("MOCK:{scenario} Reply with one short sentence."),
        );
        let started = SystemTime::now();
        t.run_until_idle();
        let rec = t.record("completed", "limited");
        note(cli, scenario, "completed", &rec);
        assert_eq!(rec["agent"], "ok", "{cli:?} {scenario}: {rec}");
        assert_eq!(
            rec["history"][0]["outcome"], "limited",
            "{cli:?} {scenario}: {rec}"
        );
        assert_eq!(
            rec["history"][0]["error_class"], "limit",
            "{cli:?} {scenario}: {rec}"
        );
        let file = format!("{}.json", cli.name());
        assert_eq!(t.cooldowns(), vec![file.clone()], "{cli:?} {scenario}");
        if scenario == "usage-limit" {
            // The mock's limit resets an hour after the request.
            let cd: Value =
                serde_json::from_str(&t.root.read(&format!("tasks/cooldowns/{file}"))).unwrap();
            let until = humantime::parse_rfc3339_weak(cd["until"].as_str().unwrap()).unwrap();
            assert!(
                until > started + Duration::from_secs(3000),
                "{cli:?}: the reset time was not read: {cd}"
            );
        }
        assert!(
            mock.scenarios().iter().any(|s| s == scenario),
            "{cli:?}: the mock never saw the {scenario} request"
        );
    }
}

/// A model that never answers: the run is stopped at the agent's `timeout` and the task
/// fails as a timeout (`retries: 0`), never completed.
fn hang_times_out(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(
        cli,
        &Opts {
            retries: Some(0),
            // Long enough for the CLI to start and send its request (gemini takes
            // 5 to 10 s to start on a busy machine, claude once took more than
            // 5 s with the test suite and three builds on two cores, claude and
            // codex more than 15 s with the whole suite running on two cores),
            // then the model hangs. The test waits that long, beside the others.
            timeout: Some("30s"),
            ..Opts::default()
        },
    ) else {
        return;
    };
    t.task("stuck", "MOCK:hang Reply with one short sentence.");
    t.run_until_idle();
    let rec = t.record("failed", "stuck");
    note(cli, "hang", "failed", &rec);
    assert_eq!(rec["outcome"], "timeout", "{cli:?}: {rec}");
    assert!(!t.root.exists("tasks/completed/stuck.yaml"));
    assert!(
        mock.scenarios().iter().any(|s| s == "hang"),
        "{cli:?}: the run timed out before the CLI asked the model"
    );
}

/// The supervisor is stopped (SIGTERM) while the CLI waits for the model: the task goes
/// back to pending, free, and is not filed completed (gemini exits 0 on SIGTERM).
fn shutdown_requeues(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(cli, &Opts::default()) else {
        return;
    };
    t.task("cut", "MOCK:hang Reply with one short sentence.");
    let log = fs::File::create(t.root.path.parent().unwrap().join("sup.log")).unwrap();
    let mut c = t.cmd(&["run"]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    let mut sup = Sup {
        child: Some(c.spawn().unwrap()),
    };
    wait_for(
        Duration::from_secs(60),
        "the CLI's request to the mock",
        || mock.scenarios().iter().any(|s| s == "hang"),
    );
    sup.signal(SIGTERM);
    let st = sup.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{cli:?}: supervisor exit {st:?}");
    assert_eq!(t.root.names("pending"), vec!["cut"], "{cli:?}");
    eprintln!("CASE {} shutdown: pending (requeued)", cli.name());
    assert!(t.root.names("completed").is_empty(), "{cli:?}");
    assert!(t.root.names("failed").is_empty(), "{cli:?}");
    assert!(t.root.names("assigned").is_empty(), "{cli:?}");
}

/// A run cut off by its timeout while the model hangs: the next attempt resumes the same
/// CLI session (claude `--resume`, codex `exec resume`) with mailroom's continuation
/// prompt, and the model sees the earlier conversation in that request.
fn resume_after_timeout(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(
        cli,
        &Opts {
            retries: Some(1),
            // gemini takes 5 to 10 s to start on a busy machine.
            timeout: Some(if cli == Cli::Gemini { "20s" } else { "8s" }),
            // Resumed with it as a setting (src/adapter/access.rs).
            codex_add_dir: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    t.task(
        "cut",
        "MOCK:hang-until-continued Reply with one short sentence about REMEMBER-ME-42.",
    );
    t.run_until_idle();
    let rec = t.record("completed", "cut");
    note(cli, "resume", "completed", &rec);
    let h = rec["history"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{cli:?}: {rec}");
    assert_eq!(h[0]["outcome"], "timeout", "{cli:?}: {rec}");
    let session = h[0]["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{cli:?}: no session: {rec}"));
    assert_eq!(h[1]["outcome"], "success", "{cli:?}: {rec}");
    assert_eq!(h[1]["resumed"], true, "{cli:?}: {rec}");
    assert_eq!(h[1]["session_id"], session, "{cli:?}: {rec}");
    assert_eq!(rec["session_id"], session, "{cli:?}: {rec}");
    // The second attempt's prompt is the continuation; its command resumed the session.
    let prompt = t.root.read("tasks/completed/cut.run/2/prompt.md");
    assert!(prompt.contains("was cut off"), "{cli:?}: {prompt}");
    assert!(!prompt.contains("REMEMBER-ME-42"), "{cli:?}: {prompt}");
    let spec = t.root.read("tasks/completed/cut.run/2/spec.json");
    let resume_flag = match cli {
        Cli::Codex => "\"resume\"",
        _ => "\"--resume\"",
    };
    assert!(
        spec.contains(resume_flag) && spec.contains(session),
        "{cli:?}: {spec}"
    );
    let out = t.root.read("context/agent_outputs/cut.md");
    assert!(out.contains(OK_ANSWER), "{cli:?}: {out}");
    // The model got the earlier conversation (the first prompt) with the continuation.
    let bodies: Vec<String> = fs::read_to_string(&mock.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["scenario"] == "ok")
        .filter_map(|v| Some(format!("{}{}", v["body"].as_str()?, v["tail"].as_str()?)))
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("REMEMBER-ME-42") && b.contains("was cut off")),
        "{cli:?}: no request held both the earlier prompt and the continuation: {} ok requests",
        bodies.len()
    );
}

/// A limit on a run's very first request (a 429, gone by the next attempt): the next
/// attempt resumes the session, or, where the CLI never saved one (gemini), finds none and
/// runs again in a new session without using an attempt. With `retries: 0` the task still
/// completes, never failed for the session it could not resume.
fn limit_on_the_first_request_then_completes(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(
        cli,
        &Opts {
            retries: Some(0),
            // claude and codex read no reset time from a 429.
            cooldown: Some("1s"),
            ..Opts::default()
        },
    ) else {
        return;
    };
    t.task("once", "MOCK:429-once Reply with one short sentence.");
    t.run_until_idle();
    let rec = t.record("completed", "once");
    note(cli, "429-once", "completed", &rec);
    let h = rec["history"].as_array().unwrap();
    assert_eq!(h[0]["outcome"], "limited", "{cli:?}: {rec}");
    assert_eq!(h.last().unwrap()["outcome"], "success", "{cli:?}: {rec}");
    // Any attempt between: a resume that found no session, said so, for free.
    for a in &h[1..h.len() - 1] {
        assert_eq!(a["error_class"], "session", "{cli:?}: {rec}");
        assert_eq!(a["resumed"], true, "{cli:?}: {rec}");
    }
    if h.len() == 3 {
        assert_ne!(h[2]["resumed"], true, "{cli:?}: a new session: {rec}");
    }
    assert!(h.len() <= 3, "{cli:?}: {rec}");
    assert!(
        mock.scenarios().iter().any(|s| s == "429"),
        "{cli:?}: the mock never sent the 429"
    );
    let out = t.root.read("context/agent_outputs/once.md");
    assert!(out.contains(OK_ANSWER), "{cli:?}: {out}");
}

/// `session: parent`: a follow-up continues its parent's conversation. claude copies it
/// into a new session (`--resume P --fork-session --session-id N`); the model sees the
/// parent's exchange in the follow-up's request.
fn follow_up_continues_the_parent_session(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(cli, &Opts::default()) else {
        return;
    };
    t.task("p", "MOCK:ok Remember the word PARENT-MARK-7.");
    t.run_until_idle();
    let parent = t.record("completed", "p");
    let psession = parent["session_id"].as_str().unwrap().to_owned();
    t.root.write(
        "tasks/pending/c.yaml",
        "description: \"MOCK:ok Which word did I ask you to remember?\"\nparent: p\nsession: parent\n",
    );
    t.run_until_idle();
    let rec = t.record("completed", "c");
    note(cli, "session-parent", "completed", &rec);
    let a = &rec["history"][0];
    assert_eq!(a["parent_session"], psession.as_str(), "{cli:?}: {rec}");
    let spec = t.root.read("tasks/completed/c.run/1/spec.json");
    assert!(spec.contains(&psession), "{cli:?}: {spec}");
    if cli == Cli::Claude {
        // A copy: the parent's session stays as it was.
        assert_ne!(a["session_id"], psession.as_str(), "{cli:?}: {rec}");
        assert!(spec.contains("--fork-session"), "{cli:?}: {spec}");
    }
    let last: Value = fs::read_to_string(&mock.log)
        .unwrap()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            let b = format!("{}{}", v["body"], v["tail"]);
            b.contains("Which word did I ask")
        })
        .expect("the follow-up's request");
    let b = format!("{}{}", last["body"], last["tail"]);
    assert!(
        b.contains("PARENT-MARK-7"),
        "{cli:?}: the parent's conversation is not in the request"
    );
}

/// The CLI writes a follow-up into `$MAILROOM_OUTBOX` with its own file tool (claude's
/// `Write`, codex's `apply_patch`, gemini's `write_file`; tests/mock_model.py's
/// `write-outbox`), in its preset's permission mode, from a task's `workdir: sub` and from
/// a worktree of a repository there: the outbox is outside where the agent starts, which
/// each CLI refuses unless its command grants the run's directory (src/adapter/access.rs).
/// Before, the runs completed and their follow-ups were lost.
fn follow_ups_written_by_the_cli(cli: Cli) {
    let Some(Case {
        _scratch,
        mock: _mock,
        t,
    }) = case(
        cli,
        &Opts {
            codex_no_tmp: true,
            ..Opts::default()
        },
    )
    else {
        return;
    };
    let sub = t.root.p("sub");
    fs::create_dir_all(&sub).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&sub)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            common::stderr(&out)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    fs::write(sub.join("README.md"), "a project\n").unwrap();
    git(&["add", "README.md"]);
    git(&["commit", "-q", "-m", "one"]);
    t.root.write(
        "tasks/pending/in-sub.yaml",
        "description: \"MOCK:write-outbox Queue the next step.\"\nworkdir: sub\n",
    );
    t.root.write(
        "tasks/pending/in-tree.yaml",
        "description: \"MOCK:write-outbox Queue the next step.\"\nworkdir: sub\nworkspace: worktree\n",
    );
    t.run_until_idle();
    for name in ["in-sub", "in-tree"] {
        let rec = t.record("completed", name);
        note(cli, name, "completed", &rec);
        let followups = rec["followups"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            followups.len(),
            1,
            "{cli:?}: {name}: no follow-up queued: {rec}\n{}",
            t.run_dirs(name)
        );
        let child = followups[0].as_str().unwrap().to_owned();
        t.record("completed", &child);
        let task = t.root.read(&format!("tasks/completed/{child}.yaml"));
        assert!(
            task.contains("follow-up from the mock")
                && task.contains(&format!("parent: \"{name}\"")),
            "{cli:?}: {task}"
        );
    }
}

/// The model has the CLI's shell tool run a command that never ends (`sleep 600`; claude's
/// `Bash` and codex's `exec_command` start it in a session of its own, out of reach of a
/// process-group kill): the run ends at its timeout, the retry resumes the session and
/// completes, and no process of the tree is left. Then a command that leaves a detached
/// process and ends: the run is a success, the process is stopped, and the record says so.
fn stuck_tool_calls(cli: Cli) {
    let Some(Case {
        _scratch,
        mock: _mock,
        t,
    }) = case(
        cli,
        &Opts {
            retries: Some(1),
            // claude: long enough for a busy machine to get it to its tool call (its
            // Bash tool waits 2 minutes). codex's exec_command hands a command that
            // still runs after 10 s back to the model, and codex ends that session
            // itself when it exits: below that, the timeout ends the run (as a rule;
            // on a slow start codex's own way, also filed right, is taken).
            timeout: Some(if cli == Cli::Codex { "8s" } else { "20s" }),
            // acceptEdits refuses `setsid` in print mode ("cannot be statically analyzed").
            extra: if cli == Cli::Claude {
                &["--allowedTools", "Bash"]
            } else {
                &[]
            },
            ..Opts::default()
        },
    )
    else {
        return;
    };
    t.task("stuck", "MOCK:tool-hang Run the command.");
    let started = Instant::now();
    t.run_until_idle();
    let took = started.elapsed();
    // The resumed attempt finds the tool's result in the session when the CLI
    // saved it before the timeout's SIGTERM ended it, and answers; when it
    // did not (claude, on a loaded machine: its transcript ends at the tool
    // call), the model runs the tool again, and that attempt times out too.
    let filed = if t.root.exists("tasks/failed/stuck.result.json") {
        "failed"
    } else {
        "completed"
    };
    let rec = t.record(filed, "stuck");
    note(cli, "tool-hang", filed, &rec);
    let h = rec["history"].as_array().unwrap();
    if cli == Cli::Codex && h.len() == 1 {
        // codex's own 10 s yield came first: a success, with nothing left (below).
        assert_eq!(h[0]["outcome"], "success", "{cli:?}: {rec}");
    } else {
        assert_eq!(h.len(), 2, "{cli:?}: {rec}");
        assert_eq!(h[0]["outcome"], "timeout", "{cli:?}: {rec}");
        assert_eq!(h[1]["resumed"], true, "{cli:?}: {rec}");
        if filed == "failed" {
            assert_eq!(h[1]["outcome"], "timeout", "{cli:?}: {rec}");
            assert_eq!(rec["outcome"], "timeout", "{cli:?}: {rec}");
        }
    }
    assert!(
        took < Duration::from_secs(90),
        "{cli:?}: took {took:?}: {rec}"
    );
    assert!(
        crate::crash::agents_of(&t.root).is_empty(),
        "{cli:?}: processes of the tree outlived their runs"
    );
    t.task("detached", "MOCK:tool-hang-detach Run the command.");
    t.run_until_idle();
    let rec = t.record("completed", "detached");
    note(cli, "tool-hang-detach", "completed", &rec);
    assert!(
        crate::crash::agents_of(&t.root).is_empty(),
        "{cli:?}: the detached process outlived its run"
    );
    if cli == Cli::Claude {
        // codex's sandbox ends its own session's processes first.
        let warned = rec["warnings"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w.as_str()
                    .unwrap_or_default()
                    .contains("left 1 process(es)")
            })
        });
        assert!(warned, "{cli:?}: {rec}");
    }
}

/// The CLI's words for each fault (tests/mock_model.py's scenarios, and `refused` for an
/// endpoint where nothing listens), as the task's record must carry them.
fn cause_of(cli: Cli, fault: &str) -> &'static str {
    match (cli, fault) {
        (Cli::Claude, "cut") => "Connection to the API was lost",
        (Cli::Claude, "garbage") => "API returned an empty or malformed response (HTTP 200)",
        (Cli::Claude, "overloaded") => "529 Overloaded",
        (Cli::Claude, "bad-sse") => "API Error: Failed to parse JSON",
        (Cli::Claude, "refused") => "Unable to connect to API",
        (Cli::Codex, "cut") => "stream disconnected before completion",
        (Cli::Codex, "garbage") => "stream disconnected before completion",
        (Cli::Codex, "overloaded") => "Selected model is at capacity",
        (Cli::Codex, "bad-sse") => "stream disconnected before completion",
        (Cli::Codex, "refused") => "Reconnecting... waiting for network (Connection failed",
        (Cli::Gemini, "cut") => "Model stream ended without a finish reason",
        (Cli::Gemini, "garbage") => "Incomplete JSON segment",
        (Cli::Gemini, "overloaded") => "The model is overloaded",
        (Cli::Gemini, "bad-sse") => "Incomplete JSON segment",
        (Cli::Gemini, "refused") => "fetch failed",
        _ => unreachable!("{cli:?} {fault}"),
    }
}

/// A failed task's answer in context/: none, and no part of the mock's answer (a cut
/// stream had sent its first words) nor the CLI's JSON. (The header's `error:` line may
/// quote what the CLI said on stderr, JSON included: claude quotes the stream event it
/// could not parse.)
fn assert_no_answer(t: &Setup, name: &str) {
    let out = t.root.read(&format!("context/agent_outputs/{name}.md"));
    let body = out.split_once("\n---\n").map_or(out.as_str(), |(_, b)| b);
    assert!(
        body.contains("(no answer") && !out.contains("MOCK ANSWER") && !body.contains("{\""),
        "{:?}: {name}: a partial answer or the CLI's JSON reached the context:\n{out}",
        t.cli
    );
}

/// What a real network and a real provider do mid-answer (the mock's `cut`: the stream
/// starts and the connection drops; `garbage`: a 200 whose body is a proxy's HTML page;
/// `overloaded`: 529 / 503; `bad-sse`: a stream whose first event is not JSON, which
/// claude 2.1 reports as "API Error: Failed to parse JSON"): each task is retried and fails as a transient error whose
/// message gives the CLI's words for the cause, never completed with the partial text
/// (gemini exits 0 on a cut stream and prints that text as its `response`).
fn faults(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(
        cli,
        &Opts {
            retries: Some(1),
            ..Opts::default()
        },
    ) else {
        return;
    };
    const FAULTS: [&str; 4] = ["cut", "garbage", "overloaded", "bad-sse"];
    for fault in FAULTS {
        t.task(
            fault,
            &format!("MOCK:{fault} Reply with one short sentence."),
        );
    }
    t.run_until_idle();
    for fault in FAULTS {
        let rec = t.record("failed", fault);
        note(cli, fault, "failed", &rec);
        assert!(
            rec["outcome"] == "exit" || rec["outcome"] == "agent_error",
            "{cli:?} {fault}: {rec}"
        );
        assert_eq!(rec["error_class"], "transient", "{cli:?} {fault}: {rec}");
        // Retried (retries: 1), every attempt read the same way.
        assert_eq!(rec["attempts"], 2, "{cli:?} {fault}: {rec}");
        for a in rec["history"].as_array().unwrap() {
            assert_eq!(a["error_class"], "transient", "{cli:?} {fault}: {rec}");
        }
        let error = rec["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(cause_of(cli, fault)),
            "{cli:?} {fault}: the error does not name the cause: {rec}"
        );
        assert_no_answer(&t, fault);
        assert!(
            mock.scenarios().iter().any(|s| s == fault),
            "{cli:?}: the mock never saw the {fault} request"
        );
    }
    assert!(t.root.names("completed").is_empty(), "{cli:?}");
    assert_eq!(t.cooldowns(), Vec::<String>::new(), "{cli:?}: a cooldown");
}

/// An endpoint where nothing listens (connection refused). claude and gemini give up
/// and the task fails as a transient error after its retries; codex 0.171 waits for the
/// network for ever ("Reconnecting... waiting for network", whatever its provider's
/// `request_max_retries` and `stream_max_retries`), so its run ends at the agent's
/// `timeout`, and the record names what codex was waiting for.
fn unreachable(cli: Cli) {
    let Some(Case { _scratch, mock, t }) = case(
        cli,
        &Opts {
            retries: Some(if cli == Cli::Codex { 0 } else { 1 }),
            // Long enough for the CLI to start and try (see hang_times_out); only codex
            // ever gets there.
            timeout: Some("30s"),
            unreachable: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    t.task("nowhere", "MOCK:ok Reply with one short sentence.");
    t.run_until_idle();
    let rec = t.record("failed", "nowhere");
    note(cli, "refused", "failed", &rec);
    let error = rec["error"].as_str().unwrap_or_default();
    if cli == Cli::Codex {
        assert_eq!(rec["outcome"], "timeout", "{cli:?}: {rec}");
        assert_eq!(rec["error_class"], "stopped", "{cli:?}: {rec}");
    } else {
        assert_eq!(rec["outcome"], "exit", "{cli:?}: {rec}");
        assert_eq!(rec["error_class"], "transient", "{cli:?}: {rec}");
        assert_eq!(rec["attempts"], 2, "{cli:?}: {rec}");
    }
    assert!(
        error.contains(cause_of(cli, "refused")),
        "{cli:?}: the error does not name the cause: {rec}"
    );
    assert_no_answer(&t, "nowhere");
    assert!(
        mock.scenarios().is_empty(),
        "{cli:?}: the CLI reached the mock"
    );
}

macro_rules! cli_tests {
    ($m:ident, $cli:expr) => {
        mod $m {
            use super::*;

            #[test]
            fn answers_and_errors_are_filed_right() {
                answers_and_errors($cli);
            }

            #[test]
            fn limits_cool_the_agent_down_for_free() {
                limits($cli);
            }

            #[test]
            fn a_hang_times_out() {
                hang_times_out($cli);
            }

            #[test]
            fn a_shutdown_mid_run_requeues_the_task() {
                shutdown_requeues($cli);
            }

            #[test]
            fn faults_mid_answer_fail_as_transient() {
                faults($cli);
            }

            #[test]
            fn an_unreachable_endpoint_fails_and_says_so() {
                unreachable($cli);
            }
        }
    };
}

cli_tests!(claude, Cli::Claude);
cli_tests!(codex, Cli::Codex);

/// An answer carrying terminal escapes (colour, a cleared screen, a window title) and a
/// NUL: the task completes with its text, and neither the context nor `show` nor `logs`
/// hands those bytes on (the CLIs print them JSON-escaped, `\u001b`; `logs` decoded them
/// into the operator's terminal).
fn escapes_in_answers(cli: Cli) {
    let Some(Case {
        _scratch,
        mock: _mock,
        t,
    }) = case(cli, &Opts::default())
    else {
        return;
    };
    t.task("ansi", "MOCK:ansi Reply with one short sentence.");
    t.run_until_idle();
    let rec = t.record("completed", "ansi");
    note(cli, "ansi", "completed", &rec);
    let controls = |s: &str| {
        s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    };
    let out = t.root.read("context/agent_outputs/ansi.md");
    assert!(
        out.contains("red text") && !controls(&out),
        "{cli:?}: the context: {out:?}"
    );
    for args in [["show", "ansi"], ["logs", "ansi"]] {
        let o = run_bounded(t.cmd(&args), Duration::from_secs(30));
        assert!(
            o.status.success(),
            "{cli:?} {args:?}: {}",
            common::stderr(&o)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("red text") && !controls(&text),
            "{cli:?}: `mailroom {}` wrote escapes or control characters: {text:?}",
            args.join(" ")
        );
    }
}

#[test]
fn claude_escapes_in_answers_reach_no_terminal() {
    escapes_in_answers(Cli::Claude);
}

#[test]
fn codex_escapes_in_answers_reach_no_terminal() {
    escapes_in_answers(Cli::Codex);
}

#[test]
fn gemini_escapes_in_answers_reach_no_terminal() {
    escapes_in_answers(Cli::Gemini);
}

/// claude with `--max-turns 1` and a model that calls a tool: claude ends with
/// `subtype: "error_max_turns"`, `is_error: true`, no `result`, exit 1. The task fails,
/// the record says why in claude's words ("Reached maximum number of turns (1)", from the
/// result's `errors`), nothing reaches the context, and the follow-up the tool call may
/// have written is not queued (its run failed).
#[test]
fn claude_max_turns_fails_and_says_why() {
    let Some(Case {
        _scratch,
        mock: _mock,
        t,
    }) = case(
        Cli::Claude,
        &Opts {
            retries: Some(0),
            extra: &["--max-turns", "1"],
            ..Opts::default()
        },
    )
    else {
        return;
    };
    t.task("turns", "MOCK:write-outbox Queue a follow-up task.");
    t.run_until_idle();
    let rec = t.record("failed", "turns");
    note(Cli::Claude, "max-turns", "failed", &rec);
    assert_eq!(rec["outcome"], "exit", "{rec}");
    assert_eq!(rec["error_class"], "task", "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("error_max_turns: Reached maximum number of turns (1)"),
        "the error does not say why: {rec}"
    );
    assert_no_answer(&t, "turns");
    assert_eq!(t.root.names("pending"), Vec::<String>::new());
    assert_eq!(t.cooldowns(), Vec::<String>::new(), "a cooldown");
}

#[test]
fn claude_resumes_an_interrupted_session() {
    resume_after_timeout(Cli::Claude);
}

#[test]
fn codex_resumes_an_interrupted_session() {
    resume_after_timeout(Cli::Codex);
}

#[test]
fn gemini_resumes_an_interrupted_session() {
    resume_after_timeout(Cli::Gemini);
}

#[test]
fn claude_completes_after_a_limit_on_its_first_request() {
    limit_on_the_first_request_then_completes(Cli::Claude);
}

#[test]
fn codex_completes_after_a_limit_on_its_first_request() {
    limit_on_the_first_request_then_completes(Cli::Codex);
}

#[test]
fn gemini_completes_after_a_limit_on_its_first_request() {
    limit_on_the_first_request_then_completes(Cli::Gemini);
}

#[test]
fn claude_follow_up_continues_the_parent_session() {
    follow_up_continues_the_parent_session(Cli::Claude);
}

#[test]
fn codex_follow_up_continues_the_parent_session() {
    follow_up_continues_the_parent_session(Cli::Codex);
}

#[test]
fn gemini_follow_up_continues_the_parent_session() {
    follow_up_continues_the_parent_session(Cli::Gemini);
}

#[test]
fn claude_stuck_tool_calls_end_at_the_timeout_and_leave_nothing() {
    stuck_tool_calls(Cli::Claude);
}

#[test]
fn codex_stuck_tool_calls_end_at_the_timeout_and_leave_nothing() {
    stuck_tool_calls(Cli::Codex);
}

#[test]
fn claude_writes_follow_ups_from_a_subdirectory_and_a_worktree() {
    follow_ups_written_by_the_cli(Cli::Claude);
}

#[test]
fn codex_writes_follow_ups_from_a_subdirectory_and_a_worktree() {
    follow_ups_written_by_the_cli(Cli::Codex);
}

#[test]
fn gemini_writes_follow_ups_from_a_subdirectory_and_a_worktree() {
    follow_ups_written_by_the_cli(Cli::Gemini);
}
cli_tests!(gemini, Cli::Gemini);

// ---- aider ----------------------------------------------------------------------------

/// The pinned aider (scripts/install-aider.sh: aider-chat 0.86.1 from PyPI, in a venv of
/// its own), installed on first use, or None (the test then returns) without python3.
fn aider() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if !common::require(
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "python3 with venv and ensurepip (Debian: python3-venv), to install aider",
    ) {
        return None;
    }
    Some(installed("install-aider.sh", &INSTALLED))
}

/// A tree whose agent is the aider preset's command (examples/presets/aider), pointed at
/// `port` of 127.0.0.1 through litellm's OpenAI provider.
fn aider_tree(aider: &Path, port: u16, home: &Path) -> Root {
    let preset =
        fs::read_to_string(format!("{REPO}/examples/presets/aider/mailroom.yaml")).unwrap();
    let c = mailroom::parse::config::Config::parse(preset.as_bytes(), "mailroom.yaml").unwrap();
    let mut command = c.agents["aider"].command.clone();
    command[0] = aider.display().to_string();
    command.splice(
        1..1,
        ["--model", "openai/mock-gpt", "--no-show-model-warnings"].map(str::to_owned),
    );
    let cfg = json!({
        "concurrency": 2, "default_agent": "aider", "retries": 0, "retry_delay": "100ms",
        "settle": "200ms", "rescan_interval": "1s",
        "agents": {"aider": {
            "command": command, "kind": "aider", "timeout": "120s", "grace": "5s",
            "cooldown": "1h", "max_instances": 2,
            "env": {"HOME": home.display().to_string(),
                    "OPENAI_API_BASE": format!("http://127.0.0.1:{port}/v1"),
                    "OPENAI_API_KEY": "sk-mock", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "AIDER_ANALYTICS": "false", "AIDER_CHECK_UPDATE": "false",
                    "NO_COLOR": "1"}}},
    });
    fs::create_dir_all(home).unwrap();
    Root::new().config(&serde_json::to_string_pretty(&cfg).unwrap())
}

/// aider with the preset's command against the mock: answers land in context/ (an answer
/// that quotes rate limits is just an answer, a description starting with `-v` is the
/// prompt), a rejected key is `misconfigured` at once, and a proxy's HTML page with status
/// 200 is no answer. The faults aider's own retry loop holds for a minute or more each (a
/// rate limit, a 500, a cut stream, an overloaded provider, a refused connection) are
/// checked by scripts/e2e-aider.sh, outside the test command's time budget.
#[test]
fn aider_answers_and_errors_are_filed_right() {
    let Some(aider) = aider() else { return };
    let s = scratch();
    let mock = Mock::start(&s.path);
    let root = aider_tree(&aider, mock.port, &s.p("home"));
    let task = |name: &str, d: &str| {
        root.write(
            &format!("tasks/pending/{name}.yaml"),
            &format!("description: {}\n", json!(d)),
        );
    };
    task("ok", "MOCK:ok Reply with one short sentence.");
    task(
        "quotes",
        "MOCK:ok-429 Our log says '429 Too Many Requests'. Explain in one sentence.",
    );
    task(
        "dash",
        "-v MOCK:ok this task description starts with a dash",
    );
    task("badkey", "MOCK:401 Reply with one short sentence.");
    task("forbidden", "MOCK:403 Reply with one short sentence.");
    task("garbage", "MOCK:garbage Reply with one short sentence.");
    task("maxtok", "MOCK:max-tokens Reply with one short sentence.");
    root.run_until_idle_within(Duration::from_secs(300));
    for (name, want) in [
        ("ok", OK_ANSWER),
        ("quotes", OK_429_ANSWER),
        ("dash", OK_ANSWER),
    ] {
        let rec = root.record("completed", name);
        let out = root.read(&format!("context/agent_outputs/{name}.md"));
        assert!(out.contains(want), "aider {name}: {out}\n{rec}");
    }
    let rec = root.record("failed", "badkey");
    assert_eq!(
        (&rec["outcome"], &rec["error_class"], &rec["attempts"]),
        (&json!("misconfigured"), &json!("auth"), &json!(1)),
        "{rec}"
    );
    let rec = root.record("failed", "forbidden");
    assert_eq!(
        (&rec["outcome"], &rec["attempts"]),
        (&json!("misconfigured"), &json!(1)),
        "{rec}"
    );
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("fix: the key was accepted but may not use")),
        "aider: a 403 asks for another key: {rec}"
    );
    // A reply stopped at the token limit: aider says "Model ... has hit a token
    // limit!" and exits 0; the record says that, the partial reply is no answer.
    let rec = root.record("failed", "maxtok");
    assert_eq!(
        (&rec["outcome"], &rec["error_class"]),
        (&json!("agent_error"), &json!("task")),
        "{rec}"
    );
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("has hit a token limit!")),
        "the error does not say why: {rec}"
    );
    let out = root.read("context/agent_outputs/maxtok.md");
    assert!(
        out.contains("(no answer") && !out.contains("MOCK ANSWER"),
        "{out}\n{rec}"
    );
    let rec = root.record("failed", "garbage");
    let out = root.read("context/agent_outputs/garbage.md");
    assert!(
        out.contains("(no answer") && !out.contains("MOCK ANSWER"),
        "{out}\n{rec}"
    );
    assert!(
        root.entries("tasks/cooldowns").is_empty(),
        "an answer cooled the agent down"
    );
}
