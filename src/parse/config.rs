//! `mailroom.yaml`: the supervisor's configuration, read from the root, with
//! built-in defaults when the file is absent. Refused whole, with the key named,
//! when anything in it is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::parse::task::{TaskError, parse_duration, suggest, yaml_error_keyed, yaml_options};

pub const CONFIG_FILE: &str = "mailroom.yaml";

/// Every top-level key, for "did you mean" hints.
pub const CONFIG_KEYS: &[&str] = &[
    "concurrency",
    "default_agent",
    "retries",
    "retry_delay",
    "retry_delay_max",
    "timeout",
    "grace",
    "shutdown_grace",
    "rescan_interval",
    "watch",
    "settle",
    "max_task_bytes",
    "max_output_bytes",
    "durability",
    "aging",
    "routing",
    "context_max_bytes",
    "context_outside_root",
    "followups_per_task",
    "max_tree_depth",
    "max_tree_tasks",
    "subtask_order",
    "shared",
    "run_keeper",
    "on_shutdown",
    "env_allow",
    "env_inherit",
    "metrics_file",
    "hooks",
    "hook_timeout",
    "worktrees_dir",
    "worktree_cleanup",
    "git_status",
    "serve",
    "agents",
];
/// The keys of `hooks:`.
pub const HOOK_KEYS: &[&str] = &["on_complete", "on_fail", "on_limit"];
/// The placeholders a hook's argv may use; each is also in its environment.
pub const HOOK_PLACEHOLDERS: &[&str] = &[
    "name", "state", "outcome", "record", "output", "agent", "until", "root",
];
/// Every key of `serve:`, for "did you mean" hints.
pub const SERVE_KEYS: &[&str] = &["listen", "token", "token_file"];
/// Every key of an agent, for "did you mean" hints.
pub const AGENT_KEYS: &[&str] = &[
    "command",
    "max_instances",
    "timeout",
    "grace",
    "env",
    "capabilities",
    "fallback",
    "fallback_after",
    "cooldown",
    "kind",
    "limit_patterns",
    "output",
    "prompt_template",
    "include_context",
    "workspace",
    "resume",
    "budget",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    concurrency: Option<usize>,
    default_agent: Option<String>,
    retries: Option<u32>,
    retry_delay: Option<String>,
    retry_delay_max: Option<String>,
    timeout: Option<String>,
    grace: Option<String>,
    shutdown_grace: Option<String>,
    rescan_interval: Option<String>,
    watch: Option<String>,
    settle: Option<String>,
    max_task_bytes: Option<u64>,
    max_output_bytes: Option<u64>,
    durability: Option<String>,
    aging: Option<String>,
    routing: Option<Vec<RawRule>>,
    context_max_bytes: Option<u64>,
    context_outside_root: Option<bool>,
    followups_per_task: Option<usize>,
    max_tree_depth: Option<usize>,
    max_tree_tasks: Option<usize>,
    subtask_order: Option<String>,
    shared: Option<bool>,
    run_keeper: Option<bool>,
    on_shutdown: Option<String>,
    env_allow: Option<Vec<String>>,
    env_inherit: Option<String>,
    metrics_file: Option<String>,
    hooks: Option<RawHooks>,
    hook_timeout: Option<String>,
    worktrees_dir: Option<String>,
    worktree_cleanup: Option<String>,
    git_status: Option<bool>,
    serve: Option<RawServe>,
    agents: Option<BTreeMap<String, RawAgent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
}

/// `serve:`: the dashboard, run inside `mailroom run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Serve {
    pub listen: std::net::SocketAddr,
    /// Where the actions' token comes from (none: a read-only dashboard).
    pub token: Option<TokenSource>,
}

/// The dashboard's token: written in the config, or in a file of its own
/// (relative to the root), read when the dashboard starts.
#[derive(Clone, PartialEq)]
pub enum TokenSource {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(..)"),
            TokenSource::File(p) => write!(f, "File({p:?})"),
        }
    }
}

/// The dashboard's default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    agent: String,
    label: Option<String>,
    #[serde(rename = "match")]
    matches: Option<String>,
    min_chars: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    command: Command,
    max_instances: Option<usize>,
    timeout: Option<String>,
    grace: Option<String>,
    env: Option<BTreeMap<String, String>>,
    capabilities: Option<Vec<String>>,
    fallback: Option<Vec<String>>,
    fallback_after: Option<u32>,
    cooldown: Option<String>,
    kind: Option<String>,
    limit_patterns: Option<Vec<String>>,
    output: Option<crate::adapter::OutputSpec>,
    prompt_template: Option<String>,
    include_context: Option<bool>,
    workspace: Option<String>,
    resume: Option<String>,
    budget: Option<RawBudget>,
}

/// `budget:` of an agent as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    daily_usd: Option<f64>,
    daily_tokens: Option<f64>,
    tree_usd: Option<f64>,
    tree_tokens: Option<f64>,
}

/// What an agent may spend (`budget:`), as its CLI reports usage: per UTC day,
/// and per tree of follow-ups (the tasks that share a first task). None: no
/// limit of that kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub daily_tokens: Option<u64>,
    pub tree_usd: Option<f64>,
    pub tree_tokens: Option<u64>,
}

impl Budget {
    fn parse(name: &str, raw: Option<RawBudget>) -> Result<Budget, String> {
        let Some(r) = raw else {
            return Ok(Budget::default());
        };
        let check = |key: &str, v: Option<f64>| -> Result<Option<f64>, String> {
            match v {
                Some(x) if !x.is_finite() || x < 0.0 => Err(format!(
                    "agent `{name}`: `budget.{key}: {x}` must be a number of 0 or more"
                )),
                v => Ok(v),
            }
        };
        let tokens = |key: &str, v: Option<f64>| -> Result<Option<u64>, String> {
            Ok(check(key, v)?.map(|x| x.round() as u64))
        };
        Ok(Budget {
            daily_usd: check("daily_usd", r.daily_usd)?,
            daily_tokens: tokens("daily_tokens", r.daily_tokens)?,
            tree_usd: check("tree_usd", r.tree_usd)?,
            tree_tokens: tokens("tree_tokens", r.tree_tokens)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_complete: Option<Command>,
    on_fail: Option<Command>,
    on_limit: Option<Command>,
}

/// Commands run when something happens to a task or an agent (`hooks:`),
/// each an argv with placeholders; never through a shell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hooks {
    /// A task was filed in `completed/`.
    pub on_complete: Option<Vec<String>>,
    /// A task was filed in `failed/` (a run that failed, or a file that never ran).
    pub on_fail: Option<Vec<String>>,
    /// An agent hit a usage limit and cools down.
    pub on_limit: Option<Vec<String>>,
}

/// Longest a hook may run, by default, before it is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// An agent command as written: an argv list, or one string split like a shell would.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Command {
    Argv(Vec<String>),
    Line(String),
}

/// How the supervisor learns about new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify as a wake-up hint, plus a periodic rescan.
    Auto,
    /// Periodic rescans only (NFS and other shared file systems).
    Poll,
}

/// One configured agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub command: Vec<String>,
    pub max_instances: usize,
    pub timeout: Duration,
    pub grace: Duration,
    pub env: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    /// Agents to try, in order, when this one cannot run a task.
    pub fallback: Vec<String>,
    /// Failed attempts of a task on this agent before it moves to a fallback.
    pub fallback_after: u32,
    /// How long a usage limit without a printed reset time lasts.
    pub cooldown: Duration,
    /// Which CLI this is, for its usage-limit patterns (claude, codex, gemini,
    /// aider, cursor-agent, other); by default the command's program name.
    pub kind: String,
    /// Extra regexes meaning "this agent hit a limit" (matched on stderr only).
    pub limit_patterns: Vec<String>,
    /// How a generic agent's output is read (`output:`); the CLI kinds have
    /// adapters of their own.
    pub output: Option<crate::adapter::OutputSpec>,
    /// How the prompt is built (`{description}`, `{context}`,
    /// `{instructions}`, `{task}`); None: the default template.
    pub prompt_template: Option<String>,
    /// Whether prompts carry the project overview and current state.
    pub include_context: bool,
    /// Where its runs work: the shared workdir, or a git worktree each.
    pub workspace: crate::run::workspace::Kind,
    /// Whether a run cut off by a usage limit, a timeout or a shutdown is
    /// continued in its CLI session at the next attempt (`resume:`).
    pub resume: Resume,
    /// What it may spend per day and per tree of follow-ups (`budget:`).
    pub budget: Budget,
}

/// Reads an agent's `resume:`; the default is `interrupted` for a kind whose
/// CLI can resume a session, else `never`.
fn parse_resume(name: &str, kind: &str, r: Option<&str>) -> Result<Resume, String> {
    let can = crate::adapter::can_resume(kind);
    match r {
        None if can => Ok(Resume::Interrupted),
        None | Some("never") => Ok(Resume::Never),
        Some("interrupted") if can => Ok(Resume::Interrupted),
        Some("interrupted") => Err(format!(
            "agent `{name}`: `resume: interrupted` needs a kind whose CLI can resume a \
             session ({}); this agent's kind is `{kind}`",
            crate::adapter::RESUMABLE.join(", ")
        )),
        Some(r) => Err(format!(
            "agent `{name}`: `resume: {r}`: use interrupted or never"
        )),
    }
}

/// `resume:` of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The next attempt after a run that was cut off (usage limit, timeout,
    /// shutdown, a dead supervisor) resumes that run's session, when the
    /// run's CLI reported one and its kind can resume.
    Interrupted,
    /// Every attempt starts a new session.
    Never,
}

/// What a graceful shutdown (SIGTERM, SIGINT) does with running agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Stop them (SIGTERM, grace, SIGKILL) and requeue their tasks for free.
    Stop,
    /// Leave them to their keepers; the next supervisor adopts the runs (for
    /// an upgrade restart).
    LeaveRunning,
}

/// Environment variables agents inherit from the supervisor (besides the
/// agent's own `env` and the MAILROOM_* variables).
#[derive(Debug, Clone, PartialEq)]
pub enum EnvPolicy {
    /// Only these names (a trailing `*` matches a prefix).
    Allow(Vec<String>),
    /// Everything (but systemd's protocol variables).
    All,
}

/// What agents inherit by default: the basics of a login session, locale,
/// proxies and certificates, and the API keys of the agent CLIs mailroom
/// has presets for.
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "TMPDIR",
    "XDG_*",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "ANTHROPIC_*",
    "CLAUDE_*",
    "OPENAI_*",
    "CODEX_*",
    "GEMINI_*",
    "GOOGLE_*",
    "CURSOR_*",
    "AIDER_*",
    "OPENROUTER_*",
    "AZURE_OPENAI_*",
    "AWS_*",
    "GIT_*",
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "NVM_DIR",
    "PYENV_ROOT",
    "VIRTUAL_ENV",
];

impl EnvPolicy {
    /// Whether an inherited variable passes.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            EnvPolicy::All => true,
            EnvPolicy::Allow(list) => list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p,
            }),
        }
    }
}

/// How a task's `subtasks` are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubtaskOrder {
    /// Each child waits for the one before it.
    Sequential,
    /// All children may run at once.
    Parallel,
}

/// One `routing` rule: every condition given must hold; the first rule that
/// matches names the agent of a task that does not name one itself.
#[derive(Debug, Clone)]
pub struct Rule {
    pub agent: String,
    pub label: Option<String>,
    pub matches: Option<regex::Regex>,
    pub min_chars: Option<usize>,
}

impl PartialEq for Rule {
    fn eq(&self, o: &Rule) -> bool {
        self.agent == o.agent
            && self.label == o.label
            && self.min_chars == o.min_chars
            && self.matches.as_ref().map(|r| r.as_str()) == o.matches.as_ref().map(|r| r.as_str())
    }
}

impl Rule {
    /// A short description, for `show` ("routing rule 2 (label heavy)").
    pub fn describe(&self, i: usize) -> String {
        let mut c = Vec::new();
        if let Some(l) = &self.label {
            c.push(format!("label {l}"));
        }
        if let Some(m) = &self.matches {
            c.push(format!("description matches /{}/", m.as_str()));
        }
        if let Some(n) = self.min_chars {
            c.push(format!("over {n} characters"));
        }
        format!("routing rule {} ({})", i + 1, c.join(", "))
    }

    pub fn applies(&self, t: &crate::parse::task::Task) -> bool {
        self.label.as_ref().is_none_or(|l| t.labels.contains(l))
            && self
                .matches
                .as_ref()
                .is_none_or(|r| r.is_match(&t.description))
            && self
                .min_chars
                .is_none_or(|n| t.description.chars().count() > n)
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub concurrency: usize,
    pub default_agent: String,
    pub retries: u32,
    pub retry_delay: Duration,
    pub retry_delay_max: Duration,
    pub shutdown_grace: Duration,
    pub rescan_interval: Duration,
    pub watch: WatchMode,
    pub settle: Duration,
    pub max_task_bytes: u64,
    pub max_output_bytes: u64,
    pub durable: bool,
    /// Priority ageing: a waiting task gains one level per `aging`.
    pub aging: Duration,
    pub routing: Vec<Rule>,
    /// Cap on each context file in a prompt (four times this for all of them).
    pub context_max_bytes: u64,
    /// Whether `context_files` may lead outside the root through symlinks.
    pub context_outside_root: bool,
    /// Follow-up tasks one run may queue through its outbox.
    pub followups_per_task: usize,
    /// How deep a tree of parents and follow-ups may grow.
    pub max_tree_depth: usize,
    /// How many tasks one tree (a first task and all its descendants) may have.
    pub max_tree_tasks: usize,
    pub subtask_order: SubtaskOrder,
    /// A tree several users write to: group-writable directories and task
    /// files owned by other users are accepted.
    pub shared: bool,
    /// Each run has a keeper process (protocol version 2): agents outlive a
    /// supervisor that dies, and the next one adopts their runs. `false`:
    /// protocol version 1 (the agent itself carries the lock).
    pub run_keeper: bool,
    /// What a graceful shutdown does with running agents.
    pub on_shutdown: OnShutdown,
    /// Which of the supervisor's environment variables agents get.
    pub env: EnvPolicy,
    /// A Prometheus textfile-collector file, rewritten on every change.
    pub metrics_file: Option<PathBuf>,
    /// Commands run when a task ends or an agent cools down.
    pub hooks: Hooks,
    /// How long a hook may run before it is killed.
    pub hook_timeout: Duration,
    /// Where runs' git worktrees go (relative to the root).
    pub worktrees_dir: PathBuf,
    pub worktree_cleanup: crate::run::workspace::Cleanup,
    /// `files_modified` of a shared-workdir run whose agent wrote no
    /// `$MAILROOM_RESULT`: `git status` in the workdir's repository (true),
    /// or nothing (false: no git process after any run).
    pub git_status: bool,
    /// `serve:`: run the dashboard in the supervisor's process.
    pub serve: Option<Serve>,
    pub agents: BTreeMap<String, Agent>,
    /// Where the config came from, for messages (None: built-in defaults).
    pub source: Option<PathBuf>,
}

/// Per-run timeout of agents that set none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// SIGTERM-to-SIGKILL delay of agents that set none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Cooldown after a usage limit that printed no reset time.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(900);

/// The command of the built-in demo agent: this very binary, `demo-agent`.
pub const BUILTIN_DEMO: &[&str] = &["{mailroom}", "demo-agent"];

impl Default for Config {
    fn default() -> Self {
        let mut agents = BTreeMap::new();
        agents.insert(
            "demo".to_owned(),
            Agent {
                name: "demo".into(),
                command: BUILTIN_DEMO.iter().map(|s| s.to_string()).collect(),
                max_instances: 4,
                timeout: DEFAULT_TIMEOUT,
                grace: DEFAULT_GRACE,
                env: BTreeMap::new(),
                capabilities: Vec::new(),
                fallback: Vec::new(),
                fallback_after: 1,
                cooldown: DEFAULT_COOLDOWN,
                kind: "demo".into(),
                limit_patterns: Vec::new(),
                output: None,
                prompt_template: None,
                include_context: true,
                workspace: crate::run::workspace::Kind::Shared,
                resume: Resume::Never,
                budget: Budget::default(),
            },
        );
        Config {
            concurrency: 4,
            default_agent: "demo".into(),
            retries: 2,
            retry_delay: Duration::from_secs(5),
            retry_delay_max: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            rescan_interval: Duration::from_secs(30),
            watch: WatchMode::Auto,
            settle: Duration::from_secs(2),
            max_task_bytes: crate::parse::task::DEFAULT_MAX_TASK_BYTES,
            max_output_bytes: 64 * 1024 * 1024,
            durable: true,
            aging: Duration::from_secs(1800),
            routing: Vec::new(),
            // Four files' worth (96 KiB) stays under the 128 KiB Linux allows
            // one argument, so the prompt still fits in {prompt}.
            context_max_bytes: 24 * 1024,
            context_outside_root: false,
            followups_per_task: 20,
            max_tree_depth: 5,
            max_tree_tasks: 200,
            subtask_order: SubtaskOrder::Sequential,
            shared: false,
            run_keeper: true,
            on_shutdown: OnShutdown::Stop,
            metrics_file: None,
            hooks: Hooks::default(),
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            worktrees_dir: PathBuf::from(".mailroom/worktrees"),
            worktree_cleanup: crate::run::workspace::Cleanup::OnSuccess,
            git_status: true,
            env: EnvPolicy::Allow(DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect()),
            agents,
            source: None,
            serve: None,
        }
    }
}

/// A config that cannot be used: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}", .error.display_at(.file))]
pub struct ConfigError {
    pub file: String,
    pub error: TaskError,
}

/// Whether config text holds no settings: only blank lines, comments and
/// YAML document markers.
fn no_settings(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| {
        t.trim_start_matches('\u{feff}').lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
        })
    })
}

impl Config {
    /// Reads `<root>/mailroom.yaml`, or returns the defaults when there is none.
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        let path = root.join(CONFIG_FILE);
        match crate::tree::fsx::read_task_file(&path, 1024 * 1024) {
            Ok((bytes, _)) => Config::parse_file(&bytes, CONFIG_FILE).map(|mut c| {
                c.source = Some(path);
                c
            }),
            Err(e) if e.is_gone() => Ok(Config::default()),
            Err(e) => Err(ConfigError {
                file: CONFIG_FILE.into(),
                error: TaskError {
                    line: None,
                    column: None,
                    message: format!("cannot read: {e}"),
                    key: None,
                },
            }),
        }
    }

    /// [`Config::parse`] of a `mailroom.yaml`'s bytes, which must hold a
    /// setting: a file with nothing in it is a save in progress (an editor
    /// or `>` truncates first) far more often than a wish for the defaults,
    /// which a missing file gives.
    pub fn parse_file(bytes: &[u8], file: &str) -> Result<Config, ConfigError> {
        if no_settings(bytes) {
            return Err(ConfigError {
                file: file.into(),
                error: TaskError {
                    line: None,
                    column: None,
                    message: "it has no settings (it is empty, or only comments): write them, \
                              or remove the file to run on the defaults"
                        .into(),
                    key: None,
                },
            });
        }
        Config::parse(bytes, file)
    }

    /// Parses a config file's bytes; `file` names it in errors. Text with
    /// no settings in it gives the defaults.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.into(),
            error: TaskError {
                line: None,
                column: None,
                message,
                key: None,
            },
        };
        let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        if no_settings(bytes) {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
                // The parser says which keys are valid where the unknown one
                // is: an agent's keys, or the top level's.
                let error = yaml_error_keyed(&e, &|key, expected| {
                    let (keys, what) = if expected.contains(&"command") {
                        (AGENT_KEYS, "agent key")
                    } else if expected.contains(&"on_complete") {
                        (HOOK_KEYS, "hook")
                    } else if expected.contains(&"listen") {
                        (SERVE_KEYS, "serve key")
                    } else {
                        (CONFIG_KEYS, "key")
                    };
                    match suggest(key, keys) {
                        Some(s) => format!("unknown {what} `{key}` (did you mean `{s}`?)"),
                        None => format!("unknown {what} `{key}`; known: {}", keys.join(", ")),
                    }
                });
                let mut error = error;
                // serde's word for a whole number that is not one ("1MB", "two").
                let int = ["u8", "u16", "u32", "u64", "usize", "i32", "i64"];
                if error
                    .message
                    .strip_prefix("invalid ")
                    .is_some_and(|t| int.contains(&t))
                {
                    error.message = "a whole number is expected here (sizes in bytes: \
                                     1048576, not 1MB; counts as digits: 2, not two)"
                        .into();
                }
                ConfigError {
                    file: file.into(),
                    error,
                }
            })?;
        let mut c = Config::default();
        let dur = |key: &str, v: &Option<String>, d: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(d),
                Some(s) => match parse_duration(s) {
                    Ok(d) if d > crate::parse::task::MAX_DURATION => {
                        Err(err(format!("`{key}`: {s} is over the limit of 30 days")))
                    }
                    Ok(d) => Ok(d),
                    Err(e) => Err(err(format!("`{key}`: {e}"))),
                },
            }
        };
        if let Some(n) = raw.concurrency {
            if n == 0 {
                return Err(err("`concurrency` must be at least 1".into()));
            }
            c.concurrency = n;
        }
        if let Some(r) = raw.retries {
            c.retries = r;
        }
        c.retry_delay = dur("retry_delay", &raw.retry_delay, c.retry_delay)?;
        c.retry_delay_max = dur("retry_delay_max", &raw.retry_delay_max, c.retry_delay_max)?;
        let timeout = dur("timeout", &raw.timeout, DEFAULT_TIMEOUT)?;
        let grace = dur("grace", &raw.grace, DEFAULT_GRACE)?;
        c.shutdown_grace = dur("shutdown_grace", &raw.shutdown_grace, c.shutdown_grace)?;
        c.rescan_interval = dur("rescan_interval", &raw.rescan_interval, c.rescan_interval)?;
        if c.rescan_interval < Duration::from_millis(50) {
            return Err(err("`rescan_interval` must be at least 50ms".into()));
        }
        c.settle = dur("settle", &raw.settle, c.settle)?;
        c.watch = match raw.watch.as_deref() {
            None | Some("auto") | Some("inotify") => WatchMode::Auto,
            Some("poll") => WatchMode::Poll,
            Some(o) => return Err(err(format!("`watch: {o}`: use auto or poll"))),
        };
        c.durable = match raw.durability.as_deref() {
            None | Some("strict") => true,
            Some("relaxed") => false,
            Some(o) => return Err(err(format!("`durability: {o}`: use strict or relaxed"))),
        };
        if let Some(n) = raw.max_task_bytes {
            c.max_task_bytes = n;
        }
        if let Some(n) = raw.max_output_bytes {
            c.max_output_bytes = n;
        }
        if let Some(agents) = raw.agents {
            // Nothing could ever run: refused here, so by `validate` and by
            // a reload alike.
            if agents.is_empty() {
                return Err(err(
                    "`agents` is empty: configure at least one agent, or leave the key out \
                     for the built-in demo agent"
                        .into(),
                ));
            }
            c.agents.clear();
            for (name, a) in agents {
                crate::parse::task::check_name(&name)
                    .map_err(|e| err(format!("agent `{name}`: {e}")))?;
                let command = match a.command {
                    Command::Argv(v) => v,
                    Command::Line(s) => split_words(&s)
                        .map_err(|e| err(format!("agent `{name}`: `command`: {e}")))?,
                };
                if command.is_empty() || command[0].is_empty() {
                    return Err(err(format!("agent `{name}`: `command` is empty")));
                }
                let max_instances = a.max_instances.unwrap_or(c.concurrency);
                if max_instances == 0 {
                    return Err(err(format!(
                        "agent `{name}`: `max_instances` must be at least 1"
                    )));
                }
                let kind = a.kind.clone().unwrap_or_else(|| {
                    Path::new(&command[0])
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
                let limit_patterns = a.limit_patterns.unwrap_or_default();
                for p in &limit_patterns {
                    regex::Regex::new(p).map_err(|e| {
                        err(format!(
                            "agent `{name}`: `limit_patterns`: `{p}` is not a regex: {e}"
                        ))
                    })?;
                }
                if a.fallback_after == Some(0) {
                    return Err(err(format!(
                        "agent `{name}`: `fallback_after` must be at least 1"
                    )));
                }
                let resume = parse_resume(&name, &kind, a.resume.as_deref()).map_err(err)?;
                let agent = Agent {
                    name: name.clone(),
                    command,
                    max_instances,
                    timeout: dur(&format!("agents.{name}.timeout"), &a.timeout, timeout)?,
                    grace: dur(&format!("agents.{name}.grace"), &a.grace, grace)?,
                    env: a.env.unwrap_or_default(),
                    capabilities: a.capabilities.unwrap_or_default(),
                    fallback: a.fallback.unwrap_or_default(),
                    fallback_after: a.fallback_after.unwrap_or(1),
                    cooldown: dur(
                        &format!("agents.{name}.cooldown"),
                        &a.cooldown,
                        DEFAULT_COOLDOWN,
                    )?,
                    kind,
                    limit_patterns,
                    output: a.output,
                    prompt_template: a.prompt_template,
                    include_context: a.include_context.unwrap_or(true),
                    workspace: match a.workspace.as_deref() {
                        None => crate::run::workspace::Kind::Shared,
                        Some(w) => crate::run::workspace::Kind::parse(w).ok_or_else(|| {
                            err(format!(
                                "agent `{name}`: `workspace: {w}`: use shared or worktree"
                            ))
                        })?,
                    },
                    resume,
                    budget: Budget::parse(&name, a.budget).map_err(err)?,
                };
                c.agents.insert(name, agent);
            }
        } else {
            for a in c.agents.values_mut() {
                a.timeout = timeout;
                a.grace = grace;
            }
        }
        c.aging = dur("aging", &raw.aging, c.aging)?;
        if let Some(n) = raw.context_max_bytes {
            c.context_max_bytes = n;
        }
        if let Some(b) = raw.context_outside_root {
            c.context_outside_root = b;
        }
        if let Some(n) = raw.followups_per_task {
            c.followups_per_task = n;
        }
        if let Some(n) = raw.max_tree_depth {
            c.max_tree_depth = n;
        }
        if let Some(n) = raw.max_tree_tasks {
            c.max_tree_tasks = n;
        }
        if let Some(b) = raw.shared {
            c.shared = b;
        }
        if let Some(b) = raw.run_keeper {
            c.run_keeper = b;
        }
        if let Some(s) = raw.on_shutdown {
            c.on_shutdown = match s.as_str() {
                "stop" => OnShutdown::Stop,
                "leave_running" => {
                    if !c.run_keeper {
                        return Err(err(
                            "`on_shutdown: leave_running` needs run keepers (`run_keeper: true`)"
                                .into(),
                        ));
                    }
                    OnShutdown::LeaveRunning
                }
                other => {
                    return Err(err(format!(
                        "`on_shutdown: {other}`: use stop or leave_running"
                    )));
                }
            };
        }
        c.metrics_file = raw.metrics_file.map(PathBuf::from);
        c.hook_timeout = dur("hook_timeout", &raw.hook_timeout, c.hook_timeout)?;
        if c.hook_timeout.is_zero() {
            return Err(err("`hook_timeout` must be more than zero".into()));
        }
        if let Some(h) = raw.hooks {
            let hook = |key: &str,
                        cmd: Option<Command>|
             -> Result<Option<Vec<String>>, ConfigError> {
                let Some(cmd) = cmd else { return Ok(None) };
                let argv = match cmd {
                    Command::Argv(v) => v,
                    Command::Line(s) => {
                        split_words(&s).map_err(|e| err(format!("`hooks.{key}`: {e}")))?
                    }
                };
                if argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(err(format!("`hooks.{key}` is empty")));
                }
                for w in &argv {
                    check_hook_placeholders(w).map_err(|e| err(format!("`hooks.{key}`: {e}")))?;
                }
                Ok(Some(argv))
            };
            c.hooks = Hooks {
                on_complete: hook("on_complete", h.on_complete)?,
                on_fail: hook("on_fail", h.on_fail)?,
                on_limit: hook("on_limit", h.on_limit)?,
            };
        }
        if let Some(d) = raw.worktrees_dir {
            c.worktrees_dir = PathBuf::from(d);
        }
        c.git_status = raw.git_status.unwrap_or(true);
        if let Some(sv) = raw.serve {
            let listen = sv.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
            let listen = listen.parse().map_err(|_| {
                err(format!(
                    "`serve.listen: {listen}`: give an address and a port, e.g. {DEFAULT_LISTEN}"
                ))
            })?;
            let token = match (sv.token, sv.token_file) {
                (Some(_), Some(_)) => {
                    return Err(err("`serve`: give `token` or `token_file`, not both".into()));
                }
                (Some(t), None) if t.trim().len() < 16 => {
                    return Err(err(
                        "`serve.token`: use at least 16 characters (a random string)".into(),
                    ));
                }
                (Some(t), None) => Some(TokenSource::Inline(t.trim().to_owned())),
                (None, Some(f)) => Some(TokenSource::File(PathBuf::from(f))),
                (None, None) => None,
            };
            c.serve = Some(Serve { listen, token });
        }
        c.worktree_cleanup = match raw.worktree_cleanup.as_deref() {
            None | Some("on_success") => crate::run::workspace::Cleanup::OnSuccess,
            Some("keep") => crate::run::workspace::Cleanup::Keep,
            Some("always") => crate::run::workspace::Cleanup::Always,
            Some(o) => {
                return Err(err(format!(
                    "`worktree_cleanup: {o}`: use keep, on_success or always"
                )));
            }
        };
        c.env = match raw.env_inherit.as_deref() {
            None | Some("allowlist") => {
                let mut list: Vec<String> =
                    DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect();
                list.extend(raw.env_allow.unwrap_or_default());
                EnvPolicy::Allow(list)
            }
            Some("all") => EnvPolicy::All,
            Some(o) => return Err(err(format!("`env_inherit: {o}`: use allowlist or all"))),
        };
        c.subtask_order = match raw.subtask_order.as_deref() {
            None | Some("sequential") => SubtaskOrder::Sequential,
            Some("parallel") => SubtaskOrder::Parallel,
            Some(o) => {
                return Err(err(format!(
                    "`subtask_order: {o}`: use sequential or parallel"
                )));
            }
        };
        if c.aging.is_zero() {
            return Err(err("`aging` must be more than zero".into()));
        }
        let names: Vec<String> = c.agents.keys().cloned().collect();
        let known = |who: &str, a: &str| -> Result<(), ConfigError> {
            if c.agents.contains_key(a) {
                return Ok(());
            }
            let n: Vec<&str> = names.iter().map(String::as_str).collect();
            Err(err(match suggest(a, &n) {
                Some(s) => format!("{who}: agent `{a}` is not configured (did you mean `{s}`?)"),
                None => format!("{who}: agent `{a}` is not configured"),
            }))
        };
        for a in c.agents.values() {
            for f in &a.fallback {
                known(&format!("agent `{}`: `fallback`", a.name), f)?;
                if *f == a.name {
                    return Err(err(format!(
                        "agent `{}` names itself as a fallback",
                        a.name
                    )));
                }
            }
        }
        for (i, r) in raw.routing.unwrap_or_default().into_iter().enumerate() {
            known(&format!("routing rule {}", i + 1), &r.agent)?;
            if r.label.is_none() && r.matches.is_none() && r.min_chars.is_none() {
                return Err(err(format!(
                    "routing rule {}: give at least one of `label`, `match`, `min_chars`",
                    i + 1
                )));
            }
            let matches = match r.matches {
                Some(m) => Some(regex::Regex::new(&m).map_err(|e| {
                    err(format!(
                        "routing rule {}: `match: {m}` is not a regex: {e}",
                        i + 1
                    ))
                })?),
                None => None,
            };
            c.routing.push(Rule {
                agent: r.agent,
                label: r.label,
                matches,
                min_chars: r.min_chars,
            });
        }
        match raw.default_agent {
            Some(d) => {
                if !c.agents.contains_key(&d) {
                    let names: Vec<&str> = c.agents.keys().map(String::as_str).collect();
                    return Err(err(match suggest(&d, &names) {
                        Some(s) => format!(
                            "`default_agent: {d}` is not a configured agent (did you mean `{s}`?)"
                        ),
                        None => format!(
                            "`default_agent: {d}` is not a configured agent; configured: {}",
                            names.join(", ")
                        ),
                    }));
                }
                c.default_agent = d;
            }
            None => {
                if !c.agents.contains_key(&c.default_agent) {
                    // With one agent it is the default; with several and no
                    // `demo`, tasks must name theirs (or match a routing rule).
                    c.default_agent = match c.agents.keys().next() {
                        Some(first) if c.agents.len() == 1 => first.clone(),
                        _ => String::new(),
                    };
                }
            }
        }
        Ok(c)
    }

    /// This config with some agents' `max_instances` replaced (`run --agents
    /// claude:2,codex:2`), and `concurrency` raised to their sum if lower.
    pub fn with_agent_limits(mut self, limits: &[(String, usize)]) -> Result<Config, String> {
        for (name, n) in limits {
            let Some(a) = self.agents.get_mut(name) else {
                let known: Vec<&str> = self.agents.keys().map(String::as_str).collect();
                return Err(format!(
                    "--agents: no agent `{name}` in mailroom.yaml; agents: {}",
                    known.join(", ")
                ));
            };
            a.max_instances = *n;
        }
        let sum: usize = limits.iter().map(|(_, n)| n).sum();
        self.concurrency = self.concurrency.max(sum);
        Ok(self)
    }

    /// The agent a task runs on: its own choice, or the default.
    pub fn agent_for(&self, wanted: Option<&str>) -> Result<&Agent, String> {
        if wanted.is_none() && self.default_agent.is_empty() {
            return Err(
                "the task names no `agent` and mailroom.yaml sets no `default_agent`".into(),
            );
        }
        let name = wanted.unwrap_or(&self.default_agent);
        self.agents.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.agents.keys().map(String::as_str).collect();
            match suggest(name, &names) {
                Some(s) => format!("agent `{name}` is not configured (did you mean `{s}`?)"),
                None => format!(
                    "agent `{name}` is not configured; configured agents: {}",
                    names.join(", ")
                ),
            }
        })
    }
}

/// Splits a command line into words like a POSIX shell would (quotes and
/// backslashes), without expanding anything.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(x) => cur.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err("trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A `{word}` in a hook's argv must be one of [`HOOK_PLACEHOLDERS`]: a typo
/// would otherwise reach the command as written.
fn check_hook_placeholders(word: &str) -> Result<(), String> {
    let mut rest = word;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let p = &after[..j];
        if !HOOK_PLACEHOLDERS.contains(&p) {
            let hint = suggest(p, HOOK_PLACEHOLDERS)
                .map(|s| format!(" (did you mean `{{{s}}}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown placeholder `{{{p}}}`{hint}; known: {}",
                HOOK_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

/// The sample config that `mailroom init` writes.
pub const SAMPLE_CONFIG: &str = r#"# mailroom.yaml: the supervisor's configuration. Every key is optional.
# Durations are humantime: 90s, 10m, 1h 30m (`M` would be months).
# The comments are the README's config reference; "see X" names a README section.

concurrency: 4          # running agents at once on the whole tree (per process with run_keeper: false); >= 1
default_agent: demo     # for tasks that name none and match no rule; see below
retries: 2              # extra attempts after the first (a task's `retries` overrides)
retry_delay: 5s         # backoff base: a retry waits between half and all of retry_delay × 2^(n-1)
# retry_delay_max: 10m  # ... capped at this
# timeout: 30m          # per-run timeout of agents that set none
# grace: 10s            # SIGTERM -> SIGKILL delay of agents that set none
# shutdown_grace: 30s   # on SIGTERM/SIGINT, how long running agents may finish
# rescan_interval: 30s  # full rescan of pending/ + recovery (inotify is only a hint); >= 50ms
# watch: auto           # auto (inotify + rescans; alias `inotify`) or poll (NFS: rescans at least every second)
# settle: 2s            # how long a file that does not parse may still be being written
# max_task_bytes: 1048576 # larger task files are refused
# max_output_bytes: 67108864 # an agent writing more to stdout, stderr or output.md is stopped (outcome output_limit)
# durability: strict    # strict: fsync every commit point; relaxed: skip fsyncs (see Guarantees)
# hooks:                # commands run when a task ends or an agent cools down; see Hooks
#   on_fail: ["notify-send", "mailroom: {name} failed ({outcome})"]
#   on_complete: ["logger", "-t", "mailroom", "{name} completed"]
#   on_limit: ["logger", "-t", "mailroom", "{agent} cools down until {until}"]
# hook_timeout: 30s     # a hook still running after this is killed (with its process group)

agents:
  demo:
    # argv list, or one string split into words like a shell would (never run through a shell).
    # Placeholders, each substituted inside its own word: {prompt} {prompt_file} {task}
    # {task_file} {output_file} {workdir} {root} {mailroom}. A command without
    # {prompt}, {prompt_file} or {task_file} gets the prompt appended as its last word.
    command: ["{mailroom}", "demo-agent"]
    max_instances: 2
    timeout: 10m
    grace: 30s
  # The presets' commands (examples/presets/ explains each flag):
  # claude:
  #   command: ["claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--", "{prompt}"]
  #   kind: claude
  #   max_instances: 1
  #   timeout: 30m
  # codex:
  #   command: ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", "-o", "{output_file}", "--", "{prompt}"]
  #   kind: codex
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_example_parses() {
        let y = "concurrency: 4\ndefault_agent: demo\nretries: 2\nretry_delay: 5s\nagents:\n  demo:\n    command: [\"examples/agents/demo.sh\"]\n    max_instances: 2\n    timeout: 10m\n    grace: 30s\n";
        let c = Config::parse(y.as_bytes(), "mailroom.yaml").unwrap();
        assert_eq!(c.agents["demo"].max_instances, 2);
        assert_eq!(c.agents["demo"].grace, Duration::from_secs(30));
    }

    #[test]
    fn resume_defaults_by_kind_and_is_checked() {
        let y = "agents:\n  c:\n    command: [claude, -p]\n  x:\n    command: [codex, exec]\n    resume: never\n  g:\n    command: [gemini]\n";
        let c = Config::parse(y.as_bytes(), "mailroom.yaml").unwrap();
        assert_eq!(c.agents["c"].resume, Resume::Interrupted);
        assert_eq!(c.agents["x"].resume, Resume::Never);
        assert_eq!(c.agents["g"].resume, Resume::Interrupted);
        let e = Config::parse(
            b"agents:\n  g:\n    command: [aider]\n    resume: interrupted\n",
            "mailroom.yaml",
        )
        .unwrap_err();
        assert!(
            e.error.message.contains("claude, codex, gemini"),
            "{}",
            e.error.message
        );
        let e = Config::parse(
            b"agents:\n  c:\n    command: [claude]\n    resume: always\n",
            "mailroom.yaml",
        )
        .unwrap_err();
        assert!(
            e.error.message.contains("use interrupted or never"),
            "{}",
            e.error.message
        );
    }

    #[test]
    fn sample_config_parses() {
        Config::parse(SAMPLE_CONFIG.as_bytes(), "mailroom.yaml").unwrap();
    }

    #[test]
    fn string_command_is_split_like_a_shell() {
        let y = "agents:\n  codex:\n    command: \"codex --ask-for-approval never --sandbox danger-full-access exec\"\n";
        let c = Config::parse(y.as_bytes(), "mailroom.yaml").unwrap();
        assert_eq!(c.agents["codex"].command.len(), 6);
        assert_eq!(c.default_agent, "codex");
        assert_eq!(
            split_words(r#"a "b c" 'd e' f\ g"#).unwrap(),
            vec!["a", "b c", "d e", "f g"]
        );
    }

    #[test]
    fn routing_fallback_and_capabilities() {
        let y = "routing:\n  - label: heavy\n    agent: codex\n  - min_chars: 2000\n    agent: codex\n\
                 agents:\n  demo:\n    command: [x]\n    capabilities: [web]\n    fallback: [codex]\n\
                 \n  codex:\n    command: [codex, exec]\n    cooldown: 1h\n";
        let c = Config::parse(y.as_bytes(), "mailroom.yaml").unwrap();
        assert_eq!(c.routing.len(), 2);
        assert_eq!(c.agents["demo"].fallback, vec!["codex"]);
        assert_eq!(c.agents["codex"].kind, "codex");
        assert_eq!(c.agents["codex"].cooldown, Duration::from_secs(3600));
        let e = Config::parse(b"agents:\n  a:\n    command: [x]\n    fallback: [b]\n", "m")
            .unwrap_err();
        assert!(e.to_string().contains("`b` is not configured"), "{e}");
        let e = Config::parse(
            b"routing:\n  - agent: a\nagents:\n  a:\n    command: [x]\n",
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
    }

    #[test]
    fn hooks_are_argv_with_known_placeholders() {
        let y = "hook_timeout: 5s\nhooks:\n  on_fail: [notify-send, \"{name} {outcome}\"]\n  on_limit: \"logger -t mailroom {agent}\"\n";
        let c = Config::parse(y.as_bytes(), "mailroom.yaml").unwrap();
        assert_eq!(c.hook_timeout, Duration::from_secs(5));
        assert_eq!(c.hooks.on_fail.as_ref().unwrap()[1], "{name} {outcome}");
        assert_eq!(c.hooks.on_limit.as_ref().unwrap().len(), 4);
        assert_eq!(c.hooks.on_complete, None);
        let e = Config::parse(b"hooks:\n  on_fail: [x, \"{nme}\"]\n", "m").unwrap_err();
        assert!(e.to_string().contains("did you mean `{name}`"), "{e}");
        let e = Config::parse(b"hooks:\n  on_fial: [x]\n", "m").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown hook `on_fial` (did you mean `on_fail`?)"),
            "{e}"
        );
        let e = Config::parse(b"hooks:\n  on_fail: []\n", "m").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(Config::default().hook_timeout, DEFAULT_HOOK_TIMEOUT);
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Config::parse(b"concurency: 3\n", "mailroom.yaml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("mailroom.yaml:1:1:"), "{s}");
        assert!(s.contains("did you mean `concurrency`"), "{s}");
        let e = Config::parse(b"agents:\n  a:\n    comand: [x]\n", "mailroom.yaml").unwrap_err();
        assert!(e.to_string().contains("mailroom.yaml:3:"), "{e}");
        let e = Config::parse(b"default_agent: nope\n", "mailroom.yaml").unwrap_err();
        assert!(e.to_string().contains("default_agent"), "{e}");
        let e = Config::parse(b"retry_delay: 5\n", "mailroom.yaml").unwrap_err();
        assert!(e.to_string().contains("no unit"), "{e}");
    }

    #[test]
    fn a_size_with_a_unit_says_what_is_expected() {
        let e = Config::parse(b"max_output_bytes: 1MB\n", "mailroom.yaml").unwrap_err();
        assert!(
            e.to_string().contains("a whole number is expected here"),
            "{e}"
        );
    }
}
