//! What a run or a refusal came to: one closed enum, written into records as the
//! snake_case strings PROTOCOL.md lists.

use serde::{Deserialize, Serialize};

/// The machine-readable reason in a result record (`outcome`) and in each
/// attempt of its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The agent exited 0 (or a parent's subtasks all completed).
    Success,
    /// The agent exited with a non-zero code.
    Exit,
    /// The agent was killed by a signal it was not sent by mailroom.
    Signal,
    /// The agent ran past its timeout and was stopped.
    Timeout,
    /// The agent could not be started.
    Spawn,
    /// The task file (or something it names) is invalid.
    Invalid,
    /// The task's name is taken by another task.
    Clash,
    /// A task it depends on failed, or the dependencies form a cycle.
    Dependency,
    /// The agent wrote more output than `max_output_bytes`.
    OutputLimit,
    /// The run was stopped by a shutdown (requeued for free) or its
    /// supervisor died (recovery).
    Interrupted,
    /// `mailroom cancel`.
    Cancelled,
    /// A successful run whose follow-ups broke a runaway limit.
    Runaway,
    /// The attempt hit a usage limit (history only; requeued for free).
    Limited,
    /// The agent's CLI reported a failure although it exited 0 (aider on a
    /// 500, claude's `is_error`, gemini's error JSON).
    AgentError,
    /// The agent's CLI cannot work as configured (not logged in, a missing
    /// key, an unknown flag, an untrusted folder): never retried.
    Misconfigured,
    /// The task's file was moved, deleted or shadowed during its run (by its
    /// agent, as a rule): filed once in `failed/`, never retried.
    Tampered,
    /// A value this version does not know (a newer or third-party writer).
    #[default]
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The string written into records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Exit => "exit",
            Outcome::Signal => "signal",
            Outcome::Timeout => "timeout",
            Outcome::Spawn => "spawn",
            Outcome::Invalid => "invalid",
            Outcome::Clash => "clash",
            Outcome::Dependency => "dependency",
            Outcome::OutputLimit => "output_limit",
            Outcome::Interrupted => "interrupted",
            Outcome::Cancelled => "cancelled",
            Outcome::Runaway => "runaway",
            Outcome::Limited => "limited",
            Outcome::AgentError => "agent_error",
            Outcome::Misconfigured => "misconfigured",
            Outcome::Tampered => "tampered",
            Outcome::Unknown => "unknown",
        }
    }

    /// Every value, for tables and tests.
    pub const ALL: [Outcome; 17] = [
        Outcome::Success,
        Outcome::Exit,
        Outcome::Signal,
        Outcome::Timeout,
        Outcome::Spawn,
        Outcome::Invalid,
        Outcome::Clash,
        Outcome::Dependency,
        Outcome::OutputLimit,
        Outcome::Interrupted,
        Outcome::Cancelled,
        Outcome::Runaway,
        Outcome::Limited,
        Outcome::AgentError,
        Outcome::Misconfigured,
        Outcome::Tampered,
        Outcome::Unknown,
    ];
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_protocol_strings() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        assert_eq!(
            serde_json::from_str::<Outcome>("\"from_the_future\"").unwrap(),
            Outcome::Unknown
        );
    }
}
