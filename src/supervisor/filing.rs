//! Filing a finished run for good: the record, the context merge and the
//! task file's move out of `assigned/`, retried with backoff while the tree
//! refuses it; and taking the task back from an agent that moved, deleted or
//! shadowed its task file.
//!
//! The task is the supervisor's, not the agent's: before anything is decided,
//! the task file is put back into `assigned/` from wherever its agent moved
//! it (or written again from the copy taken at the claim), and such a run is
//! filed once as `tampered`. A commit that cannot be written is retried with
//! backoff by this Job, which keeps the task's lock meanwhile, so that no
//! recovery mistakes it for the run of a dead supervisor.

use super::*;
use crate::model::Outcome;
use crate::tree::moves::Reclaimed;

/// The task file as its claim read it: its content, device and inode.
#[derive(Debug, Clone, Default)]
pub(super) struct Claimed {
    pub(super) bytes: Vec<u8>,
    pub(super) id: (u64, u64),
}

/// The longest wait between two tries of a commit that fails.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(30);

impl Job {
    /// Puts the task file back into `assigned/` if the run moved or deleted
    /// it (and recreates removed directories of the tree). Returns what
    /// happened to it, for the record, when it had left.
    pub(super) async fn reclaim(&mut self) -> Option<String> {
        let layout = self.ctx.layout.clone();
        let (name, ext, claimed) = (self.name.clone(), self.ext.clone(), self.claimed.clone());
        let res = tokio::task::spawn_blocking(move || {
            ensured(&layout, || {
                moves::reclaim(&layout, &name, &ext, claimed.id, &claimed.bytes)
            })
        })
        .await;
        // The file in assigned/ from now on (a restore makes a new one): what
        // the commit's own check compares with.
        let res = res.map(|r| {
            r.map(|(found, now)| {
                self.claimed.id = now;
                found
            })
        });
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
            Ok(Ok(Reclaimed::Replaced { what, kept, from })) => format!(
                "its task file {} was replaced by {what} during the run (kept in the run's \
                 directory as {}; mailroom put the task file back{})",
                layout.rel(&layout.task_file(State::Assigned, &self.name, &self.ext)),
                kept_name(&kept),
                from.map_or_else(
                    || " from the copy taken at the claim".to_owned(),
                    |p| format!(" from {}", layout.rel(&p))
                )
            ),
            Ok(Ok(Reclaimed::Edited { kept })) => format!(
                "its task file {} was changed during the run (edited, or replaced by another \
                 file; what it held is kept in the run's directory as {}, and mailroom put back \
                 the content it claimed)",
                layout.rel(&layout.task_file(State::Assigned, &self.name, &self.ext)),
                kept_name(&kept)
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

    /// A kept run's task as read when this supervisor took the run over,
    /// against the hash its first supervisor recorded when the run started:
    /// a task file edited in place before the takeover (its claimed content
    /// is lost; the file is filed as it is now).
    pub(super) fn changed_since_claim(&self, st: &TaskState) -> Option<String> {
        let recorded = st.run.as_ref()?.task_hash.as_deref()?;
        (moves::content_hash(&self.claimed.bytes) != recorded).then(|| {
            format!(
                "its task file {} was changed in place during the run (while no supervisor \
                 watched; the content it was claimed with is lost)",
                self.ctx.layout.rel(&self.ctx.layout.task_file(
                    State::Assigned,
                    &self.name,
                    &self.ext
                ))
            )
        })
    }

    /// A task file of this task's name that appeared in `completed/` or
    /// `failed/` during the run (its agent's, as a rule: mailroom never
    /// files a task it holds). Such a run is tampered, whatever it would
    /// have become: a retry would be refused as a clash of that file.
    pub(super) fn planted_in_terminal(&self) -> Option<String> {
        let layout = &self.ctx.layout;
        [State::Completed, State::Failed].into_iter().find_map(|s| {
            let p = planted(layout, s, &self.name, &self.ext)?;
            Some(format!(
                "{} appeared during the run (mailroom did not write it and left it alone)",
                layout.rel(&p)
            ))
        })
    }

    /// Whether the run removed (or replaced) the task's lock file or its state
    /// file, the supervisor's bookkeeping: the name could be locked anew,
    /// and the run taken for one that never started, by another supervisor
    /// meanwhile. Such a run is tampered, as recovery files it when no
    /// supervisor saw it end.
    pub(super) fn bookkeeping_removed(&self) -> Option<String> {
        let layout = &self.ctx.layout;
        let state = layout.state_file(&self.name);
        let mut gone = Vec::new();
        if !self.lock.is_at_path() {
            gone.push(format!(
                "its lock file {}",
                layout.rel(&layout.lock_file(&self.name))
            ));
        }
        if !std::fs::symlink_metadata(&state).is_ok_and(|m| m.is_file()) {
            gone.push(format!("its state file {}", layout.rel(&state)));
        }
        (!gone.is_empty()).then(|| {
            removed_during_run(&if gone.len() == 2 {
                format!("{} and {} were", gone[0], gone[1])
            } else {
                format!("{} was", gone[0])
            })
        })
    }

    /// Record, context merge, then the move out of `assigned/`. A commit that
    /// fails (an unwritable or full directory, a removed one) is retried with
    /// backoff while this Job keeps the task's lock; the error goes to the
    /// log, to the state file (`commit_error`, which `mailroom status` shows)
    /// and to the record's `warnings` once it lands. Only a shutdown ends the
    /// retries, leaving the task to recovery.
    pub(super) async fn commit(self, st: TaskState, rec: ResultRecord) -> JobEnd {
        let secs = rec.duration_ms.map(|ms| ms as f64 / 1000.0);
        let run_dir = self.run_dir();
        let Job {
            ctx,
            config,
            name,
            ext,
            lock,
            ws,
            claimed,
            stop,
            task,
            ..
        } = self;
        // What the run left (workspace, output) is read once, before anything moves.
        let prep = {
            let (ctx, mut rec) = (ctx.clone(), rec);
            tokio::task::spawn_blocking(move || {
                let layout = &ctx.layout;
                if let Some(ws) = ws {
                    let task = rec.task.clone();
                    let mut report =
                        workspace_report(&task, &ws, rec.status, &layout.root, config.git_status);
                    if let Some(w) = report.warning.take() {
                        rec.warnings.push(w);
                    }
                    rec.workspace = Some(report);
                }
                let (out, cut, summary) = crate::tree::context::read_output_and_summary(&run_dir);
                // A subtask parent's own summary ("all 3 subtasks completed") stays
                // when its run printed none.
                if summary.is_some() {
                    rec.summary = summary;
                }
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
        let c = Commit {
            ctx,
            parent: task.parent,
            name,
            ext,
            st,
            rec,
            out,
            cut,
            claimed,
            target: None,
            clash_lock: None,
            queued_from: Vec::new(),
        };
        write_commit(c, lock, stop, secs).await
    }
}

/// A terminal commit in progress: everything it needs, moved onto the
/// blocking pool for each try and back.
struct Commit {
    ctx: Arc<Ctx>,
    name: String,
    /// The parent the task was claimed with: where its tree is looked up
    /// from, without reading its task file again.
    parent: Option<String>,
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
    /// The outbox entries already queued by an earlier try of this commit:
    /// never queued again (one that could not be removed stays there).
    queued_from: Vec<String>,
}

/// Runs `step`; when it fails and a directory of the tree is missing (someone
/// removed it), recreates the tree and runs `step` once more. The steps of a
/// commit may be repeated, and a tree that is whole costs no lookups.
fn ensured<T>(
    layout: &crate::tree::layout::Layout,
    mut step: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    match step() {
        Err(e) if layout.dirs().iter().any(|d| !d.is_dir()) => {
            layout.ensure()?;
            step()
                .map_err(|again| std::io::Error::new(again.kind(), format!("{again} (first: {e})")))
        }
        r => r,
    }
}

impl Commit {
    /// One try of the whole commit. Every step may be repeated: the outbox
    /// queues what is still in it, a run directory already moved stays, the
    /// record is written again, the merge skips a `run_id` it has, and the
    /// last move completes a move made before.
    fn once(&mut self) -> std::io::Result<()> {
        let ctx = self.ctx.clone();
        ensured(&ctx.layout, || self.steps())
    }

    /// The steps of [`Commit::once`], in order.
    fn steps(&mut self) -> std::io::Result<()> {
        let ctx = self.ctx.clone();
        let layout = &ctx.layout;
        let name = self.name.clone();
        // Which step failed, and where: an errno alone ("Permission denied")
        // does not tell an operator what to fix.
        let at = |what: String| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let (_, now) = moves::reclaim(
            layout,
            &name,
            &self.ext,
            self.claimed.id,
            &self.claimed.bytes,
        )
        .map_err(at(format!(
            "checking the task file in {}",
            layout.rel(&layout.assigned)
        )))?;
        self.claimed.id = now;
        // The state file on disk already names this run's run_id (written
        // before the spawn); a commit made without a run (a parent of
        // subtasks) names its record in `committing` and writes it now.
        if self.st.committing.is_some() {
            books::write_state(layout, &self.st).map_err(at(format!(
                "writing {}",
                layout.rel(&layout.state_file(&name))
            )))?;
        }
        // A file of its name in either terminal directory (its destination,
        // or the other one, where it would pass for the task to every
        // reader) that mailroom did not put there: the agent's, as a rule.
        let dest = dest_of(&self.rec);
        if self.target.is_none()
            && let Some(found) = planted(layout, dest, &name, &self.ext)
                .or_else(|| obstacle(layout, dest, &name))
                .or_else(|| planted(layout, other_terminal(dest), &name, &self.ext))
        {
            self.divert(&found)?;
        }
        // After the divert, which may have made it a failure.
        let dest = dest_of(&self.rec);
        let target = self.target.clone().unwrap_or_else(|| name.clone());
        books::fill_run_dirs(layout, &name, dest, &mut self.rec);
        self.rec.output_file = Some(layout.rel(&layout.output_file(&target)));
        // The transactional outbox: follow-ups go to pending/ only on
        // success (before the record, which lists them); on failure they
        // stay in the run directory and the record names them.
        let outbox = layout
            .attempt_dir(State::Assigned, &name, self.st.attempts)
            .join("outbox");
        match self.rec.status {
            Status::Completed => {
                // Warnings name the entries where they will be once committed.
                let shown_at = layout
                    .attempt_dir(dest, &self.rec.task, self.st.attempts)
                    .join("outbox");
                let queued = crate::tree::outbox::queue_outbox(
                    layout,
                    &name,
                    (&outbox, &shown_at),
                    &mut self.queued_from,
                );
                // What was queued before an error stays queued (and
                // listed, with what was said of it): a retry of the commit
                // goes on from there.
                self.rec.followups.extend(queued.names);
                for w in queued.refused {
                    if !self.rec.warnings.contains(&w) {
                        warn!(task = %name, "{w}");
                        self.rec.warnings.push(w);
                    }
                }
                if let Some(e) = queued.error {
                    return Err(at(format!(
                        "queueing the follow-ups of {} into {}",
                        layout.rel(&outbox),
                        layout.rel(&layout.pending)
                    ))(e));
                }
            }
            Status::Failed => {
                let (left, more) = crate::tree::outbox::withheld(&outbox);
                if !left.is_empty() {
                    self.rec.withheld_followups = left;
                }
                if let Some(w) = more
                    && !self.rec.warnings.contains(&w)
                {
                    self.rec.warnings.push(w);
                }
            }
        }
        moves::prepare_commit_as(layout, &name, &self.rec).map_err(at(format!(
            "writing the result record and moving the run directory into {}",
            layout.rel(layout.dir(dest))
        )))?;
        let hint = ctx.pending_count.load(std::sync::atomic::Ordering::Relaxed);
        // The context is derived data: it never holds up a commit.
        let tree = match &self.parent {
            Some(p) => crate::tree::outbox::tree_root(layout, p, 64).0,
            None => self.rec.task.clone(),
        };
        if let Err(e) = crate::tree::context::merge(
            layout,
            &self.rec,
            Some((&self.out, self.cut)),
            Some(hint),
            Some(&tree),
        ) {
            warn!(task = %name, error = %e, "context merge failed; committing the task anyway");
            // A later recovery pass merges it.
            crate::tree::context::note_unmerged(layout, dest, &self.rec.task);
            // Said in the record too: until then the next agents do not see
            // this answer.
            let w = format!(
                "the answer was not merged into context/ at the commit (a later pass merges it): {e}"
            );
            if !self.rec.warnings.contains(&w) {
                self.rec.warnings.push(w);
                moves::prepare_commit_as(layout, &name, &self.rec).map_err(at(format!(
                    "writing the result record into {}",
                    layout.rel(layout.dir(dest))
                )))?;
            }
        }
        moves::finish_commit_as(layout, &name, &self.ext, dest, &target).map_err(at(format!(
            "moving {} into {}",
            layout.rel(&layout.task_file(State::Assigned, &name, &self.ext)),
            layout.rel(layout.dir(dest))
        )))?;
        // A cancel request is answered by the commit, whatever its outcome.
        let _ = crate::tree::fsx::remove_any(&layout.cancel_file(&name));
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

/// Something of the task's name in `dest` that its commit cannot write over,
/// which the agent made there, as a rule: a directory where the record goes,
/// or, where the run directory goes (while it is still in `assigned/`: after
/// an interrupted try it is already there), anything but a directory, or a
/// directory that cannot be removed.
fn obstacle(layout: &Layout, dest: State, name: &str) -> Option<std::path::PathBuf> {
    let rec = layout.record_file(dest, name);
    if std::fs::symlink_metadata(&rec).is_ok_and(|m| m.is_dir()) {
        return Some(rec);
    }
    if std::fs::symlink_metadata(layout.run_dir(State::Assigned, name)).is_err() {
        return None;
    }
    let run = layout.run_dir(dest, name);
    match std::fs::symlink_metadata(&run) {
        Ok(m) if !m.is_dir() => Some(run),
        Ok(_) => fsx::remove_dir_all_if_exists(&run).is_err().then_some(run),
        Err(_) => None,
    }
}

/// A task file of `name` in `dir` that is not the task's own file in
/// `assigned/` (its extension `ext`): one mailroom did not put there.
fn planted(layout: &Layout, dir: State, name: &str, ext: &str) -> Option<std::path::PathBuf> {
    let assigned = layout.task_file(State::Assigned, name, ext);
    layout
        .find(dir, name)
        .map(|(p, _)| p)
        .filter(|p| !fsx::same_inode(p, &assigned))
}

/// Why a run is tampered when `what` ("its lock file … was") of the
/// supervisor's bookkeeping went during it.
pub(super) fn removed_during_run(what: &str) -> String {
    format!(
        "{what} removed or replaced during the run (by its agent, as a rule): another \
         supervisor could have taken the task meanwhile"
    )
}

fn other_terminal(dest: State) -> State {
    if dest == State::Completed {
        State::Failed
    } else {
        State::Completed
    }
}

fn dest_of(rec: &ResultRecord) -> State {
    match rec.status {
        Status::Completed => State::Completed,
        Status::Failed => State::Failed,
    }
}

/// Writes a commit, retrying with backoff while it fails (a full disk, an
/// unwritable directory): the finished run is never misfiled or run again for
/// a commit error. A shutdown ends the retries; the keeper's outcome stays in
/// the run directory for the next supervisor.
async fn write_commit(
    mut c: Commit,
    lock: TaskLock,
    mut stop: watch::Receiver<Option<Stop>>,
    secs: Option<f64>,
) -> JobEnd {
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
                let target = c.target.as_deref().unwrap_or(&c.name);
                lock.release_into(&c.ctx.layout.run_dir(dest_of(&c.rec), target));
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

/// The name a set-aside task file got in its run directory (which moves with
/// the task, so a path would be stale once it is filed).
fn kept_name(kept: &Path) -> String {
    kept.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}
