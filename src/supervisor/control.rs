//! Live control and configuration: `tasks/control/` markers, reloads of `mailroom.yaml`, the metrics file.

use super::*;

/// Each agent's usage-limit patterns: for a CLI kind only its own
/// `limit_patterns`, else the generic preset plus its own.
pub(super) fn compile_limits(c: &Config) -> HashMap<String, LimitPatterns> {
    c.agents
        .values()
        .map(|a| {
            // The CLI kinds' own limit messages are read by their adapters
            // (src/adapter/), from their error channel only; what is left
            // here is the agent's `limit_patterns`, matched on stderr.
            let known = !matches!(
                crate::adapter::Kind::from_name(&a.kind, None),
                crate::adapter::Kind::Generic(_)
            );
            let p = if known {
                LimitPatterns::none()
            } else {
                LimitPatterns::preset(&a.kind)
            };
            // The config loader already checked that these compile.
            let p = p.clone().with_extra(&a.limit_patterns).unwrap_or(p);
            (a.name.clone(), p)
        })
        .collect()
}

impl Supervisor {
    /// Reads `tasks/control/`: the pause flags, and `cancel/<name>` markers,
    /// which it acts on: a run here is stopped (and ends as cancelled), a
    /// pending task is filed as cancelled, a marker for a task that is no
    /// longer pending or running is removed.
    pub(super) fn refresh_control(&mut self) {
        self.control_dirty = false;
        let layout = self.layout().clone();
        let was_paused = self.paused;
        self.paused = books::exists(&layout.pause_file(None));
        if was_paused && !self.paused {
            // What a pause held (tasks its config cannot route) is judged now.
            self.replace_waiting();
        }
        self.paused_agents = books::paused_agents(&layout).into_iter().collect();
        let marks: Vec<String> = std::fs::read_dir(&layout.cancel)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| task::check_name(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        for name in marks {
            if let Some(r) = self.running.get(&name) {
                if self.cancelling.insert(name.clone()) {
                    info!(task = %name, "cancel requested: stopping its agent");
                    let _ = r.stop.send(Some(Stop::Cancel));
                }
            } else if let Some(p) = self.pending.get(&name) {
                let ext = p.ext;
                self.forget(&name);
                let rec =
                    books::never_ran_record(Outcome::Cancelled, "cancelled before it ran".into());
                self.reject_pending(&name, ext, rec, false);
                // Its lock may have been busy: then the marker stays for the
                // next look (a rescan), and the task stays known.
                if layout.find(State::Pending, &name).is_none() {
                    let _ = crate::tree::fsx::remove_any(&layout.cancel_file(&name));
                } else {
                    self.examine_name(&name);
                }
            } else if layout.find(State::Assigned, &name).is_none()
                && layout.find(State::Pending, &name).is_none()
            {
                // Finished, never submitted, or cancelled by another supervisor.
                let _ = crate::tree::fsx::remove_any(&layout.cancel_file(&name));
            }
        }
    }

    /// A change of `mailroom.yaml` on disk: reload only if its meaning changed.
    /// The root's config with this supervisor's `--agents` overrides.
    fn load_config(&self) -> Result<Config, String> {
        let c = Config::load(&self.layout().root).map_err(|e| e.to_string())?;
        // A config file that is gone while this supervisor runs on one is
        // being moved (`git stash`, `mv` to edit it) far more often than a
        // wish for the defaults: the built-in demo agent would take the
        // tasks meant for real agents.
        if c.source.is_none()
            && let Some(was) = &self.config.source
        {
            return Err(format!(
                "{} is gone; this supervisor keeps the configuration it had (put the file \
                 back, or restart the supervisor to run on the defaults)",
                self.layout().rel(was)
            ));
        }
        c.with_agent_limits(&self.agent_limits)
    }

    pub(super) fn reload_if_changed(&mut self) {
        match self.load_config() {
            Ok(c) if c == *self.config => {}
            Ok(_) => self.reload(),
            Err(e) => {
                error!(error = %e, "mailroom.yaml changed but is invalid (or gone); keeping the old configuration")
            }
        }
    }

    pub(super) fn reload(&mut self) {
        // An empty file is refused by the load (a save in progress).
        match self.load_config() {
            Ok(c) => {
                info!("configuration reloaded");
                fsx::set_durable(c.durable);
                fsx::set_shared(c.shared);
                self.queue = Queue::new(c.aging);
                self.limits = Arc::new(compile_limits(&c));
                self.config = Arc::new(c);
                // Routes may have changed: read every pending file again.
                self.routes.clear();
                let names: Vec<String> = self.pending.keys().cloned().collect();
                for n in names {
                    self.forget(&n);
                }
                self.full_scan();
            }
            Err(e) => error!(error = %e, "new configuration refused; keeping the old one"),
        }
    }

    /// Writes the metrics file when something changed, at most once a second.
    pub(super) fn write_metrics_if_due(&mut self) {
        let Some(path) = self.config.metrics_file.clone() else {
            return;
        };
        if !self.metrics.dirty || self.metrics_due.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.metrics.dirty = false;
        self.metrics_due = Some(Instant::now() + Duration::from_secs(1));
        let now = SystemTime::now();
        // How long the longest-waiting task has waited for a slot: from its
        // submission, or from when its own `delay`/`not_before` or its retry
        // backoff let it go. One still held by either is not waiting (an
        // alert on this age must not fire for a task meant for tomorrow).
        let oldest = self
            .pending
            .values()
            .filter_map(|p| {
                // A file written "in the future" (clock skew) waits from now.
                let submitted = (SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(p.id.mtime_ns.max(0) as u64))
                .min(now);
                let own = p.parsed.as_ref().ok().and_then(|b| b.not_before);
                let since = [Some(submitted), own, p.retry_at]
                    .into_iter()
                    .flatten()
                    .max()?;
                (since <= now).then_some(since)
            })
            .min()
            .map(|since| now.duration_since(since).unwrap_or_default().as_secs_f64());
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.config.agents.keys() {
            running.insert(a.clone(), self.load.get(a).copied().unwrap_or(0));
        }
        let totals = crate::tree::context::log_totals(self.layout());
        let snap = crate::ops::metrics::Snapshot {
            pending: self.pending.len(),
            running: self.running.len(),
            completed: totals.0,
            failed: totals.1,
            running_by_agent: running,
            cooldowns: self
                .cooldowns
                .iter()
                .map(|(a, (t, _))| (a.clone(), *t))
                .collect(),
            oldest_pending_age: oldest,
            paused: self.paused,
            usage: self.ctx.usage.lock().map(|u| u.clone()).unwrap_or_default(),
        };
        let path = if path.is_absolute() {
            path
        } else {
            self.layout().root.join(path)
        };
        match fsx::write_atomic_readable_volatile(&path, self.metrics.render(&snap).as_bytes()) {
            // Said once per distinct error, not at every rewrite (every
            // heartbeat while a task waits).
            Err(e) => {
                let text = e.to_string();
                if self.metrics_error.as_deref() != Some(text.as_str()) {
                    warn!(file = %path.display(), error = %e, "cannot write the metrics file (said again only when the error changes)");
                    self.metrics_error = Some(text);
                }
            }
            Ok(()) => {
                if self.metrics_error.take().is_some() {
                    info!(file = %path.display(), "the metrics file is written again");
                }
            }
        }
    }
}
