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
use crate::limits::LimitPatterns;
use crate::mailbox::{self, Claim, TaskLock};
use crate::record::{self, Attempt, ErrorLocation, ResultRecord, RunInfo, Status, TaskState};
use crate::runner::{self, Exit, RunEnd, Stop};
use crate::scheduler::{Avail, Item, Queue};
use crate::task::{self, Entry, Task, TaskError};
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
    /// systemd's notify socket, when run as a `Type=notify` service.
    pub notifier: Option<Arc<crate::sdnotify::Notifier>>,
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
#[derive(Debug, Clone, PartialEq)]
enum JobEnd {
    /// Filed in completed/ or failed/, with the outcome and the run's length.
    Done(Status, String, Option<f64>),
    Requeued,
    /// The agent hit a usage limit: it cools down, the task went back to `pending/`.
    Limited {
        until: SystemTime,
        message: String,
    },
    /// The commit could not be written; the task stays in `assigned/` for recovery.
    Stuck,
}

/// What scheduling keeps of a parsed pending task. The file itself is read
/// again when it is claimed, so nothing else (the description above all) is
/// held in memory for a queue of 100,000 tasks.
struct Brief {
    priority: task::Priority,
    not_before: Option<SystemTime>,
    after: Box<[String]>,
    /// Candidate agents (interned: most tasks share a route), or why none.
    route: Result<Arc<crate::scheduler::Route>, String>,
}

/// A file in `pending/` as last seen.
struct Pending {
    ext: &'static str,
    id: FileId,
    parsed: Result<Brief, Box<TaskError>>,
    /// When this version of the file was first seen.
    seen: Instant,
    /// Retry backoff from the state file.
    retry_at: Option<SystemTime>,
    /// Agents ruled out for this task (from the state file).
    excluded: Vec<String>,
    /// Not before this instant: its lock was busy or its writer still had it open.
    hold: Option<SystemTime>,
}

struct Running {
    run: u64,
    stop: watch::Sender<Option<Stop>>,
}

/// Shared context of run tasks.
struct Ctx {
    layout: Layout,
    /// How many tasks wait in `pending/`, as the loop last counted.
    pending_count: std::sync::atomic::AtomicUsize,
    host: String,
    self_pid: u32,
    self_start: u64,
    exe: String,
}

pub struct Supervisor {
    ctx: Arc<Ctx>,
    config: Arc<Config>,
    pending: BTreeMap<String, Pending>,
    /// Pending tasks that may run (dependencies met), in run order.
    queue: Queue,
    /// Pending tasks waiting for dependencies.
    waiting: BTreeSet<String>,
    /// Pending files that do not parse yet (maybe still being written).
    unsettled: BTreeSet<String>,
    /// Pending files that will never run, to be filed in `failed/`.
    rejects: BTreeMap<String, ResultRecord>,
    /// Agents cooling down after a usage limit: until when, and why.
    cooldowns: HashMap<String, (SystemTime, String)>,
    /// Each agent's compiled usage-limit patterns.
    limits: Arc<HashMap<String, LimitPatterns>>,
    /// Interned routes: one allocation per distinct route, not per task.
    routes: HashMap<crate::scheduler::Route, Arc<crate::scheduler::Route>>,
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
    /// Orphaned agents' process groups being stopped (pgid, leader start time),
    /// so each gets one stopper.
    stopping_agents: HashSet<(u32, u64)>,
    /// Whether shutdown has already told the agents to stop.
    stop_sent: bool,
    /// Inside a full scan (not every file is read yet).
    scanning: bool,
    /// `tasks/control/pause` exists: no new claims.
    paused: bool,
    /// Agents with a `tasks/control/pause.<agent>` file.
    paused_agents: HashSet<String>,
    /// Runs told to stop for a `cancel` marker (so each is told once).
    cancelling: HashSet<String>,
    /// The control files may have changed.
    control_dirty: bool,
    /// `mailroom.yaml` changed: reload at this instant (edits come in bursts).
    reload_due: Option<Instant>,
    /// Counters for the Prometheus textfile.
    metrics: crate::metrics::Metrics,
    /// When the metrics file may be written next (at most once a second).
    metrics_due: Option<Instant>,
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
                pending_count: std::sync::atomic::AtomicUsize::new(0),
                host: mailbox::hostname(),
                self_pid,
                self_start: mailbox::proc_start_time(self_pid).unwrap_or(0),
                exe: std::env::current_exe()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "mailroom".into()),
            }),
            queue: Queue::new(config.aging),
            limits: Arc::new(compile_limits(&config)),
            config: Arc::new(config),
            pending: BTreeMap::new(),
            waiting: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            rejects: BTreeMap::new(),
            cooldowns: HashMap::new(),
            routes: HashMap::new(),
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
            scanning: false,
            paused: false,
            paused_agents: HashSet::new(),
            cancelling: HashSet::new(),
            control_dirty: true,
            reload_due: None,
            metrics: crate::metrics::Metrics::default(),
            metrics_due: None,
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
        mailbox::check_permissions(self.layout(), self.config.shared)
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
    fn status_line(&self) -> String {
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

    /// Reads `tasks/control/`: the pause flags, and `cancel/<name>` markers,
    /// which it acts on: a run here is stopped (and ends as cancelled), a
    /// pending task is filed as cancelled, a marker for a task that is no
    /// longer pending or running is removed.
    fn refresh_control(&mut self) {
        self.control_dirty = false;
        let layout = self.layout().clone();
        self.paused = mailbox::exists(&layout.pause_file(None));
        self.paused_agents = std::fs::read_dir(&layout.control)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|f| f.strip_prefix("pause."))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
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
                let rec = mailbox::never_ran_record("cancelled", "cancelled before it ran".into());
                self.reject_pending(&name, ext, rec, false);
                // Its lock may have been busy: then the marker stays for the
                // next look (a rescan), and the task stays known.
                if layout.find(State::Pending, &name).is_none() {
                    let _ = std::fs::remove_file(layout.cancel_file(&name));
                } else {
                    self.examine_name(&name);
                }
            } else if layout.find(State::Assigned, &name).is_none()
                && layout.find(State::Pending, &name).is_none()
            {
                // Finished, never submitted, or cancelled by another supervisor.
                let _ = std::fs::remove_file(layout.cancel_file(&name));
            }
        }
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

    /// A change of `mailroom.yaml` on disk: reload only if its meaning changed.
    fn reload_if_changed(&mut self) {
        match Config::load(&self.layout().root) {
            Ok(c) if c == *self.config => {}
            Ok(_) => self.reload(),
            Err(e) => {
                error!(error = %e, "mailroom.yaml changed but is invalid; keeping the old configuration")
            }
        }
    }

    fn reload(&mut self) {
        // An empty file at a reload is far more likely a save in progress (an
        // editor or `>` truncates first) than a wish for the defaults.
        let path = self.layout().root.join(crate::config::CONFIG_FILE);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim().is_empty()) {
            error!("mailroom.yaml is empty; new configuration refused, keeping the old one");
            return;
        }
        match Config::load(&self.layout().root) {
            Ok(c) => {
                info!("configuration reloaded");
                fsx::set_durable(c.durable);
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
                    self.cancelling.remove(&name);
                }
                if let Some(n) = self.load.get_mut(&agent) {
                    *n = n.saturating_sub(1);
                }
                match end {
                    JobEnd::Done(st, outcome, secs) => {
                        self.metrics.finished(&agent, &outcome, secs);
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
    fn next_wake(&self, next_rescan: Instant) -> Instant {
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

    /// Writes the metrics file when something changed, at most once a second.
    fn write_metrics_if_due(&mut self) {
        let Some(path) = self.config.metrics_file.clone() else {
            return;
        };
        if !self.metrics.dirty || self.metrics_due.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.metrics.dirty = false;
        self.metrics_due = Some(Instant::now() + Duration::from_secs(1));
        let now = SystemTime::now();
        let oldest = self
            .pending
            .values()
            .map(|p| p.id.mtime_ns)
            .min()
            .map(|ns| {
                let now_ns = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128);
                ((now_ns - ns).max(0) as f64) / 1e9
            });
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.config.agents.keys() {
            running.insert(a.clone(), self.load.get(a).copied().unwrap_or(0));
        }
        let totals = crate::context::recent(self.layout(), 1)
            .last()
            .map(|v| {
                let n = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
                (n("completed"), n("failed"))
            })
            .unwrap_or((0, 0));
        let snap = crate::metrics::Snapshot {
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
        };
        let path = if path.is_absolute() {
            path
        } else {
            self.layout().root.join(path)
        };
        if let Err(e) = fsx::write_atomic_readable(&path, self.metrics.render(&snap).as_bytes()) {
            warn!(file = %path.display(), error = %e, "cannot write the metrics file");
        }
    }

    /// Holds a task back briefly: its lock is held elsewhere or its writer
    /// still has it open.
    fn set_busy(&mut self, name: &str) {
        if let Some(p) = self.pending.get_mut(name) {
            p.hold = Some(SystemTime::now() + Duration::from_millis(250));
        }
        self.place(name);
    }

    fn recheck_waiting(&mut self) {
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
    fn has_runnable(&self) -> bool {
        if !self.unsettled.is_empty() || !self.rejects.is_empty() {
            return true;
        }
        // Paused: nothing more will start, so waiting would be forever.
        if !self.queue.is_empty() && !self.paused {
            return true;
        }
        if mailbox::count(self.layout(), State::Assigned) > self.running.len() {
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

    // ---- scanning -------------------------------------------------------

    fn full_scan(&mut self) {
        let layout = self.layout().clone();
        // The files are the truth: other supervisors' cooldowns, ours from
        // before a restart, and none for an agent whose file a person removed.
        self.cooldowns = mailbox::cooldowns(&layout, true)
            .into_iter()
            .filter_map(|c| Some((c.agent, (record::parse_ts(&c.until)?, c.message))))
            .collect();
        self.stateful = list_suffix(&layout.assigned, ".state.json");
        let rd = match std::fs::read_dir(&layout.pending) {
            Ok(rd) => rd,
            Err(e) => {
                error!(dir = %layout.pending.display(), error = %e, "cannot read tasks/pending");
                return;
            }
        };
        let mut seen = HashSet::new();
        let mut files: Vec<(String, &'static str)> = Vec::new();
        self.scanning = true;
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
                        files.push((name.to_owned(), if ext == "yml" { "yml" } else { "yaml" }));
                    } else {
                        debug!(
                            task = name,
                            "second file of the same name; handled after the first"
                        );
                    }
                }
            }
        }
        // Reading and parsing dominate a large scan (100,000 files at start-up):
        // spread them over the cores, then apply the results here, in order.
        // In chunks, so that the files read but not yet applied stay few.
        for part in files.chunks(4096) {
            let looks = self.look_all(part);
            for ((name, ext), look) in part.iter().zip(looks) {
                self.apply(name, ext, look);
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
        self.scanning = false;
        // Dependencies may have finished under other supervisors, or were
        // simply read after their dependants.
        self.replace_waiting();
    }

    fn examine_path(&mut self, p: &Path) {
        let l = self.layout();
        if p.parent() == Some(l.cancel.as_path()) || p.parent() == Some(l.control.as_path()) {
            self.control_dirty = true;
            return;
        }
        if p == l.root.join(crate::config::CONFIG_FILE) {
            self.reload_due = Some(Instant::now() + Duration::from_millis(300));
            return;
        }
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
        self.pending.remove(name);
        self.queue.remove(name);
        self.waiting.remove(name);
        self.unsettled.remove(name);
        self.rejects.remove(name);
        self.logged_waits.remove(name);
    }

    /// Reads and parses one pending file unless it is unchanged since last time.
    /// In a full scan, `stateful` (one readdir of `assigned/`) says which names
    /// have retry bookkeeping; otherwise the state file is looked up directly.
    fn examine(&mut self, name: &str, ext: &str, in_scan: bool) {
        let known = self
            .pending
            .get(name)
            .filter(|p| p.ext == ext)
            .map(|p| p.id);
        let has_state = self.has_state(name, in_scan);
        let look = look_guarded(self.layout(), &self.config, name, ext, known, has_state);
        self.apply(name, ext, look);
    }

    fn has_state(&self, name: &str, in_scan: bool) -> bool {
        if in_scan {
            self.stateful.contains(name)
        } else {
            mailbox::exists(&self.layout().state_file(name))
        }
    }

    /// [`look`] at many files, on every core when there are enough of them.
    fn look_all(&self, files: &[(String, &'static str)]) -> Vec<Look> {
        let (layout, config) = (self.layout(), &*self.config);
        let args = |n: &str, e: &str| {
            let known = self.pending.get(n).filter(|p| p.ext == e).map(|p| p.id);
            (known, self.has_state(n, true))
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if files.len() < 512 || threads < 2 {
            return files
                .iter()
                .map(|(n, e)| {
                    let (k, h) = args(n, e);
                    look_guarded(layout, config, n, e, k, h)
                })
                .collect();
        }
        let chunk = files.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    let part: Vec<(&str, &str, Option<FileId>, bool)> = part
                        .iter()
                        .map(|(n, e)| {
                            let (k, h) = args(n, e);
                            (n.as_str(), *e, k, h)
                        })
                        .collect();
                    sc.spawn(move || {
                        part.into_iter()
                            .map(|(n, e, k, h)| look_guarded(layout, config, n, e, k, h))
                            .collect::<Vec<Look>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("look_guarded does not panic"))
                .collect()
        })
    }

    /// Takes what [`look`] found into the pending set.
    fn apply(&mut self, name: &str, ext: &str, look: Look) {
        let fresh = match look {
            Look::Unchanged => return,
            Look::Gone => return self.forget(name),
            Look::Refused(e) => {
                // Links, FIFOs, directories, oversized files: refused at once.
                self.forget(name);
                let rec = mailbox::never_ran_record("invalid", format!("refused: {e}"));
                self.reject_pending(name, ext, rec, false);
                return;
            }
            Look::Read(f) => *f,
        };
        let Fresh {
            id,
            mut parsed,
            retry_at,
            excluded,
        } = fresh;
        let ext: &'static str = if ext == "yml" { "yml" } else { "yaml" };
        // Intern the route: most tasks share one.
        if let Ok(b) = &mut parsed
            && let Ok(r) = &mut b.route
        {
            *r = self
                .routes
                .entry((**r).clone())
                .or_insert_with(|| r.clone())
                .clone();
        }
        self.forget(name);
        self.pending.insert(
            name.to_owned(),
            Pending {
                ext,
                id,
                parsed,
                seen: Instant::now(),
                retry_at,
                excluded,
                hold: None,
            },
        );
        self.place(name);
    }

    /// Puts a known pending task where it belongs: the run queue, the tasks
    /// waiting for dependencies, the unsettled files, or the rejects.
    fn place(&mut self, name: &str) {
        enum To {
            Unsettled,
            Queue(Item),
            Wait(String),
            Reject(Box<ResultRecord>),
        }
        let Some(p) = self.pending.get(name) else {
            return;
        };
        let to = match &p.parsed {
            Err(_) => To::Unsettled,
            Ok(b) => match self.deps_state(&b.after) {
                Deps::Failed(why) => {
                    To::Reject(Box::new(mailbox::never_ran_record("dependency", why)))
                }
                Deps::Wait(why) => To::Wait(why),
                Deps::Ready => match &b.route {
                    Err(why) => {
                        To::Reject(Box::new(mailbox::never_ran_record("invalid", why.clone())))
                    }
                    Ok(route) => To::Queue(Item {
                        name: name.into(),
                        priority: b.priority,
                        submitted_ns: p.id.mtime_ns,
                        not_before: b
                            .not_before
                            .into_iter()
                            .chain(p.retry_at)
                            .chain(p.hold)
                            .max(),
                        route: route.clone(),
                    }),
                },
            },
        };
        self.queue.remove(name);
        self.waiting.remove(name);
        self.unsettled.remove(name);
        match to {
            To::Unsettled => {
                self.unsettled.insert(name.to_owned());
            }
            To::Queue(item) => {
                self.logged_waits.remove(name);
                self.queue.insert(item);
            }
            To::Reject(rec) => {
                self.rejects.insert(name.to_owned(), *rec);
            }
            To::Wait(why) => {
                if let Some(cycle) = self.cycle_through(name) {
                    let text = cycle.join(" -> ");
                    for n in &cycle[..cycle.len() - 1] {
                        self.queue.remove(n);
                        self.waiting.remove(n);
                        self.rejects.insert(
                            n.clone(),
                            mailbox::never_ran_record(
                                "dependency",
                                format!("dependency cycle: {text}"),
                            ),
                        );
                    }
                    return;
                }
                // During a scan, dependencies may simply not be read yet.
                if !self.scanning && self.logged_waits.insert(name.to_owned()) {
                    info!(task = %name, "{why}");
                }
                self.waiting.insert(name.to_owned());
            }
        }
    }

    /// A cycle of `after` links among pending tasks that passes through
    /// `start`, as the names along it (first name repeated at the end).
    fn cycle_through(&self, start: &str) -> Option<Vec<String>> {
        fn deps<'a>(s: &'a Supervisor, n: &str) -> &'a [String] {
            match s.pending.get(n).map(|p| &p.parsed) {
                Some(Ok(b)) => &b.after,
                _ => &[],
            }
        }
        // Depth-first search over pending tasks, with the path kept.
        let mut path: Vec<(String, usize)> = vec![(start.to_owned(), 0)];
        let mut done: HashSet<String> = HashSet::new();
        while let Some((node, i)) = path.last().cloned() {
            let ds = deps(self, &node);
            if i >= ds.len() {
                done.insert(node);
                path.pop();
                continue;
            }
            path.last_mut().expect("path is not empty").1 += 1;
            let d = &ds[i];
            if d == start {
                let mut c: Vec<String> = path.iter().map(|(n, _)| n.clone()).collect();
                c.push(start.to_owned());
                return Some(c);
            }
            if self.pending.contains_key(d)
                && !done.contains(d)
                && !path.iter().any(|(n, _)| n == d)
            {
                path.push((d.clone(), 0));
            }
        }
        None
    }

    /// Places again every task that waits for a dependency.
    fn replace_waiting(&mut self) {
        let names: Vec<String> = self.waiting.iter().cloned().collect();
        for n in names {
            self.place(&n);
        }
    }

    // ---- scheduling -----------------------------------------------------

    /// Files away what can never run, then claims and starts as many tasks
    /// as capacity allows, in queue order.
    fn schedule(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        // Files that still do not parse after `settle` and are not being written.
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
                let file =
                    self.layout()
                        .rel(&self.layout().task_file(State::Pending, &name, p.ext));
                let mut rec = mailbox::never_ran_record("invalid", e.display_at(&file));
                rec.error_location = Some(ErrorLocation {
                    file,
                    line: e.line,
                    column: e.column,
                });
                self.unsettled.remove(&name);
                self.rejects.insert(name, rec);
            }
        }
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
        while !self.paused && self.running.len() < self.config.concurrency {
            let (config, load, cooldowns) = (&self.config, &self.load, &self.cooldowns);
            let paused = &self.paused_agents;
            let avail = |a: &str| match config.agents.get(a) {
                None => Avail::Unavailable,
                Some(_) if cooldowns.contains_key(a) => Avail::Unavailable,
                // A paused agent is waited for, like a busy one (no fallback).
                Some(_) if paused.contains(a) => Avail::Busy,
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
            self.start(&name, &agent);
        }
    }

    fn deps_state(&self, after: &[String]) -> Deps {
        // A failed dependency anywhere decides, before any wait.
        let failed = |d: &String| {
            self.layout().find(State::Completed, d).is_none()
                && self.layout().find(State::Failed, d).is_some()
        };
        if let Some(d) = after.iter().find(|d| failed(d)) {
            return Deps::Failed(format!("dependency {d} failed"));
        }
        for d in after {
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

    /// Takes a task's lock; when another process holds it (or it cannot be
    /// created), holds the task back briefly instead.
    fn lock_or_hold(&mut self, name: &str) -> Option<TaskLock> {
        match TaskLock::try_acquire(self.layout(), name) {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                self.set_busy(name);
                None
            }
            Err(e) => {
                error!(task = name, error = %e, "cannot lock the task");
                self.set_busy(name);
                None
            }
        }
    }

    /// Files a pending task straight into `failed/`, under its lock.
    fn reject_pending(&mut self, name: &str, ext: &str, rec: ResultRecord, rename: bool) {
        let Some(lock) = self.lock_or_hold(name) else {
            return;
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
                    && let Err(e) =
                        crate::context::merge(&layout, &rec, None, Some(self.pending.len()))
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

    /// Claims one task and starts its run on `agent`.
    fn start(&mut self, name: &str, agent_name: &str) {
        let layout = self.layout().clone();
        let Some(p) = self.pending.get(name) else {
            return;
        };
        let ext = p.ext.to_owned();
        let path = layout.task_file(State::Pending, name, &ext);
        // A naive writer may still have the file open: not yet.
        if fsx::open_for_writing_elsewhere(&path) == Some(true) {
            self.set_busy(name);
            return;
        }
        let Some(lock) = self.lock_or_hold(name) else {
            return;
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
        // Agents ruled out for this task (fallbacks) go with it into the run.
        let excluded = self
            .pending
            .get(name)
            .map(|p| p.excluded.clone())
            .unwrap_or_default();
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
        let (route, reason) = match crate::routing::route(&self.config, &task, &excluded) {
            Ok(r) => r,
            Err(why) => {
                let rec = mailbox::never_ran_record("invalid", why);
                self.reject_locked(State::Assigned, name, &ext, rec, false, lock);
                return;
            }
        };
        // The file may have changed since it was queued: keep the agent the
        // queue chose only if it is still a candidate.
        let chosen = if route.agents.iter().any(|a| a == agent_name) {
            agent_name
        } else {
            &route.agents[0]
        };
        let agent = self.config.agents[chosen].clone();
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
            alternatives: route.agents.len() > 1,
            reason,
            limits: self.limits.clone(),
            ws: None,
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
                && (st.committing.as_deref() == Some(rec.run_id.as_str())
                    || st.run.as_ref().and_then(|r| r.run_id.as_deref())
                        == Some(rec.run_id.as_str()))
                && rec.task == name
            {
                let (out, cut) = crate::context::read_output(&layout.run_dir(dest, name));
                let output = rec.agent.as_ref().map(|_| (out.as_str(), cut));
                let res = crate::context::merge(&layout, &rec, output, None)
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
                        crate::context::merge(&layout, &rec, None, None)?;
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
        let grace = self
            .config
            .agents
            .get(&run.agent)
            .map(|a| a.grace)
            .unwrap_or(Duration::from_secs(10));
        for (pgid, start) in runner::find_agent_groups(&self.ctx.layout.root, name) {
            if self.stopping_agents.insert((pgid, start)) {
                warn!(task = name, pgid, "stopping an agent whose supervisor died");
                std::thread::spawn(move || runner::kill_orphan_group(pgid, grace));
            }
        }
    }
}

enum Deps {
    Ready,
    Wait(String),
    Failed(String),
}

/// What a look at one pending file found.
enum Look {
    Gone,
    /// Same file as last time (device, inode, size, modification time).
    Unchanged,
    /// Not a regular file, a link, too large: refused without parsing.
    Refused(String),
    Read(Box<Fresh>),
}

/// A pending file just read, reduced to what scheduling keeps.
struct Fresh {
    id: FileId,
    parsed: Result<Brief, Box<TaskError>>,
    retry_at: Option<SystemTime>,
    excluded: Vec<String>,
}

/// [`look`], with a panic in the parser turned into a refusal of that one
/// file, so that neither the loop nor the other files of a scan suffer.
fn look_guarded(
    layout: &Layout,
    config: &Config,
    name: &str,
    ext: &str,
    known: Option<FileId>,
    has_state: bool,
) -> Look {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        look(layout, config, name, ext, known, has_state)
    }))
    .unwrap_or_else(|_| {
        error!(
            task = name,
            "internal error while reading the task file; refusing it"
        );
        Look::Refused("mailroom could not parse it (internal error; please report)".into())
    })
}

/// Reads and parses `pending/<name>.<ext>` unless it is `known` (unchanged),
/// and reduces it to its [`Brief`] at once, so that a scan of 100,000 files
/// never holds their descriptions. `has_state`: the task has retry
/// bookkeeping in `assigned/`. No supervisor state: safe on several threads.
fn look(
    layout: &Layout,
    config: &Config,
    name: &str,
    ext: &str,
    known: Option<FileId>,
    has_state: bool,
) -> Look {
    let path = layout.task_file(State::Pending, name, ext);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(_) => return Look::Gone,
    };
    let id = FileId::of(&meta);
    if known == Some(id) {
        return Look::Unchanged;
    }
    let modified = meta.modified().unwrap_or(SystemTime::now());
    let me = nix::unistd::geteuid().as_raw();
    if !config.shared && id.uid != me {
        return Look::Refused(
            ReadError::ForeignOwner { owner: id.uid, me }.to_string()
                + " (set `shared: true` in mailroom.yaml to accept other users' tasks)",
        );
    }
    let parsed = match fsx::read_task_file(&path, config.max_task_bytes) {
        Ok((bytes, _)) => task::parse(name, &bytes),
        Err(e) if e.is_gone() => return Look::Gone,
        Err(e @ (ReadError::Io(_) | ReadError::ForeignOwner { .. })) => {
            warn!(task = name, error = %e, "cannot read task file");
            Err(TaskError {
                line: None,
                column: None,
                message: format!("cannot read the file: {e}"),
                key: None,
            })
        }
        Err(e) => return Look::Refused(e.to_string()),
    };
    let (retry_at, excluded, children) = if has_state {
        let st = mailbox::read_state(layout, name);
        (
            st.not_before.as_deref().and_then(record::parse_ts),
            st.excluded_agents,
            st.children,
        )
    } else {
        (None, Vec::new(), Vec::new())
    };
    let parsed = match parsed {
        Ok(t) => {
            // `delay` counts from the file's own time, not from when we read it.
            let not_before = match t.delay {
                Some(d) => Some(modified + d),
                None => t.not_before,
            };
            let route = crate::routing::route(config, &t, &excluded).map(|(r, _)| Arc::new(r));
            // A parent of expanded subtasks waits for its children.
            let mut after = t.after;
            for c in children {
                if !after.contains(&c) {
                    after.push(c);
                }
            }
            Ok(Brief {
                priority: t.priority,
                not_before,
                after: after.into_boxed_slice(),
                route,
            })
        }
        Err(e) => Err(Box::new(e)),
    };
    Look::Read(Box::new(Fresh {
        id,
        parsed,
        retry_at,
        excluded,
    }))
}

/// Each agent's usage-limit patterns: its kind's preset plus its own.
fn compile_limits(c: &Config) -> HashMap<String, LimitPatterns> {
    c.agents
        .values()
        .map(|a| {
            let p = LimitPatterns::preset(&a.kind);
            // The config loader already checked that these compile.
            let p = p.clone().with_extra(&a.limit_patterns).unwrap_or(p);
            (a.name.clone(), p)
        })
        .collect()
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
    /// Whether other agents could take the task if this one is ruled out.
    alternatives: bool,
    /// Why this agent (for the record and `show`).
    reason: String,
    limits: Arc<HashMap<String, LimitPatterns>>,
    /// The run's workspace, once set up.
    ws: Option<WorkspaceRun>,
    lock: TaskLock,
}

/// Where a run works, for the record and the clean-up at its commit.
#[derive(Debug, Clone)]
struct WorkspaceRun {
    kind: crate::workspace::Kind,
    /// The worktree, or the shared workdir.
    path: PathBuf,
    branch: Option<String>,
    base: Option<String>,
    cleanup: crate::workspace::Cleanup,
    /// `$MAILROOM_RESULT`.
    result_file: PathBuf,
}

impl Job {
    /// Runs the agent and commits the outcome.
    async fn run(mut self, stop: watch::Receiver<Option<Stop>>) -> JobEnd {
        let layout = &self.ctx.layout;
        let name = self.name.clone();
        let timeout = self.task.timeout.unwrap_or(self.agent.timeout);
        let started = SystemTime::now();
        let mut st = mailbox::read_state(layout, &name);
        st.task = name.clone();
        // A parent of subtasks runs no agent: it expands, waits, completes.
        if !st.children.is_empty() {
            return self.complete_parent(st).await;
        }
        if !self.task.subtasks.is_empty() {
            return self.expand(st).await;
        }
        st.attempts += 1;
        st.not_before = None;
        st.run = Some(RunInfo {
            attempt: st.attempts,
            agent: self.agent.name.clone(),
            host: self.ctx.host.clone(),
            supervisor_pid: self.ctx.self_pid,
            supervisor_start: self.ctx.self_start,
            started_at: record::ts(started),
            deadline: record::ts(started.checked_add(timeout).unwrap_or(started)),
            reason: Some(self.reason.clone()),
            run_id: Some(mailbox::run_id()),
        });
        let run_dir = layout.run_dir(State::Assigned, &name);
        let prep = (|| -> std::io::Result<()> {
            mailbox::write_state(layout, &st)?;
            fsx::remove_dir_all_if_exists(&run_dir)?;
            fsx::create_dir_all(&run_dir.join("outbox"))?;
            Ok(())
        })();
        if let Err(e) = prep {
            // Could not even prepare (disk full, unwritable tree): put it back;
            // the attempt does not count (counts never go down).
            error!(task = %name, error = %e, "cannot prepare the run; requeueing");
            st.free_attempts += 1;
            st.run = None;
            st.last_error = Some(format!("cannot prepare the run: {e}"));
            st.not_before = Some(record::ts(SystemTime::now() + self.config.retry_delay));
            return self.requeue_or_keep(st).await;
        }
        let prompt = match crate::prompt::render(layout, &self.config, &self.agent, &self.task) {
            Ok(p) => p,
            Err(msg) => return self.fail_now(st, "invalid", msg, started).await,
        };
        if let Err(e) = std::fs::write(run_dir.join("prompt.md"), prompt.as_bytes()) {
            warn!(task = %name, error = %e, "cannot keep a copy of the prompt");
        }
        let workdir = match self.workdir() {
            Ok(w) => w,
            Err(msg) => {
                return self.fail_now(st, "invalid", msg, started).await;
            }
        };
        // A worktree of its own, or the shared workdir.
        let kind = self.task.workspace.unwrap_or(self.agent.workspace);
        let result_file = run_dir.join("result.yaml");
        let workdir = match kind {
            crate::workspace::Kind::Shared => {
                self.ws = Some(WorkspaceRun {
                    kind,
                    path: workdir.clone(),
                    branch: None,
                    base: None,
                    cleanup: self.config.worktree_cleanup,
                    result_file: result_file.clone(),
                });
                workdir
            }
            crate::workspace::Kind::Worktree => {
                let dir = layout.root.join(&self.config.worktrees_dir);
                let (w, n) = (workdir.clone(), name.clone());
                let made =
                    tokio::task::spawn_blocking(move || crate::workspace::create(&w, &dir, &n))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                match made {
                    Ok((path, branch, base, cwd)) => {
                        info!(task = %name, branch = %branch, "worktree ready");
                        self.ws = Some(WorkspaceRun {
                            kind,
                            path: path.clone(),
                            branch: Some(branch),
                            base: Some(base),
                            cleanup: self.config.worktree_cleanup,
                            result_file: result_file.clone(),
                        });
                        cwd
                    }
                    Err(msg) => return self.fail_now(st, "invalid", msg, started).await,
                }
            }
        };
        let vars = runner::Vars {
            prompt,
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
            ("MAILROOM_OUTBOX".into(), path_str(&run_dir.join("outbox"))),
            ("MAILROOM_RESULT".into(), path_str(&result_file)),
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
            output: Some(run_dir.join("output.md")),
            timeout,
            grace: self.agent.grace,
            stdin: self.lock.share().ok(),
            inherit: self.config.env.clone(),
            max_output: self.config.max_output_bytes,
        };
        let mut spec = spec;
        let end = match runner::spawn(&mut spec, &layout.root) {
            Ok(started_child) => {
                info!(task = %name, agent = %self.agent.name, attempt = st.attempts, pid = started_child.pid, "spawned");
                runner::wait(started_child, &spec, stop).await
            }
            Err(end) => end,
        };
        self.finish(st, end, started).await
    }

    /// Whether the run's outbox breaks the limits against runaway spawning.
    fn runaway(&self) -> Option<String> {
        let outbox = self
            .ctx
            .layout
            .run_dir(State::Assigned, &self.name)
            .join("outbox");
        let n = crate::followups::outbox_files(&outbox).len();
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
        let (root, depth) = crate::followups::tree_root(&self.ctx.layout, &self.name, max);
        if depth + 1 > max {
            return Some(format!(
                "its follow-ups would sit {} levels below the first task of their tree; \
                 the limit is {max} (max_tree_depth); none were queued",
                depth + 1
            ));
        }
        crate::followups::count_into_tree(&self.ctx.layout, &root, n, self.config.max_tree_tasks)
            .err()
    }

    /// First claim of a task with `subtasks`: write the children into
    /// `pending/`, then put the task back to wait for them.
    async fn expand(self, mut st: TaskState) -> JobEnd {
        let layout = self.ctx.layout.clone();
        let (name, subtasks) = (self.name.clone(), self.task.subtasks.clone());
        let sequential = self.config.subtask_order == crate::config::SubtaskOrder::Sequential;
        let res = tokio::task::spawn_blocking(move || {
            crate::followups::expand(&layout, &name, &subtasks, sequential)
        })
        .await;
        match res {
            Ok(Ok(children)) => {
                info!(task = %self.name, children = children.len(), "expanded subtasks; waiting for them");
                st.children = children;
                self.requeue_or_keep(st).await
            }
            Ok(Err(e)) => {
                let msg = format!("cannot expand its subtasks: {e}");
                self.fail_now(st, "invalid", msg, SystemTime::now()).await
            }
            Err(_) => JobEnd::Stuck,
        }
    }

    /// A parent whose children have all completed (the queue held it until
    /// then): it completes without an agent.
    async fn complete_parent(self, st: TaskState) -> JobEnd {
        let now = SystemTime::now();
        let mut rec = base_record(&self.ctx, &self.name, Status::Completed, "success", &st);
        rec.children = st.children.clone();
        rec.summary = Some(format!("all {} subtasks completed", st.children.len()));
        rec.started_at = Some(record::ts(now));
        rec.finished_at = record::ts(now);
        let mut st = st;
        st.committing = Some(rec.run_id.clone());
        self.commit(st, rec).await
    }

    /// Looks for a usage-limit message in the run's stdout and stderr.
    fn detect_limit(&self) -> Option<crate::limits::Limit> {
        let patterns = self.limits.get(&self.agent.name)?;
        let dir = self.ctx.layout.run_dir(State::Assigned, &self.name);
        // The CLIs print limits on stdout or stderr; `output.md` is the
        // agent's own prose and would only bring false alarms.
        ["stderr.log", "stdout.log"].iter().find_map(|f| {
            let (b, _) = fsx::read_tail(&dir.join(f), 64 * 1024).ok()?;
            crate::limits::detect(
                patterns,
                &String::from_utf8_lossy(&b),
                SystemTime::now(),
                None,
            )
        })
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
            RunEnd::Cancelled(e) => (
                "cancelled",
                Some(*e),
                Some("cancelled by `mailroom cancel`".into()),
            ),
            RunEnd::SpawnFailed { error, .. } => ("spawn", None, Some(error.clone())),
        };
        let run = st.run.take();
        let run_id = run.as_ref().and_then(|r| r.run_id.clone());
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
        // A successful run that queued too many follow-ups, or too deep a
        // tree, is a failure of its own kind (not retried).
        let (outcome, error) = match (outcome, error) {
            ("success", None) => match self.runaway() {
                Some(why) => ("runaway", Some(why)),
                None => ("success", None),
            },
            other => other,
        };
        if outcome == "runaway" {
            if let Some(a) = st.history.last_mut() {
                a.outcome = "runaway".into();
                a.error = error.clone();
            }
            st.last_error = error.clone();
        }
        // A usage limit, whatever the exit code (claude prints some with exit 0).
        // Limited attempts are free, but only so many per task: output that
        // merely looks like a limit message must not rerun a task forever.
        let limited_before = st.history.iter().filter(|a| a.outcome == "limited").count();
        if outcome != "spawn"
            && outcome != "cancelled"
            && limited_before < MAX_FREE_LIMITED
            && let Some(limit) = self.detect_limit()
        {
            let until = limit
                .until
                .unwrap_or_else(|| SystemTime::now() + self.agent.cooldown);
            let msg = format!(
                "agent {} hit a usage limit ({}); cooling down until {}",
                self.agent.name,
                limit.message,
                record::ts(until)
            );
            if let Some(a) = st.history.last_mut() {
                a.outcome = "limited".into();
                a.error = Some(msg.clone());
            }
            st.last_error = Some(msg);
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
            return match self.requeue_or_keep(st).await {
                JobEnd::Requeued => JobEnd::Limited {
                    until,
                    message: limit.message,
                },
                other => other,
            };
        }
        // An agent that cannot be started, or has failed this task
        // `fallback_after` times, hands it to the next agent of its route.
        if self.alternatives
            && outcome != "success"
            && outcome != "cancelled"
            && outcome != "runaway"
        {
            let fails = st
                .history
                .iter()
                .filter(|a| {
                    a.agent == self.agent.name
                        && a.outcome != "interrupted"
                        && a.outcome != "limited"
                })
                .count() as u32;
            if outcome == "spawn" || fails >= self.agent.fallback_after {
                if !st.excluded_agents.contains(&self.agent.name) {
                    st.excluded_agents.push(self.agent.name.clone());
                }
                if outcome == "spawn" {
                    st.free_attempts += 1;
                }
                if outcome == "spawn" || st.charged() <= retries {
                    warn!(
                        task = %self.name,
                        agent = %self.agent.name,
                        error = error.as_deref().unwrap_or(""),
                        "handing the task to a fallback agent"
                    );
                    return self.requeue_or_keep(st).await;
                }
            }
        }
        if outcome == "interrupted" {
            st.free_attempts += 1;
            info!(task = %self.name, "stopped by shutdown; requeued without using an attempt");
            return self.requeue_or_keep(st).await;
        }
        if outcome != "success"
            && outcome != "spawn"
            && outcome != "runaway"
            && outcome != "cancelled"
            && st.charged() <= retries
        {
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
        self.commit(st, rec).await
    }

    async fn fail_now(
        self,
        mut st: TaskState,
        outcome: &str,
        msg: String,
        started: SystemTime,
    ) -> JobEnd {
        let run_id = st.run.take().and_then(|r| r.run_id);
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
        rec.agent_reason = Some(self.reason.clone());
        rec.error = Some(msg);
        rec.started_at = Some(record::ts(started));
        if let Some(id) = run_id {
            rec.run_id = id;
        }
        self.commit(st, rec).await
    }

    /// Record, context merge, then the move out of `assigned/`.
    async fn commit(self, st: TaskState, mut rec: ResultRecord) -> JobEnd {
        let status = rec.status;
        let outcome = rec.outcome.clone();
        let secs = rec.duration_ms.map(|ms| ms as f64 / 1000.0);
        let Job {
            ctx,
            name,
            ext,
            lock,
            ws,
            ..
        } = self;
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let layout = &ctx.layout;
            if let Some(ws) = ws {
                rec.workspace = Some(workspace_report(&ws, rec.status, &layout.root));
            }
            // The state file on disk already names this run's run_id (written
            // before the spawn); a commit made without a run (a parent of
            // subtasks) names its record in `committing` and writes it now.
            if st.committing.is_some() {
                mailbox::write_state(layout, &st)?;
            }
            let dest = match rec.status {
                Status::Completed => State::Completed,
                Status::Failed => State::Failed,
            };
            rec.run_dir = Some(layout.rel(&layout.run_dir(dest, &name)));
            rec.output_file = Some(layout.rel(&layout.output_file(&name)));
            // The transactional outbox: follow-ups go to pending/ only on
            // success (before the record, which lists them); on failure they
            // stay in the run directory and the record names them.
            let outbox = layout.run_dir(State::Assigned, &name).join("outbox");
            match rec.status {
                Status::Completed => {
                    rec.followups = crate::followups::queue_outbox(layout, &name, &outbox)?
                }
                Status::Failed => rec.withheld_followups = crate::followups::outbox_files(&outbox),
            }
            let (out, cut) = crate::context::read_output(&layout.run_dir(State::Assigned, &name));
            rec.summary = crate::context::summary(&out);
            mailbox::prepare_commit(layout, &rec)?;
            let hint = ctx.pending_count.load(std::sync::atomic::Ordering::Relaxed);
            crate::context::merge(layout, &rec, Some((&out, cut)), Some(hint))?;
            mailbox::finish_commit(layout, &name, &ext, dest)?;
            // A cancel request is answered by the commit, whatever its outcome.
            let _ = std::fs::remove_file(layout.cancel_file(&name));
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
            Ok(Ok(())) => JobEnd::Done(status, outcome, secs),
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

/// What the record says of a run's workspace; a worktree is removed (its
/// branch kept) as `worktree_cleanup` says.
fn workspace_report(ws: &WorkspaceRun, status: Status, root: &Path) -> crate::workspace::Report {
    use crate::workspace::{Cleanup, Kind};
    match ws.kind {
        Kind::Shared => crate::workspace::shared_report(&ws.result_file, &ws.path, root),
        Kind::Worktree => {
            let files = crate::workspace::changed_in_worktree(
                &ws.path,
                ws.base.as_deref().unwrap_or("HEAD"),
            );
            let remove = match ws.cleanup {
                Cleanup::Keep => false,
                Cleanup::OnSuccess => status == Status::Completed,
                Cleanup::Always => true,
            };
            crate::workspace::Report {
                kind: "worktree".into(),
                branch: ws.branch.clone(),
                path: Some(ws.path.to_string_lossy().into_owned()),
                base: ws.base.clone(),
                files_modified: files,
                source: "git".into(),
                removed: Some(remove && crate::workspace::remove(&ws.path)),
            }
        }
    }
}

/// Usage-limit hits per task that do not use up an attempt.
const MAX_FREE_LIMITED: usize = 8;

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
