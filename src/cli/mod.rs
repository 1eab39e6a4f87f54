//! The command-line interface: argument definitions (clap) and the commands
//! that read or write the tree without running the supervisor.

mod add;
pub mod control;
mod init;
mod list;
mod retry;
mod show;
mod status;
mod validate;

pub use add::{AddArgs, add};
pub use init::init;
pub use list::list;
pub use retry::retry;
pub use show::{show, show_prompt};
pub use status::status;
pub use validate::validate;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::parse::task;
use crate::tree::layout::Layout;

/// A supervisor for command-line AI agents whose whole interface is a directory tree.
#[derive(Debug, Parser)]
#[command(name = "mailroom", version, about, propagate_version = true)]
pub struct Cli {
    /// The root of the tree (holds tasks/, context/ and mailroom.yaml).
    #[arg(long, global = true, env = "MAILROOM_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// Exit once nothing is pending or running (for scripts and CI).
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Lay out a new tree with a commented sample config.
    Init {
        /// Where (default: --root).
        dir: Option<PathBuf>,
    },
    /// Submit a task (written to tasks/tmp/, then renamed into tasks/pending/).
    Add {
        /// What the agent should do.
        #[arg(required_unless_present = "file")]
        description: Option<String>,
        /// The agent to run it on.
        #[arg(long)]
        agent: Option<String>,
        /// high, normal or low.
        #[arg(long)]
        priority: Option<String>,
        /// The task's name (its file name without .yaml); generated when absent.
        #[arg(long)]
        name: Option<String>,
        /// Submit this YAML task file as is (`-` reads standard input).
        #[arg(long, conflicts_with = "description")]
        file: Option<PathBuf>,
        /// Run only after these tasks completed.
        #[arg(long)]
        after: Vec<String>,
        /// Per-run timeout, e.g. 10m.
        #[arg(long)]
        timeout: Option<String>,
        /// Wait for the task, print its output, and exit with its outcome
        /// (0 completed, 1 failed): for scripts and editors.
        #[arg(long)]
        wait: bool,
    },
    /// Counts per state and what is running.
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every second (Ctrl-C to stop).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// List tasks.
    List {
        /// pending, assigned (or running), completed, failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a task, its result record and the tail of its output.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        /// Print the exact prompt sent to the agent (or, for a pending task,
        /// the prompt it would get now).
        #[arg(long, conflicts_with = "json")]
        prompt: bool,
    },
    /// Move a failed task back to pending with fresh attempts.
    Retry { name: String },
    /// Check task files (and the root's mailroom.yaml) without running anything.
    Validate {
        /// Task files, or a mailroom.yaml.
        files: Vec<PathBuf>,
    },
    /// Cancel a pending or running task (a running agent's process group is stopped).
    Cancel {
        name: String,
        /// How long to wait for the supervisor to stop a running agent.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Stop claiming new tasks, everywhere or for one agent (running agents carry on).
    Pause {
        #[arg(long)]
        agent: Option<String>,
    },
    /// Start claiming again.
    Resume {
        #[arg(long)]
        agent: Option<String>,
    },
    /// The output of a task's run: live while it runs, stored afterwards.
    Logs {
        name: String,
        /// Keep printing until the task finishes.
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait until the named tasks (or the whole queue) are finished; exit 0
    /// if all completed, 1 if any failed, 124 on --timeout.
    Wait {
        names: Vec<String>,
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Each agent's running count, limit, pause, cooldown and outcomes.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// The built-in offline demo agent.
    #[command(hide = true)]
    DemoAgent { args: Vec<String> },
}

/// The tree at `root`, or an error saying how to get one.
pub(crate) fn open_tree(root: &Path) -> Result<Layout> {
    let layout = Layout::new(root);
    if !layout.tasks.is_dir() {
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

/// A task name from the command line, checked like a file's.
pub(crate) fn check_task_name(name: &str) -> Result<()> {
    task::check_name(name).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
}
