//! Hooks: the operator's commands run when a task ends (`on_complete`,
//! `on_fail`) or an agent cools down (`on_limit`). Each runs on a tokio task
//! of its own, never through a shell, with stdin from /dev/null, its output in
//! the supervisor's log, and a timeout after which its process group is
//! killed. A hook reports; it never blocks the loop and never changes a task.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Complete,
    Fail,
    Limit,
}

impl HookKind {
    /// The key under `hooks:`.
    pub fn key(self) -> &'static str {
        match self {
            HookKind::Complete => "on_complete",
            HookKind::Fail => "on_fail",
            HookKind::Limit => "on_limit",
        }
    }
}

/// What happened, as the hook sees it. Values that do not apply are empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookEvent {
    /// The task's name.
    pub name: String,
    /// Where the task is now: `completed`, `failed` or `pending`.
    pub state: String,
    /// The outcome (`success`, `exit`, `timeout`, `limited`, ...).
    pub outcome: String,
    /// The result record's path (empty when there is none yet).
    pub record: String,
    /// The agent's output in `context/agent_outputs/` (empty when there is none).
    pub output: String,
    /// The agent that ran it, or that cools down.
    pub agent: String,
    /// `on_limit`: the end of the cooldown, RFC 3339.
    pub until: String,
    /// The tree's root.
    pub root: String,
}

impl HookEvent {
    /// Each placeholder (config's `HOOK_PLACEHOLDERS`) with its value and
    /// its environment variable.
    pub fn vars(&self) -> [(&'static str, &'static str, &str); 8] {
        [
            ("name", "MAILROOM_TASK", &self.name),
            ("state", "MAILROOM_STATE", &self.state),
            ("outcome", "MAILROOM_OUTCOME", &self.outcome),
            ("record", "MAILROOM_RECORD", &self.record),
            ("output", "MAILROOM_OUTPUT", &self.output),
            ("agent", "MAILROOM_AGENT", &self.agent),
            ("until", "MAILROOM_UNTIL", &self.until),
            ("root", "MAILROOM_ROOT", &self.root),
        ]
    }

    /// The hook's argv: placeholders substituted inside each word, once.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let vars = self.vars();
        command
            .iter()
            .map(|w| {
                crate::run::process::substitute_with(w, |k| {
                    vars.iter().find(|(p, _, _)| *p == k).map(|(_, _, v)| *v)
                })
            })
            .collect()
    }
}

/// How much of each output stream goes into the log.
const LOG_BYTES: usize = 4096;

/// How many hooks a supervisor runs at once. Each holds a process and three
/// descriptors until it ends (at most `hook_timeout`): a burst of filings (a
/// queue that fails at once after a config mistake) must not start hundreds
/// of them and leave the supervisor without descriptors for its own work.
/// The others wait their turn, in order.
pub const MAX_RUNNING: usize = 16;

/// After a hook is killed, how long to read what it left in its pipes (a
/// process that escaped its group may hold them open for ever).
const DRAIN: Duration = Duration::from_millis(500);

/// Runs one hook to its end or its timeout, logging what happened. Never
/// fails: every problem is a log line.
pub async fn run(kind: HookKind, command: Vec<String>, ev: HookEvent, timeout: Duration) {
    let argv = ev.argv(&command);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&ev.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for v in crate::run::process::STRIPPED_ENV {
        cmd.env_remove(v);
    }
    cmd.env("MAILROOM_HOOK", kind.key());
    for (_, var, value) in ev.vars() {
        cmd.env(var, value);
    }
    let hook = kind.key();
    let task = ev.name.as_str();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(hook, task, command = %argv[0], error = %e, "hook could not be started");
            return;
        }
    };
    let pgid = child.id();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    // Filled as the hook writes, so a hook killed at its timeout still
    // leaves what it printed until then.
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let done = tokio::time::timeout(timeout, async {
        tokio::join!(read_capped(&mut out, &mut o), read_capped(&mut err, &mut e));
        child.wait().await
    })
    .await;
    match done {
        Ok(status) => {
            log_output(hook, task, &o, &e);
            match status {
                Ok(s) if s.success() => info!(hook, task, status = %s, "hook ran"),
                Ok(s) => warn!(hook, task, status = %s, "hook failed (the task is not affected)"),
                Err(e) => warn!(hook, task, error = %e, "hook could not be awaited"),
            }
        }
        Err(_) => {
            if let Some(p) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            let _ = tokio::time::timeout(DRAIN, async {
                tokio::join!(read_capped(&mut out, &mut o), read_capped(&mut err, &mut e))
            })
            .await;
            log_output(hook, task, &o, &e);
            warn!(
                hook,
                task,
                timeout = %humantime::format_duration(timeout),
                "hook timed out and was killed (the task is not affected)"
            );
        }
    }
}

/// A hook's output in the log, each stream as one line.
fn log_output(hook: &str, task: &str, out: &[u8], err: &[u8]) {
    for (stream, bytes) in [("stdout", out), ("stderr", err)] {
        let text = String::from_utf8_lossy(bytes);
        if !text.trim().is_empty() {
            info!(hook, task, stream, "hook output: {}", text.trim_end());
        }
    }
}

/// Reads a stream to its end into `kept`, up to [`LOG_BYTES`] there, and
/// drains the rest so that the hook is not blocked writing it. Cancel safe:
/// whatever was read before the future is dropped is in `kept`.
async fn read_capped(r: &mut Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(r) = r else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = LOG_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_once_inside_words() {
        let ev = HookEvent {
            name: "fix".into(),
            state: "failed".into(),
            outcome: "{name}".into(),
            ..HookEvent::default()
        };
        let argv = ev.argv(&[
            "notify".into(),
            "{name} is {state}".into(),
            "{outcome}".into(),
            "{x}".into(),
        ]);
        assert_eq!(argv, ["notify", "fix is failed", "{name}", "{x}"]);
    }
}
