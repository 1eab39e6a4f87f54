//! One claimed task as a run: prepare the run directory and prompt, the workspace, spawn and wait; subtask expansion and parents.

use super::*;

/// One claimed task, from spawn to commit. Owns the task's lock.
pub(super) struct Job {
    pub(super) ctx: Arc<Ctx>,
    pub(super) config: Arc<Config>,
    pub(super) name: String,
    pub(super) ext: String,
    pub(super) task: Task,
    pub(super) agent: crate::parse::config::Agent,
    /// Whether other agents could take the task if this one is ruled out.
    pub(super) alternatives: bool,
    /// Why this agent (for the record and `show`).
    pub(super) reason: String,
    pub(super) limits: Arc<HashMap<String, LimitPatterns>>,
    /// The run's workspace, once set up.
    pub(super) ws: Option<WorkspaceRun>,
    pub(super) lock: TaskLock,
    /// The agent's slot lock (protocol version 2), taken before the claim;
    /// it goes to the run's keeper, which holds it for the run's life.
    pub(super) slot: Option<crate::tree::slots::Slot>,
    /// The tree-wide `concurrency` slot, taken before the claim too.
    pub(super) tree_slot: Option<crate::tree::slots::Slot>,
    /// The task file as claimed: what a task whose agent moved or deleted
    /// its file is put back from (see `commit.rs`).
    pub(super) claimed: Claimed,
    /// Stop requests, for a commit that is being retried (see `commit.rs`).
    pub(super) stop: watch::Receiver<Option<Stop>>,
    /// The attempt under way (its run's `attempt`): its files are in
    /// `assigned/<name>.run/<attempt>/`. Set by `begin_attempt`, or from the
    /// state file for an adopted run.
    pub(super) attempt: u32,
    /// Processes the run's agent left behind that its keeper stopped (from
    /// the keeper's outcome), for the record's warnings.
    pub(super) leftovers: std::sync::atomic::AtomicU32,
}

/// Where a run works, for the record and the clean-up at its commit.
#[derive(Debug, Clone)]
pub(super) struct WorkspaceRun {
    pub(super) kind: crate::run::workspace::Kind,
    /// The worktree, or the shared workdir.
    pub(super) path: PathBuf,
    pub(super) branch: Option<String>,
    pub(super) base: Option<String>,
    pub(super) cleanup: crate::run::workspace::Cleanup,
    /// `$MAILROOM_RESULT`.
    pub(super) result_file: PathBuf,
    /// What it said, once read at the run's end (read again at the commit
    /// when not).
    pub(super) said: Option<Result<Option<crate::run::workspace::AgentResult>, String>>,
    /// A shared workdir's use by this run (None: a worktree, or a run
    /// adopted from another supervisor, whose overlaps are unknown).
    pub(super) workdir_use: Option<Arc<super::workdirs::WorkdirUse>>,
    /// A shared workdir in a git repository: `git status` before the run,
    /// so that what was already changed is not put down to it (None: not
    /// taken, and the report cannot be exact).
    pub(super) dirty_before: Option<Vec<crate::run::workspace::Dirty>>,
}

pub(super) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Why a run's keeper was not started.
pub(super) enum KeeperStart {
    /// The system's error (out of descriptors, memory or space): the run is
    /// counted and tried again.
    Transient(String),
    /// Anything else: a spawn failure.
    Failed(String),
}

impl KeeperStart {
    /// `why` the keeper was not started: a counted, retried run when it is
    /// the system's doing (`transient`), else a spawn failure.
    fn of(transient: bool, why: String) -> KeeperStart {
        if transient {
            KeeperStart::Transient(format!("{why}; the agent was not started"))
        } else {
            KeeperStart::Failed(why)
        }
    }
}

impl From<String> for KeeperStart {
    fn from(e: String) -> KeeperStart {
        KeeperStart::Failed(e)
    }
}

impl From<&str> for KeeperStart {
    fn from(e: &str) -> KeeperStart {
        KeeperStart::Failed(e.to_owned())
    }
}

impl Job {
    /// Runs the agent and commits the outcome.
    pub(super) async fn run(mut self, stop: watch::Receiver<Option<Stop>>) -> JobEnd {
        let started = SystemTime::now();
        let mut st = books::read_state(&self.ctx.layout, &self.name);
        st.task = self.name.clone();
        // A parent of subtasks runs no agent: it expands, waits, completes.
        if !st.children.is_empty() {
            return self.complete_parent(st).await;
        }
        if !self.task.subtasks.is_empty() {
            return self.expand(st).await;
        }
        let plan = self.plan_session(&st);
        let unprepared = st.unprepared;
        if let Err(e) = self.begin_attempt(&mut st, started, plan.as_ref()) {
            // Could not even prepare (disk full, unwritable tree): put it back;
            // the attempt does not count (counts never go down).
            let error = format!("{e}{}", fsx::full_note(&self.ctx.layout.assigned));
            let tree_wide = matches!(
                e.raw_os_error(),
                Some(
                    libc::ENOSPC
                        | libc::EDQUOT
                        | libc::EROFS
                        | libc::EIO
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOMEM
                )
            );
            error!(task = %self.name, %error, "cannot prepare the run; requeueing");
            st.free_attempts += 1;
            st.run = None;
            // A cause of its own (an agent made its run directory
            // unwritable) would come back at every claim: waited for
            // longer each time, as a retry's backoff, not every
            // `retry_delay` for ever.
            st.unprepared = unprepared.saturating_add(1);
            st.last_error = Some(match st.unprepared {
                1 => format!("cannot prepare the run: {error}"),
                n => format!("cannot prepare the run ({n} times in a row): {error}"),
            });
            st.not_before = Some(record::ts(
                SystemTime::now() + self.retry_delay(st.unprepared),
            ));
            let requeued = matches!(self.requeue_or_keep(st).await, JobEnd::Requeued(_));
            return JobEnd::Unprepared {
                requeued,
                error,
                tree_wide,
            };
        }
        let layout = self.ctx.layout.clone();
        let run_dir = self.run_dir();
        let prompt = match self.prompt(plan.as_ref()) {
            Ok(p) => p,
            Err(msg) => return self.fail_now(st, Outcome::Invalid, msg, started).await,
        };
        if let Err(e) = std::fs::write(run_dir.join("prompt.md"), prompt.as_bytes()) {
            warn!(task = %self.name, error = %e, "cannot keep a copy of the prompt");
        }
        let workdir = match self.workdir() {
            Ok(w) => w,
            Err(msg) => return self.fail_now(st, Outcome::Invalid, msg, started).await,
        };
        let workdir = match self.setup_workspace(workdir, &run_dir).await {
            Ok(w) => w,
            Err(msg) => return self.fail_now(st, Outcome::Invalid, msg, started).await,
        };
        // A cancel that came while the run was being prepared (a worktree
        // can take a while): the agent is not started at all.
        if *stop.borrow() == Some(Stop::Cancel) {
            return self
                .fail_now(
                    st,
                    Outcome::Cancelled,
                    "cancelled on request before its agent started (a cancel marker in \
                     tasks/control/cancel/)"
                        .into(),
                    started,
                )
                .await;
        }
        let command = plan.map_or_else(|| self.agent.command.clone(), |p| p.command);
        let mut spec = self.spec(prompt, &command, workdir, &run_dir, st.attempts);
        let end = if self.config.run_keeper {
            let run_id = st.run.as_ref().and_then(|r| r.run_id.clone());
            let slot = (self.slot.take(), self.tree_slot.take());
            self.run_kept(
                &spec,
                &run_dir,
                &run_id.unwrap_or_default(),
                st.attempts,
                slot,
                stop,
            )
            .await
        } else {
            // Protocol version 1: the agent itself carries the lock.
            spec.stdin = self.lock.share().ok();
            let name = &self.name;
            let tmp = runner::PrivateTmp::for_spec(&mut spec, |m| warn!(task = %name, "{m}"));
            let end = match runner::spawn(&mut spec, &layout.root) {
                Ok(child) => {
                    info!(task = %self.name, agent = %self.agent.name, attempt = st.attempts, pid = child.pid, "spawned");
                    runner::wait(child, &spec, stop).await
                }
                Err(end) => end,
            };
            if let Some(t) = tmp {
                let _ = tokio::task::spawn_blocking(move || drop(t)).await;
            }
            end
        };
        self.finish(st, end, (started, None)).await
    }

    /// Runs the agent under a keeper (protocol version 2): the keeper gets the
    /// lock as its stdin and the agent's environment, and writes the outcome
    /// into the run directory; stop requests become signals to the keeper.
    async fn run_kept(
        &self,
        spec: &runner::Spec,
        run_dir: &Path,
        run_id: &str,
        attempt: u32,
        (slot, tree_slot): (
            Option<crate::tree::slots::Slot>,
            Option<crate::tree::slots::Slot>,
        ),
        mut stop: watch::Receiver<Option<Stop>>,
    ) -> RunEnd {
        use crate::run::keeper::{self, KeeperSpec};
        let layout = &self.ctx.layout;
        let ks = KeeperSpec {
            slot: slot.as_ref().map(|s| s.path.clone()),
            tree_slot: tree_slot.as_ref().map(|s| s.path.clone()),
            // Without a slot handed over, the keeper waits for one of these.
            slot_paths: (0..self.agent.max_instances)
                .map(|n| crate::tree::slots::path(layout, &self.agent.name, n))
                .collect(),
            run_id: run_id.to_owned(),
            argv: spec.argv.clone(),
            workdir: spec.workdir.clone(),
            root: self.ctx.layout.root.clone(),
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
            output: spec.output.clone(),
            timeout_ms: spec.timeout.as_millis().min(u64::MAX as u128) as u64,
            grace_ms: spec.grace.as_millis().min(u64::MAX as u128) as u64,
            max_output: spec.max_output,
            durable: self.config.durable,
            private_tmp: spec.private_tmp,
        };
        let failed = |error: String| RunEnd::SpawnFailed {
            error,
            not_found: false,
        };
        let mut child = match self
            .spawn_keeper(&ks, spec, run_dir, (slot, tree_slot))
            .await
        {
            Ok(c) => c,
            // The system's error (out of descriptors or memory): no spawn
            // failure of the agent's, which would never be retried.
            Err(KeeperStart::Transient(error)) => {
                warn!(task = %self.name, "{error}");
                return RunEnd::Lost {
                    error,
                    killed: false,
                    run_dir_gone: false,
                };
            }
            Err(KeeperStart::Failed(e)) => return failed(e),
        };
        let pid = child.id().unwrap_or(0);
        info!(task = %self.name, agent = %self.agent.name, attempt, keeper = pid, "spawned");
        let mut listening = true;
        // Whether this supervisor asked the keeper to stop: a keeper that
        // stopped its run without being asked got its signal from another
        // process (its own agent, as a rule).
        let mut asked = false;
        // The keeper enforces the timeout; a keeper that was stopped
        // (SIGSTOP, a debugger) cannot. Once the run is past its deadline and
        // grace, a stopped keeper is continued, every few seconds, so that
        // it stops its agent as it should.
        let overdue = tokio::time::Instant::now() + spec.timeout.saturating_add(spec.grace);
        let mut watch = tokio::time::interval_at(overdue, Duration::from_secs(5));
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                _ = watch.tick() => {
                    continue_if_stopped(&self.name, pid);
                }
                r = stop.changed(), if listening => match r {
                    Ok(()) => {
                        if let Some(s) = *stop.borrow() {
                            asked = true;
                            tokio::task::spawn_blocking(move || keeper::signal(pid, s));
                        }
                    }
                    // The loop is gone (a shutdown that leaves runs to their
                    // keepers): the keeper goes on alone.
                    Err(_) => listening = false,
                },
            }
        };
        if let Some(o) = keeper::outcome(run_dir, run_id) {
            self.leftovers
                .store(o.leftovers_stopped, std::sync::atomic::Ordering::Relaxed);
            return match o.end {
                RunEnd::Stopped(_) | RunEnd::Cancelled(_) if !asked => {
                    self.unasked_stop(pid, o.stopped_by)
                }
                end => end,
            };
        }
        self.keeper_lost(pid, status.ok(), run_dir, run_id).await
    }

    /// A keeper stopped or cancelled its run on a signal no supervisor sent
    /// (`sender`, when the keeper knows it): not a shutdown or a cancel, so
    /// counted, never a free requeue (an agent that signals its keeper would
    /// loop forever).
    pub(super) fn unasked_stop(&self, keeper: u32, sender: Option<u32>) -> RunEnd {
        let by = sender.map_or_else(String::new, |p| format!(" (pid {p})"));
        let error = format!(
            "its run keeper (pid {keeper}) was sent a stop signal (SIGTERM, SIGINT, \
             SIGUSR1 or SIGUSR2) by another process than mailroom{by} (the agent \
             itself?), and stopped the agent"
        );
        warn!(task = %self.name, keeper, "{error}");
        RunEnd::Lost {
            error,
            killed: true,
            run_dir_gone: false,
        }
    }

    /// The keeper ended without writing the run's outcome (killed from
    /// outside, or by its agent, or its run directory went away). Its agent
    /// may still run: it is stopped (SIGTERM, grace, SIGKILL) before the task
    /// can run anywhere again. A keeper that never started the agent (no
    /// `keeper.json`, no agent found) is a spawn failure; otherwise how the
    /// agent ended is unknown, and the run is never counted as a success or
    /// as a free spawn failure.
    pub(super) async fn keeper_lost(
        &self,
        pid: u32,
        status: Option<std::process::ExitStatus>,
        run_dir: &Path,
        run_id: &str,
    ) -> RunEnd {
        use crate::run::keeper;
        use std::os::unix::process::ExitStatusExt;
        let (root, name, grace) = (
            self.ctx.layout.root.clone(),
            self.name.clone(),
            self.agent.grace,
        );
        let stopped = tokio::task::spawn_blocking(move || {
            let groups = runner::find_agent_groups(&root, &name);
            for (pg, _) in &groups {
                runner::kill_orphan_group(*pg, grace);
            }
            // The keeper could not remove its run's temp directory.
            runner::PrivateTmp::sweep();
            groups.len()
        })
        .await
        .unwrap_or(0);
        let layout = &self.ctx.layout;
        let run_dir_gone = !run_dir.is_dir();
        // A directory whose permissions its agent took away hides whether
        // the keeper started it: never taken for a run that did not start.
        let unreadable = !run_dir_gone && std::fs::read_dir(run_dir).is_err();
        let code = status.and_then(|s| s.code());
        let started = keeper::info(run_dir, run_id).is_some()
            || unreadable
            || code == Some(i32::from(keeper::EXIT_NO_OUTCOME));
        let signal = status.and_then(|s| s.signal());
        let how = match (signal, status) {
            (Some(s), _) => format!("was killed by signal {}", verdict::sig_name(s)),
            (None, Some(st)) => format!("ended ({st})"),
            (None, None) => "ended".to_owned(),
        };
        // Its log, when it left one, is in the run's attempt directory
        // (which moves with the task at the commit).
        let see = if run_dir.join(keeper::LOG_FILE).exists() {
            format!("; see {} in the run's directory", keeper::LOG_FILE)
        } else {
            String::new()
        };
        // Its files could not be written (a full disk, as a rule): no spawn
        // failure of the agent's, which would never be retried.
        let full = fsx::full_note(run_dir);
        let unwritten = match code.and_then(|c| u8::try_from(c).ok()) {
            Some(keeper::EXIT_NO_INFO) => Some((keeper::INFO_FILE, "it did not start the agent")),
            Some(keeper::EXIT_NO_OUTCOME) => {
                Some((keeper::OUTCOME_FILE, "how the agent ended is unknown"))
            }
            _ => None,
        };
        // (A directory its agent removed or locked says more, below.)
        if let Some((file, so)) = unwritten.filter(|_| !unreadable && !run_dir_gone) {
            let mut error = format!(
                "the run keeper (pid {pid}) could not write {file} in the run's directory{full}, \
                 so {so}{see}"
            );
            // Processes of the task found running: this run's agent, or,
            // when this keeper started none, an earlier run's.
            if stopped > 0 {
                error.push_str(if file == keeper::INFO_FILE {
                    "; processes of an earlier run of this task still ran and were stopped"
                } else {
                    "; the agent still ran and was stopped"
                });
            }
            warn!(task = %self.name, keeper = pid, "{error}");
            return RunEnd::Lost {
                error,
                killed: false,
                run_dir_gone: false,
            };
        }
        if !started && stopped == 0 && !run_dir_gone {
            return RunEnd::SpawnFailed {
                error: format!(
                    "the run keeper (pid {pid}) {how} without writing its outcome, before it \
                     started the agent{see}"
                ),
                not_found: false,
            };
        }
        let mut error = if unreadable {
            format!(
                "the run directory {} cannot be read (its permissions were changed during \
                 the run, by its agent?); its keeper (pid {pid}) {how} without writing the outcome",
                layout.rel(run_dir)
            )
        } else if run_dir_gone {
            format!(
                "the run directory {} was removed or moved during the run (by its agent?); \
                 its keeper (pid {pid}) {how} without writing the outcome",
                layout.rel(run_dir)
            )
        } else {
            format!(
                "the run keeper (pid {pid}) {how} without writing the outcome, so how the agent \
                 ended is unknown{see}"
            )
        };
        if stopped > 0 {
            error.push_str("; the agent still ran and was stopped");
        }
        warn!(task = %self.name, keeper = pid, "{error}");
        RunEnd::Lost {
            error,
            killed: signal.is_some(),
            run_dir_gone,
        }
    }

    /// Writes the keeper's spec and starts it: the task's locked descriptor as
    /// its stdin, the slot's locked descriptor (if any) as its stdout, the
    /// tree's slot (if any) as its stderr, /dev/null otherwise (the keeper
    /// writes its own log), the agent's environment as its own. It is not killed when its Job is
    /// dropped. The supervisor's own copy of the slot closes here: from now on
    /// the keeper alone holds it (one open file description, one flock).
    async fn spawn_keeper(
        &self,
        ks: &crate::run::keeper::KeeperSpec,
        spec: &runner::Spec,
        run_dir: &Path,
        (mut slot, mut tree_slot): (
            Option<crate::tree::slots::Slot>,
            Option<crate::tree::slots::Slot>,
        ),
    ) -> Result<crate::run::launcher::KeeperChild, KeeperStart> {
        use crate::run::keeper;
        use crate::run::launcher::KeeperChild;
        let setup = (|| -> std::io::Result<std::fs::File> {
            let json = serde_json::to_vec(ks).map_err(std::io::Error::other)?;
            std::fs::write(run_dir.join(keeper::SPEC_FILE), json)?;
            self.lock.share()
        })();
        let mut lock = setup.map_err(|e| {
            KeeperStart::of(
                fsx::system_error(&e) || e.raw_os_error() == Some(libc::ENOSPC),
                format!(
                    "cannot prepare the run keeper: {e}{}",
                    fsx::full_note(run_dir)
                ),
            )
        })?;
        let mut env = runner::agent_env(&spec.inherit, &spec.env);
        // Forked by the launcher, when there is one and it can take the run;
        // else started by exec. The launcher is asked off the async threads
        // (it may have to be started, or be slow to answer).
        if self.ctx.launcher.is_some() && self.ctx.keeper.small_binary().is_some() {
            use crate::run::launcher::Refused;
            let (ctx, run_dir_owned) = (self.ctx.clone(), run_dir.to_path_buf());
            let asked = tokio::task::spawn_blocking(move || {
                let handed: [Option<&dyn std::os::fd::AsFd>; 3] = [
                    Some(&lock),
                    slot.as_ref().map(|s| &s.file as &dyn std::os::fd::AsFd),
                    tree_slot
                        .as_ref()
                        .map(|s| &s.file as &dyn std::os::fd::AsFd),
                ];
                let r = match &ctx.launcher {
                    Some(l) => l.spawn(&run_dir_owned, &ctx.layout.root, &env, handed),
                    None => Err(Refused::NotStarted(std::io::Error::other("no launcher"))),
                };
                (r, lock, slot, tree_slot, env)
            })
            .await;
            let Ok((r, l, s, t, e)) = asked else {
                return Err("cannot start the run keeper: its launcher call panicked".into());
            };
            (lock, slot, tree_slot, env) = (l, s, t, e);
            match r {
                Ok(f) => return Ok(KeeperChild::Forked(f)),
                Err(Refused::NotStarted(e)) => {
                    debug!(task = %self.name, error = %e, "the keeper launcher cannot take the run; starting the keeper by exec")
                }
                Err(Refused::Unknown(e)) => {
                    return Err(format!("cannot start the run keeper: {e}").into());
                }
            }
        }
        let out = slot.map_or_else(std::process::Stdio::null, |s| s.file.into());
        let err = tree_slot.map_or_else(std::process::Stdio::null, |s| s.file.into());
        let keeper = self.ctx.keeper.for_run();
        let mut cmd = tokio::process::Command::new(&keeper.program);
        if let Some(a) = &keeper.arg0 {
            cmd.arg0(a);
        }
        cmd.args(&keeper.prefix)
            .arg(run_dir)
            .stdin(lock)
            .stdout(out)
            .stderr(err)
            .current_dir(&self.ctx.layout.root)
            .env_clear()
            .envs(env)
            .kill_on_drop(false)
            .spawn()
            .map(KeeperChild::Exec)
            .map_err(|e| {
                KeeperStart::of(
                    fsx::system_error(&e),
                    format!("cannot start the run keeper ({}): {e}", keeper.display()),
                )
            })
    }

    /// Makes a fresh run directory for the next attempt, then counts the
    /// attempt and names its run in the state file (before the spawn, so
    /// recovery can tell this run's record from a stale one). In this order,
    /// a state that names a run always had its directory: recovery takes a
    /// missing one for one its agent removed.
    fn begin_attempt(
        &mut self,
        st: &mut TaskState,
        started: SystemTime,
        plan: Option<&super::session::Planned>,
    ) -> std::io::Result<()> {
        let timeout = self.task.timeout.unwrap_or(self.agent.timeout);
        st.attempts += 1;
        st.not_before = None;
        st.unprepared = 0;
        st.run = Some(RunInfo {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            host: self.ctx.host.clone(),
            supervisor_pid: self.ctx.self_pid,
            supervisor_start: self.ctx.self_start,
            started_at: record::ts(started),
            deadline: record::ts(started.checked_add(timeout).unwrap_or(started)),
            reason: Some(self.reason.clone()),
            run_id: Some(books::run_id()),
            session_id: plan.and_then(|p| p.session_id.clone()),
            resumed: plan.is_some_and(|p| p.resumed.is_some()),
            parent_session: plan.and_then(|p| p.parent_session.clone()),
            task_hash: Some(moves::content_hash(&self.claimed.bytes)),
        });
        self.attempt = st.attempts;
        let layout = &self.ctx.layout;
        let run_dir = self.run_dir();
        // Earlier attempts' directories stay beside this one. One of this
        // number is a leftover of an earlier life of the name (or of a crash
        // before its state was written): replaced.
        fsx::remove_dir_all_if_exists(&run_dir)?;
        fsx::create_dir_all(&run_dir.join("outbox"))?;
        // A second name for the claimed file, in the run directory: what
        // recovery puts back if the agent moves or deletes the task file
        // while no supervisor watches (a link: no copy, one entry).
        if let Err(e) = moves::keep_claimed_copy(layout, &self.name, &self.ext, &self.claimed.bytes)
        {
            warn!(task = %self.name, error = %e, "cannot keep a copy of the claimed task file");
        }
        books::write_state(layout, st)?;
        Ok(())
    }

    /// The directory of the attempt under way, in `assigned/`.
    pub(super) fn run_dir(&self) -> PathBuf {
        self.ctx
            .layout
            .attempt_dir(State::Assigned, &self.name, self.attempt)
    }

    /// A worktree of its own, or the shared workdir: returns where the agent
    /// starts.
    async fn setup_workspace(
        &mut self,
        workdir: PathBuf,
        run_dir: &Path,
    ) -> Result<PathBuf, String> {
        let kind = self.task.workspace.unwrap_or(self.agent.workspace);
        let mut ws = WorkspaceRun {
            kind,
            path: workdir.clone(),
            branch: None,
            base: None,
            cleanup: self.config.worktree_cleanup,
            result_file: run_dir.join("result.yaml"),
            said: None,
            workdir_use: None,
            dirty_before: None,
        };
        if kind == crate::run::workspace::Kind::Shared {
            ws.workdir_use = Some(Arc::new(self.ctx.workdirs.enter(&workdir)));
            if self.config.git_status {
                let dir = workdir.clone();
                ws.dirty_before =
                    tokio::task::spawn_blocking(move || crate::run::workspace::dirty(&dir))
                        .await
                        .ok()
                        .flatten();
            }
            self.ws = Some(ws);
            return Ok(workdir);
        }
        let dir = self.ctx.layout.root.join(&self.config.worktrees_dir);
        let name = self.name.clone();
        let (path, branch, base, cwd) = tokio::task::spawn_blocking(move || {
            crate::run::workspace::create(&workdir, &dir, &name)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))?;
        info!(task = %self.name, branch = %branch, "worktree ready");
        ws.path = path;
        ws.branch = Some(branch);
        ws.base = Some(base);
        self.ws = Some(ws);
        Ok(cwd)
    }

    /// Everything the runner needs to start the agent: argv with the
    /// placeholders filled in, the `MAILROOM_*` environment, the run's files.
    fn spec(
        &self,
        prompt: String,
        command: &[String],
        workdir: PathBuf,
        run_dir: &Path,
        attempt: u32,
    ) -> runner::Spec {
        let layout = &self.ctx.layout;
        let name = &self.name;
        let vars = runner::Vars {
            prompt,
            prompt_file: path_str(&run_dir.join("prompt.md")),
            task: name.clone(),
            task_file: path_str(&layout.task_file(State::Assigned, name, &self.ext)),
            output_file: path_str(&run_dir.join("output.md")),
            workdir: path_str(&workdir),
            root: path_str(&layout.root),
            mailroom: self.ctx.exe.clone(),
        };
        let mut argv = runner::build_argv(command, &vars);
        // The CLIs' own sandboxes would refuse the run's files to an agent
        // that starts outside them (a `workdir`, a worktree).
        let kind = crate::adapter::Kind::from_name(&self.agent.kind, None);
        // (Resolved only for those CLIs: no cost to other agents' runs.)
        if crate::adapter::access::confined(&kind, &argv) {
            let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            argv =
                crate::adapter::access::with_run_dir(&kind, argv, &real(run_dir), &real(&workdir));
        }
        let result_file = run_dir.join("result.yaml");
        let mut env: Vec<(String, String)> = vec![
            ("MAILROOM_TASK".into(), name.clone()),
            ("MAILROOM_TASK_FILE".into(), vars.task_file.clone()),
            ("MAILROOM_ROOT".into(), vars.root.clone()),
            ("MAILROOM_CONTEXT".into(), path_str(&layout.context)),
            ("MAILROOM_OUTPUT".into(), vars.output_file.clone()),
            ("MAILROOM_PROMPT_FILE".into(), vars.prompt_file.clone()),
            ("MAILROOM_RUN_DIR".into(), path_str(run_dir)),
            ("MAILROOM_OUTBOX".into(), path_str(&run_dir.join("outbox"))),
            ("MAILROOM_RESULT".into(), path_str(&result_file)),
            ("MAILROOM_ATTEMPT".into(), attempt.to_string()),
            ("MAILROOM_AGENT".into(), self.agent.name.clone()),
        ];
        // Agents are told to queue follow-ups with `mailroom add`: a PATH
        // that does not lead to this binary (a service's short one) gets
        // its directory, last. An agent whose `env` sets PATH keeps its own.
        if self.config.env.allows("PATH")
            && let Some(path) = runner::path_with(Path::new(&self.ctx.exe))
        {
            env.push(("PATH".into(), path));
        }
        env.extend(self.agent.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        runner::Spec {
            argv,
            env,
            workdir,
            stdout: run_dir.join("stdout.log"),
            stderr: run_dir.join("stderr.log"),
            output: Some(run_dir.join("output.md")),
            timeout: self.task.timeout.unwrap_or(self.agent.timeout),
            grace: self.agent.grace,
            stdin: None,
            inherit: self.config.env.clone(),
            max_output: self.config.max_output_bytes,
            // An agent whose `env` names its TMPDIR keeps it.
            private_tmp: !self.agent.env.iter().any(|(k, _)| k == "TMPDIR"),
        }
    }

    /// The prompt of this run: the task's, or, when it resumes a session that
    /// was cut off, a short continuation (the conversation has the rest).
    fn prompt(&self, plan: Option<&super::session::Planned>) -> Result<String, String> {
        if let Some(why) = plan.and_then(|p| p.resumed.as_deref()) {
            let instructions = crate::run::prompt::instructions(&self.name, Some(&self.run_dir()));
            return Ok(crate::adapter::session::continuation_prompt(
                why,
                &instructions,
            ));
        }
        crate::run::prompt::render(
            &self.ctx.layout,
            &self.config,
            &self.agent,
            &self.task,
            Some(&self.run_dir()),
        )
    }

    /// Whether the run's outbox breaks the limits against runaway spawning.
    pub(super) fn runaway(&self) -> Option<String> {
        let outbox = self.run_dir().join("outbox");
        let n = crate::tree::outbox::outbox_files(&outbox).len();
        if n == 0 {
            return None;
        }
        if n > self.config.followups_per_task {
            return Some(format!(
                "the agent wrote {n} follow-up tasks; the limit is {} (followups_per_task); none were queued",
                self.config.followups_per_task
            ));
        }
        let max = self.config.max_tree_depth;
        let (root, depth) = crate::tree::outbox::tree_root(&self.ctx.layout, &self.name, max);
        if depth + 1 > max {
            return Some(format!(
                "its follow-ups would sit {} levels below the first task of their tree; \
                 the limit is {max} (max_tree_depth); none were queued",
                depth + 1
            ));
        }
        crate::tree::outbox::count_into_tree(&self.ctx.layout, &root, n, self.config.max_tree_tasks)
            .err()
    }

    /// First claim of a task with `subtasks`: write the children into
    /// `pending/`, then put the task back to wait for them.
    pub(super) async fn expand(self, mut st: TaskState) -> JobEnd {
        let layout = self.ctx.layout.clone();
        let (name, subtasks) = (self.name.clone(), self.task.subtasks.clone());
        let sequential =
            self.config.subtask_order == crate::parse::config::SubtaskOrder::Sequential;
        let (max_depth, max_tasks) = (self.config.max_tree_depth, self.config.max_tree_tasks);
        let res = tokio::task::spawn_blocking(move || {
            // Subtasks are tasks of the tree as follow-ups are: a follow-up
            // with subtasks does not get around the runaway limits.
            let (root, depth) = crate::tree::outbox::tree_root(&layout, &name, max_depth);
            if depth + 1 > max_depth {
                return Err(Err(format!(
                    "its subtasks would sit {} levels below the first task of their tree; \
                     the limit is {max_depth} (max_tree_depth); none were queued",
                    depth + 1
                )));
            }
            // Only the children not written yet: a parent expanded again
            // (after a retry, or a crash before its state named them) counts
            // none twice.
            let new = subtasks
                .iter()
                .filter(|t| layout.locate(&format!("{name}.{}", t.suffix)).is_none())
                .count();
            if new > 0 {
                crate::tree::outbox::count_into_tree(&layout, &root, new, max_tasks)
                    .map_err(|e| Err(format!("its {new} subtasks: {e}")))?;
            }
            crate::tree::outbox::expand(&layout, &name, &subtasks, sequential).map_err(Ok)
        })
        .await;
        match res {
            Ok(Ok(children)) => {
                info!(task = %self.name, children = children.len(), "expanded subtasks; waiting for them");
                st.children = children;
                self.requeue_or_keep(st).await
            }
            Ok(Err(Err(msg))) => {
                self.fail_now(st, Outcome::Runaway, msg, SystemTime::now())
                    .await
            }
            Ok(Err(Ok(e))) => {
                let msg = format!("cannot expand its subtasks: {e}");
                self.fail_now(st, Outcome::Invalid, msg, SystemTime::now())
                    .await
            }
            Err(_) => JobEnd::Stuck,
        }
    }

    /// A parent whose children have all completed (the queue held it until
    /// then): it completes without an agent.
    pub(super) async fn complete_parent(self, st: TaskState) -> JobEnd {
        let now = SystemTime::now();
        let mut rec = base_record(
            &self.ctx,
            &self.name,
            Status::Completed,
            Outcome::Success,
            &st,
        );
        rec.children = st.children.clone();
        rec.summary = Some(format!("all {} subtasks completed", st.children.len()));
        rec.started_at = Some(record::ts(now));
        rec.finished_at = record::ts(now);
        let mut st = st;
        st.committing = Some(rec.run_id.clone());
        self.commit(st, rec).await
    }

    /// The usage limit of this run: the one its CLI reported (through its
    /// adapter), else a match of the agent's `limit_patterns` on its error
    /// channel (stderr). Never the answer: text that merely talks about limits
    /// must not cool an agent down. The built-in patterns of a generic agent
    /// apply only to a run that failed (`succeeded` false): on a success its
    /// stderr may tell of a 429 it got past, or echo a prompt; its own
    /// `limit_patterns` apply either way.
    pub(super) fn limit_of(
        &self,
        reported: Option<(String, Option<crate::adapter::Reset>)>,
        succeeded: bool,
    ) -> Option<crate::run::limits::Limit> {
        use crate::adapter::Reset;
        let now = SystemTime::now();
        if let Some((message, reset)) = reported {
            let until = match reset {
                Some(Reset::Unix(s)) if s > 0 => {
                    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s as u64))
                }
                Some(Reset::Text(t)) => crate::run::limits::reset_time(&t, now, None),
                _ => None,
            }
            // A machine-readable hint in the message itself (`resets_in_seconds`).
            .or_else(|| crate::run::limits::reset_time(&message, now, None))
            // Nor is a reset the CLI gave as a timestamp believed past 7
            // days (the cooldown's default then).
            .filter(|t| crate::run::limits::believable(*t, now));
            return Some(crate::run::limits::Limit { message, until });
        }
        let all = self.limits.get(&self.agent.name)?;
        let own;
        let patterns = if succeeded {
            own = all.own_only();
            &own
        } else {
            all
        };
        if patterns.is_empty() {
            return None;
        }
        let dir = self.run_dir();
        let (b, _) = fsx::read_tail(&dir.join("stderr.log"), 64 * 1024).ok()?;
        let stderr = String::from_utf8_lossy(&b);
        // The error channel: a CLI's echo of the prompt (codex) is not an error.
        let prompt = fsx::read_head(&dir.join("prompt.md"), 1024 * 1024)
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let channel = crate::adapter::error_channel(&stderr, &prompt);
        crate::run::limits::detect(patterns, &channel, now, None)
    }

    /// What the agent's CLI said of the run, read by its adapter (the CLI
    /// kinds, or a generic agent with an `output:` section); None for other
    /// agents. The answer it found is kept as `answer.md` in the run directory,
    /// for the context, unless the agent wrote `$MAILROOM_OUTPUT` itself.
    pub(super) fn read_report(&self, end: &RunEnd) -> Option<crate::adapter::RunReport> {
        use crate::adapter::{ExitKind, Kind, RunFacts};
        let kind = Kind::from_name(&self.agent.kind, self.agent.output.clone());
        if matches!(kind, Kind::Generic(_)) && self.agent.output.is_none() {
            return None;
        }
        let dir = self.run_dir();
        let exit = match end {
            RunEnd::Exited(e)
            | RunEnd::TimedOut(e)
            | RunEnd::OutputLimit(e, _)
            | RunEnd::Stopped(e)
            | RunEnd::Cancelled(e) => *e,
            RunEnd::SpawnFailed { .. } | RunEnd::Lost { .. } => {
                self.keep_answer(&dir, "");
                return None;
            }
        };
        let read = |f: &str| {
            fsx::read_tail(&dir.join(f), crate::tree::context::OUTPUT_CAP * 8)
                .map(|(b, cut)| (String::from_utf8_lossy(&b).into_owned(), cut))
                .unwrap_or_default()
        };
        let ((stdout, stdout_cut), (stderr, _), (prompt, _)) =
            (read("stdout.log"), read("stderr.log"), read("prompt.md"));
        let mut report = crate::adapter::report(&RunFacts {
            kind: &kind,
            stdout: &stdout,
            stderr: &stderr,
            exit: match exit {
                crate::run::process::Exit::Code(c) => ExitKind::Code(c),
                crate::run::process::Exit::Signal(s) => ExitKind::Signal(s),
            },
            stopped_by_supervisor: !matches!(end, RunEnd::Exited(_)),
            prompt: &prompt,
        });
        // Raw stdout taken for a text answer, where stdout is a JSON
        // envelope cut at max_output_bytes, or too long to read whole: a
        // piece of JSON is no answer for the context. (A whole JSON answer
        // of a text-mode agent is kept.)
        let cut = stdout_cut || matches!(end, RunEnd::OutputLimit(..));
        if cut
            && !report.answer.is_empty()
            && report.answer == stdout.trim()
            && fsx::read_head(&dir.join("stdout.log"), 256)
                .is_ok_and(|(b, _)| crate::adapter::envelope_start(&String::from_utf8_lossy(&b)))
        {
            report.answer.clear();
        }
        self.keep_answer(&dir, &report.answer);
        Some(report)
    }

    /// Keeps the answer an adapter read as `answer.md`, what the context
    /// shows of the run unless the agent wrote `$MAILROOM_OUTPUT` itself.
    /// Without an answer (an error, an empty result, a run that never got
    /// that far) a line saying so stands in: the CLI's stdout is its JSON,
    /// which never goes into the context.
    fn keep_answer(&self, dir: &Path, answer: &str) {
        let own = fsx::read_head(&dir.join("output.md"), 1).is_ok_and(|(b, _)| !b.is_empty());
        if own || !dir.is_dir() {
            return;
        }
        let text = if answer.trim().is_empty() {
            "(no answer: the agent's CLI did not give one; the error, if any, is above)\n"
        } else {
            answer
        };
        if let Err(e) = std::fs::write(dir.join("answer.md"), text.as_bytes()) {
            warn!(task = %self.name, error = %e, "cannot keep the agent's answer");
        }
    }

    pub(super) fn workdir(&self) -> Result<PathBuf, String> {
        let root = &self.ctx.layout.root;
        let Some(w) = &self.task.workdir else {
            return Ok(root.clone());
        };
        let p = root.join(w);
        let canon = p
            .canonicalize()
            .map_err(|e| format!("`workdir: {w}` cannot be used: {e}"))?;
        if !canon.starts_with(root) {
            return Err(format!(
                "`workdir: {w}` leaves the root (through a symlink)"
            ));
        }
        if !canon.is_dir() {
            return Err(format!("`workdir: {w}` is not a directory"));
        }
        Ok(canon)
    }
}

/// The keeper `pid` of an overdue run, found stopped (by a signal or a
/// tracer, from `/proc/<pid>/stat`), is sent SIGCONT, so that it enforces
/// the timeout. Returns whether it was.
pub(super) fn continue_if_stopped(task: &str, pid: u32) -> bool {
    if !books::proc_state(pid).is_some_and(|(state, _)| matches!(state, 'T' | 't')) {
        return false;
    }
    warn!(
        task,
        keeper = pid,
        "the run is past its timeout and its keeper is stopped (SIGSTOP?); continuing it"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
    true
}
