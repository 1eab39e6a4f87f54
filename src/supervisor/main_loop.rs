//! The loop itself: wake-ups, events, shutdown, and what is due next.

use super::*;

impl Supervisor {
    /// Runs until shut down (or idle, with `exit_when_idle`).
    pub async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        opts: RunOptions,
    ) -> anyhow::Result<Summary> {
        let mut watch = match self.config.watch {
            WatchMode::Poll => None,
            WatchMode::Auto => {
                let l = self.layout();
                match Watch::start(
                    &l.tasks,
                    &l.pending,
                    &[&l.control, &l.cancel, &l.root],
                    self.hints.clone(),
                ) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        warn!(error = %e, "cannot watch tasks/pending; polling instead");
                        None
                    }
                }
            }
        };
        let poll = watch.is_none();
        books::check_permissions(self.layout(), self.config.shared)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        self.recover();
        self.full_scan();
        let notifier = opts.notifier.clone();
        let mut last_status = self.status_line();
        if let Some(n) = &notifier {
            n.ready(&last_status);
        }
        // Watchdog pings come from this loop itself, so they prove it turns.
        let mut watchdog = notifier
            .as_ref()
            .and_then(|n| n.watchdog_interval())
            .map(tokio::time::interval);
        info!(
            root = %self.layout().root.display(),
            pending = self.pending.len(),
            mode = if poll { "poll" } else { "inotify" },
            "supervisor ready"
        );
        let mut next_rescan = Instant::now() + self.rescan_interval(poll);
        let mut control_open = true;
        loop {
            if self.control_dirty {
                self.refresh_control();
            }
            if self.reload_due.is_some_and(|t| Instant::now() >= t) {
                self.reload_due = None;
                if let Some(n) = &notifier {
                    n.reloading();
                }
                self.reload_if_changed();
                if let Some(n) = &notifier {
                    n.reloaded();
                }
            }
            self.schedule();
            if let Some(since) = self.stopping {
                if self.running.is_empty() {
                    break;
                }
                if !self.stop_sent && since.elapsed() >= self.config.shutdown_grace {
                    self.stop_sent = true;
                    for r in self.running.values() {
                        if r.stop.borrow().is_none() {
                            let _ = r.stop.send(Some(Stop::Graceful));
                        }
                    }
                }
            } else if opts.exit_when_idle && self.running.is_empty() && !self.has_runnable() {
                break;
            }
            let st = self.status_line();
            if st != last_status {
                if let Some(n) = &notifier {
                    n.status(&st);
                }
                last_status = st;
                self.metrics.dirty = true;
            }
            self.write_metrics_if_due();
            self.ctx
                .pending_count
                .store(self.pending.len(), std::sync::atomic::Ordering::Relaxed);
            let wake = self.next_wake(next_rescan);
            tokio::select! {
                _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                    if let Some(n) = &notifier {
                        n.watchdog();
                    }
                }
                _ = self.hints.wake.notified() => {
                    let (paths, rescan) = self.hints.take();
                    if rescan {
                        if !self.layout().pending.is_dir() {
                            let _ = self.layout().ensure();
                        }
                        if let Some(w) = watch.as_mut() {
                            w.rewatch();
                        }
                        self.full_scan();
                    } else {
                        for p in paths {
                            self.examine_path(&p);
                        }
                    }
                }
                Some(ev) = self.events_rx.recv() => self.on_event(ev),
                c = control.recv(), if control_open => match c {
                    Some(Control::Shutdown) => {
                        if let Some(n) = &notifier {
                            n.stopping();
                        }
                        self.on_shutdown()
                    }
                    Some(Control::Reload) => {
                        if let Some(n) = &notifier {
                            n.reloading();
                        }
                        self.reload();
                        if let Some(n) = &notifier {
                            n.reloaded();
                        }
                    }
                    None => control_open = false,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_rescan {
                        self.control_dirty = true;
                        self.recover();
                        self.full_scan();
                        next_rescan = Instant::now() + self.rescan_interval(poll);
                    } else {
                        self.recheck_waiting();
                    }
                }
            }
        }
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

    pub(super) fn on_shutdown(&mut self) {
        if self.stopping.is_some() {
            warn!("second shutdown request: stopping agents now");
            for r in self.running.values() {
                let _ = r.stop.send(Some(Stop::Now));
            }
        } else {
            info!(
                running = self.running.len(),
                grace = %humantime::format_duration(self.config.shutdown_grace),
                "shutting down: no new claims; running agents may finish"
            );
            self.stopping = Some(Instant::now());
        }
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Finished {
                name,
                run,
                agent,
                end,
            } => {
                if self.running.get(&name).is_some_and(|r| r.run == run) {
                    self.running.remove(&name);
                    self.cancelling.remove(&name);
                }
                if let Some(n) = self.load.get_mut(&agent) {
                    *n = n.saturating_sub(1);
                }
                match end {
                    JobEnd::Done(st, outcome, secs) => {
                        self.metrics.finished(&agent, outcome.as_str(), secs);
                        match st {
                            Status::Completed => self.summary.completed += 1,
                            Status::Failed => self.summary.failed += 1,
                        }
                        // Tasks that wait for this one may go (or fail) now.
                        self.replace_waiting();
                    }
                    JobEnd::Requeued => {
                        self.summary.requeued += 1;
                        self.stateful.insert(name.clone());
                        // Requeued: its file is back in pending/.
                        self.examine_name(&name);
                    }
                    JobEnd::Limited { until, message } => {
                        warn!(
                            agent = %agent,
                            until = %record::ts(until),
                            "usage limit: agent cooling down ({message})"
                        );
                        self.cooldowns.insert(agent, (until, message));
                        self.summary.requeued += 1;
                        self.stateful.insert(name.clone());
                        self.examine_name(&name);
                    }
                    JobEnd::Stuck => {}
                }
            }
        }
    }

    /// The earliest instant something may change without an event: a retry
    /// or `not_before` coming due, a broken file's settle time, a cooldown's
    /// end, the end of the shutdown grace. Deadlines already passed are not
    /// wake-ups (what is due and still waits, waits for an event), so an idle
    /// or saturated supervisor never spins.
    pub(super) fn next_wake(&self, next_rescan: Instant) -> Instant {
        let mut wake = next_rescan;
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
        for (t, _) in self.cooldowns.values() {
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
        if let Some(p) = self.pending.get_mut(name) {
            p.hold = Some(SystemTime::now() + Duration::from_millis(250));
        }
        self.place(name);
    }

    pub(super) fn recheck_waiting(&mut self) {
        let names: Vec<String> = self.unsettled.iter().cloned().collect();
        for n in names {
            self.examine_name(&n);
        }
        let now = SystemTime::now();
        self.cooldowns.retain(|_, (t, _)| *t > now);
    }

    /// Whether anything pending could still run, or another supervisor (or an
    /// orphaned agent) still holds a task in `assigned/` (used by `exit_when_idle`).
    /// Tasks waiting for a dependency nobody submitted do not count.
    pub(super) fn has_runnable(&self) -> bool {
        if !self.unsettled.is_empty() || !self.rejects.is_empty() {
            return true;
        }
        // Paused: nothing more will start, so waiting would be forever.
        if !self.queue.is_empty() && !self.paused {
            return true;
        }
        if books::count(self.layout(), State::Assigned) > self.running.len() {
            return true;
        }
        self.waiting.iter().any(|n| {
            self.pending.get(n).is_some_and(|p| match &p.parsed {
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
