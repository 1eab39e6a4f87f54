//! What a finished run means. Pure: the job gathers the facts (how the process
//! ended, the history, the policy) and applies the verdict; nothing here reads
//! a file, looks at a clock or starts a process.

use std::time::Duration;

use crate::model::Outcome;
use crate::run::process::{Exit, RunEnd};

/// Usage-limit hits per task that do not use up an attempt: output that merely
/// looks like a limit message must not rerun a task forever. Past them a
/// limit still cools the agent down, and is a failed attempt like another.
pub const MAX_FREE_LIMITED: usize = 8;

/// Runs of a task stopped by a shutdown that go back to the queue without
/// using up an attempt: a supervisor restarted again and again (a restart
/// loop, a deploy script gone wrong) must not restart the same run for
/// ever. Past them such a stop counts against `retries` like a failure.
pub const MAX_FREE_INTERRUPTED: usize = 8;

/// How a process ended, in the record's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub outcome: Outcome,
    pub exit: Option<Exit>,
    /// The error for the record, before the stderr tail is added.
    pub error: Option<String>,
}

/// The outcome of a run from how its process ended. `timeout` and `max_output`
/// only go into messages.
pub fn ended(end: &RunEnd, timeout: Duration, max_output: u64) -> Ended {
    let (outcome, exit, error) = match end {
        RunEnd::Exited(Exit::Code(0)) => (Outcome::Success, Some(Exit::Code(0)), None),
        RunEnd::Exited(e @ Exit::Code(c)) => (
            Outcome::Exit,
            Some(*e),
            Some(format!("agent exited with code {c}")),
        ),
        RunEnd::Exited(e @ Exit::Signal(s)) => (
            Outcome::Signal,
            Some(*e),
            Some(format!("agent was killed by signal {}", sig_name(*s))),
        ),
        RunEnd::TimedOut(e) => (
            Outcome::Timeout,
            Some(*e),
            Some(format!(
                "agent timed out after {}",
                humantime::format_duration(timeout)
            )),
        ),
        RunEnd::OutputLimit(e, n) => (
            Outcome::OutputLimit,
            Some(*e),
            Some(format!(
                "agent wrote {n} bytes of output, over max_output_bytes ({max_output}) (stopped \
                 when it passed the limit, or found over it when the agent ended)"
            )),
        ),
        // A run mailroom stopped is never a success, whatever its exit code
        // (gemini exits 0 on SIGTERM with nothing done).
        RunEnd::Stopped(e) => (
            Outcome::Interrupted,
            Some(*e),
            Some("stopped by shutdown".into()),
        ),
        RunEnd::Cancelled(e) => (
            Outcome::Cancelled,
            Some(*e),
            Some("cancelled on request (a cancel marker in tasks/control/cancel/, from `mailroom cancel`, the dashboard or another tool)".into()),
        ),
        RunEnd::SpawnFailed { error, .. } => (Outcome::Spawn, None, Some(error.clone())),
        // Never a spawn failure: the agent ran, and its end is unknown. A
        // removed run directory is the agent's doing as a rule.
        RunEnd::Lost {
            error,
            killed,
            run_dir_gone,
        } => (
            if *run_dir_gone {
                Outcome::Tampered
            } else if *killed {
                Outcome::Signal
            } else {
                Outcome::Exit
            },
            None,
            Some(error.clone()),
        ),
    };
    Ended {
        outcome,
        exit,
        error,
    }
}

pub(super) fn sig_name(s: i32) -> String {
    nix::sys::signal::Signal::try_from(s)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| s.to_string())
}

/// What the agent's CLI said of a run (its adapter's report), folded into the
/// run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub outcome: Outcome,
    pub error: Option<String>,
    /// The failure's class, as records name it.
    pub class: Option<&'static str>,
    /// Auth or config: this agent cannot work as configured.
    pub fatal: bool,
    /// A usage limit the CLI reported, with its reset as the CLI gave it.
    pub limit: Option<(String, Option<crate::adapter::Reset>)>,
}

/// Folds an adapter's report into how the process ended: a structured error
/// with exit 0 is a failure (`agent_error`), auth and config problems are
/// `misconfigured`, a limit is reported for the cooldown; a run mailroom
/// stopped keeps its own outcome. Without a report nothing changes.
pub fn read(ended: &Ended, report: Option<&crate::adapter::RunReport>) -> Read {
    use crate::adapter::{Class, ErrorClass};
    let mut r = Read {
        outcome: ended.outcome,
        error: ended.error.clone(),
        class: None,
        fatal: false,
        limit: None,
    };
    let Some(rep) = report else { return r };
    let Class::Failed(class) = &rep.outcome else {
        return r;
    };
    r.class = Some(class.name());
    let message = rep.message.clone().unwrap_or_else(|| class.name().into());
    if matches!(class, ErrorClass::Stopped) {
        // Stopped by mailroom: its own reason stands, with what the CLI had
        // said last, when it said something (why it never finished).
        if let Some(cause) = &rep.cause {
            r.error = Some(match &ended.error {
                Some(e) => format!("{e}; the CLI's last error: {cause}"),
                None => format!("the CLI's last error: {cause}"),
            });
        }
        return r;
    }
    if let ErrorClass::Limit { reset } = class {
        r.limit = Some((message.clone(), reset.clone()));
    }
    r.fatal = matches!(class, ErrorClass::Auth | ErrorClass::Config);
    if r.fatal
        && matches!(
            r.outcome,
            Outcome::Success | Outcome::Exit | Outcome::Signal
        )
    {
        r.outcome = Outcome::Misconfigured;
    } else if r.outcome == Outcome::Success {
        r.outcome = Outcome::AgentError;
    }
    r.error = Some(match &ended.error {
        Some(e) => format!("{e}: {message}"),
        None => message,
    });
    r
}

/// Whether a usage-limit message in this run's output counts: the job looks
/// for one (reads the run's files) only when it does.
pub fn limit_applies(outcome: Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::Spawn | Outcome::Cancelled | Outcome::Tampered
    )
}

/// Everything the verdict depends on, gathered by the job after the run (its
/// attempt already counted and in the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The run's outcome (after the runaway check of a successful run).
    pub outcome: Outcome,
    /// A usage-limit message was found (only looked for when [`limit_applies`]).
    pub limited: bool,
    /// The task has hit fewer than [`MAX_FREE_LIMITED`] limits before: this
    /// one does not use up an attempt.
    pub limit_free: bool,
    /// The agent's CLI cannot work as configured (auth or config): retrying
    /// the same agent is pointless.
    pub fatal: bool,
    /// Other agents could take the task if this one is ruled out.
    pub alternatives: bool,
    /// Failed attempts of this agent on this task, this one included (limited
    /// and interrupted attempts do not count).
    pub agent_failures: u32,
    /// Attempts that count against `retries`, this one included.
    pub charged: u32,
    pub retries: u32,
    pub fallback_after: u32,
    /// The shutdown that stopped the run was sent by the run's own agent (or
    /// a process of its own): the stop is the agent's doing, and not free.
    pub stopped_by_own_agent: bool,
    /// The task's runs were stopped by a shutdown fewer than
    /// [`MAX_FREE_INTERRUPTED`] times before this one: this stop is free.
    pub interrupt_free: bool,
    /// The run was to resume a session that its CLI says is not there: it
    /// did nothing (the run before it saved none).
    pub session_missing: bool,
}

/// What to do with the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Usage limit: cool the agent down and requeue; `free`: without using
    /// an attempt (within [`MAX_FREE_LIMITED`]).
    Cooldown { free: bool },
    /// Rule this agent out for the task and requeue it for the next one of its
    /// route; `free`: the attempt does not count (the agent never started).
    Fallback { free: bool },
    /// Stopped by a shutdown: requeue; `free`: without using an attempt
    /// (a shutdown its own agent sent is not free).
    Requeue { free: bool },
    /// Requeue at once without using an attempt, to start a new session:
    /// the one to resume is not there.
    NewSession,
    /// Requeue after the backoff for the `n`th charged attempt.
    Retry { n: u32 },
    /// File it for good; `exclude_agent`: the agent is ruled out in the state
    /// kept with the record (it used up its fallback chances).
    Commit {
        outcome: Outcome,
        exclude_agent: bool,
    },
}

/// The product's core policy: retry, fallback, cooldown, requeue or commit.
pub fn decide(f: &Facts) -> Verdict {
    use Outcome::*;
    let o = f.outcome;
    // A task whose file was moved, deleted or shadowed during its run is
    // filed once: a retry would only give its agent the same chance again.
    if o == Tampered {
        return Verdict::Commit {
            outcome: o,
            exclude_agent: false,
        };
    }
    // A resume of a session its CLI never saved did nothing: again, anew.
    // (At most once per resume, and a resume follows a limit, a timeout or
    // an interruption, each bounded on its own.)
    if f.session_missing && !matches!(o, Success | Cancelled | Interrupted | Runaway) && !f.limited
    {
        return Verdict::NewSession;
    }
    // Past the free limits a limit is a charged failure; a run stopped by a
    // shutdown, or a runaway, is still what it was.
    let charged_limit_applies = f.limit_free || !matches!(o, Interrupted | Runaway);
    if f.limited && !matches!(o, Spawn | Cancelled) && charged_limit_applies {
        if f.limit_free || f.charged <= f.retries {
            return Verdict::Cooldown { free: f.limit_free };
        }
        // Past the free ones and out of attempts: a limit ends the task as
        // a failure, never as the success its exit code may claim.
        return Verdict::Commit {
            outcome: Limited,
            exclude_agent: false,
        };
    }
    // An agent that cannot work as configured hands the task over at once
    // (for free: nothing ran) or fails it, never retries it.
    if f.fatal && !matches!(o, Success | Cancelled | Runaway | Interrupted) {
        if f.alternatives {
            return Verdict::Fallback { free: true };
        }
        return Verdict::Commit {
            outcome: o,
            exclude_agent: false,
        };
    }
    // A run stopped by a shutdown goes back to the queue for free, unless
    // its own agent sent the shutdown, or the task was stopped so too often:
    // then the attempt counts, and with none left the task fails as
    // interrupted.
    if o == Interrupted {
        if !f.stopped_by_own_agent && f.interrupt_free {
            return Verdict::Requeue { free: true };
        }
        if f.charged <= f.retries {
            return Verdict::Requeue { free: false };
        }
        return Verdict::Commit {
            outcome: o,
            exclude_agent: false,
        };
    }
    let mut exclude_agent = false;
    // An agent that cannot be started, or has failed this task
    // `fallback_after` times, hands it to the next agent of its route.
    if f.alternatives
        && !matches!(o, Success | Cancelled | Runaway | Interrupted)
        && (o == Spawn || f.agent_failures >= f.fallback_after)
    {
        if o == Spawn {
            return Verdict::Fallback { free: true };
        }
        if f.charged <= f.retries {
            return Verdict::Fallback { free: false };
        }
        exclude_agent = true;
    }
    if !matches!(o, Success | Spawn | Runaway | Cancelled) && f.charged <= f.retries {
        return Verdict::Retry { n: f.charged };
    }
    Verdict::Commit {
        outcome: o,
        exclude_agent,
    }
}

/// Exponential backoff with equal jitter: between half and all of
/// `base * 2^(n-1)`, capped at `max`. `entropy` picks the point (the caller
/// passes the clock's nanoseconds and its pid).
pub fn backoff(base: Duration, max: Duration, n: u32, entropy: u64) -> Duration {
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let span = half.as_nanos().max(1) as u64;
    half + Duration::from_nanos(entropy % span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{
        Cancelled, Exit as Failed, Interrupted, Invalid, OutputLimit, Runaway, Signal, Spawn,
        Success, Tampered, Timeout,
    };

    fn facts(outcome: Outcome) -> Facts {
        Facts {
            outcome,
            limited: false,
            limit_free: true,
            fatal: false,
            alternatives: false,
            agent_failures: 1,
            charged: 1,
            retries: 2,
            fallback_after: 2,
            stopped_by_own_agent: false,
            interrupt_free: true,
            session_missing: false,
        }
    }

    /// A task whose runs shutdowns stopped `MAX_FREE_INTERRUPTED` times
    /// goes on paying for the next stop: a restart loop ends it.
    #[test]
    fn stops_by_shutdown_past_the_free_ones_are_charged() {
        let f = Facts {
            interrupt_free: false,
            ..facts(Interrupted)
        };
        assert_eq!(decide(&f), Verdict::Requeue { free: false });
        assert_eq!(decide(&Facts { charged: 3, ..f }), commit(Interrupted));
        assert_eq!(decide(&facts(Interrupted)), Verdict::Requeue { free: true });
    }

    fn commit(outcome: Outcome) -> Verdict {
        Verdict::Commit {
            outcome,
            exclude_agent: false,
        }
    }

    /// A resume of a session the CLI never saved is run again anew, for
    /// free, even out of attempts; a limit or a success still wins.
    #[test]
    fn a_missing_session_starts_anew_for_free() {
        let lost = |o, charged| Facts {
            session_missing: true,
            charged,
            ..facts(o)
        };
        assert_eq!(decide(&lost(Failed, 1)), Verdict::NewSession);
        assert_eq!(decide(&lost(Failed, 3)), Verdict::NewSession);
        assert_eq!(decide(&lost(Success, 1)), commit(Success));
        let limited = Facts {
            limited: true,
            ..lost(Failed, 1)
        };
        assert_eq!(decide(&limited), Verdict::Cooldown { free: true });
    }

    #[test]
    fn every_outcome_without_alternatives() {
        // (outcome, attempts left?) -> verdict
        let table: &[(Outcome, Verdict, Verdict)] = &[
            (Success, commit(Success), commit(Success)),
            (Failed, Verdict::Retry { n: 1 }, commit(Failed)),
            (Signal, Verdict::Retry { n: 1 }, commit(Signal)),
            (Timeout, Verdict::Retry { n: 1 }, commit(Timeout)),
            (OutputLimit, Verdict::Retry { n: 1 }, commit(OutputLimit)),
            (Spawn, commit(Spawn), commit(Spawn)),
            (Runaway, commit(Runaway), commit(Runaway)),
            (Cancelled, commit(Cancelled), commit(Cancelled)),
            (
                Interrupted,
                Verdict::Requeue { free: true },
                Verdict::Requeue { free: true },
            ),
            (Invalid, Verdict::Retry { n: 1 }, commit(Invalid)),
            (Tampered, commit(Tampered), commit(Tampered)),
        ];
        for (o, left, none_left) in table {
            assert_eq!(decide(&facts(*o)), *left, "{o} with attempts left");
            let f = Facts {
                charged: 3,
                ..facts(*o)
            };
            let want = match none_left {
                Verdict::Retry { .. } => unreachable!(),
                v => *v,
            };
            assert_eq!(decide(&f), want, "{o} with no attempts left");
        }
    }

    #[test]
    fn a_limit_cools_down_unless_the_agent_never_ran_or_was_cancelled() {
        for o in Outcome::ALL {
            let f = Facts {
                limited: true,
                ..facts(o)
            };
            let v = decide(&f);
            if matches!(o, Spawn | Cancelled | Tampered) {
                assert!(!matches!(v, Verdict::Cooldown { .. }), "{o}");
            } else {
                assert_eq!(v, Verdict::Cooldown { free: true }, "{o}");
            }
        }
        assert!(limit_applies(Success));
        assert!(!limit_applies(Spawn));
        assert!(!limit_applies(Cancelled));
        assert!(!limit_applies(Tampered));
    }

    /// Past the free limits, a limit uses up an attempt, and with none left
    /// the task fails `limited`: an exit code of 0 does not make it a success.
    #[test]
    fn a_limit_past_the_free_ones_is_charged_then_fails_the_task() {
        for o in [Success, Failed, Timeout] {
            let f = Facts {
                limited: true,
                limit_free: false,
                ..facts(o)
            };
            assert_eq!(decide(&f), Verdict::Cooldown { free: false }, "{o}");
            let f = Facts { charged: 3, ..f };
            assert_eq!(decide(&f), commit(Outcome::Limited), "{o}");
        }
        // A run stopped by a shutdown stays a free requeue, a runaway a
        // runaway.
        let past = |o| Facts {
            limited: true,
            limit_free: false,
            ..facts(o)
        };
        assert_eq!(decide(&past(Interrupted)), Verdict::Requeue { free: true });
        assert_eq!(decide(&past(Runaway)), commit(Runaway));
    }

    #[test]
    fn fallback_after_repeated_failures_or_a_missing_agent() {
        let alt = |o, agent_failures, charged| Facts {
            alternatives: true,
            agent_failures,
            charged,
            ..facts(o)
        };
        // A missing agent hands over at once, for free.
        assert_eq!(decide(&alt(Spawn, 1, 1)), Verdict::Fallback { free: true });
        assert_eq!(decide(&alt(Spawn, 1, 9)), Verdict::Fallback { free: true });
        // Below fallback_after: an ordinary retry on the same agent.
        assert_eq!(decide(&alt(Failed, 1, 1)), Verdict::Retry { n: 1 });
        // At fallback_after, with attempts left: the next agent.
        assert_eq!(
            decide(&alt(Failed, 2, 2)),
            Verdict::Fallback { free: false }
        );
        // At fallback_after, none left: failed, the agent ruled out.
        assert_eq!(
            decide(&alt(Failed, 2, 3)),
            Verdict::Commit {
                outcome: Failed,
                exclude_agent: true
            }
        );
        // Success, cancel, runaway and tampering never fall back.
        for o in [Success, Cancelled, Runaway, Tampered] {
            assert_eq!(decide(&alt(o, 5, 1)), commit(o), "{o}");
        }
        // Without alternatives a missing agent is final.
        assert_eq!(decide(&facts(Spawn)), commit(Spawn));
    }

    #[test]
    fn the_outcome_of_each_way_a_process_ends() {
        let t = Duration::from_secs(90);
        let cases = [
            (RunEnd::Exited(Exit::Code(0)), Success),
            (RunEnd::Exited(Exit::Code(3)), Failed),
            (RunEnd::Exited(Exit::Signal(9)), Signal),
            (RunEnd::TimedOut(Exit::Signal(15)), Timeout),
            (RunEnd::OutputLimit(Exit::Signal(15), 10), OutputLimit),
            (RunEnd::Stopped(Exit::Code(0)), Interrupted),
            (RunEnd::Stopped(Exit::Signal(15)), Interrupted),
            (RunEnd::Cancelled(Exit::Code(0)), Cancelled),
        ];
        for (end, want) in cases {
            let e = ended(&end, t, 1);
            assert_eq!(e.outcome, want, "{end:?}");
            assert_eq!(e.error.is_none(), want == Success, "{end:?}");
        }
        let e = ended(&RunEnd::Exited(Exit::Signal(9)), t, 1);
        assert!(e.error.unwrap().contains("SIGKILL"));
        let e = ended(&RunEnd::TimedOut(Exit::Signal(15)), t, 1);
        assert!(e.error.unwrap().contains("1m 30s"));
    }

    #[test]
    fn a_misconfigured_agent_is_never_retried() {
        let f = |alternatives| Facts {
            fatal: true,
            alternatives,
            ..facts(Outcome::Misconfigured)
        };
        assert_eq!(decide(&f(false)), commit(Outcome::Misconfigured));
        assert_eq!(decide(&f(true)), Verdict::Fallback { free: true });
        // A stop still requeues for free; a cancel is still final.
        let stopped = Facts {
            fatal: true,
            ..facts(Interrupted)
        };
        assert_eq!(decide(&stopped), Verdict::Requeue { free: true });
    }

    /// A shutdown sent by the run's own agent is no free requeue: the attempt
    /// counts, and with none left the task fails as interrupted. Alternatives
    /// change nothing: the stop says nothing of the agent's skill.
    #[test]
    fn a_shutdown_from_its_own_agent_is_charged() {
        let own = |charged, alternatives| Facts {
            stopped_by_own_agent: true,
            charged,
            alternatives,
            agent_failures: 5,
            ..facts(Interrupted)
        };
        for alternatives in [false, true] {
            assert_eq!(
                decide(&own(1, alternatives)),
                Verdict::Requeue { free: false }
            );
            assert_eq!(decide(&own(3, alternatives)), commit(Interrupted));
            let other = Facts {
                stopped_by_own_agent: false,
                ..own(3, alternatives)
            };
            assert_eq!(decide(&other), Verdict::Requeue { free: true });
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Duration::from_secs(5);
        let m = Duration::from_secs(60);
        for n in 1..10 {
            for entropy in [0, 1, 12345, u64::MAX] {
                let d = backoff(b, m, n, entropy);
                let full = (b * (1 << (n - 1))).min(m);
                assert!(d >= full / 2 && d <= full, "n={n} d={d:?}");
            }
        }
    }
}
