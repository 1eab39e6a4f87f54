//! The end of a run: what its CLI said (the adapter's report), the verdict
//! (commit, retry, fallback, cooldown, requeue) and its application. The
//! durable filing itself, and taking a task back from an agent that tampered
//! with its file, are in `filing.rs`.

use super::verdict::{self, Facts, Verdict};
use super::*;
use crate::model::Outcome;
use crate::run::process::Exit;

pub(super) fn base_record(
    ctx: &Ctx,
    name: &str,
    status: Status,
    outcome: Outcome,
    st: &TaskState,
) -> ResultRecord {
    let mut rec = books::never_ran_record(outcome, String::new());
    rec.task = name.to_owned();
    rec.status = status;
    rec.error = None;
    rec.attempts = st.attempts;
    rec.history = st.history.clone();
    rec.host = ctx.host.clone();
    rec
}

/// What the record says of a run's workspace; a worktree is removed (its
/// branch kept) as `worktree_cleanup` says.
pub(super) fn workspace_report(
    name: &str,
    ws: &WorkspaceRun,
    status: Status,
    root: &Path,
    git_status: bool,
) -> crate::run::workspace::Report {
    use crate::run::workspace::{Cleanup, Kind};
    match ws.kind {
        Kind::Shared => crate::run::workspace::shared_report(
            &ws.said
                .clone()
                .unwrap_or_else(|| crate::run::workspace::read_agent_result(&ws.result_file)),
            &ws.path,
            root,
            git_status,
            ws.workdir_use.as_ref().is_none_or(|u| u.overlapped()),
            ws.dirty_before.as_deref(),
        ),
        Kind::Worktree => {
            let files = crate::run::workspace::changed_in_worktree(
                &ws.path,
                ws.base.as_deref().unwrap_or("HEAD"),
            );
            let mut remove = match ws.cleanup {
                Cleanup::Keep => false,
                Cleanup::OnSuccess => status == Status::Completed,
                Cleanup::Always => true,
            };
            // The agent's uncommitted work goes onto the branch first, which
            // stays; a worktree whose work cannot be saved is kept.
            let (mut saved, mut warning) = (None, None);
            if remove {
                let message = format!(
                    "mailroom: what {name} left uncommitted\n\nCommitted by mailroom before it removed the run's worktree."
                );
                let branch = ws.branch.as_deref().unwrap_or_default();
                match crate::run::workspace::save_uncommitted(&ws.path, branch, &message) {
                    Ok(c) => saved = c,
                    Err(e) => {
                        remove = false;
                        warning = Some(format!(
                            "the worktree {} was kept: its uncommitted changes could not be \
                             committed to {} ({e})",
                            ws.path.display(),
                            ws.branch.as_deref().unwrap_or("its branch")
                        ));
                    }
                }
            }
            crate::run::workspace::Report {
                kind: "worktree".into(),
                branch: ws.branch.clone(),
                path: Some(ws.path.to_string_lossy().into_owned()),
                base: ws.base.clone(),
                files_modified: files,
                source: "git".into(),
                removed: Some(remove && crate::run::workspace::remove(&ws.path)),
                files_modified_exact: None,
                saved,
                warning,
            }
        }
    }
}

pub(super) fn stderr_tail(run_dir: &Path) -> String {
    let Ok((b, _)) = fsx::read_tail(&run_dir.join("stderr.log"), 400) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let s = crate::tree::context::clean(&s);
    let s = s.trim();
    let mut lines: Vec<&str> = s
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty() && !crate::adapter::is_chatter(l))
        .take(3)
        .collect();
    lines.reverse();
    lines.join(" | ")
}

/// What the agent's `$MAILROOM_RESULT` says when it reports a failure
/// (`status: failed`, `failure` or `error`), as the attempt's error; also
/// when it cannot tell: a `status` that is not a word, or a file that
/// cannot be used and may have held one (`path`). Whether such a run
/// succeeded is unknown, and it is never taken for a success.
fn reported_failure(
    said: &Result<Option<crate::run::workspace::AgentResult>, String>,
    path: &Path,
) -> Option<String> {
    let said = match said {
        Ok(s) => s.as_ref()?,
        Err(why) => {
            return crate::run::workspace::unusable_result_had_status(path).then(|| {
                format!(
                    "the agent exited 0, but {why}, and it may have said how the run ended: \
                     whether it succeeded is unknown"
                )
            });
        }
    };
    if let Some(v) = &said.status_invalid {
        return Some(format!(
            "the agent exited 0, but its $MAILROOM_RESULT has `status: {}`, which is not a \
             word such as `completed` or `failed`: whether it succeeded is unknown",
            v.chars().take(100).collect::<String>()
        ));
    }
    let status = said.status.as_deref()?;
    if !matches!(
        status.trim().to_ascii_lowercase().as_str(),
        "failed" | "failure" | "error"
    ) {
        return None;
    }
    let why = said
        .summary
        .as_deref()
        .and_then(|s| s.lines().map(str::trim).find(|l| !l.is_empty()))
        .map(|l| {
            let l = crate::tree::context::clean(l);
            format!(": {}", l.chars().take(300).collect::<String>())
        })
        .unwrap_or_default();
    Some(format!(
        "the agent exited 0 but reported `status: {}` in $MAILROOM_RESULT{why}",
        status.trim()
    ))
}

impl Job {
    /// Applies the verdict on a finished run: commit, retry, fallback,
    /// cooldown or a free requeue.
    pub(super) async fn finish(
        mut self,
        mut st: TaskState,
        end: RunEnd,
        (started, finished): (SystemTime, Option<SystemTime>),
    ) -> JobEnd {
        // A kept run that ended while no supervisor watched: when its keeper
        // says it did, not when it was found.
        let finished = finished.unwrap_or_else(SystemTime::now);
        let timeout = self.task.timeout.unwrap_or(self.agent.timeout);
        let ended = verdict::ended(&end, timeout, self.config.max_output_bytes);
        let report = self.read_report(&end);
        let mut read = verdict::read(&ended, report.as_ref());
        // The agent said it failed, in its own result file: exit 0 or not,
        // that is no success.
        let result_file = self.run_dir().join("result.yaml");
        let said = crate::run::workspace::read_agent_result(&result_file);
        let failure = reported_failure(&said, &result_file);
        if let Some(ws) = self.ws.as_mut() {
            ws.said = Some(said);
        }
        if read.outcome == Outcome::Success
            && let Some(said) = failure
        {
            read.outcome = Outcome::AgentError;
            read.class = Some("task");
            read.error = Some(said);
        }
        let (outcome, exit) = (read.outcome, ended.exit);
        let run_id = st.run.as_ref().and_then(|r| r.run_id.clone());
        // Put back by this run's reclaim, or by recovery before this
        // supervisor took the run over.
        let tampered = self
            .reclaim()
            .await
            .or_else(|| st.tampered.take())
            .or_else(|| self.changed_since_claim(&st))
            .or_else(|| self.bookkeeping_removed())
            .or_else(|| self.planted_in_terminal());
        let error = self.record_attempt(
            &mut st,
            outcome,
            exit,
            read.error.clone(),
            (started, finished),
        );
        annotate_last(&mut st, read.class, report.as_ref());
        self.count_usage(report.as_ref());
        // A successful run that queued too many follow-ups, or too deep a
        // tree, is a failure of its own kind (not retried).
        let (outcome, error) = match (outcome, error, tampered) {
            (o, e, Some(why)) => {
                let e = e.map(|e| format!(": {e}")).unwrap_or_default();
                (
                    Outcome::Tampered,
                    Some(format!("{why}; the run itself ended as `{o}`{e}")),
                )
            }
            (Outcome::Success, None, None) => match self.runaway() {
                Some(why) => (Outcome::Runaway, Some(why)),
                None => (Outcome::Success, None),
            },
            (o, e, None) => (o, e),
        };
        if matches!(outcome, Outcome::Runaway | Outcome::Tampered) {
            self.amend_last(&mut st, outcome, error.clone());
        }
        let limited_before = st
            .history
            .iter()
            .filter(|a| a.outcome == Outcome::Limited)
            .count();
        // A usage limit, whatever the exit code (claude prints some with exit 0).
        let limit = if verdict::limit_applies(outcome) {
            self.limit_of(read.limit, outcome == Outcome::Success)
        } else {
            None
        };
        let mut facts = self.facts(&st, outcome, limit.is_some());
        facts.fatal = read.fatal;
        facts.limit_free = limited_before < verdict::MAX_FREE_LIMITED;
        // A resume whose session the CLI never saved (gemini, after a limit
        // on its first request) did nothing: the next attempt starts anew
        // (its outcome is none that `session::cut_off` resumes after).
        facts.session_missing =
            read.class == Some("session") && st.history.last().is_some_and(|a| a.resumed);
        // The agent stopped its own supervisor: its stop is not free.
        let mut error = error;
        if outcome == Outcome::Interrupted
            && let Some(pid) = self.stopped_by_own_agent()
        {
            let why = format!(
                "stopped by a shutdown that its own agent sent (pid {pid}); \
                 this attempt counts against its retries"
            );
            warn!(task = %self.name, "{why}");
            self.amend_last(&mut st, Outcome::Interrupted, Some(why.clone()));
            facts.stopped_by_own_agent = true;
            error = Some(why);
        }
        // Stopped by shutdowns too often: this stop is not free either.
        if outcome == Outcome::Interrupted && !facts.stopped_by_own_agent && !facts.interrupt_free {
            let n = st
                .history
                .iter()
                .filter(|a| a.outcome == Outcome::Interrupted)
                .count();
            let why = format!(
                "stopped by a shutdown {n} times (a supervisor restarted again and again?); \
                 past the {} free ones, this attempt counts against its retries",
                verdict::MAX_FREE_INTERRUPTED
            );
            warn!(task = %self.name, "{why}");
            self.amend_last(&mut st, Outcome::Interrupted, Some(why.clone()));
            error = Some(why);
        }
        match verdict::decide(&facts) {
            Verdict::Cooldown { free } => {
                let limit = limit.expect("a cooldown verdict has a limit");
                self.cool_down(st, limit, free).await
            }
            Verdict::Fallback { free } => self.hand_over(st, free, error).await,
            Verdict::Requeue { free } => {
                if free {
                    st.free_attempts += 1;
                    info!(task = %self.name, "stopped by shutdown; requeued without using an attempt");
                }
                self.requeue_or_keep(st).await
            }
            Verdict::NewSession => {
                st.free_attempts += 1;
                warn!(
                    task = %self.name,
                    "the session to resume is not there; requeued to start a new one, without using an attempt"
                );
                self.requeue_or_keep(st).await
            }
            Verdict::Retry { n } => self.retry_later(st, n, error).await,
            Verdict::Commit {
                outcome,
                exclude_agent,
            } => {
                if exclude_agent {
                    self.exclude_agent(&mut st);
                }
                // Out of attempts on a limit: the limit is the error.
                let error = match (outcome, &limit) {
                    (Outcome::Limited, Some(limit)) => Some(self.note_limit(&mut st, limit, false)),
                    _ => error,
                };
                let times = (started, finished);
                let mut rec = self.final_record(&st, outcome, error, times, run_id);
                // What the CLI was not allowed to do (claude's permission denials).
                rec.warnings
                    .extend(report.iter().flat_map(|r| r.notes.iter().cloned()));
                let left = self.leftovers.load(std::sync::atomic::Ordering::Relaxed);
                if left > 0 {
                    rec.warnings.push(format!(
                        "the agent left {left} process(es) running when it ended (a \
                         background job or daemon); its run keeper stopped them (SIGTERM, \
                         SIGKILL after the grace)"
                    ));
                }
                self.commit(st, rec).await
            }
        }
    }

    /// Ends the run in the state file: the attempt goes into the history, with
    /// the stderr tail added to its error. Returns that error.
    fn record_attempt(
        &self,
        st: &mut TaskState,
        outcome: Outcome,
        exit: Option<Exit>,
        error: Option<String>,
        (started, finished): (SystemTime, SystemTime),
    ) -> Option<String> {
        let run = st.run.take();
        let error = error.map(|e| {
            let tail = stderr_tail(&self.run_dir());
            if tail.is_empty() || outcome == Outcome::Spawn {
                e
            } else {
                format!("{e}; stderr ends with: {tail}")
            }
        });
        let (session_id, resumed, parent_session) = run
            .as_ref()
            .map(|r| (r.session_id.clone(), r.resumed, r.parent_session.clone()))
            .unwrap_or_default();
        // A CLI that never started made no session of the name it was given.
        let session_id = session_id.filter(|_| outcome != Outcome::Spawn);
        st.history.push(Attempt {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            started_at: run
                .map(|r| r.started_at)
                .unwrap_or_else(|| record::ts(started)),
            finished_at: record::ts(finished),
            outcome,
            exit_code: exit.and_then(|e| e.code()),
            signal: exit.and_then(|e| e.signal()),
            error: error.clone(),
            error_class: None,
            session_id,
            resumed,
            parent_session,
            usage: None,
            run_dir: None,
        });
        st.last_error = error.clone();
        error
    }

    /// Adds what the run used, as its CLI reported it, to the metrics' sums.
    fn count_usage(&self, report: Option<&crate::adapter::RunReport>) {
        if let Some(rep) = report.filter(|r| !r.usage.is_empty())
            && let Ok(mut u) = self.ctx.usage.lock()
        {
            u.entry(self.agent.name.clone())
                .or_default()
                .add(&rep.usage);
        }
    }

    /// The pid of the process that sent the shutdown which stopped this run,
    /// when it was the run's own agent (or a process of its own).
    fn stopped_by_own_agent(&self) -> Option<u32> {
        self.ctx
            .shutdown_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(task, _)| *task == self.name)
            .map(|(_, pid)| *pid)
    }

    /// What the verdict needs to know of this task, this agent and the policy.
    fn facts(&self, st: &TaskState, outcome: Outcome, limited: bool) -> Facts {
        Facts {
            outcome,
            limited,
            limit_free: true,
            alternatives: self.alternatives,
            agent_failures: st
                .history
                .iter()
                .filter(|a| {
                    a.agent == self.agent.name
                        && !matches!(a.outcome, Outcome::Interrupted | Outcome::Limited)
                })
                .count() as u32,
            charged: st.charged(),
            retries: self.task.retries.unwrap_or(self.config.retries),
            fallback_after: self.agent.fallback_after,
            fatal: false,
            stopped_by_own_agent: false,
            // (This run's attempt is the last of the history.)
            interrupt_free: st
                .history
                .iter()
                .rev()
                .skip(1)
                .filter(|a| a.outcome == Outcome::Interrupted)
                .count()
                < verdict::MAX_FREE_INTERRUPTED,
            session_missing: false,
        }
    }

    /// Rules this agent out for the task and puts it back for the next agent
    /// of its route.
    async fn hand_over(self, mut st: TaskState, free: bool, error: Option<String>) -> JobEnd {
        self.exclude_agent(&mut st);
        if free {
            st.free_attempts += 1;
        }
        warn!(
            task = %self.name,
            agent = %self.agent.name,
            error = error.as_deref().unwrap_or(""),
            "handing the task to a fallback agent"
        );
        self.requeue_or_keep(st).await
    }

    /// Puts the task back with the backoff of its `n`th charged attempt.
    async fn retry_later(self, mut st: TaskState, n: u32, error: Option<String>) -> JobEnd {
        let delay = self.retry_delay(n);
        st.not_before = Some(record::ts(SystemTime::now() + delay));
        warn!(
            task = %self.name,
            attempt = st.attempts,
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            error = error.as_deref().unwrap_or(""),
            "attempt failed; will retry"
        );
        self.requeue_or_keep(st).await
    }

    /// Rewrites the outcome of the attempt just pushed onto the history.
    fn amend_last(&self, st: &mut TaskState, outcome: Outcome, error: Option<String>) {
        if let Some(a) = st.history.last_mut() {
            a.outcome = outcome;
            a.error = error.clone();
        }
        st.last_error = error;
    }

    fn exclude_agent(&self, st: &mut TaskState) {
        if !st.excluded_agents.contains(&self.agent.name) {
            st.excluded_agents.push(self.agent.name.clone());
        }
    }

    pub(super) fn retry_delay(&self, n: u32) -> Duration {
        let entropy = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos() as u64
            ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        verdict::backoff(
            self.config.retry_delay,
            self.config.retry_delay_max,
            n,
            entropy,
        )
    }

    /// A usage limit: the cooldown goes on disk for every supervisor of the
    /// tree, and the task back to `pending/`, without using an attempt
    /// when `free`.
    async fn cool_down(
        self,
        mut st: TaskState,
        limit: crate::run::limits::Limit,
        free: bool,
    ) -> JobEnd {
        let until = self.limit_until(&limit);
        self.note_limit(&mut st, &limit, free);
        match self.requeue_or_keep(st).await {
            JobEnd::Requeued(_) => JobEnd::Limited {
                until,
                message: limit.message,
            },
            other => other,
        }
    }

    fn limit_until(&self, limit: &crate::run::limits::Limit) -> SystemTime {
        limit.until.unwrap_or_else(|| {
            SystemTime::now()
                + crate::run::limits::cooldown_for(&limit.message, self.agent.cooldown)
        })
    }

    /// The attempt becomes `limited` (free or charged), and the agent's
    /// cooldown goes on disk. Returns the attempt's error.
    fn note_limit(
        &self,
        st: &mut TaskState,
        limit: &crate::run::limits::Limit,
        free: bool,
    ) -> String {
        let until = self.limit_until(limit);
        let mut msg = format!(
            "agent {} hit a usage limit ({}); cooling down until {}",
            self.agent.name,
            limit.message,
            record::ts(until)
        );
        if free {
            st.free_attempts += 1;
        } else {
            msg.push_str(&format!(
                "; the task had already hit {} usage limits, so this one counts against its retries",
                verdict::MAX_FREE_LIMITED
            ));
        }
        self.amend_last(st, Outcome::Limited, Some(msg.clone()));
        let cd = record::Cooldown {
            agent: self.agent.name.clone(),
            until: record::ts(until),
            message: limit.message.clone(),
            since: record::now(),
            host: self.ctx.host.clone(),
            task: self.name.clone(),
        };
        let path = self.ctx.layout.cooldown_file(&self.agent.name);
        if let Err(e) = serde_json::to_vec_pretty(&cd)
            .map_err(std::io::Error::other)
            .and_then(|b| fsx::write_atomic(&path, &b))
        {
            warn!(error = %e, "cannot record the cooldown on disk");
        }
        msg
    }

    /// The result record of a run that ends here.
    fn final_record(
        &self,
        st: &TaskState,
        outcome: Outcome,
        error: Option<String>,
        (started, finished): (SystemTime, SystemTime),
        run_id: Option<String>,
    ) -> ResultRecord {
        let status = if outcome == Outcome::Success {
            Status::Completed
        } else {
            Status::Failed
        };
        let mut rec = base_record(&self.ctx, &self.name, status, outcome, st);
        rec.agent = Some(self.agent.name.clone());
        rec.agent_reason = Some(self.reason.clone());
        rec.error = error;
        rec.started_at = Some(record::ts(started));
        rec.finished_at = record::ts(finished);
        rec.duration_ms = finished
            .duration_since(started)
            .ok()
            .map(|d| d.as_millis() as u64);
        rec.exit_code = st.history.last().and_then(|a| a.exit_code);
        rec.signal = st.history.last().and_then(|a| a.signal);
        rec.warnings = self.task.warnings.clone();
        if let Some(last) = st.history.last() {
            rec.error_class = last.error_class.clone();
            rec.session_id = last.session_id.clone();
            rec.usage = last.usage.clone();
        }
        if let Some(id) = run_id {
            rec.run_id = id;
        }
        rec
    }

    pub(super) async fn fail_now(
        self,
        mut st: TaskState,
        outcome: Outcome,
        msg: String,
        started: SystemTime,
    ) -> JobEnd {
        let run_id = st.run.take().and_then(|r| r.run_id);
        st.history.push(Attempt {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            started_at: record::ts(started),
            finished_at: record::now(),
            outcome,
            exit_code: None,
            signal: None,
            error: Some(msg.clone()),
            error_class: None,
            session_id: None,
            resumed: false,
            parent_session: None,
            usage: None,
            run_dir: None,
        });
        let mut rec = base_record(&self.ctx, &self.name, Status::Failed, outcome, &st);
        rec.agent = Some(self.agent.name.clone());
        rec.agent_reason = Some(self.reason.clone());
        rec.error = Some(msg);
        rec.started_at = Some(record::ts(started));
        if let Some(id) = run_id {
            rec.run_id = id;
        }
        self.commit(st, rec).await
    }

    pub(super) async fn requeue_or_keep(self, st: TaskState) -> JobEnd {
        // The attempt that ended is the last of the history (none: a run
        // that never started, such as one a shutdown put back).
        let ended = st
            .history
            .last()
            .filter(|a| a.attempt == st.attempts)
            .map(|a| a.outcome);
        let task = self.name.clone();
        match self
            .last_step(move |layout, name, ext| moves::requeue(layout, name, ext, &st))
            .await
        {
            Some(Ok(())) => JobEnd::Requeued(ended),
            Some(Err(e)) => {
                error!(task = %task, error = %e, "requeue failed; recovery will retry it");
                JobEnd::Stuck
            }
            None => JobEnd::Stuck,
        }
    }

    /// Runs the Job's last step (given the layout, the task's name and
    /// extension) on the blocking pool, then releases the task's lock,
    /// whatever the step returned. None: the step panicked.
    pub(super) async fn last_step<T: Send + 'static>(
        self,
        step: impl FnOnce(&Layout, &str, &str) -> T + Send + 'static,
    ) -> Option<T> {
        let Job {
            ctx,
            name,
            ext,
            lock,
            ..
        } = self;
        tokio::task::spawn_blocking(move || {
            let r = step(&ctx.layout, &name, &ext);
            lock.release();
            r
        })
        .await
        .ok()
    }
}

/// What the CLI said of the attempt just recorded: its error class, session
/// and usage.
fn annotate_last(
    st: &mut TaskState,
    class: Option<&'static str>,
    report: Option<&crate::adapter::RunReport>,
) {
    if let Some(a) = st.history.last_mut() {
        a.error_class = class.map(str::to_owned);
        if let Some(rep) = report {
            if rep.session_id.is_some() {
                a.session_id = rep.session_id.clone();
            }
            a.usage = (!rep.usage.is_empty()).then(|| rep.usage.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stderr_tail_leaves_the_clis_chatter_out() {
        let dir = std::env::temp_dir().join(format!("mailroom-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // As codex 0.171 ends a failed run.
        std::fs::write(
            dir.join("stderr.log"),
            "WARNING: proceeding, even though we could not create PATH aliases: x\n\
             ERROR: stream disconnected before completion\n\
             Reading additional input from stdin...\n",
        )
        .unwrap();
        assert_eq!(
            super::stderr_tail(&dir),
            "ERROR: stream disconnected before completion"
        );
        // gemini 0.61 with `--approval-mode yolo`, stopped at its timeout:
        // nothing but its start-up note, twice, which says nothing of why.
        let yolo = "YOLO mode is enabled. All tool calls will be automatically approved.\n";
        std::fs::write(dir.join("stderr.log"), yolo.repeat(2)).unwrap();
        assert_eq!(super::stderr_tail(&dir), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
