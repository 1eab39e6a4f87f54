//! The tree: where each file of the protocol lives, derived from a task's name.

use std::io;
use std::path::{Path, PathBuf};

/// A task's state, named for its directory under `tasks/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Assigned,
    Completed,
    Failed,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Pending,
        State::Assigned,
        State::Completed,
        State::Failed,
    ];
    pub fn dir_name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Assigned => "assigned",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| {
            st.dir_name() == s || ((s == "running" || s == "active") && *st == State::Assigned)
        })
    }
}

/// Paths of one root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub tasks: PathBuf,
    pub tmp: PathBuf,
    pub pending: PathBuf,
    pub assigned: PathBuf,
    pub completed: PathBuf,
    pub failed: PathBuf,
    /// Usage-limit cooldowns, one `<agent>.json` each.
    pub cooldowns: PathBuf,
    /// Live control: `pause`, `pause.<agent>`, and `cancel/<name>` markers.
    pub control: PathBuf,
    pub cancel: PathBuf,
    /// Slot locks of protocol version 2, `<agent>.<n>.lock` (see `slots`).
    pub slots: PathBuf,
    pub context: PathBuf,
    pub outputs: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let root = root.to_path_buf();
        let tasks = root.join("tasks");
        let context = root.join("context");
        Layout {
            tmp: tasks.join("tmp"),
            pending: tasks.join("pending"),
            assigned: tasks.join("assigned"),
            completed: tasks.join("completed"),
            failed: tasks.join("failed"),
            cooldowns: tasks.join("cooldowns"),
            control: tasks.join("control"),
            cancel: tasks.join("control").join("cancel"),
            slots: tasks.join("slots"),
            outputs: context.join("agent_outputs"),
            tasks,
            context,
            root,
        }
    }

    /// The directories of the tree a supervisor keeps in place (their
    /// parents, `tasks/`, `tasks/control/` and `context/`, come with them).
    pub fn dirs(&self) -> [&Path; 8] {
        [
            &self.tmp,
            &self.pending,
            &self.assigned,
            &self.completed,
            &self.failed,
            &self.cooldowns,
            &self.cancel,
            &self.outputs,
        ]
    }

    /// Creates every directory of the tree that is missing.
    pub fn ensure(&self) -> io::Result<()> {
        for d in self.dirs() {
            crate::tree::fsx::create_dir_all(d)?;
        }
        Ok(())
    }

    pub fn dir(&self, s: State) -> &Path {
        match s {
            State::Pending => &self.pending,
            State::Assigned => &self.assigned,
            State::Completed => &self.completed,
            State::Failed => &self.failed,
        }
    }

    pub fn task_file(&self, s: State, name: &str, ext: &str) -> PathBuf {
        self.dir(s).join(format!("{name}.{ext}"))
    }
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.assigned.join(format!("{name}.lock"))
    }
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.assigned.join(format!("{name}.state.json"))
    }
    pub fn run_dir(&self, s: State, name: &str) -> PathBuf {
        self.dir(s).join(format!("{name}.run"))
    }
    pub fn record_file(&self, s: State, name: &str) -> PathBuf {
        self.dir(s).join(format!("{name}.result.json"))
    }
    /// `tasks/control/pause` (everything) or `tasks/control/pause.<agent>`.
    pub fn pause_file(&self, agent: Option<&str>) -> PathBuf {
        match agent {
            Some(a) => self.control.join(format!("pause.{a}")),
            None => self.control.join("pause"),
        }
    }
    /// `tasks/history/<name>.jsonl`: the records of a task's earlier rounds,
    /// one a line, appended by `mailroom retry` before it starts a new round.
    pub fn history_file(&self, name: &str) -> PathBuf {
        self.tasks.join("history").join(format!("{name}.jsonl"))
    }
    pub fn cancel_file(&self, name: &str) -> PathBuf {
        self.cancel.join(name)
    }
    pub fn cooldown_file(&self, agent: &str) -> PathBuf {
        self.cooldowns.join(format!("{agent}.json"))
    }
    pub fn output_file(&self, name: &str) -> PathBuf {
        self.outputs.join(format!("{name}.md"))
    }

    /// A path as shown to people: relative to the root when inside it.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    /// Finds the task file of `name` in state `s`, whichever extension it has.
    pub fn find(&self, s: State, name: &str) -> Option<(PathBuf, &'static str)> {
        crate::parse::task::TASK_EXTS.into_iter().find_map(|ext| {
            let p = self.task_file(s, name, ext);
            std::fs::symlink_metadata(&p).ok().map(|_| (p, ext))
        })
    }

    /// Finds `name` in any state, terminal states last.
    pub fn locate(&self, name: &str) -> Option<(State, PathBuf, &'static str)> {
        State::ALL
            .into_iter()
            .find_map(|s| self.find(s, name).map(|(p, e)| (s, p, e)))
    }
}
