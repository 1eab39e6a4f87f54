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
    /// `<name>.run/`: the task's run directory, which holds one directory per
    /// attempt ([`Layout::attempt_dir`]). It lives in `assigned/` from the
    /// first run until the terminal commit moves it whole, also while the task
    /// waits in `pending/` for its next attempt: asked for a pending task,
    /// this gives the one in `assigned/`.
    pub fn run_dir(&self, s: State, name: &str) -> PathBuf {
        let s = if s == State::Pending {
            State::Assigned
        } else {
            s
        };
        self.dir(s).join(format!("{name}.run"))
    }

    /// The link to the claimed task file in its run directory
    /// (`<name>.run/claimed-task.<ext>.copy`, made at every attempt): the
    /// copy recovery puts back when the task file left `assigned/` during a
    /// run that no supervisor watched to its end. Its last extension is not
    /// a task file's, so that no scanner, not even a recursive one, takes it
    /// for a task.
    pub fn claimed_copy(&self, s: State, name: &str, ext: &str) -> PathBuf {
        self.run_dir(s, name)
            .join(format!("claimed-task.{ext}.copy"))
    }

    /// `<name>.run/<n>/`: the directory of attempt `n` (its prompt, stdout,
    /// stderr, output, outbox, keeper files). Every reader of a run's files
    /// goes through this (or [`Layout::last_attempt`]).
    pub fn attempt_dir(&self, s: State, name: &str, n: u32) -> PathBuf {
        self.run_dir(s, name).join(n.to_string())
    }
    /// The latest attempt's directory: the highest-numbered real directory
    /// in `<name>.run/` (a symlink there is not followed). A run directory of
    /// protocol version 2 or older, with the files directly inside it, is
    /// attempt 0.
    pub fn last_attempt(&self, s: State, name: &str) -> Option<(u32, PathBuf)> {
        let root = self.run_dir(s, name);
        if !std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let n = std::fs::read_dir(&root)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let s = e.file_name().into_string().ok()?;
                // Canonical numbers only: `01` is not attempt 1.
                let n = s.parse::<u32>().ok()?;
                (n.to_string() == s).then_some(n)
            })
            .max();
        match n {
            Some(n) => Some((n, self.attempt_dir(s, name, n))),
            None if root.join("stdout.log").exists() || root.join("prompt.md").exists() => {
                Some((0, root))
            }
            None => None,
        }
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
    /// `tasks/history/<name>.run/<round>/`: the run directory of an earlier
    /// round (what `failed/<name>.run/` held when `mailroom retry` started
    /// a new one), rounds numbered from 1.
    pub fn history_run_dir(&self, name: &str, round: u32) -> PathBuf {
        self.tasks
            .join("history")
            .join(format!("{name}.run"))
            .join(round.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_is_the_highest_canonical_number() {
        let tmp = std::env::temp_dir().join(format!("mailroom-layout-{}", std::process::id()));
        let l = Layout::new(&tmp);
        let run = l.run_dir(State::Assigned, "t");
        assert_eq!(
            l.run_dir(State::Pending, "t"),
            run,
            "a pending task's runs are in assigned/"
        );
        assert_eq!(
            l.attempt_dir(State::Failed, "t", 3),
            tmp.join("tasks/failed/t.run/3")
        );
        assert_eq!(l.last_attempt(State::Assigned, "t"), None);
        for d in ["1", "2", "10", "011", "x"] {
            std::fs::create_dir_all(run.join(d)).unwrap();
        }
        std::fs::write(run.join("99"), "a file, not an attempt").unwrap();
        assert_eq!(
            l.last_attempt(State::Assigned, "t"),
            Some((10, run.join("10")))
        );
        // A version 2 run directory: the files directly inside.
        let old = l.run_dir(State::Completed, "o");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("stdout.log"), "").unwrap();
        assert_eq!(l.last_attempt(State::Completed, "o"), Some((0, old)));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
