//! The supervisor: one owner of the mutable state, fed by a closed set of
//! events (file hints, run finished, control requests, timers) in one
//! `select!` loop. It scans `pending/`, claims what may run, hands each claim
//! to a run task, and recovers orphans left in `assigned/`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{Config, WatchMode};
use crate::fsx::{self, FileId, ReadError};
use crate::layout::{Layout, State};
use crate::mailbox::{self, Claim, TaskLock};
use crate::record::{self, Attempt, ErrorLocation, ResultRecord, RunInfo, Status, TaskState};
use crate::runner::{self, Exit, RunEnd, Stop};
use crate::task::{self, Entry, Priority, Task, TaskError};
use crate::watcher::{Hints, Watch};

/// Requests from outside the loop (signals, in main.rs; tests send them directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM/SIGINT: stop claiming, let agents finish within the grace
    /// period, then stop them and requeue. A second one stops at once.
    Shutdown,
    /// SIGHUP: reload `mailroom.yaml`.
    Reload,
}

/// Options of one `mailroom run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once nothing is pending (that can ever run) and nothing is running.
    pub exit_when_idle: bool,
}

/// What the loop reports when it returns.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub completed: u64,
    pub failed: u64,
    pub requeued: u64,
}

enum Event {
    Finished {
        name: String,
        /// Which run: a name can be claimed again before its last run's event arrives.
        run: u64,
        agent: String,
        end: JobEnd,
    },
}

/// Where a run left its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Done(Status),
    Requeued,
    /// The commit could not be written; the task stays in `assigned/` for recovery.
    Stuck,
}

/// A file in `pending/` as last seen.
struct Pending {
    ext: String,
    id: FileId,
    parsed: Result<Task, TaskError>,
    /// When this version of the file was first seen.
    seen: Instant,
    /// Retry backoff from the state file.
    retry_at: Option<SystemTime>,
    key: (Priority, i128, String),
}

struct Running {
    run: u64,
    stop: watch::Sender<Option<Stop>>,
}

/// Shared, read-only context of run tasks.
struct Ctx {
    layout: Layout,
    host: String,
    self_pid: u32,
    self_start: u64,
    exe: String,
}

pub struct Supervisor {
    ctx: Arc<Ctx>,
    config: Arc<Config>,
    pending: BTreeMap<String, Pending>,
    queue: BTreeSet<(Priority, i128, String)>,
    /// Names that could not be claimed just now (lock held, file still being
    /// written), with when to try again.
    busy: HashMap<String, Instant>,
    running: HashMap<String, Running>,
    load: HashMap<String, usize>,
    stopping: Option<Instant>,
    summary: Summary,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    hints: Arc<Hints>,
    /// Names with a state file in `assigned/` (retry bookkeeping), from the last rescan.
    stateful: HashSet<String>,
    logged_waits: HashSet<String>,
    next_run: u64,
    swept: bool,
    /// Orphaned agents being stopped (pid, start time), so each gets one stopper.
    stopping_agents: HashSet<(u32, u64)>,
    /// Whether shutdown has already told the agents to stop.
    stop_sent: bool,
}

impl Supervisor {
    /// Prepares a supervisor for `root` (created if missing).
    pub fn new(root: &Path, config: Config) -> std::io::Result<Supervisor> {
        let layout = Layout::new(root);
        layout.ensure()?;
        let root = root.canonicalize()?;
        let layout = Layout::new(&root);
        fsx::set_durable(config.durable);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let self_pid = std::process::id();
        Ok(Supervisor {
            ctx: Arc::new(Ctx {
                layout,
                host: mailbox::hostname(),
                self_pid,
                self_start: mailbox::proc_start_time(self_pid).unwrap_or(0),
                exe: std::env::current_exe()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "mailroom".into()),
            }),
            config: Arc::new(config),
            pending: BTreeMap::new(),
            queue: BTreeSet::new(),
            busy: HashMap::new(),
            running: HashMap::new(),
            load: HashMap::new(),
            stopping: None,
            summary: Summary::default(),
            events_tx,
            events_rx,
            hints: Arc::new(Hints::default()),
            stateful: HashSet::new(),
            logged_waits: HashSet::new(),
            next_run: 0,
            swept: false,
            stopping_agents: HashSet::new(),
            stop_sent: false,
        })
    }

    fn layout(&self) -> &Layout {
        &self.ctx.layout
    }

    /// Runs until shut down (or idle, with `exit_when_idle`).
    pub async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        opts: RunOptions,
    ) -> anyhow::Result<Summary> {
        let mut watch = match self.config.watch {
            WatchMode::Poll => None,
            WatchMode::Auto => {
                match Watch::start(
                    &self.layout().tasks,
                    &self.layout().pending,
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
        self.recover();
        self.full_scan();
        info!(
            root = %self.layout().root.display(),
            pending = self.pending.len(),
            mode = if poll { "poll" } else { "inotify" },
            "supervisor ready"
        );
        let mut next_rescan = Instant::now() + self.rescan_interval(poll);
        let mut control_open = true;
        loop {
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
            let wake = self.next_wake(next_rescan);
            tokio::select! {
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
                    Some(Control::Shutdown) => self.on_shutdown(),
                    Some(Control::Reload) => self.reload(),
                    None => control_open = false,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_rescan {
                        self.recover();
                        self.full_scan();
                        next_rescan = Instant::now() + self.rescan_interval(poll);
                    } else {
                        self.recheck_waiting();
                    }
                }
            }
        }
        info!(
            completed = self.summary.completed,
            failed = self.summary.failed,
            "supervisor stopped"
        );
        Ok(self.summary)
    }

    fn rescan_interval(&self, poll: bool) -> Duration {
        if poll {
            self.config.rescan_interval.min(Duration::from_secs(1))
        } else {
            self.config.rescan_interval
        }
    }

    fn on_shutdown(&mut self) {
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

    fn reload(&mut self) {
        match Config::load(&self.layout().root) {
            Ok(c) => {
                info!("configuration reloaded");
                fsx::set_durable(c.durable);
                self.config = Arc::new(c);
            }
            Err(e) => error!(error = %e, "new configuration refused; keeping the old one"),
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Finished {
                name,
                run,
                agent,
                end,
            } => {
                if self.running.get(&name).is_some_and(|r| r.run == run) {
                    self.running.remove(&name);
                }
                if let Some(n) = self.load.get_mut(&agent) {
                    *n = n.saturating_sub(1);
                }
                match end {
                    JobEnd::Done(Status::Completed) => self.summary.completed += 1,
                    JobEnd::Done(Status::Failed) => self.summary.failed += 1,
                    JobEnd::Requeued => {
                        self.summary.requeued += 1;
                        self.stateful.insert(name.clone());
                        // Requeued: its file is back in pending/.
                        self.examine_name(&name);
                    }
                    JobEnd::Stuck => {}
                }
                // Tasks waiting on this one (or on its lock) may go now.
                self.busy.clear();
            }
        }
    }

    /// The earliest instant something may change without an event: a retry
    /// or `not_before` coming due, a broken file's settle time, a busy lock's
    /// next try, the end of the shutdown grace. Deadlines already passed are
    /// not wake-ups (what is due and still waits, waits for an event), so an
    /// idle or saturated supervisor never spins.
    fn next_wake(&self, next_rescan: Instant) -> Instant {
        let mut wake = next_rescan;
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let mut consider = |t: Instant| {
            if t > now {
                wake = wake.min(t);
            }
        };
        for p in self.pending.values() {
            match &p.parsed {
                Err(_) => {
                    let due = p.seen + self.config.settle;
                    // Past settle but still being written: look again a settle later.
                    consider(if due > now {
                        due
                    } else {
                        now + self.config.settle
                    });
                }
                Ok(t) => {
                    if let Some(nb) = t.not_before.into_iter().chain(p.retry_at).max()
                        && let Ok(d) = nb.duration_since(now_sys)
                    {
                        consider(now + d);
                    }
                }
            }
        }
        for t in self.busy.values() {
            consider(*t);
        }
        if let Some(s) = self.stopping
            && !self.stop_sent
        {
            consider(s + self.config.shutdown_grace);
        }
        wake
    }

    fn set_busy(&mut self, name: &str) {
        self.busy
            .insert(name.to_owned(), Instant::now() + Duration::from_millis(250));
    }

    fn recheck_waiting(&mut self) {
        let names: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.parsed.is_err())
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.examine_name(&n);
        }
        let now = Instant::now();
        self.busy.retain(|_, t| *t > now);
    }

    /// Whether anything pending could still run, or another supervisor (or an
    /// orphaned agent) still holds a task in `assigned/` (used by `exit_when_idle`).
    fn has_runnable(&self) -> bool {
        if mailbox::count(self.layout(), State::Assigned) > self.running.len() {
            return true;
        }
        self.pending.values().any(|p| match &p.parsed {
            Err(_) => true,
            Ok(t) => t.after.iter().all(|d| {
                self.pending.contains_key(d)
                    || self.running.contains_key(d)
                    || self.layout().find(State::Completed, d).is_some()
            }),
        })
    }

    // ---- scanning -------------------------------------------------------

    fn full_scan(&mut self) {
        let layout = self.layout().clone();
        self.stateful = list_suffix(&layout.assigned, ".state.json");
        let rd = match std::fs::read_dir(&layout.pending) {
            Ok(rd) => rd,
            Err(e) => {
                error!(dir = %layout.pending.display(), error = %e, "cannot read tasks/pending");
                return;
            }
        };
        let mut seen = HashSet::new();
        for ent in rd.flatten() {
            let fname = ent.file_name();
            let fname = match fname.to_str() {
                Some(s) => s.to_owned(),
                None => {
                    self.reject_bad_name(&ent.path(), "the file name is not valid UTF-8");
                    continue;
                }
            };
            match task::classify(&fname) {
                Entry::Ignored => {}
                Entry::BadName(why) => self.reject_bad_name(&ent.path(), &why),
                Entry::Task { name, ext } => {
                    if seen.insert(name.to_owned()) {
                        self.examine(name, ext, true);
                    } else {
                        debug!(
                            task = name,
                            "second file of the same name; handled after the first"
                        );
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .pending
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.forget(&n);
        }
        self.busy.clear();
    }

    fn examine_path(&mut self, p: &Path) {
        if p.parent() != Some(self.layout().pending.as_path()) {
            if p == self.layout().pending {
                self.hints.request_rescan();
            }
            return;
        }
        let Some(fname) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        match task::classify(fname) {
            Entry::Task { name, .. } => {
                let name = name.to_owned();
                self.examine_name(&name);
            }
            Entry::BadName(why) => {
                let p = p.to_path_buf();
                self.reject_bad_name(&p, &why)
            }
            Entry::Ignored => {}
        }
    }

    /// Looks at `pending/<name>.*` again, whichever extension it has now.
    fn examine_name(&mut self, name: &str) {
        match self.layout().find(State::Pending, name) {
            Some((_, ext)) => self.examine(name, ext, false),
            None => self.forget(name),
        }
    }

    fn forget(&mut self, name: &str) {
        if let Some(p) = self.pending.remove(name) {
            self.queue.remove(&p.key);
        }
        self.logged_waits.remove(name);
    }

    /// Reads and parses one pending file unless it is unchanged since last time.
    /// In a full scan, `stateful` (one readdir of `assigned/`) says which names
    /// have retry bookkeeping; otherwise the state file is looked up directly.
    fn examine(&mut self, name: &str, ext: &str, in_scan: bool) {
        let path = self.layout().task_file(State::Pending, name, ext);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return self.forget(name),
        };
        let id = FileId::of(&meta);
        if let Some(p) = self.pending.get(name)
            && p.id == id
            && p.ext == ext
        {
            return;
        }
        let parsed = match fsx::read_task_file(&path, self.config.max_task_bytes) {
            Ok((bytes, _)) => task::parse(name, &bytes),
            Err(e) if e.is_gone() => return self.forget(name),
            Err(e @ (ReadError::Io(_) | ReadError::ForeignOwner { .. })) => {
                warn!(task = name, error = %e, "cannot read task file");
                Err(TaskError {
                    line: None,
                    column: None,
                    message: format!("cannot read the file: {e}"),
                })
            }
            Err(e) => {
                // Links, FIFOs, directories, oversized files: refused at once.
                self.forget(name);
                let rec = mailbox::never_ran_record("invalid", format!("refused: {e}"));
                self.reject_pending(name, ext, rec, false);
                return;
            }
        };
        let mut parsed = parsed;
        if let Ok(t) = parsed.as_mut()
            && t.not_before.is_some()
            && meta.modified().is_ok()
        {
            // `delay` counts from the file's own time, not from when we read it.
            if let Some(d) = delay_of(t) {
                t.not_before = Some(meta.modified().unwrap_or(SystemTime::now()) + d);
            }
        }
        self.busy.remove(name);
        let priority = parsed.as_ref().map(|t| t.priority).unwrap_or(Priority::Low);
        let key = (priority, id.mtime_ns, name.to_owned());
        let has_state = if in_scan {
            self.stateful.contains(name)
        } else {
            mailbox::exists(&self.layout().state_file(name))
        };
        let retry_at = if has_state {
            let st = mailbox::read_state(self.layout(), name);
            st.not_before.as_deref().and_then(record::parse_ts)
        } else {
            None
        };
        self.forget(name);
        self.queue.insert(key.clone());
        self.pending.insert(
            name.to_owned(),
            Pending {
                ext: ext.to_owned(),
                id,
                parsed,
                seen: Instant::now(),
                retry_at,
                key,
            },
        );
    }

    // ---- scheduling -----------------------------------------------------

    /// Claims and starts as many tasks as capacity allows, and files away the
    /// ones that can never run.
    fn schedule(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = SystemTime::now();
        let mut rejects: Vec<(String, ResultRecord)> = Vec::new();
        let mut picks: Vec<String> = Vec::new();
        let mut load = self.load.clone();
        let mut slots = self.config.concurrency.saturating_sub(self.running.len());
        for (_, _, name) in self.queue.iter() {
            let p = &self.pending[name];
            if self.busy.get(name).is_some_and(|t| *t > Instant::now()) {
                continue;
            }
            let t = match &p.parsed {
                Ok(t) => t,
                Err(e) => {
                    if p.seen.elapsed() >= self.config.settle
                        && !matches!(
                            fsx::open_for_writing_elsewhere(&self.layout().task_file(
                                State::Pending,
                                name,
                                &p.ext
                            )),
                            Some(true)
                        )
                    {
                        let file = self.layout().rel(&self.layout().task_file(
                            State::Pending,
                            name,
                            &p.ext,
                        ));
                        let mut rec = mailbox::never_ran_record("invalid", e.display_at(&file));
                        rec.error_location = Some(ErrorLocation {
                            file,
                            line: e.line,
                            column: e.column,
                        });
                        rejects.push((name.clone(), rec));
                    }
                    continue;
                }
            };
            if slots == 0 {
                continue;
            }
            if t.not_before
                .into_iter()
                .chain(p.retry_at)
                .any(|nb| nb > now)
            {
                continue;
            }
            match self.deps_state(t) {
                Deps::Ready => {}
                Deps::Wait(why) => {
                    if self.logged_waits.insert(name.clone()) {
                        info!(task = %name, "waiting: {why}");
                    }
                    continue;
                }
                Deps::Failed(why) => {
                    rejects.push((name.clone(), mailbox::never_ran_record("dependency", why)));
                    continue;
                }
            }
            let agent = match self.config.agent_for(t.agent.as_deref()) {
                Ok(a) => a,
                Err(why) => {
                    rejects.push((name.clone(), mailbox::never_ran_record("invalid", why)));
                    continue;
                }
            };
            let l = load.entry(agent.name.clone()).or_default();
            if *l >= agent.max_instances {
                continue;
            }
            *l += 1;
            slots -= 1;
            picks.push(name.clone());
            if picks.len() >= 64 {
                break;
            }
        }
        for (name, rec) in rejects {
            if let Some(p) = self.pending.get(&name) {
                let ext = p.ext.clone();
                self.forget(&name);
                self.reject_pending(&name, &ext, rec, false);
            }
        }
        for name in picks {
            self.start(&name);
        }
    }

    fn deps_state(&self, t: &Task) -> Deps {
        for d in &t.after {
            if self.layout().find(State::Completed, d).is_some() {
                continue;
            }
            if self.layout().find(State::Failed, d).is_some() {
                return Deps::Failed(format!("dependency {d} failed"));
            }
            if self.pending.contains_key(d)
                || self.running.contains_key(d)
                || self.layout().find(State::Assigned, d).is_some()
            {
                return Deps::Wait(format!("waiting for {d}"));
            }
            return Deps::Wait(format!("waiting for {d} (not submitted)"));
        }
        Deps::Ready
    }

    /// Files a pending task straight into `failed/`, under its lock.
    fn reject_pending(&mut self, name: &str, ext: &str, rec: ResultRecord, rename: bool) {
        let lock = match TaskLock::try_acquire(self.layout(), name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.set_busy(name);
                return;
            }
            Err(e) => {
                error!(task = name, error = %e, "cannot lock task");
                return;
            }
        };
        self.reject_locked(State::Pending, name, ext, rec, rename, lock);
    }

    /// Files a task that will never run into `failed/` with its record, merges
    /// the record into context (not for clashes: that name belongs to another
    /// task), and releases the lock.
    fn reject_locked(
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
        let outcome = rec.outcome.clone();
        match mailbox::reject(&layout, src, name, ext, rec.clone(), rename) {
            Ok(Some(target)) => {
                warn!(task = name, filed_as = %target, "{error}");
                self.summary.failed += 1;
                let mut rec = rec;
                rec.task = target;
                if outcome != "clash"
                    && let Err(e) = crate::context::merge(&layout, &rec, None)
                {
                    warn!(error = %e, "context merge failed");
                }
            }
            Ok(None) => {}
            Err(e) => error!(task = name, error = %e, "cannot move task to failed/"),
        }
        lock.release();
    }

    /// A file whose name mailroom cannot use: filed under a sanitised name.
    fn reject_bad_name(&mut self, path: &Path, why: &str) {
        let raw = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match raw.rsplit_once('.') {
            Some((s, e)) if e == "yaml" || e == "yml" => (s.to_owned(), e.to_owned()),
            _ => return,
        };
        let clean: String = stem
            .chars()
            .map(|c| {
                if c.is_control() || c == '\\' || c == '\u{fffd}' {
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
        let Ok((target, lock)) = mailbox::free_clash_name(&layout, State::Failed, &clean) else {
            return;
        };
        let mut rec = mailbox::never_ran_record(
            "invalid",
            format!(
                "the file name {:?} cannot be used ({why}); filed as `{target}`",
                raw
            ),
        );
        rec.task = target.clone();
        rec.submitted_as = Some(format!("tasks/pending/{}", raw.escape_debug()));
        let res = (|| -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
            fsx::write_atomic(&layout.record_file(State::Failed, &target), &bytes)?;
            fsx::rename_noreplace(path, &layout.task_file(State::Failed, &target, &ext))?;
            fsx::fsync_dir(&layout.failed)?;
            fsx::fsync_dir(&layout.pending)
        })();
        match res {
            Ok(()) => warn!(file = ?raw, filed_as = %target, "{why}"),
            Err(e) => {
                let _ = std::fs::remove_file(layout.record_file(State::Failed, &target));
                debug!(error = %e, "bad name not filed")
            }
        }
        lock.release();
    }

    /// Claims one task and starts its run.
    fn start(&mut self, name: &str) {
        let layout = self.layout().clone();
        let Some(p) = self.pending.get(name) else {
            return;
        };
        let ext = p.ext.clone();
        let path = layout.task_file(State::Pending, name, &ext);
        // A naive writer may still have the file open: not yet.
        if fsx::open_for_writing_elsewhere(&path) == Some(true) {
            self.set_busy(name);
            return;
        }
        let lock = match TaskLock::try_acquire(&layout, name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.set_busy(name);
                return;
            }
            Err(e) => {
                error!(task = name, error = %e, "cannot create lock file");
                self.set_busy(name);
                return;
            }
        };
        match mailbox::claim(&layout, name, &ext, &lock) {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Gone) => {
                lock.release();
                self.forget(name);
                return;
            }
            Ok(Claim::Clash(other)) => {
                lock.release();
                self.forget(name);
                let rec = mailbox::never_ran_record(
                    "clash",
                    format!(
                        "the name `{name}` is already used by {}; nothing was overwritten. Rename the file and submit it again",
                        layout.rel(&other)
                    ),
                );
                self.reject_pending(name, &ext, rec, true);
                return;
            }
            Err(e) => {
                lock.release();
                error!(task = name, error = %e, "claim failed");
                self.set_busy(name);
                return;
            }
        }
        self.forget(name);
        // Re-read what was claimed: the file may have changed since the scan.
        let apath = layout.task_file(State::Assigned, name, &ext);
        let task = match fsx::read_task_file(&apath, self.config.max_task_bytes) {
            Ok((b, _)) => task::parse(name, &b).map_err(|e| e.display_at(&layout.rel(&path))),
            Err(e) => Err(format!("{}: refused: {e}", layout.rel(&path))),
        };
        let task = match task {
            Ok(t) => t,
            Err(msg) => {
                let rec = mailbox::never_ran_record("invalid", msg);
                self.reject_locked(State::Assigned, name, &ext, rec, false, lock);
                return;
            }
        };
        let agent = match self.config.agent_for(task.agent.as_deref()) {
            Ok(a) => a.clone(),
            Err(why) => {
                let rec = mailbox::never_ran_record("invalid", why);
                self.reject_locked(State::Assigned, name, &ext, rec, false, lock);
                return;
            }
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        *self.load.entry(agent.name.clone()).or_default() += 1;
        self.next_run += 1;
        let run = self.next_run;
        self.running
            .insert(name.to_owned(), Running { run, stop: stop_tx });
        let job = Job {
            ctx: self.ctx.clone(),
            config: self.config.clone(),
            name: name.to_owned(),
            ext,
            task,
            agent,
            lock,
        };
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let name = job.name.clone();
            let agent = job.agent.name.clone();
            let end = job.run(stop_rx).await;
            let _ = tx.send(Event::Finished {
                name,
                run,
                agent,
                end,
            });
        });
    }

    // ---- recovery -------------------------------------------------------

    /// Finishes or requeues orphans in `assigned/` (their supervisor died) and
    /// removes leftovers that no one holds.
    fn recover(&mut self) {
        let layout = self.layout().clone();
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
        if !self.swept {
            // Once per start: the other directories the protocol writes into.
            for d in [
                &layout.completed,
                &layout.failed,
                &layout.context,
                &layout.outputs,
                &layout.tmp,
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
                Ok(None) => self.stop_orphaned_agent(name),
                Err(e) => warn!(task = %name, error = %e, "cannot lock during recovery"),
            }
        }
        for name in leftovers {
            if task_names.contains(name.as_str()) || self.running.contains_key(&name) {
                continue;
            }
            let Ok(Some(lock)) = TaskLock::try_acquire(&layout, &name) else {
                continue;
            };
            if layout.find(State::Assigned, &name).is_none() {
                let _ = fsx::remove_dir_all_if_exists(&layout.run_dir(State::Assigned, &name));
                if layout.find(State::Pending, &name).is_none() {
                    let _ = fsx::remove_file_if_exists(&layout.state_file(&name));
                }
            }
            lock.release();
        }
    }

    fn recover_orphan(&mut self, name: &str, ext: &str, lock: TaskLock) {
        let layout = self.layout().clone();
        let mut st = mailbox::read_state(&layout, name);
        // A record already written means the run finished: complete its commit.
        for dest in [State::Completed, State::Failed] {
            let rp = layout.record_file(dest, name);
            if let Ok(b) = std::fs::read(&rp)
                && let Ok(rec) = serde_json::from_slice::<ResultRecord>(&b)
                && st.committing.as_deref() == Some(rec.run_id.as_str())
                && rec.task == name
            {
                let (out, cut) = crate::context::read_output(&layout.run_dir(dest, name));
                let output = rec.agent.as_ref().map(|_| (out.as_str(), cut));
                let res = crate::context::merge(&layout, &rec, output)
                    .and_then(|()| mailbox::finish_commit(&layout, name, ext, dest));
                match res {
                    Ok(()) => {
                        info!(
                            task = name,
                            state = dest.dir_name(),
                            "recovered: finished an interrupted commit"
                        )
                    }
                    Err(e) => {
                        error!(task = name, error = %e, "recovery could not finish the commit")
                    }
                }
                lock.release();
                return;
            }
        }
        st.committing = None;
        let retries = fsx::read_task_file(
            &layout.task_file(State::Assigned, name, ext),
            self.config.max_task_bytes,
        )
        .ok()
        .and_then(|(b, _)| task::parse(name, &b).ok())
        .and_then(|t| t.retries)
        .unwrap_or(self.config.retries);
        let _ = fsx::remove_dir_all_if_exists(&layout.run_dir(State::Assigned, name));
        if let Some(run) = st.run.take() {
            let why = format!(
                "the supervisor (pid {} on {}) stopped during attempt {}",
                run.supervisor_pid, run.host, run.attempt
            );
            st.history.push(Attempt {
                attempt: run.attempt,
                agent: run.agent.clone(),
                started_at: run.started_at.clone(),
                finished_at: record::now(),
                outcome: "interrupted".into(),
                exit_code: None,
                signal: None,
                error: Some(why.clone()),
            });
            st.last_error = Some(why.clone());
            if st.charged() > retries {
                let mut rec = base_record(&self.ctx, name, Status::Failed, "interrupted", &st);
                rec.error = Some(format!("{why}, and no attempts are left"));
                rec.agent = Some(run.agent);
                st.committing = Some(rec.run_id.clone());
                let res = mailbox::write_state(&layout, &st)
                    .and_then(|()| mailbox::prepare_commit(&layout, &rec))
                    .and_then(|dest| {
                        crate::context::merge(&layout, &rec, None)?;
                        mailbox::finish_commit(&layout, name, ext, dest)
                    });
                match res {
                    Ok(()) => {
                        self.summary.failed += 1;
                        warn!(task = name, "recovered orphan: failed, no attempts left")
                    }
                    Err(e) => error!(task = name, error = %e, "recovery failed"),
                }
                lock.release();
                return;
            }
        }
        st.not_before = None;
        match mailbox::requeue(&layout, name, ext, &st) {
            Ok(()) => {
                info!(
                    task = name,
                    attempts = st.attempts,
                    "recovered orphan: requeued"
                );
                self.stateful.insert(name.to_owned());
                self.examine_name(name);
            }
            Err(e) => error!(task = name, error = %e, "recovery could not requeue"),
        }
        lock.release();
    }

    /// The lock of `name` is held: if by an agent whose supervisor died on this
    /// host, stop that agent so the task can be recovered and run again.
    fn stop_orphaned_agent(&mut self, name: &str) {
        let st = mailbox::read_state(self.layout(), name);
        let Some(run) = st.run else { return };
        // A supervisor whose start time could not be read cannot be proven dead.
        if run.supervisor_start == 0
            || run.host != self.ctx.host
            || (run.supervisor_pid == self.ctx.self_pid
                && run.supervisor_start == self.ctx.self_start)
            || mailbox::same_process(run.supervisor_pid, run.supervisor_start)
        {
            return;
        }
        let (Some(pid), Some(start)) = (run.pid, run.pid_start) else {
            return;
        };
        if !mailbox::same_process(pid, start) || !self.stopping_agents.insert((pid, start)) {
            return;
        }
        let grace = self
            .config
            .agents
            .get(&run.agent)
            .map(|a| a.grace)
            .unwrap_or(Duration::from_secs(10));
        warn!(task = name, pid, "stopping an agent whose supervisor died");
        std::thread::spawn(move || runner::kill_orphan_group(pid, grace));
    }
}

enum Deps {
    Ready,
    Wait(String),
    Failed(String),
}

fn delay_of(t: &Task) -> Option<Duration> {
    t.delay
}

fn list_suffix(dir: &Path, suffix: &str) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|f| f.strip_suffix(suffix).map(str::to_owned))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes temp files left by writers that died mid-write: mailroom's own
/// `.<base>.<host>.<pid>.<n>.tmp` whose process is gone on this host, and any
/// dot-`.tmp` file older than ten minutes (a writer on another host).
fn sweep_temps(dir: &Path) {
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
        let mut parts = f.rsplitn(4, '.');
        let (_, _, pid) = (parts.next(), parts.next(), parts.next());
        let dead = pid.and_then(|p| p.parse::<i32>().ok()).is_some_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
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

fn base_record(
    ctx: &Ctx,
    name: &str,
    status: Status,
    outcome: &str,
    st: &TaskState,
) -> ResultRecord {
    let mut rec = mailbox::never_ran_record(outcome, String::new());
    rec.task = name.to_owned();
    rec.status = status;
    rec.error = None;
    rec.attempts = st.attempts;
    rec.history = st.history.clone();
    rec.host = ctx.host.clone();
    rec
}

/// One claimed task, from spawn to commit. Owns the task's lock.
struct Job {
    ctx: Arc<Ctx>,
    config: Arc<Config>,
    name: String,
    ext: String,
    task: Task,
    agent: crate::config::Agent,
    lock: TaskLock,
}

impl Job {
    /// Runs the agent and commits the outcome.
    async fn run(self, stop: watch::Receiver<Option<Stop>>) -> JobEnd {
        let layout = &self.ctx.layout;
        let name = self.name.clone();
        let timeout = self.task.timeout.unwrap_or(self.agent.timeout);
        let started = SystemTime::now();
        let mut st = mailbox::read_state(layout, &name);
        st.task = name.clone();
        st.attempts += 1;
        st.not_before = None;
        st.run = Some(RunInfo {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            host: self.ctx.host.clone(),
            supervisor_pid: self.ctx.self_pid,
            supervisor_start: self.ctx.self_start,
            pid: None,
            pid_start: None,
            started_at: record::ts(started),
            deadline: record::ts(started + timeout),
        });
        let run_dir = layout.run_dir(State::Assigned, &name);
        let prep = (|| -> std::io::Result<()> {
            mailbox::write_state(layout, &st)?;
            fsx::remove_dir_all_if_exists(&run_dir)?;
            fsx::create_dir_all(&run_dir)?;
            std::fs::write(run_dir.join("prompt.md"), self.task.description.as_bytes())?;
            Ok(())
        })();
        if let Err(e) = prep {
            // Could not even prepare (disk full, unwritable tree): put it back untouched.
            error!(task = %name, error = %e, "cannot prepare the run; requeueing");
            st.attempts -= 1;
            st.run = None;
            st.last_error = Some(format!("cannot prepare the run: {e}"));
            st.not_before = Some(record::ts(SystemTime::now() + self.config.retry_delay));
            return self.requeue_or_keep(st).await;
        }
        let workdir = match self.workdir() {
            Ok(w) => w,
            Err(msg) => {
                return self.fail_now(st, "invalid", msg, started).await;
            }
        };
        let vars = runner::Vars {
            prompt: self.task.description.clone(),
            prompt_file: path_str(&run_dir.join("prompt.md")),
            task: name.clone(),
            task_file: path_str(&layout.task_file(State::Assigned, &name, &self.ext)),
            output_file: path_str(&run_dir.join("output.md")),
            workdir: path_str(&workdir),
            root: path_str(&layout.root),
            mailroom: self.ctx.exe.clone(),
        };
        let argv = runner::build_argv(&self.agent.command, &vars);
        let mut env: Vec<(String, String)> = vec![
            ("MAILROOM_TASK".into(), name.clone()),
            ("MAILROOM_TASK_FILE".into(), vars.task_file.clone()),
            ("MAILROOM_ROOT".into(), vars.root.clone()),
            ("MAILROOM_CONTEXT".into(), path_str(&layout.context)),
            ("MAILROOM_OUTPUT".into(), vars.output_file.clone()),
            ("MAILROOM_PROMPT_FILE".into(), vars.prompt_file.clone()),
            ("MAILROOM_RUN_DIR".into(), path_str(&run_dir)),
            ("MAILROOM_ATTEMPT".into(), st.attempts.to_string()),
            ("MAILROOM_AGENT".into(), self.agent.name.clone()),
        ];
        env.extend(self.agent.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let spec = runner::Spec {
            argv,
            env,
            workdir,
            stdout: run_dir.join("stdout.log"),
            stderr: run_dir.join("stderr.log"),
            timeout,
            grace: self.agent.grace,
            lock_fd: Some(self.lock.raw_fd()),
            max_output: self.config.max_output_bytes,
        };
        let end = match runner::spawn(&spec, &layout.root) {
            Ok(started_child) => {
                info!(task = %name, agent = %self.agent.name, attempt = st.attempts, pid = started_child.pid, "spawned");
                if let Some(r) = st.run.as_mut() {
                    r.pid = Some(started_child.pid);
                    r.pid_start = mailbox::proc_start_time(started_child.pid);
                }
                let (l, s2) = (layout.clone(), st.clone());
                let _ = tokio::task::spawn_blocking(move || mailbox::write_state(&l, &s2)).await;
                runner::wait(started_child, &spec, stop).await
            }
            Err(end) => end,
        };
        self.finish(st, end, started).await
    }

    fn workdir(&self) -> Result<PathBuf, String> {
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

    async fn finish(self, mut st: TaskState, end: RunEnd, started: SystemTime) -> JobEnd {
        let finished = SystemTime::now();
        let attempt = st.attempts;
        let (outcome, exit, error): (&str, Option<Exit>, Option<String>) = match &end {
            RunEnd::Exited(Exit::Code(0)) => ("success", Some(Exit::Code(0)), None),
            RunEnd::Exited(e @ Exit::Code(c)) => (
                "exit",
                Some(*e),
                Some(format!("agent exited with code {c}")),
            ),
            RunEnd::Exited(e @ Exit::Signal(s)) => (
                "signal",
                Some(*e),
                Some(format!("agent was killed by signal {}", sig_name(*s))),
            ),
            RunEnd::TimedOut(e) => (
                "timeout",
                Some(*e),
                Some(format!(
                    "agent timed out after {}",
                    humantime::format_duration(self.task.timeout.unwrap_or(self.agent.timeout))
                )),
            ),
            RunEnd::OutputLimit(e, n) => (
                "output_limit",
                Some(*e),
                Some(format!(
                    "agent wrote {n} bytes of output, over max_output_bytes ({}); it was stopped",
                    self.config.max_output_bytes
                )),
            ),
            // The agent finished its work within the grace period: its verdict stands.
            RunEnd::Stopped(Exit::Code(0)) => ("success", Some(Exit::Code(0)), None),
            RunEnd::Stopped(e) => ("interrupted", Some(*e), Some("stopped by shutdown".into())),
            RunEnd::SpawnFailed { error, .. } => ("spawn", None, Some(error.clone())),
        };
        let run = st.run.take();
        let error = error.map(|e| {
            let tail = stderr_tail(&self.ctx.layout.run_dir(State::Assigned, &self.name));
            if tail.is_empty() || outcome == "spawn" {
                e
            } else {
                format!("{e}; stderr ends with: {tail}")
            }
        });
        st.history.push(Attempt {
            attempt,
            agent: self.agent.name.clone(),
            started_at: run
                .as_ref()
                .map(|r| r.started_at.clone())
                .unwrap_or_else(|| record::ts(started)),
            finished_at: record::ts(finished),
            outcome: outcome.into(),
            exit_code: match exit {
                Some(Exit::Code(c)) => Some(c),
                _ => None,
            },
            signal: match exit {
                Some(Exit::Signal(s)) => Some(s),
                _ => None,
            },
            error: error.clone(),
        });
        st.last_error = error.clone();
        let retries = self.task.retries.unwrap_or(self.config.retries);
        if outcome == "interrupted" {
            st.free_attempts += 1;
            info!(task = %self.name, "stopped by shutdown; requeued without using an attempt");
            return self.requeue_or_keep(st).await;
        }
        if outcome != "success" && outcome != "spawn" && st.charged() <= retries {
            let delay = backoff(
                self.config.retry_delay,
                self.config.retry_delay_max,
                st.charged(),
            );
            st.not_before = Some(record::ts(SystemTime::now() + delay));
            warn!(
                task = %self.name,
                attempt,
                retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                error = error.as_deref().unwrap_or(""),
                "attempt failed; will retry"
            );
            return self.requeue_or_keep(st).await;
        }
        let status = if outcome == "success" {
            Status::Completed
        } else {
            Status::Failed
        };
        let mut rec = base_record(&self.ctx, &self.name, status, outcome, &st);
        rec.agent = Some(self.agent.name.clone());
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
        self.commit(st, rec).await
    }

    async fn fail_now(
        self,
        mut st: TaskState,
        outcome: &str,
        msg: String,
        started: SystemTime,
    ) -> JobEnd {
        st.run = None;
        st.history.push(Attempt {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            started_at: record::ts(started),
            finished_at: record::now(),
            outcome: outcome.into(),
            exit_code: None,
            signal: None,
            error: Some(msg.clone()),
        });
        let mut rec = base_record(&self.ctx, &self.name, Status::Failed, outcome, &st);
        rec.agent = Some(self.agent.name.clone());
        rec.error = Some(msg);
        rec.started_at = Some(record::ts(started));
        self.commit(st, rec).await
    }

    /// Record, context merge, then the move out of `assigned/`.
    async fn commit(self, mut st: TaskState, mut rec: ResultRecord) -> JobEnd {
        let status = rec.status;
        let Job {
            ctx,
            name,
            ext,
            lock,
            ..
        } = self;
        st.committing = Some(rec.run_id.clone());
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let layout = &ctx.layout;
            mailbox::write_state(layout, &st)?;
            let dest = match rec.status {
                Status::Completed => State::Completed,
                Status::Failed => State::Failed,
            };
            rec.run_dir = Some(layout.rel(&layout.run_dir(dest, &name)));
            rec.output_file = Some(layout.rel(&layout.output_file(&name)));
            let (out, cut) = crate::context::read_output(&layout.run_dir(State::Assigned, &name));
            rec.summary = crate::context::summary(&out);
            mailbox::prepare_commit(layout, &rec)?;
            crate::context::merge(layout, &rec, Some((&out, cut)))?;
            mailbox::finish_commit(layout, &name, &ext, dest)?;
            match rec.status {
                Status::Completed => info!(task = %name, attempts = rec.attempts, "completed"),
                Status::Failed => warn!(
                    task = %name,
                    attempts = rec.attempts,
                    error = rec.error.as_deref().unwrap_or(""),
                    "failed"
                ),
            }
            lock.release();
            Ok(())
        })
        .await;
        match res {
            Ok(Ok(())) => JobEnd::Done(status),
            Ok(Err(e)) => {
                // The task stays in assigned/ with its lock released on drop:
                // recovery finishes or requeues it.
                error!(error = %e, "commit failed; recovery will finish it");
                JobEnd::Stuck
            }
            Err(e) => {
                error!(error = %e, "commit task panicked");
                JobEnd::Stuck
            }
        }
    }

    async fn requeue_or_keep(self, st: TaskState) -> JobEnd {
        let Job {
            ctx,
            name,
            ext,
            lock,
            ..
        } = self;
        let res = tokio::task::spawn_blocking(move || {
            let r = mailbox::requeue(&ctx.layout, &name, &ext, &st);
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

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Exponential backoff with equal jitter: between half and all of
/// `base * 2^(n-1)`, capped at `max`.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64
        ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let span = half.as_nanos().max(1) as u64;
    half + Duration::from_nanos(nanos % span)
}

fn sig_name(s: i32) -> String {
    nix::sys::signal::Signal::try_from(s)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| s.to_string())
}

fn stderr_tail(run_dir: &Path) -> String {
    let Ok((b, _)) = fsx::read_tail(&run_dir.join("stderr.log"), 400) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let s = s.trim();
    let mut lines: Vec<&str> = s.lines().rev().take(3).collect();
    lines.reverse();
    lines.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Duration::from_secs(5);
        let m = Duration::from_secs(60);
        for n in 1..10 {
            let d = backoff(b, m, n);
            let full = (b * (1 << (n - 1))).min(m);
            assert!(d >= full / 2 && d <= full, "n={n} d={d:?}");
        }
    }
}
