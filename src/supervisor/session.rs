//! Which CLI session a run uses (PROTOCOL.md 10.2): a new one under an id
//! mailroom chose (claude), the session of the previous attempt when that was
//! cut off (`resume: interrupted`), or the parent task's (`session: parent`).
//! The command's session options come from `adapter::session`.

use super::*;
use crate::adapter::session::{self, Session};
use crate::parse::config::Resume;

/// The session plan of one run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    /// The agent's command template with the session options.
    pub(super) command: Vec<String>,
    /// The session the run uses, when known before it starts.
    pub(super) session_id: Option<String>,
    /// It continues an earlier attempt's session; the prompt is then a short
    /// continuation saying why the earlier run stopped.
    pub(super) resumed: Option<String>,
    /// The parent task's session it starts from.
    pub(super) parent_session: Option<String>,
}

impl Job {
    /// The session of the run about to start, or None: the command as
    /// configured (a new session that the CLI names itself).
    pub(super) fn plan_session(&self, st: &TaskState) -> Option<Planned> {
        let kind = crate::adapter::Kind::from_name(&self.agent.kind, None);
        if self.agent.resume == Resume::Interrupted
            && let Some((id, why)) = cut_off(st, &self.agent.name)
        {
            let command =
                session::command(&kind, &self.agent.command, &Session::Resume(id.clone()));
            if let Some(command) = command {
                return Some(Planned {
                    command,
                    session_id: Some(id),
                    resumed: Some(why),
                    parent_session: None,
                });
            }
        }
        if self.task.session_parent {
            match self.parent_session() {
                Some(from) => {
                    let id = new_session_id();
                    let s = Session::Fork {
                        from: from.clone(),
                        id: id.clone(),
                    };
                    if let Some(command) = session::command(&kind, &self.agent.command, &s) {
                        // codex continues the parent's session itself.
                        let own = command.iter().any(|a| a == &id);
                        return Some(Planned {
                            command,
                            session_id: Some(if own { id } else { from.clone() }),
                            resumed: None,
                            parent_session: Some(from),
                        });
                    }
                    warn!(task = %self.name, agent = %self.agent.name,
                        "`session: parent`: this agent's command cannot continue a session; starting a new one");
                }
                None => warn!(task = %self.name,
                    "`session: parent`: no session of the parent (or an ancestor) on an agent of kind `{}`; starting a new one",
                    self.agent.kind),
            }
        }
        if self.agent.resume == Resume::Never {
            return None;
        }
        // A session named before the run, so that a run cut off before its
        // CLI printed anything can be resumed.
        let id = new_session_id();
        let command = session::command(&kind, &self.agent.command, &Session::New(id.clone()))?;
        Some(Planned {
            command,
            session_id: Some(id),
            resumed: None,
            parent_session: None,
        })
    }

    /// The session of the nearest ancestor (following `parent:`) whose last
    /// attempt ran on an agent of this agent's kind and had a session.
    fn parent_session(&self) -> Option<String> {
        let layout = &self.ctx.layout;
        let mut cur = self.task.parent.clone()?;
        for _ in 0..=self.config.max_tree_depth {
            let rec = crate::tree::recovery::records(layout, &cur)
                .into_iter()
                .map(|(_, r)| r)
                .find(|r| r.task == cur);
            let history = match rec {
                Some(r) => r.history,
                None => books::read_state(layout, &cur).history,
            };
            let found = history.iter().rev().find_map(|a| {
                let kind = self.config.agents.get(&a.agent).map(|x| x.kind.as_str());
                (kind == Some(self.agent.kind.as_str()))
                    .then(|| a.session_id.clone())
                    .flatten()
            });
            if found.is_some() {
                return found;
            }
            cur = layout
                .locate(&cur)
                .and_then(|(_, p, _)| fsx::read_task_file(&p, self.config.max_task_bytes).ok())
                .and_then(|(b, _)| task::parse(&cur, &b).ok())
                .and_then(|t| t.parent)?;
        }
        None
    }
}

/// The session of the last attempt, if it ran on `agent`, was cut off (a
/// usage limit, its timeout, a shutdown or a supervisor that died) and has a
/// known session; with why it stopped, for the continuation prompt.
pub(super) fn cut_off(st: &TaskState, agent: &str) -> Option<(String, String)> {
    let a = st.history.last()?;
    if a.agent != agent {
        return None;
    }
    let why = match a.outcome {
        Outcome::Limited => "the agent hit a usage limit",
        Outcome::Timeout => "it ran past its timeout",
        Outcome::Interrupted => "mailroom stopped it (a shutdown, or a supervisor that died)",
        _ => return None,
    };
    Some((a.session_id.clone()?, why.to_owned()))
}

/// A new session id: a random UUID (version 4), as claude's `--session-id`
/// wants one.
fn new_session_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // Unique enough without the kernel's randomness: time, pid, a counter.
        let id = books::run_id();
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
            (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
        });
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b[..8].copy_from_slice(&h.to_le_bytes());
        b[8..].copy_from_slice(&t.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(agent: &str, outcome: Outcome, session: Option<&str>) -> Attempt {
        Attempt {
            agent: agent.into(),
            outcome,
            session_id: session.map(str::to_owned),
            ..Attempt::default()
        }
    }

    #[test]
    fn only_a_cut_off_attempt_of_this_agent_with_a_session_is_resumed() {
        let st = |a: Attempt| TaskState {
            history: vec![attempt("x", Outcome::Exit, Some("old")), a],
            ..TaskState::default()
        };
        for o in [Outcome::Limited, Outcome::Timeout, Outcome::Interrupted] {
            let (id, why) = cut_off(&st(attempt("a", o, Some("s1"))), "a").unwrap();
            assert_eq!(id, "s1");
            assert!(!why.is_empty());
        }
        for o in [
            Outcome::Exit,
            Outcome::Success,
            Outcome::Signal,
            Outcome::AgentError,
        ] {
            assert_eq!(
                cut_off(&st(attempt("a", o, Some("s1"))), "a"),
                None,
                "{o:?}"
            );
        }
        assert_eq!(
            cut_off(&st(attempt("a", Outcome::Timeout, None)), "a"),
            None
        );
        assert_eq!(
            cut_off(&st(attempt("b", Outcome::Timeout, Some("s"))), "a"),
            None
        );
        assert_eq!(cut_off(&TaskState::default(), "a"), None);
    }

    #[test]
    fn session_ids_are_version_4_uuids() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
    }
}
