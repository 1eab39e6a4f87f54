//! Runs this supervisor did not start (protocol version 2): a live keeper whose
//! supervisor died is adopted (shown as running, cancel and shutdown reach it,
//! its outcome is committed when it ends), and an outcome a keeper wrote while
//! no supervisor watched is committed as it is. Neither is ever run again.

use super::*;
use crate::run::keeper::{self, KeeperInfo, KeptOutcome};

/// Builds the Job of an adopted run once its lock is free.
type MakeJob = Box<dyn FnOnce(TaskLock, watch::Receiver<Option<Stop>>) -> Job + Send>;

impl Supervisor {
    /// The lock of `name` is held. If by a live keeper whose supervisor died on
    /// this host, adopt the run; if by a protocol-1 agent (no keeper), stop it
    /// so the task can be recovered.
    pub(super) fn adopt_or_stop(&mut self, name: &str) {
        let layout = self.layout().clone();
        let st = books::read_state(&layout, name);
        let Some(run) = &st.run else { return };
        // Another host's runs, our own, and a live supervisor's are not ours
        // to touch; a supervisor whose start time is unknown cannot be proven dead.
        if self.running.contains_key(name) || self.other_local_supervisor(run) != Some(false) {
            return;
        }
        let run_dir = books::current_run_dir(&layout, name, &st);
        match run
            .run_id
            .as_deref()
            .and_then(|id| keeper::info(&run_dir, id))
        {
            Some(k) if keeper::alive(&k, &self.ctx.host) => self.adopt(name, &st, k),
            // Its keeper just ended: the lock frees in a moment, and the
            // next pass commits what it wrote.
            Some(_) => {}
            None => self.stop_orphaned_agent(name),
        }
    }

    /// Takes over a live keeper's run: it counts against its agent, cancel and
    /// shutdown reach the keeper as signals, and its outcome is committed here
    /// when it ends.
    fn adopt(&mut self, name: &str, st: &TaskState, k: KeeperInfo) {
        // A supervisor on its way out takes on no run: its shutdown would
        // wait for it (the stop went to the runs it had), and the keeper
        // goes on without it all the same, for the next supervisor.
        if self.stopping.is_some() {
            return;
        }
        let Some((_, ext)) = self.layout().find(State::Assigned, name) else {
            return;
        };
        let layout = self.layout().clone();
        let run_dir = books::current_run_dir(&layout, name, st);
        // One adopter at a time: another live supervisor that took it
        // first keeps it (said once); its death frees the run for the next.
        // Its holder must be a live supervisor of this tree: the run
        // directory is its agent's to write in, and an agent that holds the
        // lock must not keep cancels and shutdowns from reaching its run.
        let adoption = match keeper::try_adopt(&run_dir) {
            Ok(Ok(f)) => {
                self.unrecoverable.remove(&format!("adopted:{name}"));
                Some(f)
            }
            Ok(Err(held)) => {
                let key = format!("adopted:{name}");
                if self.unrecoverable.contains(&key) {
                    return;
                }
                let by = crate::tree::lock::flock_holder(&held);
                let host = &self.ctx.host;
                let supervisor = by.is_some_and(|p| {
                    crate::tree::registry::list(&layout)
                        .iter()
                        .any(|(hb, alive)| *alive && hb.host == *host && hb.pid == p)
                });
                if supervisor {
                    self.unrecoverable.insert(key);
                    info!(
                        task = name,
                        keeper = k.pid,
                        "leaving a run whose supervisor died to the supervisor (pid {}) that adopted it",
                        by.unwrap_or_default()
                    );
                    return;
                }
                warn!(
                    task = name,
                    holder = ?by,
                    "the adoption lock of a run is held by no supervisor of this tree (by its agent?); adopting it anyway"
                );
                None
            }
            Err(e) => {
                debug!(task = name, error = %e, "cannot take the adoption lock; adopting without it");
                None
            }
        };
        let Some(make) = self.job_maker(name, ext, st) else {
            return;
        };
        let agent = st.run.as_ref().map(|r| r.agent.clone()).unwrap_or_default();
        warn!(
            task = name,
            keeper = k.pid,
            "adopting a run whose supervisor died"
        );
        let (name_owned, run_id) = (name.to_owned(), k.run_id.clone());
        // When the keeper should have ended the run at the latest: its
        // deadline and the agent's grace (as configured now).
        let grace = self.agent_grace(&agent);
        let overdue = st
            .run
            .as_ref()
            .and_then(|r| record::parse_ts(&r.deadline))
            .map(|d| d + grace);
        self.launch_with(name, &agent, move |mut stop| async move {
            // Held until the adoption ends, committed or not.
            let _adoption = adoption;
            let keeper = (k, overdue, run_dir);
            let Some(lock) = wait_for_keeper(&layout, &name_owned, keeper, &mut stop).await else {
                return JobEnd::Stuck;
            };
            make(lock, stop).finish_kept(&run_id).await
        });
    }

    /// An orphan whose keeper wrote an outcome while no supervisor watched:
    /// commit that outcome (retry, fallback, cooldown or file it) as its own
    /// supervisor would have.
    pub(super) fn commit_kept(&mut self, name: &str, ext: &str, lock: TaskLock, st: &TaskState) {
        let Some(run) = &st.run else {
            return lock.release();
        };
        let run_id = run.run_id.clone().unwrap_or_default();
        let Some(make) = self.job_maker(name, ext, st) else {
            return lock.release();
        };
        info!(task = name, "committing the outcome its keeper recorded");
        let agent = run.agent.clone();
        self.launch_with(name, &agent, move |stop| async move {
            make(lock, stop).finish_kept(&run_id).await
        });
    }

    /// What a Job of a run this supervisor did not start needs: the task as
    /// claimed, its agent (as configured now), its route and workspace.
    fn job_maker(&self, name: &str, ext: &str, st: &TaskState) -> Option<MakeJob> {
        let layout = self.layout();
        let run = st.run.as_ref()?;
        let path = layout.task_file(State::Assigned, name, ext);
        let read = |p: &Path| {
            let (b, id) =
                fsx::read_task_file(p, self.config.max_task_bytes).map_err(|e| e.to_string())?;
            let t = task::parse_as(name, ext, &b).map_err(|e| e.message)?;
            Ok::<_, String>((
                t,
                Claimed {
                    bytes: b,
                    id: (id.dev, id.ino),
                },
            ))
        };
        // The task as claimed: the run directory's link to the claimed file
        // (the task file itself may have been replaced by the run's agent),
        // else the task file.
        let copy = layout.claimed_copy(State::Assigned, name, ext);
        let (task, claimed) = match read(&copy).or_else(|_| read(&path)) {
            Ok(t) => t,
            Err(e) => {
                // Changed into something that no longer parses (by its
                // agent, as a rule): the run is still committed, with a
                // stand-in for the task, rather than left in assigned/.
                warn!(
                    task = name,
                    error = %e,
                    "the task file of a kept run cannot be used; its run is committed as it ended"
                );
                let claimed = fsx::read_task_file(&path, self.config.max_task_bytes)
                    .map(|(bytes, id)| Claimed {
                        bytes,
                        id: (id.dev, id.ino),
                    })
                    .unwrap_or_default();
                let what = format!("(task file {name}.{ext} cannot be used: {e})");
                let stand_in = format!("description: {}\n", serde_json::to_string(&what).ok()?);
                (
                    task::parse_as(name, "yaml", stand_in.as_bytes()).ok()?,
                    claimed,
                )
            }
        };
        // An agent removed from the config since: keep its name, borrow the
        // policy of the first configured agent.
        let agent = match self.config.agents.get(&run.agent) {
            Some(a) => a.clone(),
            None => {
                let mut a = self.config.agents.values().next()?.clone();
                a.name = run.agent.clone();
                a
            }
        };
        let alternatives = crate::sched::routing::route(&self.config, &task, &st.excluded_agents)
            .map(|(r, _)| r.agents.len() > 1)
            .unwrap_or(false);
        let ws = kept_workspace(layout, &self.config, &task, &agent, name, st);
        let attempt = run.attempt;
        let (ctx, config, limits) = (self.ctx.clone(), self.config.clone(), self.limits.clone());
        let (name, ext) = (name.to_owned(), ext.to_owned());
        let reason = run.reason.clone().unwrap_or_else(|| "adopted".into());
        Some(Box::new(move |lock, stop| Job {
            ctx,
            config,
            name,
            ext,
            task,
            agent,
            alternatives,
            reason,
            limits,
            ws: Some(ws),
            lock,
            // The adopted keeper holds its slot already.
            slot: None,
            tree_slot: None,
            claimed,
            stop,
            attempt,
            leftovers: Default::default(),
        }))
    }
}

/// The workspace a kept run was started in, as its Job would have set it up.
fn kept_workspace(
    layout: &Layout,
    config: &Config,
    task: &Task,
    agent: &crate::parse::config::Agent,
    name: &str,
    st: &TaskState,
) -> WorkspaceRun {
    use crate::run::workspace::{Kind, branch_for};
    let kind = task.workspace.unwrap_or(agent.workspace);
    let result_file = books::current_run_dir(layout, name, st).join("result.yaml");
    let (path, branch) = match kind {
        Kind::Shared => (
            task.workdir
                .as_ref()
                .map_or_else(|| layout.root.clone(), |w| layout.root.join(w)),
            None,
        ),
        Kind::Worktree => (
            layout.root.join(&config.worktrees_dir).join(name),
            Some(branch_for(name)),
        ),
    };
    WorkspaceRun {
        kind,
        path,
        branch,
        base: None,
        cleanup: config.worktree_cleanup,
        result_file,
        said: None,
        workdir_use: None,
        dirty_before: None,
    }
}

/// Waits until the keeper has let the task's lock go, and takes it. Stop
/// requests meanwhile become signals to the keeper; once the run is
/// `overdue`, a keeper found stopped (SIGSTOP) is continued every 5 s, as
/// for a run of this supervisor's own. None: the loop went away.
async fn wait_for_keeper(
    layout: &Layout,
    name: &str,
    (k, overdue, run_dir): (KeeperInfo, Option<SystemTime>, PathBuf),
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<TaskLock> {
    use std::os::unix::fs::MetadataExt;
    let pid = k.pid;
    let mut listening = true;
    let mut continued: Option<tokio::time::Instant> = None;
    // The lock taken while the keeper still lives: its lock file was
    // removed or replaced (by its agent, as a rule). Kept, and the keeper
    // is waited for by its pid instead.
    let mut early: Option<TaskLock> = None;
    // The lock file the keeper holds (its stdin): a file at the lock's path
    // that is not this one (none, or another an agent made and may hold)
    // was removed or replaced, whenever the run ends.
    let lock_path = layout.lock_file(name);
    let held = std::fs::metadata(format!("/proc/{pid}/fd/0"))
        .ok()
        .filter(|_| keeper::alive(&k, &k.host))
        .map(|m| (m.dev(), m.ino()));
    let mut noted = false;
    loop {
        if !noted
            && early.is_none()
            && let Some(held) = held
            && std::fs::symlink_metadata(&lock_path).map_or(true, |m| (m.dev(), m.ino()) != held)
        {
            note_lock_removed(layout, name, &run_dir, &k.run_id, true);
            noted = true;
        }
        if early.is_none()
            && let Ok(Some(lock)) = TaskLock::try_acquire(layout, name)
        {
            if !keeper::alive(&k, &k.host) {
                return Some(lock);
            }
            note_lock_removed(layout, name, &run_dir, &k.run_id, false);
            early = Some(lock);
        }
        if early.is_some() && !keeper::alive(&k, &k.host) {
            return early;
        }
        if overdue.is_some_and(|o| SystemTime::now() >= o)
            && continued.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            && super::job::continue_if_stopped(name, pid)
        {
            continued = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            r = stop.changed(), if listening => match r {
                Ok(()) => {
                    if let Some(s) = *stop.borrow() {
                        let run_dir = run_dir.clone();
                        tokio::task::spawn_blocking(move || {
                            // Noted first: a stop this adopter asked for is
                            // never taken for the agent's, even if the
                            // adopter dies before its commit.
                            if let Err(e) = keeper::note_stop_request(&run_dir, std::process::id()) {
                                warn!(keeper = pid, error = %e, "cannot note the stop request in the run directory");
                            }
                            keeper::signal(pid, s)
                        });
                    }
                }
                Err(_) => listening = false,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if !listening {
            return None;
        }
    }
}

/// Notes in `name`'s state file that its lock file was removed or replaced
/// while its keeper still ran: the run is then filed tampered, as its own
/// supervisor would have filed it. `proven`: the file at the lock's path is
/// not the keeper's; otherwise the lock was only found free beside a live
/// keeper, which is no removal once the keeper has written its outcome (it
/// lets the lock go as it exits).
pub(super) fn note_lock_removed(
    layout: &Layout,
    name: &str,
    run_dir: &Path,
    run_id: &str,
    proven: bool,
) {
    if !proven && keeper::outcome(run_dir, run_id).is_some() {
        return;
    }
    let mut st = books::read_state(layout, name);
    if st.run.is_none() || st.tampered.is_some() {
        return;
    }
    st.tampered = Some(super::filing::removed_during_run(&format!(
        "its lock file {} was",
        layout.rel(&layout.lock_file(name))
    )));
    if let Err(e) = books::write_state(layout, &st) {
        warn!(task = name, error = %e, "cannot note the removed lock file in the state file");
    }
}

impl Job {
    /// The end of a kept run, under its lock: the keeper's outcome goes
    /// through the verdict like any run's; without one (the keeper was killed)
    /// the run is recovered as an orphan.
    pub(super) async fn finish_kept(self, run_id: &str) -> JobEnd {
        let layout = self.ctx.layout.clone();
        let st = books::read_state(&layout, &self.name);
        let current = st.run.as_ref().and_then(|r| r.run_id.as_deref()) == Some(run_id);
        if !current || layout.find(State::Assigned, &self.name).is_none() {
            // Committed meanwhile by another supervisor.
            self.lock.release();
            return JobEnd::Stuck;
        }
        let run_dir = books::current_run_dir(&layout, &self.name, &st);
        match keeper::outcome(&run_dir, run_id) {
            Some(KeptOutcome {
                end,
                started_at,
                finished_at,
                stopped_by,
                leftovers_stopped,
                ..
            }) => {
                self.leftovers
                    .store(leftovers_stopped, std::sync::atomic::Ordering::Relaxed);
                // A stop is a supervisor's (free) only when its sender was
                // the run's own supervisor, this one, or an earlier adopter
                // that noted its request (forwarding a cancel or a
                // shutdown); a keeper from before `stopped_by` is taken at
                // its word.
                let requested = keeper::stop_requests(&run_dir);
                let asked = |p: u32| {
                    p == std::process::id()
                        || st.run.as_ref().is_some_and(|r| r.supervisor_pid == p)
                        || requested.contains(&p)
                };
                let end = match end {
                    RunEnd::Stopped(_) | RunEnd::Cancelled(_)
                        if stopped_by.is_some_and(|p| !asked(p)) =>
                    {
                        let keeper = keeper::info(&run_dir, run_id).map_or(0, |k| k.pid);
                        self.unasked_stop(keeper, stopped_by)
                    }
                    end => end,
                };
                let started = record::parse_ts(&started_at).unwrap_or_else(SystemTime::now);
                let finished = record::parse_ts(&finished_at).filter(|f| *f >= started);
                self.finish(st, end, (started, finished)).await
            }
            // The keeper ended without an outcome (killed): its agent may
            // still run. As for a keeper of this supervisor's own, the agent
            // is stopped before the task can run again, and the run is
            // charged with what is known.
            None => {
                let keeper = keeper::info(&run_dir, run_id).map_or(0, |k| k.pid);
                let end = self.keeper_lost(keeper, None, &run_dir, run_id).await;
                let started = st
                    .run
                    .as_ref()
                    .and_then(|r| record::parse_ts(&r.started_at))
                    .unwrap_or_else(SystemTime::now);
                self.finish(st, end, (started, None)).await
            }
        }
    }
}
