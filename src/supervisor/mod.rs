//! The supervisor: one owner of the mutable state, fed by a closed set of
//! events (file hints, run finished, control requests, timers) in one
//! `select!` loop. It scans `pending/`, claims what may run, hands each claim
//! to a run task, and recovers orphans left in `assigned/`.

mod adopt;
mod budget;
mod claim;
mod commit;
mod control;
mod filing;
mod hooks;
mod job;
mod main_loop;
mod peers;
mod place;
mod recover;
mod scan;
mod session;
pub mod verdict;
mod workdirs;

use commit::*;
use control::*;
use filing::*;
use job::*;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::model::Outcome;
use crate::model::record::{
    self, Attempt, ErrorLocation, ResultRecord, RunInfo, Status, TaskState,
};
use crate::ops::watcher::{Hints, Watch};
use crate::parse::config::{Config, WatchMode};
use crate::parse::task::{self, Entry, Task, TaskError};
use crate::run::limits::LimitPatterns;
use crate::run::process::{self as runner, RunEnd, Stop};
use crate::sched::queue::{Avail, Item, Queue};
use crate::tree::books;
use crate::tree::fsx::{self, FileId, ReadError};
use crate::tree::layout::{Layout, State};
use crate::tree::lock::TaskLock;
use crate::tree::moves::{self, Claim};

/// Requests from outside the loop (signals, in main.rs; tests send them directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM/SIGINT: stop claiming, let agents finish within the grace
    /// period, then stop them and requeue. A second one stops at once.
    /// `from`: who sent it, when the kernel told and it is this user's.
    Shutdown { from: Option<SignalSender> },
    /// SIGHUP: reload `mailroom.yaml`.
    Reload,
}

/// The sender of a signal, looked at as the signal arrived (a sender that
/// exits at once, as `kill` does, leaves its pid to be reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalSender {
    pub pid: u32,
    /// Its `MAILROOM_ROOT` and `MAILROOM_TASK`: set when it is an agent's.
    pub root: Option<String>,
    pub task: Option<String>,
}

impl SignalSender {
    /// Process `pid` (of this user), as it is now.
    /// A sender that cleared its environment (`env -i`) or left its
    /// session is still a descendant of the agent or of its keeper (which
    /// keeps every descendant as a subreaper): its nearest ancestor with a
    /// `MAILROOM_TASK` speaks for it, up to this process.
    pub fn of(pid: u32) -> SignalSender {
        let me = std::process::id();
        let mut cur = pid;
        for _ in 0..64 {
            let env = crate::tree::books::proc_environ(cur).unwrap_or_default();
            let get = |k: &str| env.iter().find_map(|(n, v)| (n == k).then(|| v.clone()));
            if let (Some(root), Some(task)) = (get("MAILROOM_ROOT"), get("MAILROOM_TASK")) {
                return SignalSender {
                    pid,
                    root: Some(root),
                    task: Some(task),
                };
            }
            match crate::tree::books::proc_ppid(cur) {
                Some(p) if p > 1 && p != me && p != cur => cur = p,
                _ => break,
            }
        }
        SignalSender {
            pid,
            root: None,
            task: None,
        }
    }
}

/// Options of one `mailroom run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once nothing is pending (that can ever run) and nothing is running.
    pub exit_when_idle: bool,
    /// systemd's notify socket, when run as a `Type=notify` service.
    pub notifier: Option<Arc<crate::ops::sdnotify::Notifier>>,
}

/// What the loop reports when it returns.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub completed: u64,
    pub failed: u64,
    pub requeued: u64,
}

/// Every input of the loop.
enum Event {
    /// A run task ended (sent by the job itself).
    Finished {
        name: String,
        /// Which run: a name can be claimed again before its last run's event arrives.
        run: u64,
        agent: String,
        end: JobEnd,
    },
    /// The watcher has paths (or a rescan request) in the shared hints.
    Hints,
    /// A request from outside (signals, tests).
    Control(Control),
    /// The control channel's sender went away.
    ControlClosed,
    /// The next deadline came: rescan, settle, backoff, cooldown, grace.
    Timer,
    /// Time to tell systemd's watchdog the loop turns.
    Watchdog,
    /// Another supervisor of this tree on this host ended (`peers.rs`).
    PeerGone { id: (u32, u64) },
}

/// Where a run left its task.
#[derive(Debug, Clone, PartialEq)]
enum JobEnd {
    /// Filed in completed/ or failed/, with the outcome and the run's length.
    Done(Status, Outcome, Option<f64>),
    /// Back in `pending/` for another attempt, with the outcome of the one
    /// that ended (None: a run recovery found without an outcome).
    Requeued(Option<Outcome>),
    /// The agent hit a usage limit: it cools down, the task went back to `pending/`.
    Limited { until: SystemTime, message: String },
    /// The commit could not be written; the task stays in `assigned/` for recovery.
    Stuck,
    /// The run could not even be prepared (a full or unwritable tree): the
    /// task went back to `pending/` (`requeued`), or stays in `assigned/`
    /// for recovery. No new claims for a while: the next would fail alike.
    /// `tree_wide`: the error is the tree's or the system's (no space, a
    /// read-only file system, no descriptors), not this task's alone.
    Unprepared {
        requeued: bool,
        error: String,
        tree_wide: bool,
    },
}

/// What scheduling keeps of a parsed pending task. The file itself is read
/// again when it is claimed, so nothing else (the description above all) is
/// held in memory for a queue of 100,000 tasks.
struct Brief {
    priority: task::Priority,
    not_before: Option<SystemTime>,
    after: Box<[String]>,
    /// Candidate agents (interned: most tasks share a route), or why none.
    route: Result<Arc<crate::sched::queue::Route>, String>,
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
    /// This binary: the `{mailroom}` placeholder.
    exe: String,
    /// What starts a run's keeper (`mailroom-keeper` or `mailroom keeper`),
    /// chosen once at start.
    keeper: crate::run::keeper_program::KeeperProgram,
    /// Forks keepers without an exec, when the keeper is the small binary
    /// (see `run::launcher`).
    launcher: Option<crate::run::launcher::Launcher>,
    /// Runs in shared workdirs, for `files_modified_exact`.
    workdirs: Arc<workdirs::Workdirs>,
    /// What the runs of this supervisor used, by agent, as their CLIs
    /// reported it (every attempt, requeued ones too): for the metrics.
    usage: std::sync::Mutex<BTreeMap<String, crate::adapter::Usage>>,
    /// The running task whose agent sent the shutdown, and the sender's pid:
    /// its run's requeue is not free (an agent must not buy itself endless
    /// attempts by stopping its supervisor).
    shutdown_by: std::sync::Mutex<Option<(String, u32)>>,
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
    /// A pending file left unclaimed while tasks wait: they are placed again
    /// at the end of the scheduling pass (see `schedule`, `forget`).
    name_freed: bool,
    /// Agents cooling down after a usage limit: until when, and why.
    cooldowns: HashMap<String, (SystemTime, String)>,
    /// What agents spent (from `context/completed_tasks.jsonl`).
    ledger: crate::tree::budget::Ledger,
    /// Agents whose daily budget is used up: until the next UTC day, and why.
    over_budget: HashMap<String, (SystemTime, String)>,
    /// Each agent's compiled usage-limit patterns.
    limits: Arc<HashMap<String, LimitPatterns>>,
    /// Interned routes: one allocation per distinct route, not per task.
    routes: HashMap<crate::sched::queue::Route, Arc<crate::sched::queue::Route>>,
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
    /// The last claim error said of each pending task (said once each).
    claim_errors: HashMap<String, String>,
    next_run: u64,
    swept: bool,
    /// Orphaned agents' process groups being stopped (pgid, leader start time),
    /// so each gets one stopper.
    stopping_agents: HashSet<(u32, u64)>,
    /// Tasks whose file left `assigned/` during a run, with no copy to put
    /// back: said once.
    unrecoverable: HashSet<String>,
    /// Whether shutdown has already told the agents to stop.
    stop_sent: bool,
    /// Inside a full scan (not every file is read yet).
    scanning: bool,
    /// `tasks/control/pause` exists: no new claims.
    paused: bool,
    /// The last error writing the metrics file, said once.
    metrics_error: Option<String>,
    /// What `run --exit-when-idle` last said it waits for (said when it
    /// changes).
    idle_wait_told: Option<String>,
    /// No new claims until then (and when that is, for people), because a
    /// run could not be prepared: why.
    claims_held: Option<(Instant, SystemTime, String)>,
    /// Runs that could not be prepared in a row (the hold doubles).
    unprepared_streak: u32,
    /// Agents with a `tasks/control/pause.<agent>` file.
    paused_agents: HashSet<String>,
    /// Runs told to stop for a `cancel` marker (so each is told once).
    cancelling: HashSet<String>,
    /// The control files may have changed.
    control_dirty: bool,
    /// `mailroom.yaml` changed: reload at this instant (edits come in bursts).
    reload_due: Option<Instant>,
    /// A recovery pass sooner than the next rescan: once orphaned agents
    /// that recovery began to stop have had their grace.
    recover_due: Option<Instant>,
    /// The other supervisors of this tree on this host (pid, start time),
    /// each watched by a task of its own (`peers.rs`).
    peers: HashSet<(u32, u64)>,
    /// Heartbeat files (by pid) that named no peer, and when they were read.
    peer_misses: HashMap<u32, Instant>,
    /// Pids whose heartbeat the watcher saw written, not watched yet (read
    /// first at the next look, before other new names).
    peers_hinted: Vec<u32>,
    /// A look for peers is wanted (a hint, or a full rescan of the tree).
    peers_look_wanted: bool,
    /// The next look for peers that a hint may bring on.
    peers_look_due: Instant,
    /// A recovery pass for a peer's death, due at this instant.
    peer_pass_due: Option<Instant>,
    /// When the last such pass ran.
    peer_pass_last: Option<Instant>,
    /// Names to look at again in `pending/` at the given time: files that
    /// were to be filed away (rejected) while another process held their
    /// lock (`mailroom retry` moving a file back still does, for a moment).
    reexamine: BTreeMap<String, Instant>,
    /// `run --agents`: max_instances overrides, applied to every reload too.
    agent_limits: Vec<(String, usize)>,
    /// Counters for the Prometheus textfile.
    metrics: crate::ops::metrics::Metrics,
    /// When the metrics file may be written next (at most once a second).
    metrics_due: Option<Instant>,
    /// When this supervisor's heartbeat in `tasks/supervisors/` is due.
    beat_due: Instant,
    started_at: String,
    /// The dashboard's URL (`serve:`), for the heartbeat.
    dashboard: Option<String>,
    /// Hooks still running (awaited, within their timeout, before `run` returns).
    hooks: tokio::task::JoinSet<Option<String>>,
    /// At most [`crate::ops::hooks::MAX_RUNNING`] hooks run at once (each
    /// holds descriptors); the others wait their turn.
    hook_slots: Arc<tokio::sync::Semaphore>,
}

impl Supervisor {
    /// Keeps `run --agents` overrides across reloads (the config passed to
    /// [`Supervisor::new`] already has them).
    pub fn with_agent_limits(mut self, limits: Vec<(String, usize)>) -> Supervisor {
        self.agent_limits = limits;
        self
    }

    /// The URL of the dashboard served beside this supervisor (`serve:`),
    /// announced in its heartbeat for `status`.
    pub fn with_dashboard(mut self, url: String) -> Supervisor {
        self.dashboard = Some(url);
        self
    }

    /// Prepares a supervisor for `root` (created if missing).
    pub fn new(root: &Path, config: Config) -> std::io::Result<Supervisor> {
        // Before anything is created: a shared tree's directories are setgid.
        fsx::set_shared(config.shared);
        let layout = Layout::new(root);
        layout.ensure()?;
        let root = root.canonicalize()?;
        let layout = Layout::new(&root);
        fsx::set_durable(config.durable);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let self_pid = std::process::id();
        let exe = std::env::current_exe().unwrap_or_else(|_| "mailroom".into());
        let keeper = crate::run::keeper_program::choose(
            &exe,
            std::env::var_os(crate::run::keeper_program::ENV),
        );
        let launcher = keeper
            .small_binary()
            .and_then(crate::run::launcher::Launcher::new);
        Ok(Supervisor {
            ctx: Arc::new(Ctx {
                layout,
                pending_count: std::sync::atomic::AtomicUsize::new(0),
                host: books::hostname(),
                self_pid,
                self_start: books::proc_start_time(self_pid).unwrap_or(0),
                exe: exe.to_string_lossy().into_owned(),
                keeper,
                launcher,
                workdirs: Arc::default(),
                usage: Default::default(),
                shutdown_by: Default::default(),
            }),
            queue: Queue::new(config.aging),
            limits: Arc::new(compile_limits(&config)),
            config: Arc::new(config),
            pending: BTreeMap::new(),
            waiting: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            rejects: BTreeMap::new(),
            name_freed: false,
            cooldowns: HashMap::new(),
            idle_wait_told: None,
            claims_held: None,
            unprepared_streak: 0,
            ledger: Default::default(),
            over_budget: HashMap::new(),
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
            claim_errors: HashMap::new(),
            next_run: 0,
            swept: false,
            stopping_agents: HashSet::new(),
            unrecoverable: HashSet::new(),
            stop_sent: false,
            scanning: false,
            paused: false,
            metrics_error: None,
            paused_agents: HashSet::new(),
            cancelling: HashSet::new(),
            control_dirty: true,
            reload_due: None,
            recover_due: None,
            peers: HashSet::new(),
            peer_misses: HashMap::new(),
            peers_hinted: Vec::new(),
            peers_look_wanted: false,
            peers_look_due: Instant::now(),
            peer_pass_due: None,
            peer_pass_last: None,
            reexamine: BTreeMap::new(),
            agent_limits: Vec::new(),
            metrics: crate::ops::metrics::Metrics::default(),
            metrics_due: None,
            beat_due: Instant::now(),
            started_at: record::now(),
            dashboard: None,
            hooks: tokio::task::JoinSet::new(),
            hook_slots: Arc::new(tokio::sync::Semaphore::new(crate::ops::hooks::MAX_RUNNING)),
        })
    }

    pub(super) fn layout(&self) -> &Layout {
        &self.ctx.layout
    }
}
