//! Recovery of an orphan: a task in `assigned/` whose lock nobody holds (its
//! supervisor died). [`decide`] is the pure policy (finish a commit whose record
//! is written, fail a task with no attempts left, or requeue it); [`apply`]
//! carries the decision out with the protocol's moves. The supervisor and the
//! property tests call the same two functions.

use std::io;

use crate::model::Outcome;
use crate::model::record::{Attempt, ResultRecord, TaskState};
use crate::tree::layout::{Layout, State};
use crate::tree::{books, context, moves};

/// What recovery does with one orphan.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The run's result record is written (it names this run): the crash came
    /// after it, so only the move out of `assigned/` is left to do.
    FinishCommit {
        dest: State,
        record: Box<ResultRecord>,
    },
    /// The run died and the task has no attempts left: it fails.
    Fail {
        state: Box<TaskState>,
        record: Box<ResultRecord>,
    },
    /// Back to `pending/`, the interrupted attempt (if any) in its history.
    Requeue { state: Box<TaskState> },
}

/// What `decide` needs besides the task's state and records; passed in so that
/// the decision itself reads no clock and no host name.
#[derive(Debug, Clone)]
pub struct Env {
    /// The task's `retries` (or the config's default).
    pub retries: u32,
    /// The time to stamp on the interrupted attempt.
    pub now: String,
    /// This host, for a failure record.
    pub host: String,
    /// A fresh run id, for a failure record.
    pub run_id: String,
    /// The pid of the run's keeper, which ended without an outcome (its
    /// `keeper.json` is there; it is not alive, or the run would have been
    /// adopted), so that the error says both died.
    pub keeper_ended: Option<u32>,
}

/// The result records found for `name` in `completed/` and `failed/`.
pub fn records(layout: &Layout, name: &str) -> Vec<(State, ResultRecord)> {
    [State::Completed, State::Failed]
        .into_iter()
        .filter_map(|dest| {
            let b = std::fs::read(layout.record_file(dest, name)).ok()?;
            let rec = serde_json::from_slice::<ResultRecord>(&b).ok()?;
            Some((dest, rec))
        })
        .collect()
}

/// The policy. A record counts only if it belongs to this task and names the
/// run the state file was committing or running: a stale record of an earlier
/// life of the same name never finishes a commit.
pub fn decide(
    name: &str,
    mut st: TaskState,
    found: Vec<(State, ResultRecord)>,
    env: &Env,
) -> Decision {
    let ours = |rec: &ResultRecord| {
        rec.task == name
            && (st.committing.as_deref() == Some(rec.run_id.as_str())
                || st.run.as_ref().and_then(|r| r.run_id.as_deref()) == Some(rec.run_id.as_str()))
    };
    if let Some((dest, record)) = found.into_iter().find(|(_, r)| ours(r)) {
        return Decision::FinishCommit {
            dest,
            record: Box::new(record),
        };
    }
    st.committing = None;
    if let Some(run) = st.run.take() {
        let why = format!(
            "the supervisor (pid {} on {}) stopped during attempt {}{}",
            run.supervisor_pid,
            run.host,
            run.attempt,
            env.keeper_ended
                .map(|k| format!(", and the run's keeper (pid {k}) ended without an outcome"))
                .unwrap_or_default()
        );
        st.history.push(Attempt {
            attempt: run.attempt,
            agent: run.agent.clone(),
            started_at: run.started_at.clone(),
            finished_at: env.now.clone(),
            outcome: Outcome::Interrupted,
            exit_code: None,
            signal: None,
            error: Some(why.clone()),
            error_class: None,
            // The session it used, when mailroom knew it before the run:
            // the next attempt may resume it.
            session_id: run.session_id.clone(),
            resumed: run.resumed,
            parent_session: run.parent_session.clone(),
            usage: None,
            run_dir: None,
        });
        st.last_error = Some(why.clone());
        // Its agent moved or deleted the task file (recovery put it back):
        // such a run is never retried. Else it fails once no attempts are left.
        let fail = if let Some(t) = st.tampered.take() {
            let error = format!("{t}; {why}");
            if let Some(a) = st.history.last_mut() {
                a.outcome = Outcome::Tampered;
                a.error = Some(error.clone());
            }
            Some((Outcome::Tampered, error))
        } else if st.charged() > env.retries {
            Some((
                Outcome::Interrupted,
                format!("{why}, and no attempts are left"),
            ))
        } else {
            None
        };
        if let Some((outcome, error)) = fail {
            let mut record = books::record_at(outcome, error, &env.host, &env.run_id, &env.now);
            record.task = name.to_owned();
            record.attempts = st.attempts;
            record.history = st.history.clone();
            record.agent = Some(run.agent);
            // As a run's own terminal commit does: the last attempt's
            // session, so that the record (and the context log) names it.
            record.session_id = st.history.last().and_then(|a| a.session_id.clone());
            st.committing = Some(record.run_id.clone());
            return Decision::Fail {
                state: Box::new(st),
                record: Box::new(record),
            };
        }
    }
    st.not_before = None;
    Decision::Requeue {
        state: Box::new(st),
    }
}

/// Carries out a decision on `assigned/<name>.<ext>`, whose lock the caller
/// holds, and returns where the task is now. The context merge is part of a
/// commit; `pending_hint` is the caller's count of pending tasks, if known.
pub fn apply(
    layout: &Layout,
    name: &str,
    ext: &str,
    decision: &Decision,
    pending_hint: Option<usize>,
) -> io::Result<State> {
    match decision {
        Decision::FinishCommit { dest, record } => {
            // The crash may have come between the record and the run
            // directory's move.
            moves::move_run_dir(layout, name, *dest)?;
            let (out, cut) = layout
                .last_attempt(*dest, name)
                .map(|(_, d)| context::read_output(&d))
                .unwrap_or_default();
            let output = context::output_for(record, &out, cut);
            // The context is derived data: it never holds up a commit.
            if let Err(e) = context::merge_within(
                layout,
                record,
                output,
                pending_hint,
                context::LOOP_LOCK_WAIT,
                None,
            ) {
                tracing::warn!(task = name, error = %e, "context merge failed; committing the task anyway");
                context::note_unmerged(layout, *dest, &record.task);
            }
            moves::finish_commit(layout, name, ext, *dest)?;
            Ok(*dest)
        }
        Decision::Fail { state, record } => {
            // Every attempt's directory moves with the task (7.4).
            let mut record = record.clone();
            books::fill_run_dirs(layout, name, State::Failed, &mut record);
            books::write_state(layout, state)?;
            let dest = moves::prepare_commit(layout, &record)?;
            if let Err(e) = context::merge_within(
                layout,
                &record,
                None,
                pending_hint,
                context::LOOP_LOCK_WAIT,
                None,
            ) {
                tracing::warn!(task = name, error = %e, "context merge failed; committing the task anyway");
                context::note_unmerged(layout, dest, &record.task);
            }
            moves::finish_commit(layout, name, ext, dest)?;
            Ok(dest)
        }
        Decision::Requeue { state } => {
            // The run directory stays for the next attempt (7.5).
            moves::requeue(layout, name, ext, state)?;
            Ok(State::Pending)
        }
    }
}

/// Reads, decides and applies: the whole recovery of one orphan.
pub fn recover(
    layout: &Layout,
    name: &str,
    ext: &str,
    retries: u32,
    pending_hint: Option<usize>,
) -> io::Result<(Decision, State)> {
    let st = books::read_state(layout, name);
    let keeper_ended = st.run.as_ref().and_then(|r| {
        let id = r.run_id.as_deref()?;
        let dir = books::current_run_dir(layout, name, &st);
        crate::run::keeper::info(&dir, id).map(|k| k.pid)
    });
    let env = Env {
        retries,
        now: crate::model::record::now(),
        host: books::hostname(),
        run_id: books::run_id(),
        keeper_ended,
    };
    let decision = decide(name, st, records(layout, name), &env);
    let state = apply(layout, name, ext, &decision, pending_hint)?;
    Ok((decision, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::{RunInfo, Status};

    fn env(retries: u32) -> Env {
        Env {
            retries,
            now: "2026-12-01T00:00:00.000Z".into(),
            host: "h".into(),
            run_id: "new".into(),
            keeper_ended: None,
        }
    }

    fn running(attempts: u32, run_id: &str) -> TaskState {
        TaskState {
            version: 1,
            task: "t".into(),
            attempts,
            run: Some(RunInfo {
                attempt: attempts,
                agent: "a".into(),
                host: "h".into(),
                supervisor_pid: 7,
                run_id: Some(run_id.into()),
                ..RunInfo::default()
            }),
            ..TaskState::default()
        }
    }

    fn record(task: &str, run_id: &str, status: Status) -> ResultRecord {
        let mut r = books::record_at(Outcome::Success, String::new(), "h", run_id, "now");
        r.task = task.into();
        r.status = status;
        r
    }

    #[test]
    fn a_record_of_this_run_finishes_the_commit() {
        let rec = record("t", "r1", Status::Completed);
        let d = decide(
            "t",
            running(1, "r1"),
            vec![(State::Completed, rec.clone())],
            &env(2),
        );
        assert_eq!(
            d,
            Decision::FinishCommit {
                dest: State::Completed,
                record: Box::new(rec)
            }
        );
        // Named by `committing` (a commit without a run: a subtask parent).
        let st = TaskState {
            committing: Some("r9".into()),
            ..TaskState::default()
        };
        let rec = record("t", "r9", Status::Failed);
        let d = decide("t", st, vec![(State::Failed, rec)], &env(2));
        assert!(matches!(
            d,
            Decision::FinishCommit {
                dest: State::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_stale_or_foreign_record_never_finishes_a_commit() {
        for rec in [
            record("t", "old-run", Status::Completed),
            record("other", "r1", Status::Completed),
        ] {
            let d = decide(
                "t",
                running(1, "r1"),
                vec![(State::Completed, rec)],
                &env(2),
            );
            let Decision::Requeue { state } = d else {
                panic!("expected a requeue, got {d:?}");
            };
            assert_eq!(state.history.len(), 1);
            assert_eq!(state.history[0].outcome, Outcome::Interrupted);
            assert!(state.run.is_none() && state.committing.is_none());
        }
    }

    #[test]
    fn an_interrupted_run_is_charged_and_fails_when_no_attempts_are_left() {
        // attempts 2, retries 2: one more try.
        assert!(matches!(
            decide("t", running(2, "r"), vec![], &env(2)),
            Decision::Requeue { .. }
        ));
        // attempts 3, retries 2: used up.
        let d = decide("t", running(3, "r"), vec![], &env(2));
        let Decision::Fail { state, record } = d else {
            panic!("expected a failure, got {d:?}");
        };
        assert_eq!(record.outcome, Outcome::Interrupted);
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.task, "t");
        assert_eq!(record.attempts, 3);
        assert_eq!(state.committing.as_deref(), Some("new"));
        assert!(record.error.unwrap().contains("no attempts are left"));
        // It names the session of its last attempt, as a run's commit does.
        let mut st = running(3, "r");
        st.run.as_mut().unwrap().session_id = Some("s-3".into());
        let Decision::Fail { record, .. } = decide("t", st, vec![], &env(2)) else {
            panic!("expected a failure");
        };
        assert_eq!(record.session_id.as_deref(), Some("s-3"));
        // Shutdown requeues were free: they do not count.
        let mut st = running(3, "r");
        st.free_attempts = 1;
        assert!(matches!(
            decide("t", st, vec![], &env(2)),
            Decision::Requeue { .. }
        ));
    }

    #[test]
    fn an_orphan_that_never_ran_is_requeued_unchanged() {
        let st = TaskState {
            task: "t".into(),
            attempts: 1,
            not_before: Some("later".into()),
            ..TaskState::default()
        };
        let Decision::Requeue { state } = decide("t", st, vec![], &env(0)) else {
            panic!()
        };
        assert!(state.history.is_empty());
        assert!(state.not_before.is_none());
    }
}
