//! The JSON files mailroom writes beside tasks: the per-task state file
//! (bookkeeping while a task is not finished) and the result record (written
//! once, before the task's move into `completed/` or `failed/`).

use serde::{Deserialize, Serialize};

use super::Outcome;
use std::time::SystemTime;

/// Version of the on-disk protocol described in PROTOCOL.md. Version 2 added
/// run keepers (`keeper.json`, `outcome.json` in a run directory); version 3
/// keeps every attempt's run directory (`<name>.run/<attempt>/`).
pub const PROTOCOL_VERSION: u32 = 3;

/// A file without a version comes from a version 1 writer.
fn protocol_version() -> u32 {
    1
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now() -> String {
    ts(SystemTime::now())
}

pub fn parse_ts(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// `tasks/assigned/<name>.state.json`: bookkeeping for a task from its first
/// claim until it is finished. Only the holder of the task's lock writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskState {
    /// Written as [`PROTOCOL_VERSION`]; optional on read (a missing one reads
    /// as 1) and not checked.
    #[serde(default = "protocol_version")]
    pub version: u32,
    pub task: String,
    /// Runs begun, ever. Never decreases.
    pub attempts: u32,
    /// Runs that did not count against `retries` (stopped by a shutdown). Never decreases.
    #[serde(default)]
    pub free_attempts: u32,
    /// Earliest time of the next claim (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// The run under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// `run_id` of the result record being committed: written before the
    /// record, so recovery finishes a commit only with the record it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing: Option<String>,
    /// Agents ruled out for this task: they could not be started, or failed it
    /// `fallback_after` times. Its route skips them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_agents: Vec<String>,
    /// The task's `subtasks` were written into `pending/` as these children;
    /// the task waits for them and then completes without an agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// The run has finished but its commit failed with this error; the
    /// supervisor holding the task's lock retries it (`mailroom status`
    /// shows it). `run` is kept, so recovery still matches the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_error: Option<String>,
    /// Recovery found the task file gone from `assigned/` during the run
    /// (moved or deleted while no supervisor watched) and put it back: what
    /// happened. The run is filed as `tampered`, never retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tampered: Option<String>,
    /// Runs in a row that could not even be prepared (their directory or
    /// state not written): the wait before the next grows with them, as a
    /// retry's backoff does. 0 again once a run is prepared.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unprepared: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskState {
    /// Attempts that count against the retry limit.
    pub fn charged(&self) -> u32 {
        self.attempts.saturating_sub(self.free_attempts)
    }
}

/// Who is running a task, so that a restarted supervisor can tell a live run
/// from an orphaned agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub attempt: u32,
    pub agent: String,
    pub host: String,
    pub supervisor_pid: u32,
    /// Start time of the supervisor process, in clock ticks since boot (from
    /// /proc), to tell it from a later process with the same pid.
    pub supervisor_start: u64,
    pub started_at: String,
    pub deadline: String,
    /// Why this agent was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `run_id` this run's result record will carry, so that recovery
    /// finishes a commit only with the record this run wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The CLI session this run uses, when known before it starts (one
    /// mailroom named, or one it resumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The run continues the session of an earlier attempt that was cut off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The parent task's session this run's conversation starts from
    /// (`session: parent`): claude copies it into a new session, codex
    /// continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session: Option<String>,
    /// A hash of the task file's content as this run was started with it
    /// (`moves::content_hash`): recovery tells an edit made in place during
    /// a run no supervisor watched by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_hash: Option<String>,
}

/// One finished attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    pub agent: String,
    pub started_at: String,
    pub finished_at: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure the agent's CLI reported (limit, transient,
    /// auth, config, task, stopped), when its adapter could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The CLI's session (conversation) id the attempt used: the one its CLI
    /// reported, else the one mailroom gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The attempt resumed `session_id`, the session of an earlier attempt
    /// that was cut off (usage limit, timeout, shutdown), with a short
    /// continuation prompt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The parent task's session the attempt's conversation started from
    /// (`session: parent`): claude copies it into a new session
    /// (`session_id`), codex continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session: Option<String>,
    /// Tokens, cost, model and turns, as the CLI reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::adapter::Usage>,
    /// This attempt's files (`<name>.run/<attempt>/`), relative to the root;
    /// filled in the result record where the terminal commit puts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}

/// Terminal status of a task.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Failed,
}

/// Where in a file an error is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorLocation {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

/// `tasks/{completed,failed}/<name>.result.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRecord {
    /// Written as [`PROTOCOL_VERSION`]; optional on read and not checked.
    #[serde(default = "protocol_version")]
    pub version: u32,
    pub task: String,
    pub status: Status,
    /// Machine-readable reason: success, exit, signal, timeout, spawn, invalid,
    /// clash, dependency, output_limit, interrupted, cancelled, runaway.
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The class of the CLI's failure (see `Attempt::error_class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The last attempt's session id and usage (each attempt has its own in
    /// `history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::adapter::Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_location: Option<ErrorLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why that agent was chosen (explicit, routing rule, requires, default, fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_reason: Option<String>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The agent's output merged into context, relative to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    /// The last attempt's files (stdout, stderr, prompt), relative to the
    /// root: `<dest>/<name>.run/<attempt>` (each attempt's are in `history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The file as it was submitted, when it was renamed to avoid a clash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_as: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Follow-up tasks this run queued from its outbox (names in `pending/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followups: Vec<String>,
    /// Follow-ups the agent wrote but that were not queued because the run
    /// failed (they stay in `<name>.run/outbox/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld_followups: Vec<String>,
    /// Child tasks made from `subtasks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// The run's workspace: a worktree's branch and path, and the files changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::run::workspace::Report>,
    #[serde(default)]
    pub history: Vec<Attempt>,
    pub host: String,
    /// Unique per finished run; lets the context merge skip an entry it already made.
    pub run_id: String,
}

/// `tasks/cooldowns/<agent>.json`: an agent that hit a usage limit, and until
/// when no supervisor on this tree starts it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cooldown {
    pub agent: String,
    pub until: String,
    pub message: String,
    pub since: String,
    pub host: String,
    /// The task whose run printed the message.
    pub task: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md says `version` is not checked on read; a record or state
    /// file without one (a third-party writer) was unreadable all the same.
    #[test]
    fn a_missing_version_reads_as_version_one() {
        let rec: ResultRecord = serde_json::from_str(
            r#"{"task":"t","status":"failed","outcome":"exit","attempts":1,
                "finished_at":"2026-01-15T10:00:00.000Z","host":"h","run_id":"r"}"#,
        )
        .unwrap();
        assert_eq!(rec.version, 1);
        let st: TaskState = serde_json::from_str(r#"{"task":"t","attempts":2}"#).unwrap();
        assert_eq!((st.version, st.attempts), (1, 2));
    }
}
