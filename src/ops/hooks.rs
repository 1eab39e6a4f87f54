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
const LOG_BYTES: u64 = 4096;

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
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let done = tokio::time::timeout(timeout, async {
        let (o, e) = tokio::join!(read_capped(out), read_capped(err));
        (o, e, child.wait().await)
    })
    .await;
    match done {
        Ok((o, e, status)) => {
            for (stream, text) in [("stdout", o), ("stderr", e)] {
                if !text.trim().is_empty() {
                    info!(hook, task, stream, "hook output: {}", text.trim_end());
                }
            }
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
            warn!(
                hook,
                task,
                timeout = %humantime::format_duration(timeout),
                "hook timed out and was killed (the task is not affected)"
            );
        }
    }
}

/// Reads a stream to its end, keeping the first [`LOG_BYTES`].
async fn read_capped(r: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut r).take(LOG_BYTES).read_to_end(&mut kept).await;
    // Drain the rest so that the hook is not blocked writing it.
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).into_owned()
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
