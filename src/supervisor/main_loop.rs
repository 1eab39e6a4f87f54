//! The loop itself: wake-ups, events, shutdown, and what is due next.

use super::*;

/// What the loop holds besides the supervisor's state: the outside world's
/// handles and its own timers.
pub(super) struct LoopIo {
    notifier: Option<Arc<crate::ops::sdnotify::Notifier>>,
    last_status: String,
    watchdog: Option<tokio::time::Interval>,
    watch: Option<Watch>,
    poll: bool,
    next_rescan: Instant,
    control_open: bool,
}

impl LoopIo {
    /// Runs a reload between systemd's RELOADING and READY notifications.
    fn reloading(&self, f: impl FnOnce(&mut Supervisor), s: &mut Supervisor) {
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        f(s);
        if let Some(n) = &self.notifier {
            n.reloaded();
        }
    }
}

impl Supervisor {
    /// Runs until shut down (or idle, with `exit_when_idle`).
    pub async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        opts: RunOptions,
    ) -> anyhow::Result<Summary> {
        let watch = self.start_watch();
        let poll = watch.is_none();
        books::check_permissions(self.layout(), self.config.shared)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        self.beat();
        self.recover();
        // A paused tree holds what its config cannot route (see `place`),
        // from the first scan on.
        self.paused = books::exists(&self.layout().pause_file(None));
        self.full_scan();
        // Private temp directories of runs whose keeper (or supervisor) was
        // killed before it could remove them.
        let n = crate::run::process::PrivateTmp::sweep();
        if n > 0 {
            info!(
                removed = n,
                "removed temp directories of runs whose keepers are gone"
            );
        }
        let mut io = LoopIo {
            notifier: opts.notifier.clone(),
            last_status: self.status_line(),
            // Watchdog pings come from this loop itself, so they prove it turns.
            watchdog: opts
                .notifier
                .as_ref()
                .and_then(|n| n.watchdog_interval())
                .map(tokio::time::interval),
            watch,
            poll,
            next_rescan: Instant::now() + self.rescan_interval(poll),
            control_open: true,
        };
        // The metrics file from the start: a collector sees the queue as it is
        // (and a file a host crash left empty is replaced) before anything
        // changes.
        self.metrics.dirty = true;
        // Logged before READY is sent: whoever waits for READY (`mailroom
        // start`, systemd) finds the line in the log when it returns.
        info!(
            root = %self.layout().root.display(),
            pending = self.pending.len(),
            mode = if poll { "poll" } else { "inotify" },
            "supervisor ready"
        );
        if let Some(n) = &io.notifier {
            n.ready(&io.last_status);
        }
        // The keeper launcher, started now rather than by the first run.
        if self.config.run_keeper
            && self.ctx.launcher.is_some()
            && self.ctx.keeper.small_binary().is_some()
        {
            let ctx = self.ctx.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(l) = &ctx.launcher {
                    l.warm()
                }
            });
        }
        while self.turn(&mut io, &opts) {
            let wake = self.next_wake(io.next_rescan);
            let ev = self.next_event(&mut io, &mut control, wake).await;
            self.handle(ev, &mut io);
        }
        self.finish_hooks().await;
        // The keeper launcher ends (keepers it forked run on).
        if self.ctx.launcher.is_some() {
            let ctx = self.ctx.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(l) = &ctx.launcher {
                    l.close()
                }
            })
            .await;
        }
        crate::tree::registry::remove(self.layout(), &self.ctx.host, self.ctx.self_pid);
        // The last word in the metrics file, whatever the rate limit.
        self.metrics.dirty = true;
        self.metrics_due = None;
        self.write_metrics_if_due();
        info!(
            completed = self.summary.completed,
            failed = self.summary.failed,
            "supervisor stopped"
        );
        Ok(self.summary)
    }

    /// Rewrites this supervisor's heartbeat (`tasks/supervisors/`), so that
    /// `status` and `wait` know someone is running.
    fn beat(&mut self) {
        use crate::tree::registry;
        self.beat_due = Instant::now() + registry::BEAT;
        // The oldest pending task's age grows while nothing else changes:
        // the metrics file says it at each beat while a task waits.
        if !self.pending.is_empty() && self.config.metrics_file.is_some() {
            self.metrics.dirty = true;
        }
        let hb = registry::Heartbeat {
            host: self.ctx.host.clone(),
            pid: self.ctx.self_pid,
            start: self.ctx.self_start,
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: record::PROTOCOL_VERSION,
            started_at: self.started_at.clone(),
            last_beat: record::now(),
            running: self.running.len(),
            pending: self.pending.len(),
            dashboard: self.dashboard.clone(),
            claims_held: self
                .claims_held
                .as_ref()
                .filter(|(t, _, _)| Instant::now() < *t)
                .map(|(_, until, why)| registry::ClaimsHeld {
                    until: record::ts(*until),
                    why: why.clone(),
                }),
        };
        if let Err(e) = registry::beat(self.layout(), &hb) {
            debug!(error = %e, "cannot write the heartbeat");
        }
        self.watch_peers();
    }

    /// The inotify watch, unless polling is configured or inotify fails.
    fn start_watch(&self) -> Option<Watch> {
        if self.config.watch == WatchMode::Poll {
            return None;
        }
        let l = self.layout();
        // The registry too: a peer's first heartbeat names it at once (its
        // first beat is written before it claims anything), where the
        // heartbeat's own look comes up to 5 s later.
        let beats = crate::tree::registry::dir(l);
        let _ = crate::tree::fsx::create_dir_all(&beats);
        let own = crate::tree::registry::file(l, &self.ctx.host, self.ctx.self_pid);
        let dirs: [&Path; 3] = [&l.control, &l.cancel, &l.root];
        match Watch::start(
            &l.tasks,
            &l.pending,
            &dirs,
            Some((&beats, own)),
            self.hints.clone(),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch tasks/pending; polling instead");
                None
            }
        }
    }

    /// The work of one turn of the loop before it waits: control files, a due
    /// reload, scheduling, shutdown progress, status. False: leave the loop.
    fn turn(&mut self, io: &mut LoopIo, opts: &RunOptions) -> bool {
        if Instant::now() >= self.beat_due {
            self.beat();
        }
        if self.control_dirty {
            self.refresh_control();
        }
        if self.reload_due.is_some_and(|t| Instant::now() >= t) {
            self.reload_due = None;
            io.reloading(|s| s.reload_if_changed(), self);
        }
        if self.recover_due.is_some_and(|t| Instant::now() >= t) {
            self.recover_due = None;
            self.recover();
        }
        if self.peers_look_wanted && Instant::now() >= self.peers_look_due {
            self.peers_look_due = Instant::now() + peers::HINTED_LOOK_GAP;
            self.watch_peers();
        }
        if self.peer_pass_due.is_some_and(|t| Instant::now() >= t) {
            self.peer_pass_due = None;
            self.peer_pass_last = Some(Instant::now());
            self.recover_pass(false);
        }
        self.schedule();
        if let Some(since) = self.stopping {
            // Leaving the runs to their keepers: the next supervisor adopts them.
            if self.running.is_empty()
                || self.config.on_shutdown == crate::parse::config::OnShutdown::LeaveRunning
            {
                return false;
            }
            if !self.stop_sent && since.elapsed() >= self.config.shutdown_grace {
                self.stop_sent = true;
                for r in self.running.values() {
                    if r.stop.borrow().is_none() {
                        let _ = r.stop.send(Some(Stop::Graceful));
                    }
                }
            }
        } else if opts.exit_when_idle && self.running.is_empty() {
            if !self.has_runnable() {
                return false;
            }
            self.tell_idle_wait();
        }
        let st = self.status_line();
        if st != io.last_status {
            if let Some(n) = &io.notifier {
                n.status(&st);
            }
            io.last_status = st;
            self.metrics.dirty = true;
        }
        self.write_metrics_if_due();
        self.ctx
            .pending_count
            .store(self.pending.len(), std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Waits for the next input: a watchdog tick, a file-system hint, a run's
    /// end, a control request, or the next deadline.
    async fn next_event(
        &mut self,
        io: &mut LoopIo,
        control: &mut mpsc::UnboundedReceiver<Control>,
        wake: Instant,
    ) -> Event {
        let watchdog = &mut io.watchdog;
        tokio::select! {
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => Event::Watchdog,
            _ = self.hints.wake.notified() => Event::Hints,
            Some(ev) = self.events_rx.recv() => ev,
            c = control.recv(), if io.control_open => match c {
                Some(c) => Event::Control(c),
                None => Event::ControlClosed,
            },
            _ = tokio::time::sleep_until(wake) => Event::Timer,
        }
    }

    /// The one place every input is handled.
    fn handle(&mut self, ev: Event, io: &mut LoopIo) {
        match ev {
            Event::Watchdog => {
                if let Some(n) = &io.notifier {
                    n.watchdog();
                }
            }
            Event::Hints => self.on_hints(io),
            Event::PeerGone { id } => self.peer_gone(id),
            Event::Finished {
                name,
                run,
                agent,
                end,
            } => self.on_finished(name, run, agent, end),
            Event::Control(Control::Shutdown { from }) => {
                if let Some(n) = &io.notifier {
                    n.stopping();
                }
                if let Some(from) = from {
                    self.note_shutdown_sender(from);
                }
                self.on_shutdown()
            }
            Event::Control(Control::Reload) => io.reloading(|s| s.reload(), self),
            Event::ControlClosed => io.control_open = false,
            Event::Timer => {
                if Instant::now() >= io.next_rescan {
                    self.control_dirty = true;
                    self.ensure_tree();
                    self.recover();
                    self.full_scan();
                    io.next_rescan = Instant::now() + self.rescan_interval(io.poll);
                } else {
                    self.recheck_waiting();
                }
                self.reexamine_due();
            }
        }
    }

    /// The watcher saw something: the paths it names, or everything.
    fn on_hints(&mut self, io: &mut LoopIo) {
        let (paths, rescan) = self.hints.take();
        if rescan {
            self.ensure_tree();
            // The registry is no state directory, but it is watched (and
            // an operator may clear it): back before its watch is.
            let _ = crate::tree::fsx::create_dir_all(&crate::tree::registry::dir(self.layout()));
            if let Some(w) = io.watch.as_mut() {
                w.rewatch();
            }
            // What the watcher dropped may have named a new peer.
            self.peers_look_wanted = true;
            self.full_scan();
        } else {
            for p in paths {
                self.examine_path(&p);
            }
        }
    }

    /// Recreates the directories of the tree that somebody removed: without
    /// `tasks/assigned/` no lock can be taken, so nothing would ever run again.
    pub(super) fn ensure_tree(&self) {
        let missing: Vec<String> = self
            .layout()
            .dirs()
            .iter()
            .filter(|d| !d.is_dir())
            .map(|d| self.layout().rel(d))
            .collect();
        if missing.is_empty() {
            return;
        }
        match self.layout().ensure() {
            Ok(()) => {
                warn!(dirs = %missing.join(", "), "recreated missing directories of the tree")
            }
            Err(e) => {
                error!(error = %e, dirs = %missing.join(", "), "cannot recreate missing directories of the tree")
            }
        }
    }

    /// One line for systemd's STATUS: "3 running, 12 pending, 1 cooling down".
    pub(super) fn status_line(&self) -> String {
        let mut s = format!(
            "{} running, {} pending",
            self.running.len(),
            self.pending.len()
        );
        if !self.cooldowns.is_empty() {
            s.push_str(&format!(", {} cooling down", self.cooldowns.len()));
        }
        if !self.over_budget.is_empty() {
            s.push_str(&format!(", {} over budget", self.over_budget.len()));
        }
        if self.paused {
            s.push_str(", paused");
        }
        if self.stopping.is_some() {
            s.push_str(", stopping");
        }
        s
    }

    pub(super) fn rescan_interval(&self, poll: bool) -> Duration {
        if poll {
            self.config.rescan_interval.min(Duration::from_secs(1))
        } else {
            self.config.rescan_interval
        }
    }

    /// A shutdown sent by a process of one of this supervisor's runs (its
    /// environment names this root and a running task): that run's requeue
    /// will use up an attempt.
    fn note_shutdown_sender(&mut self, from: super::SignalSender) {
        let root = self.layout().root.to_string_lossy().into_owned();
        if from.root.as_deref() != Some(root.as_str()) {
            return;
        }
        let pid = from.pid;
        let Some(task) = from
            .task
            .as_deref()
            .filter(|t| self.running.contains_key(*t))
        else {
            return;
        };
        warn!(
            task,
            pid,
            "the shutdown was sent by this task's agent; its run will count against its retries"
        );
        *self
            .ctx
            .shutdown_by
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((task.to_owned(), pid));
    }

    pub(super) fn on_shutdown(&mut self) {
        if self.stopping.is_some() {
            warn!("second shutdown request: stopping agents now");
            for r in self.running.values() {
                let _ = r.stop.send(Some(Stop::Now));
            }
        } else {
            if self.config.on_shutdown == crate::parse::config::OnShutdown::LeaveRunning {
                info!(
                    running = self.running.len(),
                    "shutting down: the running agents stay with their keepers for the next supervisor"
                );
            } else {
                info!(
                    running = self.running.len(),
                    grace = %humantime::format_duration(self.config.shutdown_grace),
                    "shutting down: no new claims; running agents may finish"
                );
            }
            self.stopping = Some(Instant::now());
        }
    }

    /// A run ended: free its slot and act on where it left its task.
    pub(super) fn on_finished(&mut self, name: String, run: u64, agent: String, end: JobEnd) {
        if self.running.get(&name).is_some_and(|r| r.run == run) {
            self.running.remove(&name);
            self.cancelling.remove(&name);
            self.unrecoverable.remove(&format!("claimed-again:{name}"));
        }
        if let Some(n) = self.load.get_mut(&agent) {
            *n = n.saturating_sub(1);
        }
        // Its usage (in the shared context) goes into the next metrics file.
        self.metrics.dirty = true;
        // A run that was prepared ends the holds' doubling.
        if !matches!(end, JobEnd::Unprepared { .. } | JobEnd::Stuck) {
            self.unprepared_streak = 0;
        }
        match end {
            JobEnd::Done(st, outcome, secs) => {
                self.metrics.finished(&agent, outcome.as_str(), secs);
                if outcome == Outcome::Limited {
                    // A task that failed on a limit (past its free ones):
                    // its agent cools down here at once, as for a requeue.
                    self.merge_disk_cooldowns();
                    if let Some((until, message)) = self.cooldowns.get(&agent).cloned() {
                        warn!(agent = %agent, until = %record::ts(until), "usage limit: agent cooling down ({message})");
                        self.agent_limited(&name, &agent, until);
                    }
                }
                self.task_ended(&name, st, outcome, &agent);
                // Tasks that wait for this one may go (or fail) now.
                self.replace_waiting();
            }
            JobEnd::Requeued(ended) => {
                if let Some(o) = ended {
                    self.metrics.attempt(&agent, o.as_str());
                }
                self.summary.requeued += 1;
                self.stateful.insert(name.clone());
                // Requeued: its file is back in pending/.
                self.examine_name(&name);
            }
            JobEnd::Limited { until, message } => {
                self.metrics.attempt(&agent, Outcome::Limited.as_str());
                warn!(
                    agent = %agent,
                    until = %record::ts(until),
                    "usage limit: agent cooling down ({message})"
                );
                self.agent_limited(&name, &agent, until);
                self.cooldowns.insert(agent, (until, message));
                self.summary.requeued += 1;
                self.stateful.insert(name.clone());
                self.examine_name(&name);
            }
            JobEnd::Stuck => {}
            JobEnd::Unprepared {
                requeued,
                error,
                tree_wide,
            } => {
                // A full disk, a read-only tree: the next claims would fail
                // alike. Held from 1 s, doubling per hold to a minute while
                // it lasts (runs failing together make one hold).
                let holding = self
                    .claims_held
                    .as_ref()
                    .is_some_and(|(t, _, _)| Instant::now() < *t);
                if tree_wide && !holding {
                    self.unprepared_streak = self.unprepared_streak.saturating_add(1);
                    let hold = Duration::from_secs(1 << (self.unprepared_streak - 1).min(6))
                        .min(Duration::from_secs(60));
                    self.claims_held = Some((
                        Instant::now() + hold,
                        SystemTime::now() + hold,
                        format!("a run could not be prepared: {error}"),
                    ));
                    warn!(
                        task = %name,
                        hold = %humantime::format_duration(hold),
                        "no new claims for a while: the run of `{name}` could not be prepared ({error})"
                    );
                    // Said in the heartbeat now, for `status`.
                    self.beat_due = Instant::now();
                }
                if requeued {
                    self.summary.requeued += 1;
                    self.stateful.insert(name.clone());
                    self.examine_name(&name);
                }
            }
        }
        if matches!(self.claims_held, Some((t, _, _)) if Instant::now() >= t) {
            self.claims_held = None;
        }
    }

    /// The earliest instant something may change without an event: a retry
    /// or `not_before` coming due, a broken file's settle time, a cooldown's
    /// end, a changed config's check, the end of the shutdown grace. Deadlines already passed are not
    /// wake-ups (what is due and still waits, waits for an event), so an idle
    /// or saturated supervisor never spins.
    pub(super) fn next_wake(&self, next_rescan: Instant) -> Instant {
        let mut wake = next_rescan.min(self.beat_due);
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let at = |t: SystemTime| now + t.duration_since(now_sys).unwrap_or(Duration::ZERO);
        let mut consider = |t: Instant| {
            if t > now {
                wake = wake.min(t);
            }
        };
        for n in &self.unsettled {
            if let Some(p) = self.pending.get(n) {
                let due = p.seen + self.config.settle;
                // Past settle but still being written: look again a settle later.
                consider(if due > now {
                    due
                } else {
                    now + self.config.settle
                });
            }
        }
        if let Some(t) = self.queue.next_due() {
            consider(at(t));
        }
        if let Some((t, _, _)) = &self.claims_held {
            consider(*t);
        }
        if let Some(t) = self.recover_due {
            consider(t);
        }
        if let Some(t) = self.peer_pass_due {
            consider(t);
        }
        if self.peers_look_wanted {
            consider(self.peers_look_due);
        }
        for t in self.reexamine.values() {
            consider(*t);
        }
        // A saved mailroom.yaml is applied at its check, not at the next rescan.
        if let Some(t) = self.reload_due {
            consider(t);
        }
        for (t, _) in self.cooldowns.values().chain(self.over_budget.values()) {
            consider(at(*t));
        }
        if let Some(s) = self.stopping
            && !self.stop_sent
        {
            consider(s + self.config.shutdown_grace);
        }
        if self.metrics.dirty
            && let Some(t) = self.metrics_due
        {
            consider(t);
        }
        wake
    }

    /// Holds a task back briefly: its lock is held elsewhere or its writer
    /// still has it open.
    pub(super) fn set_busy(&mut self, name: &str) {
        match self.pending.get_mut(name) {
            Some(p) => p.hold = Some(SystemTime::now() + Duration::from_millis(250)),
            // Forgotten on its way to `failed/`: nothing else would look at
            // it again before the next full rescan.
            None => {
                debug!(
                    task = name,
                    "its lock is held elsewhere; looking at it again shortly"
                );
                self.reexamine
                    .insert(name.to_owned(), Instant::now() + Duration::from_millis(250));
            }
        }
        self.place(name);
    }

    /// Looks again at the names whose time has come in `reexamine`.
    pub(super) fn reexamine_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .reexamine
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.reexamine.remove(&n);
            self.examine_name(&n);
        }
    }

    pub(super) fn recheck_waiting(&mut self) {
        let names: Vec<String> = self.unsettled.iter().cloned().collect();
        for n in names {
            self.examine_name(&n);
        }
        let now = SystemTime::now();
        self.cooldowns.retain(|_, (t, _)| *t > now);
    }

    /// `run --exit-when-idle` with nothing running, waiting for time to
    /// pass (a `delay`, a `not_before`, a retry's backoff, a cooldown, a
    /// daily budget): says what it waits for and until when, once per
    /// change, so that a CI job does not look hung.
    fn tell_idle_wait(&mut self) {
        let now = SystemTime::now();
        let mut why = Vec::new();
        if let (n, Some((t, first))) = self.queue.held() {
            why.push(format!(
                "{n} task{} held until a time (the first, `{first}`, until {})",
                if n == 1 { "" } else { "s" },
                crate::model::record::ts(t)
            ));
        }
        if let Some((t, until, held)) = &self.claims_held
            && Instant::now() < *t
        {
            why.push(format!(
                "no new claims until {} ({held})",
                crate::model::record::ts(*until)
            ));
        }
        let mut ends: Vec<_> = self
            .cooldowns
            .iter()
            .map(|(a, (t, _))| (a, t, "cooling down after a usage limit"))
            .chain(
                self.over_budget
                    .iter()
                    .map(|(a, (t, _))| (a, t, "over its daily budget")),
            )
            .filter(|(_, t, _)| **t > now)
            .collect();
        ends.sort();
        for (a, t, what) in ends {
            why.push(format!(
                "agent {a} {what} until {}",
                crate::model::record::ts(*t)
            ));
        }
        if why.is_empty() {
            return;
        }
        let said = why.join("; ");
        if self.idle_wait_told.as_deref() != Some(said.as_str()) {
            tracing::info!("nothing runs now; --exit-when-idle waits for {said}");
            self.idle_wait_told = Some(said);
        }
    }

    /// Whether anything pending could still run, or another supervisor (or an
    /// orphaned agent) still holds a task in `assigned/` (used by `exit_when_idle`).
    /// Tasks waiting for a dependency nobody submitted do not count.
    pub(super) fn has_runnable(&self) -> bool {
        if !self.unsettled.is_empty() || !self.rejects.is_empty() || !self.reexamine.is_empty() {
            return true;
        }
        // Paused: nothing more will start, so waiting would be forever.
        if !self.queue.is_empty() && !self.paused {
            return true;
        }
        if books::count(self.layout(), State::Assigned) > self.running.len() {
            return true;
        }
        // A file the scan has not taken up yet (a second file of a name
        // already queued, say, which the next look files as a clash).
        if books::count(self.layout(), State::Pending) > self.pending.len() {
            return true;
        }
        self.waiting.iter().any(|n| {
            self.pending.get(n).is_some_and(|p| match &p.parsed {
                // One the pause holds because the config cannot route it
                // (see `place`) starts nothing until the resume.
                Ok(b) if self.paused && b.route.is_err() => false,
                Ok(b) => b.after.iter().all(|d| {
                    self.pending.contains_key(d)
                        || self.running.contains_key(d)
                        || self.layout().locate(d).is_some()
                }),
                Err(_) => false,
            })
        })
    }
}
