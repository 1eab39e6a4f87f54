//! The end of a run: apply the verdict (commit, retry, fallback, cooldown, requeue) and write it durably.
//!
//! The task is the supervisor's, not the agent's: before anything is decided,
//! the task file is put back into `assigned/` from wherever its agent moved
//! it (or written again from the copy taken at the claim), and such a run is
//! filed once as `tampered`. A commit that cannot be written is retried with
//! backoff by this Job, which keeps the task's lock meanwhile, so that no
//! recovery mistakes it for the run of a dead supervisor.

use super::verdict::{self, Ended, Facts, Verdict};
use super::*;
use crate::model::Outcome;
use crate::run::process::Exit;
use crate::tree::moves::Reclaimed;

/// The task file as its claim read it: its content, device and inode.
#[derive(Debug, Clone, Default)]
pub(super) struct Claimed {
    pub(super) bytes: Vec<u8>,
    pub(super) id: (u64, u64),
}

/// The longest wait between two tries of a commit that fails.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(30);

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
    ws: &WorkspaceRun,
    status: Status,
    root: &Path,
) -> crate::run::workspace::Report {
    use crate::run::workspace::{Cleanup, Kind};
    match ws.kind {
        Kind::Shared => crate::run::workspace::shared_report(&ws.result_file, &ws.path, root),
        Kind::Worktree => {
            let files = crate::run::workspace::changed_in_worktree(
                &ws.path,
                ws.base.as_deref().unwrap_or("HEAD"),
            );
            let remove = match ws.cleanup {
                Cleanup::Keep => false,
                Cleanup::OnSuccess => status == Status::Completed,
                Cleanup::Always => true,
            };
            crate::run::workspace::Report {
                kind: "worktree".into(),
                branch: ws.branch.clone(),
                path: Some(ws.path.to_string_lossy().into_owned()),
                base: ws.base.clone(),
                files_modified: files,
                source: "git".into(),
                removed: Some(remove && crate::run::workspace::remove(&ws.path)),
            }
        }
    }
}

pub(super) fn stderr_tail(run_dir: &Path) -> String {
    let Ok((b, _)) = fsx::read_tail(&run_dir.join("stderr.log"), 400) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let s = s.trim();
    let mut lines: Vec<&str> = s.lines().rev().take(3).collect();
    lines.reverse();
    lines.join(" | ")
}

impl Job {
    /// Applies the verdict on a finished run: commit, retry, fallback,
    /// cooldown or a free requeue.
    pub(super) async fn finish(
        self,
        mut st: TaskState,
        end: RunEnd,
        started: SystemTime,
    ) -> JobEnd {
        let finished = SystemTime::now();
        let timeout = self.task.timeout.unwrap_or(self.agent.timeout);
        let Ended {
            outcome,
            exit,
            error,
        } = verdict::ended(&end, timeout, self.config.max_output_bytes);
        let run_id = st.run.as_ref().and_then(|r| r.run_id.clone());
        let tampered = self.reclaim().await;
        let error = self.record_attempt(&mut st, outcome, exit, error, (started, finished));
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
        let limit = if verdict::limit_applies(outcome, limited_before) {
            self.detect_limit()
        } else {
            None
        };
        let facts = self.facts(&st, outcome, limit.is_some());
        match verdict::decide(&facts) {
            Verdict::Cooldown => {
                let limit = limit.expect("a cooldown verdict has a limit");
                self.cool_down(st, limit).await
            }
            Verdict::Fallback { free } => self.hand_over(st, free, error).await,
            Verdict::Requeue => {
                st.free_attempts += 1;
                info!(task = %self.name, "stopped by shutdown; requeued without using an attempt");
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
                let times = (started, finished);
                let rec = self.final_record(&st, outcome, error, times, run_id);
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
            let tail = stderr_tail(&self.ctx.layout.run_dir(State::Assigned, &self.name));
            if tail.is_empty() || outcome == Outcome::Spawn {
                e
            } else {
                format!("{e}; stderr ends with: {tail}")
            }
        });
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
        });
        st.last_error = error.clone();
        error
    }

    /// What the verdict needs to know of this task, this agent and the policy.
    fn facts(&self, st: &TaskState, outcome: Outcome, limited: bool) -> Facts {
        Facts {
            outcome,
            limited,
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

    fn retry_delay(&self, n: u32) -> Duration {
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
    /// tree, and the task back to `pending/` without using an attempt.
    async fn cool_down(self, mut st: TaskState, limit: crate::run::limits::Limit) -> JobEnd {
        let until = limit
            .until
            .unwrap_or_else(|| SystemTime::now() + self.agent.cooldown);
        let msg = format!(
            "agent {} hit a usage limit ({}); cooling down until {}",
            self.agent.name,
            limit.message,
            record::ts(until)
        );
        self.amend_last(&mut st, Outcome::Limited, Some(msg));
        st.free_attempts += 1;
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
        match self.requeue_or_keep(st).await {
            JobEnd::Requeued => JobEnd::Limited {
                until,
                message: limit.message,
            },
            other => other,
        }
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

    /// Puts the task file back into `assigned/` if the run moved or deleted
    /// it (and recreates removed directories of the tree). Returns what
    /// happened to it, for the record, when it had left.
    async fn reclaim(&self) -> Option<String> {
        let layout = self.ctx.layout.clone();
        let (name, ext, claimed) = (self.name.clone(), self.ext.clone(), self.claimed.clone());
        let res = tokio::task::spawn_blocking(move || {
            if layout.dirs().iter().any(|d| !d.is_dir()) {
                layout.ensure()?;
            }
            moves::reclaim(&layout, &name, &ext, claimed.id, &claimed.bytes)
        })
        .await;
        let layout = &self.ctx.layout;
        let why = match res {
            Ok(Ok(Reclaimed::Intact)) => return None,
            Ok(Ok(Reclaimed::MovedBack(p))) => format!(
                "its task file was moved to {} during the run (mailroom moved it back and filed the task once)",
                layout.rel(&p)
            ),
            Ok(Ok(Reclaimed::Rewritten)) => format!(
                "its task file was deleted from {} during the run (restored from the copy taken at the claim)",
                layout.rel(&layout.assigned)
            ),
            Ok(Err(e)) => format!(
                "its task file left {} during the run and cannot be restored yet ({e})",
                layout.rel(&layout.assigned)
            ),
            Err(e) => format!("its task file could not be checked after the run ({e})"),
        };
        warn!(task = %self.name, "{why}");
        Some(why)
    }

    /// Record, context merge, then the move out of `assigned/`. A commit that
    /// fails (an unwritable or full directory, a removed one) is retried with
    /// backoff while this Job keeps the task's lock; the error goes to the
    /// log, to the state file (`commit_error`, which `mailroom status` shows)
    /// and to the record's `warnings` once it lands. Only a shutdown ends the
    /// retries, leaving the task to recovery.
    pub(super) async fn commit(self, st: TaskState, rec: ResultRecord) -> JobEnd {
        let secs = rec.duration_ms.map(|ms| ms as f64 / 1000.0);
        let Job {
            ctx,
            name,
            ext,
            lock,
            ws,
            claimed,
            mut stop,
            ..
        } = self;
        // What the run left (workspace, output) is read once, before anything moves.
        let prep = {
            let (ctx, name, mut rec) = (ctx.clone(), name.clone(), rec);
            tokio::task::spawn_blocking(move || {
                let layout = &ctx.layout;
                if let Some(ws) = ws {
                    rec.workspace = Some(workspace_report(&ws, rec.status, &layout.root));
                }
                let (out, cut) =
                    crate::tree::context::read_output(&layout.run_dir(State::Assigned, &name));
                rec.summary = crate::tree::context::summary(&out);
                (rec, out, cut)
            })
            .await
        };
        let (rec, out, cut) = match prep {
            Ok(p) => p,
            Err(e) => {
                error!(task = %name, error = %e, "commit task panicked");
                return JobEnd::Stuck;
            }
        };
        let mut c = Commit {
            ctx,
            name,
            ext,
            st,
            rec,
            out,
            cut,
            claimed,
            target: None,
            clash_lock: None,
        };
        let mut delay = Duration::from_secs(1);
        let mut seen: Vec<String> = Vec::new();
        loop {
            let (back, res) = match tokio::task::spawn_blocking(move || {
                let r = c.once();
                if let Err(e) = &r {
                    c.note_error(&e.to_string());
                }
                (c, r)
            })
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    error!(error = %e, "commit task panicked");
                    return JobEnd::Stuck;
                }
            };
            c = back;
            let e = match res {
                Ok(()) => {
                    lock.release();
                    return JobEnd::Done(c.rec.status, c.rec.outcome, secs);
                }
                Err(e) => e.to_string(),
            };
            error!(
                task = %c.name,
                error = %e,
                retry_in = %humantime::format_duration(delay),
                "cannot commit the finished run; keeping the task and trying again"
            );
            if !seen.contains(&e) {
                c.rec
                    .warnings
                    .push(format!("the commit had to be retried: {e}"));
                seen.push(e);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            if matches!(*stop.borrow(), Some(Stop::Graceful | Stop::Now)) {
                error!(
                    task = %c.name,
                    "shutting down before the commit could be written; recovery takes the task over"
                );
                return JobEnd::Stuck;
            }
            delay = (delay * 2).min(COMMIT_RETRY_MAX);
        }
    }

    pub(super) async fn requeue_or_keep(self, st: TaskState) -> JobEnd {
        let Job {
            ctx,
            name,
            ext,
            lock,
            ..
        } = self;
        let res = tokio::task::spawn_blocking(move || {
            let r = moves::requeue(&ctx.layout, &name, &ext, &st);
            lock.release();
            r
        })
        .await;
        match res {
            Ok(Ok(())) => JobEnd::Requeued,
            Ok(Err(e)) => {
                error!(error = %e, "requeue failed; recovery will retry it");
                JobEnd::Stuck
            }
            Err(_) => JobEnd::Stuck,
        }
    }
}

/// A terminal commit in progress: everything it needs, moved onto the
/// blocking pool for each try and back.
struct Commit {
    ctx: Arc<Ctx>,
    name: String,
    ext: String,
    st: TaskState,
    rec: ResultRecord,
    /// The run's output, read before its directory moved.
    out: String,
    cut: bool,
    claimed: Claimed,
    /// The clash name the task is filed under when its own name was taken
    /// in the destination meanwhile, with that name's lock.
    target: Option<String>,
    clash_lock: Option<TaskLock>,
}

impl Commit {
    /// One try of the whole commit. Every step may be repeated: the outbox
    /// queues what is still in it, a run directory already moved stays, the
    /// record is written again, the merge skips a `run_id` it has, and the
    /// last move completes a move made before.
    fn once(&mut self) -> std::io::Result<()> {
        let ctx = self.ctx.clone();
        let layout = &ctx.layout;
        let name = self.name.clone();
        if layout.dirs().iter().any(|d| !d.is_dir()) {
            layout.ensure()?;
        }
        moves::reclaim(
            layout,
            &name,
            &self.ext,
            self.claimed.id,
            &self.claimed.bytes,
        )?;
        // The state file on disk already names this run's run_id (written
        // before the spawn); a commit made without a run (a parent of
        // subtasks) names its record in `committing` and writes it now.
        if self.st.committing.is_some() {
            books::write_state(layout, &self.st)?;
        }
        let assigned = layout.task_file(State::Assigned, &name, &self.ext);
        if self.target.is_none()
            && let Some((found, _)) = layout
                .find(dest_of(&self.rec), &name)
                .filter(|(p, _)| !fsx::same_inode(p, &assigned))
        {
            self.divert(&found)?;
        }
        let dest = dest_of(&self.rec);
        let target = self.target.clone().unwrap_or_else(|| name.clone());
        self.rec.run_dir = Some(layout.rel(&layout.run_dir(dest, &target)));
        self.rec.output_file = Some(layout.rel(&layout.output_file(&target)));
        // The transactional outbox: follow-ups go to pending/ only on
        // success (before the record, which lists them); on failure they
        // stay in the run directory and the record names them.
        let outbox = layout.run_dir(State::Assigned, &name).join("outbox");
        match self.rec.status {
            Status::Completed => {
                let queued = crate::tree::outbox::queue_outbox(layout, &name, &outbox)?;
                self.rec.followups.extend(queued);
            }
            Status::Failed => {
                let left = crate::tree::outbox::outbox_files(&outbox);
                if !left.is_empty() {
                    self.rec.withheld_followups = left;
                }
            }
        }
        moves::prepare_commit_as(layout, &name, &self.rec)?;
        let hint = ctx.pending_count.load(std::sync::atomic::Ordering::Relaxed);
        // The context is derived data: it never holds up a commit.
        if let Err(e) =
            crate::tree::context::merge(layout, &self.rec, Some((&self.out, self.cut)), Some(hint))
        {
            warn!(task = %name, error = %e, "context merge failed; committing the task anyway");
        }
        moves::finish_commit_as(layout, &name, &self.ext, dest, &target)?;
        // A cancel request is answered by the commit, whatever its outcome.
        let _ = std::fs::remove_file(layout.cancel_file(&name));
        if let Some(l) = self.clash_lock.take() {
            l.release();
        }
        match self.rec.status {
            Status::Completed => info!(task = %name, attempts = self.rec.attempts, "completed"),
            Status::Failed => warn!(
                task = %name,
                filed_as = %target,
                attempts = self.rec.attempts,
                error = self.rec.error.as_deref().unwrap_or(""),
                "failed"
            ),
        }
        Ok(())
    }

    /// A file of the task's name is in the destination, and mailroom did not
    /// put it there (the agent wrote it, as a rule). It is left alone, and
    /// the task is filed once in `failed/` under a clash name, as tampered.
    fn divert(&mut self, found: &Path) -> std::io::Result<()> {
        let layout = &self.ctx.layout;
        let (clash, lock) = moves::free_clash_name(layout, State::Failed, &self.name)?;
        let was = self.rec.outcome;
        let e = self
            .rec
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let why = format!(
            "{} appeared while the task ran (mailroom did not write it and left it alone), \
             so the task was filed as `{clash}`; the run itself ended as `{was}`{e}",
            layout.rel(found)
        );
        warn!(task = %self.name, filed_as = %clash, "{why}");
        self.rec.status = Status::Failed;
        self.rec.outcome = Outcome::Tampered;
        self.rec.error = Some(why.clone());
        if let Some(a) = self.rec.history.last_mut() {
            a.outcome = Outcome::Tampered;
            a.error = Some(why);
        }
        self.rec.submitted_as =
            Some(layout.rel(&layout.task_file(State::Assigned, &self.name, &self.ext)));
        self.rec.task = clash.clone();
        self.target = Some(clash);
        self.clash_lock = Some(lock);
        Ok(())
    }

    /// Tells `mailroom status` why the task is not committed yet: the state
    /// file as it is on disk (its `run` still names the run) with
    /// `commit_error`. Best effort: the disk may refuse this too.
    fn note_error(&self, error: &str) {
        let layout = &self.ctx.layout;
        let mut on_disk = books::read_state(layout, &self.name);
        on_disk.commit_error = Some(error.to_owned());
        if let Err(e) = books::write_state(layout, &on_disk) {
            debug!(task = %self.name, error = %e, "cannot note the commit error in the state file");
        }
    }
}

fn dest_of(rec: &ResultRecord) -> State {
    match rec.status {
        Status::Completed => State::Completed,
        Status::Failed => State::Failed,
    }
}
