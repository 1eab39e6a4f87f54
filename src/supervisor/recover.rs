//! Recovery of `assigned/`: orphans whose supervisor died, interrupted commits, leftovers and temp files.

use super::*;

/// Removes temp files left by writers that died mid-write: mailroom's own
/// `.<base>.<host>.<pid>.<n>.tmp` whose process is gone on this host, and any
/// dot-`.tmp` file older than ten minutes (a writer on another host).
pub(super) fn sweep_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let Some(f) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !(f.starts_with('.') && f.ends_with(".tmp")) {
            continue;
        }
        // Only this host's pids can be checked; another host's temp files
        // go by age alone.
        let dead = fsx::tmp_owner(&f).is_some_and(|(host, pid)| {
            host == fsx::host_tag()
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    == Err(nix::errno::Errno::ESRCH)
        });
        let old = ent
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e > Duration::from_secs(600));
        if dead || old {
            let _ = std::fs::remove_file(ent.path());
        }
    }
}

/// What recovery did about a task file missing from `assigned/`.
pub(super) enum PutBack {
    /// Put back, with this extension: recover the task as an orphan.
    Restored(String),
    /// It must stay as it is (no copy to put back, or the move failed): its
    /// run directory and state file are left alone.
    Keep,
    /// Not a run's task file that went missing: leftovers as usual.
    Nothing,
    /// It left `assigned/` during a run no supervisor saw end, and there is
    /// no copy of the claimed file to put back or check (a run of an older
    /// version): recovery leaves the run's files alone (they hold its
    /// output); a claim of the task file from `pending/` goes ahead.
    NoCopy,
}

impl Supervisor {
    /// Finishes or requeues orphans in `assigned/` (their supervisor died) and
    /// removes leftovers that no one holds.
    pub(super) fn recover(&mut self) {
        self.recover_pass(true)
    }

    /// A recovery pass; `full: false` (a peer's death) leaves out the replay
    /// of unmerged commits, which may wait for `context/.lock`, and the
    /// registry's pruning: those wait for the next rescan.
    pub(super) fn recover_pass(&mut self, full: bool) {
        let layout = self.layout().clone();
        // Commits that went ahead without their merge (the context lock was
        // held): merged now, a few at a time, if the lock is free.
        let n = if full {
            crate::tree::context::replay_unmerged(&layout, 8, crate::tree::context::LOOP_LOCK_WAIT)
        } else {
            0
        };
        if n > 0 {
            info!(
                merged = n,
                "merged finished tasks into context/ that their commits could not"
            );
        }
        let rd = match std::fs::read_dir(&layout.assigned) {
            Ok(rd) => rd,
            Err(_) => return,
        };
        let mut tasks = Vec::new();
        let mut leftovers = BTreeSet::new();
        for ent in rd.flatten() {
            let Some(f) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Entry::Task { name, ext } = task::classify(&f) {
                tasks.push((name.to_owned(), ext.to_owned()));
            } else if let Some(n) = f
                .strip_suffix(".lock")
                .or_else(|| f.strip_suffix(".state.json"))
                .or_else(|| f.strip_suffix(".run"))
            {
                leftovers.insert(n.to_owned());
            }
        }
        sweep_temps(&layout.assigned);
        if full {
            crate::tree::registry::prune(&layout);
        }
        if !self.swept {
            // Once per start: the other directories the protocol writes into.
            for d in [
                &layout.completed,
                &layout.failed,
                &layout.context,
                &layout.outputs,
                &layout.tmp,
                &layout.cooldowns,
            ] {
                sweep_temps(d);
            }
            self.swept = true;
        }
        let task_names: HashSet<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
        for (name, ext) in &tasks {
            if self.running.contains_key(name) {
                continue;
            }
            match TaskLock::try_acquire(&layout, name) {
                Ok(Some(lock)) => {
                    if layout.task_file(State::Assigned, name, ext).exists() {
                        self.recover_orphan(name, ext, lock);
                    } else {
                        lock.release();
                    }
                }
                Ok(None) => self.adopt_or_stop(name),
                Err(e) => warn!(task = %name, error = %e, "cannot lock during recovery"),
            }
        }
        for name in leftovers {
            if task_names.contains(name.as_str()) || self.running.contains_key(&name) {
                continue;
            }
            let lock = match TaskLock::try_acquire(&layout, &name) {
                Ok(Some(lock)) => lock,
                // Held: by a keeper whose supervisor died, say, while its
                // task file is out of `assigned/` (its agent moved it).
                Ok(None) => {
                    self.adopt_or_stop(&name);
                    continue;
                }
                Err(_) => continue,
            };
            // A run still unfinished (no record names it) whose task file
            // left `assigned/` (its agent moved or deleted it, and no
            // supervisor watched): the task file goes back, and the run is
            // recovered as an orphan and filed as tampered. A run that still
            // goes on (its lock file gone with its task file) is not touched,
            // nor are the files of one that cannot be put back: they hold
            // its output.
            match self.orphan_task_file(&name) {
                PutBack::Restored(ext) => {
                    self.recover_checked(&name, &ext, lock);
                    continue;
                }
                PutBack::Keep => {
                    lock.release();
                    continue;
                }
                PutBack::NoCopy => {
                    if self.unrecoverable.insert(name.to_owned()) {
                        error!(
                            task = %name,
                            "its task file left tasks/assigned/ during a run no supervisor saw \
                             end, and there is no copy of it to put back (a run of an older \
                             version); its run directory and state file are left as they are"
                        );
                    }
                    lock.release();
                    continue;
                }
                PutBack::Nothing => {}
            }
            // A task waiting in pending/ keeps its bookkeeping and its
            // earlier attempts' run directory for the next attempt.
            if layout.find(State::Assigned, &name).is_none()
                && layout.find(State::Pending, &name).is_none()
            {
                let _ = fsx::remove_dir_all_if_exists(&layout.run_dir(State::Assigned, &name));
                let _ = fsx::remove_file_if_exists(&layout.state_file(&name));
            }
            lock.release();
        }
    }

    /// The lock of `name` is ours and no supervisor watches its run. If its
    /// state file names a run that no record names (the run was under way,
    /// or ended without its commit), its task file is checked against the
    /// run directory's copy of the claimed file: put back when it left
    /// `assigned/` or something else stands in its place, noted when it was
    /// changed in place. The state file says so (`tampered`) first, then the
    /// file moves, so that a crash in between still files the run as
    /// tampered. Returns the extension of the task file in `assigned/`.
    fn verify_task_file(&mut self, name: &str) -> PutBack {
        use crate::tree::moves::Verified;
        let layout = self.layout().clone();
        let mut st = match books::state_if_any(&layout, name) {
            Some(st) => st,
            None => self
                .rebuild_lost_state(name)
                .unwrap_or_else(|| books::fresh_state(name)),
        };
        let Some(run_id) = st.run.as_ref().and_then(|r| r.run_id.clone()) else {
            return PutBack::Nothing;
        };
        if crate::tree::recovery::records(&layout, name)
            .iter()
            .any(|(_, r)| r.task == name && r.run_id == run_id)
        {
            return PutBack::Nothing;
        }
        // The attempt's directory is made before the state names the run
        // (7.2): gone now, it was removed or moved (by the run's agent, as
        // a rule), and the run is filed as tampered, not retried.
        let attempt_dir = books::current_run_dir(&layout, name, &st);
        let dir_gone =
            (!std::fs::symlink_metadata(&attempt_dir).is_ok_and(|m| m.is_dir())).then(|| {
                format!(
                    "its run directory {} was removed or moved during a run no supervisor saw end",
                    layout.rel(&attempt_dir)
                )
            });
        let found = task::TASK_EXTS.into_iter().find_map(|ext| {
            let copy = layout.claimed_copy(State::Assigned, name, ext);
            std::fs::symlink_metadata(&copy)
                .is_ok_and(|m| m.is_file())
                .then_some((ext, copy))
        });
        let Some((ext, copy)) = found else {
            return match layout.find(State::Assigned, name) {
                Some((_, ext)) => match dir_gone {
                    Some(why) => self.note_tampered(name, &mut st, why, || Ok(()), ext),
                    None => PutBack::Restored(ext.to_owned()),
                },
                // Never removed: they hold the run's output.
                None => PutBack::NoCopy,
            };
        };
        let task_hash = st.run.as_ref().and_then(|r| r.task_hash.clone());
        let verdict = moves::verify_against_copy(&layout, name, ext, &copy, task_hash.as_deref());
        let assigned_file = layout.rel(&layout.task_file(State::Assigned, name, ext));
        let (why, from) = match verdict {
            Ok(Verified::Intact) => {
                return match dir_gone {
                    Some(why) => self.note_tampered(name, &mut st, why, || Ok(()), ext),
                    None => PutBack::Restored(ext.to_owned()),
                };
            }
            Ok(Verified::Changed) => (
                format!(
                    "its task file {assigned_file} was changed in place during a run no \
                     supervisor saw end (the content it was claimed with is lost)"
                ),
                None,
            ),
            Ok(Verified::PutBack {
                what: Some(what), ..
            }) => (
                format!(
                    "its task file {assigned_file} was replaced by {what} during a run no \
                     supervisor saw end (kept in the run's directory as task-file.replaced; \
                     the claimed file was put back)"
                ),
                Some(None),
            ),
            Ok(Verified::PutBack {
                what: None,
                from: Some(p),
            }) => (
                format!(
                    "its task file was moved to {} during a run no supervisor saw end (mailroom \
                     moved it back and filed the task once)",
                    layout.rel(&p)
                ),
                Some(Some(p)),
            ),
            Ok(Verified::PutBack {
                what: None,
                from: None,
            }) => (
                format!(
                    "its task file was deleted from {} during a run no supervisor saw end \
                     (restored from the link to the claimed file in its run directory)",
                    layout.rel(&layout.assigned)
                ),
                Some(None),
            ),
            Err(e) => {
                if self.unrecoverable.insert(format!("verify:{name}")) {
                    error!(task = name, error = %e, "cannot check the task file against its claim");
                }
                return PutBack::Keep;
            }
        };
        let why = match dir_gone {
            Some(d) => format!("{why}; {d}"),
            None => why,
        };
        self.note_tampered(
            name,
            &mut st,
            why,
            || match from {
                Some(from) => moves::put_back(&layout, name, ext, &copy, from.as_deref()),
                None => Ok(()),
            },
            ext,
        )
    }

    /// Notes `why` as the run's tampering in the state file (first, so that
    /// a crash after it still files the run as tampered), then does
    /// `put_back`. Restored, or Keep when either fails.
    fn note_tampered(
        &mut self,
        name: &str,
        st: &mut TaskState,
        why: String,
        put_back: impl FnOnce() -> std::io::Result<()>,
        ext: &str,
    ) -> PutBack {
        if st.tampered.as_deref() != Some(why.as_str()) {
            st.tampered = Some(why.clone());
            if let Err(e) = books::write_state(self.layout(), st) {
                error!(task = name, error = %e, "cannot note the tampering in the state file");
                return PutBack::Keep;
            }
            warn!(task = name, "{why}");
        }
        if let Err(e) = put_back() {
            if self.unrecoverable.insert(format!("putback:{name}")) {
                error!(task = name, error = %e, "cannot put the task file back yet");
            }
            return PutBack::Keep;
        }
        PutBack::Restored(ext.to_owned())
    }

    /// `name` has no state file, but its latest attempt was started by a
    /// keeper (`spec.json`) whose run no record names: its agent (as a rule)
    /// deleted the state file during a run no supervisor saw end. The run is
    /// written back into a new state file (attempt, run id, agent, from the
    /// run directory) with `tampered` set, so that it is filed once rather
    /// than taken for a task that never ran and run again. None when nothing
    /// shows that a run was started.
    fn rebuild_lost_state(&mut self, name: &str) -> Option<TaskState> {
        use crate::run::keeper;
        let layout = self.layout().clone();
        let (n, dir) = layout.last_attempt(State::Assigned, name)?;
        let (spec, _) = fsx::read_head(&dir.join(keeper::SPEC_FILE), 1024 * 1024).ok()?;
        let spec: keeper::KeeperSpec = serde_json::from_slice(&spec).ok()?;
        // The run of another task, whose agent renamed its run directory to
        // this name: no run of `name` to rebuild (a task of that name
        // waiting in `pending/` must not be filed with another's file).
        // (`<name>.run/<n>/stdout.log`; attempt 0, a run of protocol 2 or
        // older: `<name>.run/stdout.log`.)
        let run_dir = spec.stdout.parent();
        let run_of = if n == 0 {
            run_dir
        } else {
            run_dir.and_then(Path::parent)
        }
        .and_then(Path::file_name);
        if run_of != Some(std::ffi::OsStr::new(&format!("{name}.run"))) {
            if self.unrecoverable.insert(format!("foreign:{name}")) {
                warn!(
                    task = name,
                    run_of = ?run_of,
                    "{} holds the run of another task (its agent renamed it); no run of this \
                     task is recovered from it",
                    layout.rel(&dir)
                );
            }
            return None;
        }
        if crate::tree::recovery::records(&layout, name)
            .iter()
            .any(|(_, r)| r.task == name && r.run_id == spec.run_id)
        {
            return None;
        }
        // The agent's name is its slot's: `tasks/slots/<agent>.<n>.lock`.
        let agent = spec
            .slot_paths
            .first()
            .and_then(|p| p.file_name()?.to_str())
            .and_then(|f| f.strip_suffix(".lock"))
            .and_then(|f| f.rsplit_once('.'))
            .map(|(a, _)| a.to_owned())
            .unwrap_or_default();
        let started_at = keeper::info_any(&dir)
            .map(|k| k.started_at)
            .unwrap_or_else(record::now);
        let why = format!(
            "its state file {} was deleted during a run no supervisor saw end (attempt {n}, \
             rebuilt from its run directory)",
            layout.rel(&layout.state_file(name))
        );
        let st = TaskState {
            attempts: n,
            run: Some(RunInfo {
                attempt: n,
                agent,
                host: self.ctx.host.clone(),
                supervisor_pid: 0,
                supervisor_start: 0,
                deadline: started_at.clone(),
                started_at,
                run_id: Some(spec.run_id),
                ..RunInfo::default()
            }),
            tampered: Some(why.clone()),
            ..books::fresh_state(name)
        };
        if let Err(e) = books::write_state(&layout, &st) {
            error!(task = name, error = %e, "cannot write back the state file its agent deleted");
            return None;
        }
        warn!(task = name, "{why}");
        Some(st)
    }

    /// Whether the run of `name`, whose lock was free, still goes on here
    /// (this host): the lock says it is an orphan, but the lock file can be
    /// removed or replaced by an agent. A live supervisor named in its state
    /// file, or a live keeper in its latest attempt's directory, is left
    /// alone; an agent of the task still running with neither (its
    /// supervisor and keeper died) is stopped first. Some(why): not now.
    fn still_running(&mut self, name: &str) -> Option<String> {
        let layout = self.layout().clone();
        let st = books::read_state(&layout, name);
        if let Some(run) = &st.run
            && self.other_local_supervisor(run) == Some(true)
        {
            return Some(format!(
                "supervisor {} of this host is alive and still has it",
                run.supervisor_pid
            ));
        }
        if let Some((_, dir)) = layout.last_attempt(State::Assigned, name)
            && let Some(k) = crate::run::keeper::info_any(&dir)
            && crate::run::keeper::alive(&k, &self.ctx.host)
        {
            // A free lock beside a live keeper: the lock file was removed or
            // replaced. Noted in the state file (this pass holds the lock
            // now), so that the run is filed tampered when it is committed,
            // as it is when its own supervisor sees it.
            super::adopt::note_lock_removed(&layout, name, &dir, &k.run_id, false);
            return Some(format!(
                "its run keeper (pid {}) is alive and still runs it, though its lock was free \
                 (the lock file was removed or replaced?)",
                k.pid
            ));
        }
        let agent = st.run.map(|r| r.agent).unwrap_or_default();
        (self.stop_agents_of(name, &agent, "whose supervisor and keeper are gone") > 0)
            .then(|| "an agent of it still runs with no keeper; it is being stopped".into())
    }

    /// Whether a run's supervisor is another process of this host whose
    /// start time is known: Some(alive), or None (another host's, this
    /// process, or one whose start time could not be read, which can never
    /// be proven dead).
    pub(super) fn other_local_supervisor(&self, run: &RunInfo) -> Option<bool> {
        let ours =
            run.supervisor_pid == self.ctx.self_pid && run.supervisor_start == self.ctx.self_start;
        (run.host == self.ctx.host && run.supervisor_start != 0 && !ours)
            .then(|| books::same_process(run.supervisor_pid, run.supervisor_start))
    }

    /// The `grace` of `agent` as configured now; 10 s for one that is not
    /// (an adopted or orphaned run of an agent since removed).
    pub(super) fn agent_grace(&self, agent: &str) -> Duration {
        self.config
            .agents
            .get(agent)
            .map_or(Duration::from_secs(10), |a| a.grace)
    }

    /// Stops (in threads of their own: SIGTERM, the grace of `agent` as
    /// configured here, 10 s without one, SIGKILL) every agent process group
    /// of `name` found through `/proc`, each once per supervisor process.
    /// Returns how many groups were found.
    fn stop_agents_of(&mut self, name: &str, agent: &str, why: &str) -> usize {
        let grace = self.agent_grace(agent);
        let groups = runner::find_agent_groups(&self.ctx.layout.root, name);
        for &(pgid, start) in &groups {
            if self.stopping_agents.insert((pgid, start)) {
                warn!(task = name, pgid, "stopping an agent {why}");
                std::thread::spawn(move || runner::kill_orphan_group(pgid, grace));
                // Its task is recovered once the agent is gone, not at the
                // next rescan (30 s by default).
                let due = Instant::now() + grace + Duration::from_millis(500);
                self.recover_due = Some(self.recover_due.map_or(due, |t| t.min(due)));
            }
        }
        groups.len()
    }

    /// An orphan: its lock is ours now. Finish its commit, fail it or
    /// requeue it, as `tree::recovery` decides.
    pub(super) fn recover_orphan(&mut self, name: &str, ext: &str, lock: TaskLock) {
        match self.orphan_task_file(name) {
            PutBack::Restored(e) => self.recover_checked(name, &e, lock),
            PutBack::Nothing => self.recover_checked(name, ext, lock),
            PutBack::Keep => {
                lock.release();
                // A live keeper whose supervisor died, found with its lock
                // free (its agent removed the lock file): adopted, so that a
                // cancel or a shutdown reaches it; the adopter waits for the
                // keeper itself.
                self.adopt_or_stop(name);
            }
            PutBack::NoCopy => lock.release(),
        }
    }

    /// The checks every orphan passes first, its lock taken: a run that
    /// still goes on is left alone ([`Self::still_running`], said once),
    /// then its task file is checked against its claim
    /// ([`Self::verify_task_file`]).
    pub(super) fn orphan_task_file(&mut self, name: &str) -> PutBack {
        if let Some(why) = self.still_running(name) {
            if self.unrecoverable.insert(format!("running:{name}")) {
                info!(task = name, "not recovered: {why}");
            }
            return PutBack::Keep;
        }
        self.unrecoverable.remove(&format!("running:{name}"));
        self.verify_task_file(name)
    }

    /// [`Self::recover_orphan`] once its task file is checked: `ext` is the
    /// task file's in `assigned/`.
    pub(super) fn recover_checked(&mut self, name: &str, ext: &str, lock: TaskLock) {
        use crate::tree::recovery::{self, Decision};
        let layout = self.layout().clone();
        // A keeper's outcome for this run: commit it, never run it again.
        // (A record of the run already written means its commit was under
        // way: recovery finishes that instead.)
        let st = books::read_state(&layout, name);
        if let Some(id) = st.run.as_ref().and_then(|r| r.run_id.as_deref())
            && st.committing.is_none()
            && !recovery::records(&layout, name)
                .iter()
                .any(|(_, r)| r.task == name && r.run_id == id)
            && crate::run::keeper::outcome(&books::current_run_dir(&layout, name, &st), id)
                .is_some()
        {
            return self.commit_kept(name, ext, lock, &st);
        }
        let retries = fsx::read_task_file(
            &layout.task_file(State::Assigned, name, ext),
            self.config.max_task_bytes,
        )
        .ok()
        .and_then(|(b, _)| task::parse_as(name, ext, &b).ok())
        .and_then(|t| t.retries)
        .unwrap_or(self.config.retries);
        // A task recovery files has ended here: its hook fires here (the
        // supervisor that died before its commit had fired none).
        match recovery::recover(&layout, name, ext, retries, None) {
            Ok((Decision::FinishCommit { dest, record }, _)) => {
                info!(
                    task = name,
                    state = dest.dir_name(),
                    "recovered: finished an interrupted commit"
                );
                // Where the task went, which its record's status chose.
                let st = if dest == State::Completed {
                    Status::Completed
                } else {
                    Status::Failed
                };
                let agent = record.agent.as_deref().unwrap_or_default();
                self.task_ended(name, st, record.outcome, agent);
            }
            Ok((Decision::Fail { record, .. }, _)) => {
                warn!(task = name, outcome = %record.outcome, "recovered orphan: failed");
                let agent = record.agent.as_deref().unwrap_or_default();
                self.task_ended(name, Status::Failed, record.outcome, agent);
            }
            Ok((Decision::Requeue { state }, _)) => {
                info!(
                    task = name,
                    attempts = state.attempts,
                    "recovered orphan: requeued"
                );
                self.stateful.insert(name.to_owned());
                self.examine_name(name);
            }
            Err(e) => error!(task = name, error = %e, "recovery could not finish"),
        }
        lock.release();
    }

    /// The lock of `name` is held: if by an agent whose supervisor died on this
    /// host, stop that agent so the task can be recovered and run again.
    pub(super) fn stop_orphaned_agent(&mut self, name: &str) {
        let st = books::read_state(self.layout(), name);
        let Some(run) = st.run else { return };
        // Only a supervisor of this host proven dead.
        if self.other_local_supervisor(&run) == Some(false) {
            self.stop_agents_of(name, &run.agent, "whose supervisor died");
        }
    }
}
