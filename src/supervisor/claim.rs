//! Claims and refusals: the scheduling pass, taking a task lock, the claim itself and the start of its run, and filing what will never run.

use super::recover::PutBack;
use super::*;

/// Why a claimed file could not be taken up.
enum Reread {
    /// It is no valid task (or no agent can take it): filed `invalid`.
    Invalid(String),
    /// The system's error reading it: put back and looked at again.
    Transient(String),
}

/// How long a task whose claim failed (the move into `assigned/` refused)
/// waits before the next try.
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The slot files of the tree-wide `concurrency` (`tasks/slots/.all.<n>.lock`):
/// no agent can have this name (agent names never start with a dot).
pub(super) const TREE_SLOTS: &str = ".all";

/// A claimed task with its route and the reason for it.
type Routed = (Task, (crate::sched::queue::Route, String));

/// What became of a start.
pub(super) enum Start {
    /// Claimed and launched, or the task was filed or is gone.
    Started,
    /// Every slot of the agent is held (by any supervisor of the tree).
    AgentFull,
    /// Every slot of the tree's `concurrency` is held.
    TreeFull,
}

impl Supervisor {
    /// Files that still do not parse after `settle`, and are not being
    /// written, become rejects with the parser's position.
    fn judge_settled(&mut self) {
        let settled: Vec<String> = self
            .unsettled
            .iter()
            .filter(|n| {
                self.pending.get(*n).is_some_and(|p| {
                    p.seen.elapsed() >= self.config.settle
                        && fsx::open_for_writing_elsewhere(&self.layout().task_file(
                            State::Pending,
                            n,
                            p.ext,
                        )) != Some(true)
                })
            })
            .cloned()
            .collect();
        for name in settled {
            let p = &self.pending[&name];
            if let Err(e) = &p.parsed {
                let path = self.layout().task_file(State::Pending, &name, p.ext);
                let file = self.layout().rel(&path);
                // Who wrote it, when it says so (a follow-up that did not parse).
                let parent = fsx::read_task_file(&path, self.config.max_task_bytes)
                    .ok()
                    .and_then(|(b, _)| task::parent_line(&b));
                let mut error = e.display_at(&file);
                if let Some(parent) = parent {
                    error.push_str(&format!(" (its parent: `{parent}`)"));
                }
                let mut rec = books::never_ran_record(Outcome::Invalid, error);
                rec.error_location = Some(ErrorLocation {
                    file,
                    line: e.line,
                    column: e.column,
                });
                self.unsettled.remove(&name);
                self.rejects.insert(name, rec);
            }
        }
    }

    /// Files away what can never run, then claims and starts as many tasks
    /// as capacity allows, in queue order. A pending file that left (a
    /// second file of a completed name, filed as a clash at its claim, or one
    /// removed) may have been all that kept the tasks waiting for its name
    /// (a name is not "completed" while a file of it is pending): they are
    /// placed again and the pass repeats.
    pub(super) fn schedule(&mut self) {
        loop {
            self.schedule_pass();
            if !std::mem::take(&mut self.name_freed) {
                break;
            }
            self.replace_waiting();
        }
    }

    fn schedule_pass(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.judge_settled();
        // A reject can fail the tasks that wait for it: repeat until quiet.
        while !self.rejects.is_empty() {
            for (name, rec) in std::mem::take(&mut self.rejects) {
                if let Some(p) = self.pending.get(&name) {
                    let ext = p.ext.to_owned();
                    self.forget(&name);
                    self.reject_pending(&name, &ext, rec, false);
                }
            }
            self.replace_waiting();
        }
        let now = SystemTime::now();
        self.cooldowns.retain(|_, (t, _)| *t > now);
        self.check_budgets(now);
        // Agents whose every slot another process holds (this pass).
        let mut full: BTreeSet<String> = BTreeSet::new();
        // A run that could not be prepared holds new claims for a while:
        // the next would fail alike (a full disk), and each left its task
        // in `assigned/` when it could not put it back either.
        let held = self
            .claims_held
            .as_ref()
            .is_some_and(|(t, _, _)| Instant::now() < *t);
        while !self.paused && !held && self.running.len() < self.config.concurrency {
            let (config, load, cooldowns) = (&self.config, &self.load, &self.cooldowns);
            let over_budget = &self.over_budget;
            let paused = &self.paused_agents;
            let full_ref = &full;
            let avail = |a: &str| match config.agents.get(a) {
                None => Avail::Unavailable,
                // A used-up daily budget pauses the agent like a cooldown.
                Some(_) if cooldowns.contains_key(a) || over_budget.contains_key(a) => {
                    Avail::Unavailable
                }
                // A paused agent is waited for, like a busy one (no fallback).
                Some(_) if paused.contains(a) => Avail::Busy,
                // Busy tree-wide: waited for like one busy here.
                Some(_) if full_ref.contains(a) => Avail::Busy,
                Some(ag) => {
                    let l = load.get(a).copied().unwrap_or(0);
                    if l >= ag.max_instances {
                        Avail::Busy
                    } else {
                        Avail::Free {
                            load: l,
                            max: ag.max_instances,
                        }
                    }
                }
            };
            let Some((name, agent)) = self.queue.pop(now, avail) else {
                break;
            };
            match self.start(&name, &agent) {
                Start::Started => {}
                Start::AgentFull => {
                    full.insert(agent);
                }
                // The tree's `concurrency` is used up by every supervisor's
                // runs together: nothing more starts in this pass.
                Start::TreeFull => break,
            }
        }
    }

    /// A free slot of `agent` (protocol version 2; `Ok(None)` without
    /// keepers, where `max_instances` counts this process's runs only).
    /// `Err` when every slot is held: the agent is busy tree-wide.
    fn take_slot(&self, agent: &str) -> Result<Option<crate::tree::slots::Slot>, ()> {
        let max = if agent == TREE_SLOTS {
            self.config.concurrency
        } else {
            match self.config.agents.get(agent) {
                Some(ag) => ag.max_instances,
                None => return Ok(None),
            }
        };
        if !self.config.run_keeper {
            return Ok(None);
        }
        match crate::tree::slots::try_take(self.layout(), agent, max) {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) => Err(()),
            Err(e) => {
                error!(agent, error = %e, "cannot take a slot of the agent");
                Err(())
            }
        }
    }

    /// Takes a task's lock; when another process holds it (or it cannot be
    /// created), holds the task back briefly instead.
    pub(super) fn lock_or_hold(&mut self, name: &str) -> Option<TaskLock> {
        let mut res = TaskLock::try_acquire(self.layout(), name);
        if res
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            // `tasks/assigned/` is gone: put the tree back and try again.
            self.ensure_tree();
            res = TaskLock::try_acquire(self.layout(), name);
        }
        match res {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                self.second_file_of_a_run(name);
                self.set_busy(name);
                None
            }
            Err(e) => {
                let lock = self.layout().lock_file(name);
                let why = format!("cannot lock the task ({}): {e}", self.layout().rel(&lock));
                self.hold_after_error(name, why);
                None
            }
        }
    }

    /// A pending file whose lock is held while `assigned/` has another file
    /// of its name: a second file of a running task, which waits for the run
    /// to end and is then filed as a clash. Said once, when first seen, so
    /// that its writer does not wait for the run to hear it.
    fn second_file_of_a_run(&mut self, name: &str) {
        let key = format!("second-file:{name}");
        if self.unrecoverable.contains(&key) {
            return;
        }
        let layout = self.layout();
        let Some(ext) = self.pending.get(name).map(|p| p.ext) else {
            return;
        };
        let Some((running, _)) = layout.find(State::Assigned, name) else {
            return;
        };
        // Gone from pending/ (another supervisor's claim in flight) or the
        // same file (a requeue's link and unlink): not a second file.
        let waiting = layout.task_file(State::Pending, name, ext);
        if !books::exists(&waiting) || fsx::same_inode(&running, &waiting) {
            return;
        }
        warn!(
            task = name,
            "a second file of this name is in tasks/pending/ while the task runs ({}); \
             it waits, and is filed in tasks/failed/ as a clash when the run ends",
            layout.rel(&running)
        );
        self.unrecoverable.insert(key);
    }

    /// Files a pending task straight into `failed/`, under its lock.
    pub(super) fn reject_pending(
        &mut self,
        name: &str,
        ext: &str,
        rec: ResultRecord,
        rename: bool,
    ) {
        let Some(lock) = self.lock_or_hold(name) else {
            return;
        };
        self.reject_locked(State::Pending, name, ext, rec, rename, lock);
    }

    /// Files a task that will never run into `failed/` with its record, merges
    /// the record into context (not for clashes: that name belongs to another
    /// task), and releases the lock.
    pub(super) fn reject_locked(
        &mut self,
        src: State,
        name: &str,
        ext: &str,
        rec: ResultRecord,
        rename: bool,
        lock: TaskLock,
    ) {
        let layout = self.layout().clone();
        let error = rec.error.clone().unwrap_or_default();
        let outcome = rec.outcome;
        match moves::reject(&layout, src, name, ext, rec, rename) {
            Ok(Some(rec)) => {
                let said = rec.error.as_deref().unwrap_or(&error);
                warn!(task = name, filed_as = %rec.task, "{said}");
                self.task_ended(&rec.task, Status::Failed, outcome, "");
                if outcome != Outcome::Clash
                    && let Err(e) = crate::tree::context::merge_within(
                        &layout,
                        &rec,
                        None,
                        Some(self.pending.len()),
                        crate::tree::context::LOOP_LOCK_WAIT,
                        None,
                    )
                {
                    warn!(task = %rec.task, error = %e, "context merge failed; a later pass merges it");
                    // Its line would be lost for good (totals, usage, budgets).
                    crate::tree::context::note_unmerged(&layout, State::Failed, &rec.task);
                }
            }
            Ok(None) => {}
            Err(e) => error!(task = name, error = %e, "cannot move task to failed/"),
        }
        lock.release();
    }

    /// A file whose name mailroom cannot use: filed under a sanitised name.
    pub(super) fn reject_bad_name(&mut self, path: &Path, why: &str) {
        let raw = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match raw.rsplit_once('.') {
            Some((s, e)) if task::task_ext(e).is_some() => (s.to_owned(), e.to_owned()),
            _ => return,
        };
        let clean: String = stem
            .chars()
            .map(|c| {
                if c.is_control() || c == '\\' || c == '\u{fffd}' || task::invisible(c) {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let mut clean = clean.trim_start_matches('.').to_owned();
        let mut cut = clean.len().min(150);
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
        let clean = if clean.is_empty() {
            "unnamed".to_owned()
        } else {
            clean
        };
        let layout = self.layout().clone();
        let Ok((target, lock)) = moves::free_clash_name(&layout, State::Failed, &clean) else {
            return;
        };
        let mut rec = books::never_ran_record(
            Outcome::Invalid,
            format!(
                "the file name {:?} cannot be used ({why}); filed as `{target}`",
                raw
            ),
        );
        rec.task = target.clone();
        rec.submitted_as = Some(format!("tasks/pending/{}", raw.escape_debug()));
        match moves::set_aside(&layout, path, &target, &ext, &rec) {
            Ok(()) => warn!(file = ?raw, filed_as = %target, "{why}"),
            Err(e) => debug!(error = %e, "bad name not filed"),
        }
        lock.release();
    }

    /// Claims one task and starts its run on `agent`. With keepers, a slot of
    /// the agent is taken first (see `tree::slots`); false, and the task is
    /// held back unclaimed, when every slot is held.
    pub(super) fn start(&mut self, name: &str, agent_name: &str) -> Start {
        if self.tree_over_budget(name, agent_name) {
            return Start::Started;
        }
        let Ok(tree_slot) = self.take_slot(TREE_SLOTS) else {
            self.set_busy(name);
            return Start::TreeFull;
        };
        let Ok(slot) = self.take_slot(agent_name) else {
            self.set_busy(name);
            return Start::AgentFull;
        };
        let Some((ext, lock)) = self.claim_pending(name) else {
            return Start::Started;
        };
        // Agents ruled out for this task (fallbacks) go with it into the run.
        let excluded = self
            .pending
            .get(name)
            .map(|p| p.excluded.clone())
            .unwrap_or_default();
        self.drop_pending(name);
        let (claimed, routed) = self.reread_claimed(name, &ext, &excluded);
        let (task, (route, reason)) = match routed {
            Ok(t) => t,
            // The system's error, not the file's (out of descriptors): the
            // file goes back to pending/ (a rename needs no descriptor) and
            // is looked at again.
            Err(Reread::Transient(why)) => {
                let back = moves::move_file(
                    &self.layout().task_file(State::Assigned, name, &ext),
                    &self.layout().task_file(State::Pending, name, &ext),
                );
                lock.release();
                match back {
                    Ok(()) => {
                        self.examine_name(name);
                        self.hold_after_error(name, why);
                    }
                    Err(e) => error!(
                        task = name,
                        "{why}; and it could not be put back into pending/ ({e}): recovery \
                         puts it back"
                    ),
                }
                return Start::Started;
            }
            Err(Reread::Invalid(msg)) => {
                let rec = books::never_ran_record(Outcome::Invalid, msg);
                self.reject_locked(State::Assigned, name, &ext, rec, false, lock);
                return Start::Started;
            }
        };
        // The file may have changed since it was queued: keep the agent the
        // queue chose only if it is still a candidate.
        let chosen = if route.agents.iter().any(|a| a == agent_name) {
            agent_name
        } else {
            &route.agents[0]
        };
        // Another agent after all: its own slot, or (none free now) its keeper
        // waits for one before it starts the agent.
        let slot = if chosen == agent_name {
            slot
        } else {
            drop(slot);
            self.take_slot(chosen).ok().flatten()
        };
        let job = Job {
            ctx: self.ctx.clone(),
            config: self.config.clone(),
            name: name.to_owned(),
            ext,
            task,
            agent: self.config.agents[chosen].clone(),
            alternatives: route.agents.len() > 1,
            reason,
            limits: self.limits.clone(),
            ws: None,
            lock,
            slot,
            tree_slot,
            claimed,
            // Replaced by the run's own channel at the launch.
            stop: watch::channel(None).1,
            attempt: 0,
            leftovers: Default::default(),
        };
        self.launch(job);
        Start::Started
    }

    /// Re-reads what was claimed (the file may have changed since the scan)
    /// and routes it again. The copy is the supervisor's: it outlives
    /// whatever the agent does to the file.
    fn reread_claimed(
        &self,
        name: &str,
        ext: &str,
        excluded: &[String],
    ) -> (Claimed, Result<Routed, Reread>) {
        let layout = self.layout();
        let shown = layout.rel(&layout.task_file(State::Pending, name, ext));
        let apath = layout.task_file(State::Assigned, name, ext);
        let mut claimed = Claimed::default();
        let routed = match fsx::read_task_file(&apath, self.config.max_task_bytes) {
            Ok((b, id)) => {
                let parsed = task::parse_as(name, ext, &b)
                    .map_err(|e| Reread::Invalid(e.display_at(&shown)));
                claimed = Claimed {
                    bytes: b,
                    id: (id.dev, id.ino),
                };
                parsed
            }
            Err(fsx::ReadError::Io(e)) if fsx::system_error(&e) => Err(Reread::Transient(format!(
                "cannot read {}: {e}",
                layout.rel(&apath)
            ))),
            Err(e) => Err(Reread::Invalid(format!("{shown}: refused: {e}"))),
        }
        .and_then(|task| {
            let r = crate::sched::routing::route(&self.config, &task, excluded)
                .map_err(Reread::Invalid)?;
            Ok((task, r))
        });
        (claimed, routed)
    }

    /// A pending task that an error of the system (not of its file) keeps
    /// from being read, locked or claimed: said once per task and error, at
    /// error level (again at debug level), and looked at again in
    /// [`CLAIM_RETRY`]. Never a reason to file the task.
    pub(super) fn hold_after_error(&mut self, name: &str, why: String) {
        if self.claim_errors.get(name) != Some(&why) {
            error!(task = name, "{why}; trying again every 2 s");
            self.claim_errors.insert(name.to_owned(), why);
        } else {
            debug!(task = name, "again: {why}");
        }
        match self.pending.get_mut(name) {
            Some(p) => {
                p.hold = Some(std::time::SystemTime::now() + CLAIM_RETRY);
                self.place(name);
            }
            None => {
                self.reexamine
                    .insert(name.to_owned(), Instant::now() + CLAIM_RETRY);
            }
        }
    }

    /// Locks and moves `pending/<name>` into `assigned/`; on any refusal the
    /// task is held back, forgotten or filed as a clash here.
    fn claim_pending(&mut self, name: &str) -> Option<(String, TaskLock)> {
        let layout = self.layout().clone();
        let ext = self.pending.get(name)?.ext.to_owned();
        // A naive writer may still have the file open: not yet.
        if fsx::open_for_writing_elsewhere(&layout.task_file(State::Pending, name, &ext))
            == Some(true)
        {
            self.set_busy(name);
            return None;
        }
        let lock = self.lock_or_hold(name)?;
        let lock = self.unless_run_under_way(name, lock)?;
        match moves::claim(&layout, name, &ext, &lock) {
            Ok(Claim::Claimed) => Some((ext, lock)),
            Ok(Claim::Gone) => {
                lock.release();
                self.forget(name);
                None
            }
            Ok(Claim::Clash(other)) => {
                lock.release();
                self.forget(name);
                let rec = books::never_ran_record(
                    Outcome::Clash,
                    format!(
                        "the name `{name}` is already used by {}; nothing was overwritten. Rename the file and submit it again",
                        layout.rel(&other)
                    ),
                );
                self.reject_pending(name, &ext, rec, true);
                None
            }
            Err(e) => {
                lock.release();
                // Said once per task and error (a pending/ or assigned/ that
                // refuses the move fails again at every look), with the
                // place; looked at again every few seconds, not at once.
                let why = format!(
                    "cannot move {} into {}: {e}",
                    layout.rel(&layout.task_file(State::Pending, name, &ext)),
                    layout.rel(&layout.assigned)
                );
                self.hold_after_error(name, format!("claim failed: {why}"));
                None
            }
        }
    }

    /// A task in `pending/` whose run never ended, its lock taken: not
    /// claimed again. Its agent moved the task file back into `pending/`
    /// (and removed the lock file, so the lock was free), or it did so and
    /// its supervisor died. A run this supervisor still has is left to its
    /// own commit, which finds the file moved; any other run whose state
    /// file names it goes through recovery: left alone while a supervisor
    /// or keeper still has it, else the claimed file is put back and the run
    /// filed as `tampered` (never run again). The lock, when the claim may
    /// go on.
    fn unless_run_under_way(&mut self, name: &str, lock: TaskLock) -> Option<TaskLock> {
        if self.running.contains_key(name) {
            lock.release();
            self.set_busy(name);
            // A requeue (a retry, a fallback) puts the file back before the
            // run's end reaches the loop, its state cleared: only a state
            // that still names a run means that its agent moved it.
            if books::read_state(self.layout(), name).run.is_some()
                && self.unrecoverable.insert(format!("claimed-again:{name}"))
            {
                warn!(
                    task = name,
                    "not claimed again: its run still goes on here, though its task file is \
                     back in tasks/pending/ (moved there by its agent?)"
                );
            }
            return None;
        }
        // No run named, and no state file lost beside an earlier run's
        // directory (recovery writes such a state back): claim.
        let layout = self.layout();
        match books::state_if_any(layout, name) {
            Some(st) if st.run.is_none() => return Some(lock),
            None if layout.last_attempt(State::Assigned, name).is_none() => return Some(lock),
            _ => {}
        }
        match self.orphan_task_file(name) {
            PutBack::Nothing => Some(lock),
            // Nothing to check it against: run it (as before run directories
            // kept a copy), rather than hold it for ever.
            PutBack::NoCopy => {
                warn!(
                    task = name,
                    "its earlier run ended while no supervisor watched, and there is no copy \
                     of its claimed file to check the one in tasks/pending/ against; it is \
                     claimed again"
                );
                Some(lock)
            }
            PutBack::Keep => {
                lock.release();
                self.set_busy(name);
                None
            }
            PutBack::Restored(ext) => {
                self.forget(name);
                self.recover_checked(name, &ext, lock);
                None
            }
        }
    }

    /// Counts the run against its agent and starts it as a tokio task that
    /// reports its end to the loop.
    fn launch(&mut self, mut job: Job) {
        let (name, agent) = (job.name.clone(), job.agent.name.clone());
        self.launch_with(&name, &agent, move |stop| {
            job.stop = stop.clone();
            job.run(stop)
        });
    }

    /// Registers a run of `name` on `agent` (its slot, its stop channel) and
    /// drives `run` as a tokio task whose end the loop hears as
    /// `Event::Finished`.
    pub(super) fn launch_with<F, Fut>(&mut self, name: &str, agent: &str, run: F)
    where
        F: FnOnce(watch::Receiver<Option<Stop>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = JobEnd> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(None);
        *self.load.entry(agent.to_owned()).or_default() += 1;
        self.next_run += 1;
        let n = self.next_run;
        self.running.insert(
            name.to_owned(),
            Running {
                run: n,
                stop: stop_tx,
            },
        );
        let tx = self.events_tx.clone();
        let (name, agent) = (name.to_owned(), agent.to_owned());
        tokio::spawn(async move {
            let end = run(stop_rx).await;
            let _ = tx.send(Event::Finished {
                name,
                run: n,
                agent,
                end,
            });
        });
    }
}
