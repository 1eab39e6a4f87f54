//! The command-line interface: argument definitions (clap) and the commands
//! that read or write the tree without running the supervisor.

mod add;
mod clean;
pub mod complete;
pub mod control;
pub mod daemon;
mod init;
mod list;
pub mod man;
mod new;
mod retry;
mod show;
mod status;
pub mod usage;
mod validate;

pub use add::{AddArgs, More as AddMore, add};
pub use clean::{CleanArgs, clean};
pub use init::init;
pub use list::list;
pub use new::new;
pub use retry::{failed_deps, retried_alone, retry, retry_task};
pub use show::{show, show_prompt};
pub use status::status;
pub use validate::validate;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use clap_complete::ArgValueCandidates;

use crate::parse::task;
use crate::tree::layout::Layout;

/// The heading that keeps the options every command takes apart from a
/// command's own.
const GLOBAL: &str = "Global options";

/// How long `clean` and `retry` wait for context/.lock to merge a finished
/// task whose commit could not (see [`crate::tree::context::still_unmerged`]).
const MERGE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A supervisor for command-line AI agents whose whole interface is a directory tree.
#[derive(Debug, Parser)]
#[command(name = "mailroom", version, about, propagate_version = true)]
pub struct Cli {
    /// The root of the tree (holds tasks/, context/ and mailroom.yaml).
    #[arg(long, global = true, env = "MAILROOM_ROOT", default_value = ".", help_heading = GLOBAL)]
    pub root: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Less log output (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub quiet: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", help_heading = GLOBAL)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground.
    #[command(
        after_help = "Examples:\n  mailroom run                      # in the tree's directory; Ctrl-C stops\n  mailroom --root ~/queue run --exit-when-idle\n  mailroom run --agents claude:2,codex:2\n  mailroom --root ~/new run --init  # lay out the tree first"
    )]
    Run {
        /// Exit once nothing is pending or running (for scripts and CI).
        #[arg(long)]
        exit_when_idle: bool,
        /// Create the tree (tasks/, context/) if it is missing, instead of
        /// refusing a directory that is not a mailroom root.
        #[arg(long)]
        init: bool,
        /// Override agents' max_instances for this supervisor, e.g.
        /// claude:2,codex:2 (concurrency is raised to their sum if lower).
        #[arg(long, value_name = "AGENT:N,...", value_parser = agent_limits_arg)]
        agents: Option<String>,
    },
    /// Run a supervisor in the background (log in logs/mailroom.log); print its pid.
    Start {
        /// Override agents' max_instances for this supervisor, e.g. claude:2,codex:2.
        #[arg(long, value_name = "AGENT:N,...", value_parser = agent_limits_arg)]
        agents: Option<String>,
    },
    /// Stop this tree's supervisors on this host and wait until they are gone.
    Stop {
        /// Stop running agents at once (their tasks go back to pending/)
        /// instead of letting them finish within shutdown_grace.
        #[arg(long)]
        now: bool,
        /// Give up waiting after this long (e.g. 2m); they keep stopping.
        #[arg(long, value_parser = duration_arg)]
        timeout: Option<String>,
    },
    /// Lay out a new tree with a commented sample config.
    Init {
        /// Where (default: --root).
        dir: Option<PathBuf>,
    },
    /// Submit a task (written to tasks/tmp/, then renamed into tasks/pending/).
    #[command(
        after_help = "Examples:\n  mailroom add \"Write tests for src/parse.rs\"\n  mailroom add \"Fix the build\" --agent codex --priority high --name fix-build\n  mailroom add \"Document it\" --after fix-build\n  mailroom add --file task.yaml\n  mailroom add --file fix-login.md     # front matter + Markdown body\n  mailroom add --wait \"Summarise README.md\"   # prints the output, exits 0 or 1"
    )]
    Add {
        /// What the agent should do.
        #[arg(required_unless_present = "file")]
        description: Option<String>,
        /// The agent to run it on.
        #[arg(long, add = ArgValueCandidates::new(complete::agent_names))]
        agent: Option<String>,
        /// high, normal or low (as in a task file: also medium, 0, 1, 2).
        #[arg(long, value_parser = priority_arg, add = ArgValueCandidates::new(complete::priorities))]
        priority: Option<String>,
        /// The task's name (its file name without the extension); when absent, made
        /// from the description's first words (any script) and the time.
        #[arg(long, value_parser = name_arg)]
        name: Option<String>,
        /// Submit this task file as is: .yaml, .yml, or .md (YAML front
        /// matter, the body is the description); `-` reads YAML from standard
        /// input. --agent, --priority, --after, --timeout and the other
        /// keys' flags go in the file.
        #[arg(long, conflicts_with_all = ["description", "agent", "priority", "after", "timeout",
            "retries", "delay", "not_before", "label", "context", "workdir"])]
        file: Option<PathBuf>,
        /// Run only after these tasks completed (repeat it, or a,b). A task
        /// that failed is refused; one not submitted yet is warned about.
        #[arg(long, add = ArgValueCandidates::new(complete::task_names))]
        after: Vec<String>,
        /// Per-run timeout, e.g. 10m.
        #[arg(long, value_parser = duration_arg)]
        timeout: Option<String>,
        /// Retries after the first attempt (the config's `retries` when absent).
        #[arg(long)]
        retries: Option<u32>,
        /// Not started until this long after submission, e.g. 10m or 2h.
        #[arg(long, value_parser = duration_arg)]
        delay: Option<String>,
        /// Not started before this time (RFC 3339, e.g. 2026-01-15T10:00:00Z).
        #[arg(long)]
        not_before: Option<String>,
        /// A label, for `list` and the dashboard's filter (repeat it, or a,b).
        #[arg(long)]
        label: Vec<String>,
        /// A file (relative to the root) whose text goes into the prompt
        /// (repeat it).
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        context: Vec<String>,
        /// The agent's working directory, relative to the root and inside
        /// it (default: the root).
        #[arg(long, value_hint = clap::ValueHint::DirPath)]
        workdir: Option<String>,
        /// Wait for the task, print its output, and exit with its outcome
        /// (0 completed, 1 failed): for scripts and editors.
        #[arg(long)]
        wait: bool,
    },
    /// Write a Markdown task in your editor and submit it when saved.
    #[command(
        after_help = "Opens $EDITOR (else $VISUAL, else vi) on tasks/tmp/NAME.md, a template with\nthe task's keys in YAML front matter; the text below the front matter is the\ndescription. Saving submits it as tasks/pending/NAME.md. An unchanged or empty\ntemplate is not submitted; a draft that does not validate is kept, and\n`mailroom new NAME` reopens it.\n\nExamples:\n  mailroom new fix-login\n  EDITOR=\"code -w\" mailroom new write-docs"
    )]
    New {
        /// The task's name (its file becomes tasks/pending/NAME.md).
        name: String,
    },
    /// Counts per state and what is running.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every second (Ctrl-C to stop).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// List tasks.
    #[command(visible_alias = "tasks")]
    #[command(
        after_help = "Examples:\n  mailroom list\n  mailroom tasks --state active      # what runs now\n  mailroom list --state failed --json"
    )]
    List {
        /// pending, assigned (or running, active), completed, failed.
        #[arg(long, visible_alias = "status", value_parser = state_arg)]
        state: Option<String>,
        /// Only tasks whose file has this label (`labels:`, `add --label`).
        #[arg(long)]
        label: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a task, its result record and the tail of its output.
    #[command(
        after_help = "Examples:\n  mailroom show fix-build\n  mailroom show fix-build --prompt   # what the agent was (or would be) sent\n  mailroom show fix-build --json"
    )]
    Show {
        /// The task's name (its file name without the extension).
        #[arg(add = ArgValueCandidates::new(complete::task_names))]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print the exact prompt sent to the agent (or, for a pending task,
        /// the prompt it would get now).
        #[arg(long, conflicts_with = "json")]
        prompt: bool,
    },
    /// Move failed tasks back to pending with fresh attempts (--completed: run completed ones again).
    #[command(
        after_help = "Examples:\n  mailroom retry fix-login\n  mailroom retry a b c\n  mailroom retry --outcome invalid      # every failed task whose outcome is invalid\n  mailroom retry --completed nightly     # run a completed task again"
    )]
    Retry {
        /// The failed tasks' names.
        #[arg(add = ArgValueCandidates::new(complete::task_names), required_unless_present = "outcome")]
        names: Vec<String>,
        /// Also every failed task whose record's outcome is this (e.g.
        /// invalid, timeout, spawn, misconfigured).
        #[arg(long, value_parser = outcome_arg)]
        outcome: Option<String>,
        /// Named tasks that completed run again too (their finished round
        /// is kept in their history).
        #[arg(long)]
        completed: bool,
    },
    /// Remove finished tasks: their files, records, runs and history (the shared context stays).
    #[command(
        after_help = "Without names, every completed task goes; with --failed, failed ones too.\nA task that a pending or running task runs after is kept (it would wait\nforever). context/ is left as it is: agents still read the outputs.\n\nExamples:\n  mailroom clean                        # every completed task\n  mailroom clean --failed --older-than 30d\n  mailroom clean fix-login              # one task, completed or failed\n  mailroom clean --dry-run"
    )]
    Clean {
        /// These finished tasks only (completed or failed).
        #[arg(add = ArgValueCandidates::new(complete::task_names))]
        names: Vec<String>,
        /// Failed tasks too (without names).
        #[arg(long, conflicts_with = "names")]
        failed: bool,
        /// Only tasks that finished at least this long ago, e.g. 7d.
        #[arg(long, value_parser = duration_arg)]
        older_than: Option<String>,
        /// Say what would be removed; remove nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Check task files (and the root's mailroom.yaml) without running anything.
    Validate {
        /// Task files, or a mailroom.yaml.
        files: Vec<PathBuf>,
    },
    /// Cancel a pending or running task (a running agent's process group is stopped).
    Cancel {
        /// The tasks' names.
        #[arg(add = ArgValueCandidates::new(complete::task_names), required = true)]
        names: Vec<String>,
        /// How long to wait for the supervisor to stop a running agent.
        #[arg(long, default_value = "60s", value_parser = duration_arg)]
        timeout: String,
    },
    /// Stop claiming new tasks, everywhere or for one agent (running agents carry on).
    Pause {
        /// Pause only this agent (its tasks wait; others go on).
        #[arg(long, add = ArgValueCandidates::new(complete::agent_names))]
        agent: Option<String>,
        /// Pause an agent this tree's mailroom.yaml does not define (one a
        /// supervisor started with another config runs).
        #[arg(long, requires = "agent")]
        force: bool,
    },
    /// Start claiming again.
    Resume {
        /// Resume only this agent.
        #[arg(long, add = ArgValueCandidates::new(complete::agent_names))]
        agent: Option<String>,
    },
    /// The output of a task's run: live while it runs, stored afterwards.
    Logs {
        /// The task's name.
        #[arg(add = ArgValueCandidates::new(complete::task_names))]
        name: String,
        /// Keep printing until the task finishes.
        #[arg(short, long)]
        follow: bool,
        /// The CLI's stdout as written (claude's, codex's and gemini's JSON
        /// events are otherwise shown as text: the answer, one line per tool
        /// call and result).
        #[arg(long)]
        raw: bool,
    },
    /// Wait until the named tasks (or the whole queue) are finished; exit 0
    /// if all completed, 1 if any failed (or what is left waits for tasks
    /// nobody submitted), 124 on --timeout, 69 when no supervisor runs on
    /// the tree.
    #[command(
        after_help = "Examples:\n  mailroom wait                      # until nothing is pending or running\n  mailroom wait fix-build docs --timeout 30m && echo all completed"
    )]
    Wait {
        /// Tasks to wait for (default: everything pending or running).
        #[arg(add = ArgValueCandidates::new(complete::task_names))]
        names: Vec<String>,
        /// Give up after this long (e.g. 10m) and exit 124.
        #[arg(long, value_parser = duration_arg)]
        timeout: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Tokens and cost the agents' CLIs reported, summed by agent, day or task.
    #[command(
        after_help = "Examples:\n  mailroom usage\n  mailroom usage --by day --since 2026-12-01\n  mailroom usage --by task --json"
    )]
    Usage {
        /// How to group the finished tasks.
        #[arg(long, value_enum, default_value = "agent")]
        by: usage::By,
        /// Only tasks finished since this date or time.
        #[arg(long, value_parser = usage::since_arg)]
        since: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Each agent's running count, limit, pause, cooldown and outcomes.
    Agents {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve a live web dashboard of the tree (no supervisor needed);
    /// read-only unless it has a token.
    #[command(
        after_help = "Examples:\n  mailroom serve                          # http://127.0.0.1:8787/\n  mailroom serve --listen 127.0.0.1:0     # any free port; the address is printed\n  mailroom serve --token-file ~/.mailroom-token   # enables add, cancel, retry, pause, resume\n  mailroom --root ~/queue serve --listen 127.0.0.1:9000"
    )]
    Serve {
        /// Address and port to listen on: `serve.listen` from mailroom.yaml,
        /// else 127.0.0.1:8787. Any address other than loopback lets other
        /// hosts read every task (a warning is printed).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        /// A file whose first line is the token that enables actions (at
        /// least 16 characters); default: `serve.token` or
        /// `serve.token_file` from mailroom.yaml; none: read-only.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// that completes subcommands, options, task names and agent names.
    #[command(
        after_help = "The script asks mailroom itself for completions (COMPLETE=SHELL mailroom ...),\nso task names come from the tree named by --root, MAILROOM_ROOT or the current\ndirectory.\n\nExamples:\n  echo 'source <(mailroom completions bash)' >> ~/.bashrc\n  echo 'source <(mailroom completions zsh)' >> ~/.zshrc\n  mailroom completions fish > ~/.config/fish/completions/mailroom.fish"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print mailroom(1), or write every man page into a directory.
    #[command(
        after_help = "Examples:\n  mailroom man | man -l -                 # read mailroom(1)\n  mailroom man --dir ~/.local/share/man/man1   # install mailroom(1) and mailroom-SUBCOMMAND(1)"
    )]
    Man {
        /// Write mailroom.1 and one mailroom-SUBCOMMAND.1 per subcommand
        /// into this directory (created if missing) instead of printing mailroom(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The built-in offline demo agent.
    #[command(hide = true)]
    DemoAgent {
        /// The prompt and the demo's options.
        args: Vec<String>,
    },
    /// The keeper of one run (started by the supervisor; see PROTOCOL.md).
    #[command(hide = true)]
    Keeper {
        /// The run's directory (with its spec.json).
        run_dir: PathBuf,
    },
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): its failure is then
    /// also a JSON document on standard output.
    pub fn json(&self) -> bool {
        match self {
            Command::Status { json, .. }
            | Command::List { json, .. }
            | Command::Show { json, .. }
            | Command::Wait { json, .. }
            | Command::Usage { json, .. }
            | Command::Agents { json, .. } => *json,
            _ => false,
        }
    }
}

/// A `mailroom.yaml` that cannot be used, found by `run` or `start`: exit
/// status 78 (sysexits' EX_CONFIG), so that scripts tell it from other
/// failures and the systemd units (`RestartPreventExitStatus=`) do not
/// restart a supervisor that cannot start until someone fixes the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigUnusable(pub String);

impl ConfigUnusable {
    pub const EXIT: u8 = 78;
}

/// A command line that parsed but asks for what the tree does not have (an
/// `--agents` entry naming an agent `mailroom.yaml` lacks): a usage error,
/// with clap's exit status ([`UsageError::EXIT`]), not a broken configuration
/// (which `run` exits 78 for).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// What clap exits with for a bad argument.
    pub const EXIT: u8 = 2;
}

/// Fails with what the system said when `dir` (a root's `tasks/` or
/// `tasks/pending/`) cannot be looked at, where "not a directory" would
/// mislead: a root this user may not read (or reach) is no missing root.
pub fn not_a_root(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => bail!(
            "cannot look at {}: {e} (is the root readable and searchable by this user?)",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// The tree at `root`, or an error saying how to get one.
pub fn open_tree(root: &Path) -> Result<Layout> {
    let layout = Layout::new(root);
    if !layout.tasks.is_dir() {
        not_a_root(&layout.tasks)?;
        if std::fs::symlink_metadata(root).is_err() {
            bail!(
                "{} does not exist; pass --root, or create a tree there with `mailroom init`",
                root.display()
            );
        }
        bail!(
            "{} is not a mailroom root (no tasks/ directory); pass --root or run `mailroom init`",
            root.display()
        );
    }
    // Records and locks a command writes get the tree's modes (`shared`).
    if let Ok(c) = crate::parse::config::Config::load(root) {
        crate::tree::fsx::set_shared(c.shared);
    }
    Ok(layout)
}

// Option values are checked while the arguments are parsed, so that a bad
// one is a usage error (exit 2, with clap's hint) like an unknown flag; the
// commands keep receiving the text as typed.

/// A task name option (`--name`), checked like a file's.
fn name_arg(s: &str) -> Result<String, String> {
    task::check_name(s).map(|()| s.to_owned())
}

/// `--priority`: what a task file accepts, as its canonical name.
fn priority_arg(s: &str) -> Result<String, String> {
    task::Priority::parse(s)
        .map(|p| p.as_str().to_owned())
        .ok_or_else(|| "use high, normal or low (or medium, 0, 1, 2)".into())
}

/// A duration option (`10m`, `90s`).
fn duration_arg(s: &str) -> Result<String, String> {
    task::parse_duration(s).map(|_| s.to_owned())
}

/// `--state`: a state's name or one of its aliases.
fn outcome_arg(s: &str) -> Result<String, String> {
    use crate::model::Outcome;
    Outcome::ALL
        .iter()
        .any(|o| o.as_str() == s && *o != Outcome::Unknown)
        .then(|| s.to_owned())
        .ok_or_else(|| {
            let all: Vec<&str> = Outcome::ALL
                .iter()
                .filter(|o| **o != Outcome::Unknown)
                .map(|o| o.as_str())
                .collect();
            format!("use one of {}", all.join(", "))
        })
}

fn state_arg(s: &str) -> Result<String, String> {
    crate::tree::layout::State::parse(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| "use pending, assigned (or running, active), completed or failed".into())
}

/// `--agents AGENT:N,...`.
fn agent_limits_arg(s: &str) -> Result<String, String> {
    daemon::parse_agent_limits(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            let e = format!("{e:#}");
            e.strip_prefix("--agents: ").unwrap_or(&e).to_owned()
        })
}

/// A task name from the command line, checked like a file's.
pub(crate) fn check_task_name(name: &str) -> Result<()> {
    task::check_name(name).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
}
