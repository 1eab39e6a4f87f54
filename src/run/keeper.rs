//! The run keeper (protocol version 2): one small process per run, the way
//! container runtimes keep a shim (conmon, containerd-shim) and init systems a
//! subreaper (tini).
//!
//! The supervisor starts `mailroom-keeper <run dir>` (or `mailroom keeper
//! <run dir>`, see `run::keeper_program`) with the task's locked
//! descriptor as its stdin; the agent never receives it. The keeper leaves the
//! supervisor's session, becomes a child subreaper (every descendant of the
//! agent stays its child, even after `setsid` or a double fork), starts the
//! agent in its own process group, enforces the timeout, the output cap and
//! stop requests (signals from a supervisor), stops whatever the agent left
//! behind once it exits, and writes the outcome durably into the run directory
//! (`outcome.json`) before it exits and so lets its hold on the lock go. A
//! supervisor that dies does not take the run with it: the next one adopts the
//! keeper, or commits the outcome it wrote.
//!
//! Signals a keeper understands: SIGTERM stop gracefully (a shutdown),
//! SIGUSR1 cancel, SIGUSR2 or SIGINT stop at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::run::process::{RunEnd, Spec, Stop};

/// `<run dir>/spec.json`: what the keeper runs. It holds no environment: the
/// keeper is started with exactly the agent's environment and passes it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeeperSpec {
    pub run_id: String,
    pub argv: Vec<String>,
    pub workdir: PathBuf,
    /// The root, for relative program paths.
    pub root: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub output: Option<PathBuf>,
    pub timeout_ms: u64,
    pub grace_ms: u64,
    pub max_output: u64,
    /// `durability: strict` (fsync the keeper's files) or relaxed.
    #[serde(default = "yes")]
    pub durable: bool,
    /// The agent's slot lock the supervisor took and handed over as the
    /// keeper's stdout (see `tree::slots`).
    #[serde(default)]
    pub slot: Option<PathBuf>,
    /// The agent's slot files: with no slot handed over, the keeper takes a
    /// free one of these itself, waiting, before it starts the agent.
    #[serde(default)]
    pub slot_paths: Vec<PathBuf>,
    /// The tree-wide `concurrency` slot (`tasks/slots/.all.<n>.lock`) the
    /// supervisor handed over as the keeper's stderr.
    #[serde(default)]
    pub tree_slot: Option<PathBuf>,
    /// Give the agent a private `TMPDIR` (`run::process::PrivateTmp`),
    /// removed once the agent and what it left behind are gone.
    #[serde(default)]
    pub private_tmp: bool,
}

fn yes() -> bool {
    true
}

/// `<run dir>/keeper.json`: who keeps this run, written when the keeper starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeeperInfo {
    pub run_id: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc), to tell it from a later
    /// process with the same pid.
    pub start: u64,
    pub host: String,
    pub started_at: String,
}

/// `<run dir>/outcome.json`: how the run ended, written (temp, fsync, rename,
/// fsync) before the keeper exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptOutcome {
    pub version: u32,
    pub run_id: String,
    pub end: RunEnd,
    pub started_at: String,
    pub finished_at: String,
    /// Processes the agent left behind that the keeper had to stop.
    pub leftovers_stopped: u32,
    /// CPU time and peak memory of the agent and its descendants.
    pub user_ms: u64,
    pub sys_ms: u64,
    pub max_rss_kb: u64,
    /// The pid of the process whose signal stopped or cancelled the run: its
    /// supervisor's, or another's (its own agent's, as a rule), which makes
    /// the stop a counted failure. Absent for other ends (and from keepers
    /// before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<u32>,
}

/// The small binary that runs only keepers (src/bin/mailroom-keeper.rs),
/// installed beside `mailroom`. `mailroom keeper RUN_DIR` does the same.
pub const PROGRAM: &str = "mailroom-keeper";

/// The line `mailroom-keeper --identity` prints: the package version and a
/// hash of the sources it was built from (see build.rs). Both binaries embed
/// it; the supervisor starts the small binary only when its line is exactly
/// its own (see `run::keeper_program`).
pub const IDENTITY: &str = concat!(
    "mailroom-keeper ",
    env!("CARGO_PKG_VERSION"),
    " build ",
    env!("MAILROOM_BUILD_ID")
);

pub const SPEC_FILE: &str = "spec.json";
pub const INFO_FILE: &str = "keeper.json";
pub const OUTCOME_FILE: &str = "outcome.json";
pub const LOG_FILE: &str = "keeper.log";
/// The pids of supervisors other than the run's own that asked its keeper to
/// stop (an adopter forwarding a cancel or a shutdown), one per line,
/// written before the signal: a stop whose sender is named here, or is the
/// run's supervisor, was asked for.
pub const STOP_REQUESTS_FILE: &str = "stop-requests";

/// Notes that process `pid` (an adopting supervisor) is about to ask the
/// keeper of `run_dir` to stop. Durable unless durability is relaxed.
pub fn note_stop_request(run_dir: &Path, pid: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(run_dir.join(STOP_REQUESTS_FILE))?;
    f.write_all(format!("{pid}\n").as_bytes())?;
    crate::tree::fsx::sync_data(&f)
}

/// The file an adopting supervisor holds a `flock` on while it adopts the
/// run: one adopter at a time, and the next one once it is gone.
pub const ADOPTER_LOCK: &str = "adopter.lock";

/// Takes the adoption of the run in `run_dir`: Ok(Ok(file)) to hold for as
/// long as the adoption lasts, Ok(Err(file)) when somebody holds it (the
/// file, to ask who), Err when the lock cannot be made (the adopter goes on
/// without it, as before the lock existed). Made as task locks are (mode
/// 0660 in a shared tree, so that another user's supervisor can take it).
pub fn try_adopt(run_dir: &Path) -> std::io::Result<Result<std::fs::File, std::fs::File>> {
    let f = crate::tree::lock::open_lock_file(&run_dir.join(ADOPTER_LOCK))?;
    match f.try_lock() {
        Ok(()) => Ok(Ok(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Err(f)),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The pids [`note_stop_request`] wrote for `run_dir`.
pub fn stop_requests(run_dir: &Path) -> Vec<u32> {
    crate::tree::fsx::read_head(&run_dir.join(STOP_REQUESTS_FILE), 64 * 1024)
        .map(|(b, _)| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The keeper of `run_id` in `run_dir`, if its file is there.
pub fn info(run_dir: &Path, run_id: &str) -> Option<KeeperInfo> {
    let b = std::fs::read(run_dir.join(INFO_FILE)).ok()?;
    serde_json::from_slice::<KeeperInfo>(&b)
        .ok()
        .filter(|k| k.run_id == run_id)
}

/// The keeper of whatever run `run_dir` holds, if its file is there (for a
/// run whose state file is gone).
pub fn info_any(run_dir: &Path) -> Option<KeeperInfo> {
    let b = std::fs::read(run_dir.join(INFO_FILE)).ok()?;
    serde_json::from_slice::<KeeperInfo>(&b).ok()
}

/// The outcome `run_id`'s keeper wrote, if any.
pub fn outcome(run_dir: &Path, run_id: &str) -> Option<KeptOutcome> {
    let b = std::fs::read(run_dir.join(OUTCOME_FILE)).ok()?;
    serde_json::from_slice::<KeptOutcome>(&b)
        .ok()
        .filter(|o| o.run_id == run_id)
}

/// Whether the keeper is this host's live process.
pub fn alive(k: &KeeperInfo, host: &str) -> bool {
    k.host == host && crate::tree::books::same_process(k.pid, k.start)
}

/// Asks a keeper to stop its run (the signal for `stop`). A keeper blocks
/// these signals at its first instruction and reads them later; one sent in
/// the instant between its exec and that block would kill it instead, and
/// the run would end without an outcome. So this waits (up to a second)
/// until /proc shows the signal blocked. Blocking: call it off the async
/// loop.
pub fn signal(pid: u32, stop: Stop) {
    use nix::sys::signal::{Signal, kill};
    let sig = match stop {
        Stop::Graceful => Signal::SIGTERM,
        Stop::Cancel => Signal::SIGUSR1,
        Stop::Now => Signal::SIGUSR2,
    };
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        match blocked(pid, sig as i32) {
            Some(false) => std::thread::sleep(Duration::from_millis(1)),
            // Blocked, or no such process (gone, or another host's).
            _ => break,
        }
    }
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    // A stopped keeper (its agent may SIGSTOP it) would act on the request
    // only when continued: a cancel or a shutdown must not wait for the
    // run's timeout.
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT);
}

/// Whether process `pid` has signal `sig` blocked (its `SigBlk` in /proc);
/// None when that cannot be read.
fn blocked(pid: u32, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())?;
    Some(mask & (1u64 << (sig - 1)) != 0)
}

/// The keeper's exit code when it could not write `keeper.json` (a full
/// disk, as a rule): it did not start the agent, whose run no one could have
/// found again after a supervisor's crash.
pub const EXIT_NO_INFO: u8 = 3;
/// The keeper's exit code when the agent ran but its outcome could not be
/// written.
pub const EXIT_NO_OUTCOME: u8 = 4;

/// `mailroom keeper RUN_DIR` or `mailroom-keeper RUN_DIR`. Returns the
/// process's exit code: 0 once the outcome is on disk; 1 when the spec
/// could not be read (nothing started); [`EXIT_NO_INFO`] and
/// [`EXIT_NO_OUTCOME`].
pub fn main(run_dir: &Path) -> u8 {
    // Stop requests first: one that arrives during the setup waits for the run.
    let mut stops = crate::run::blocking::Stops::new();
    // Out of the supervisor's session and process group: a Ctrl-C or a
    // closed terminal is the supervisor's business, not the run's.
    let _ = nix::unistd::setsid();
    let log = Log::of(run_dir);
    {
        let log = log.clone();
        std::panic::set_hook(Box::new(move |info| log.say(&format!("panic: {info}"))));
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log.say(&format!("cannot become a child subreaper: {e}"));
    }
    let spec: KeeperSpec = match std::fs::read(run_dir.join(SPEC_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            log.say(&format!("cannot read {SPEC_FILE}: {e}"));
            return 1;
        }
    };
    crate::tree::fsx::set_durable(spec.durable);
    // The slots: held (in descriptors the agent does not inherit) until the
    // keeper exits. Then stdout and stderr go to /dev/null: the keeper says
    // what it must in its log, made only when there is something to say.
    let _tree_slot = take_handed(&spec.tree_slot, 2);
    let _slot = match take_handed(&spec.slot, 1) {
        Some(s) => Some(s),
        None => take_slot(&spec, &log),
    };
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors; `null` stays open
        // until after the calls.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let me = std::process::id();
    let info = KeeperInfo {
        run_id: spec.run_id.clone(),
        pid: me,
        start: crate::tree::books::proc_start_time(me).unwrap_or(0),
        host: crate::tree::books::hostname(),
        started_at: crate::model::record::now(),
    };
    // Who keeps the run matters only while this host is up: no fsync.
    if let Err(e) = serde_json::to_vec(&info)
        .map_err(std::io::Error::other)
        .and_then(|b| crate::tree::fsx::write_atomic_volatile(&run_dir.join(INFO_FILE), &b))
    {
        log.say(&format!(
            "cannot write {INFO_FILE}: {e}; the agent was not started"
        ));
        return EXIT_NO_INFO;
    }
    let started = SystemTime::now();
    let mut agent = output_spec(&spec);
    let tmp = crate::run::process::PrivateTmp::for_spec(&mut agent, |m| log.say(&m));
    let end = crate::run::blocking::run(&mut agent, &spec.root, &mut stops);
    let stopped_by = match end {
        RunEnd::Stopped(_) | RunEnd::Cancelled(_) => stops.sender(),
        _ => None,
    };
    let grace = Duration::from_millis(spec.grace_ms);
    let leftovers_stopped = stop_leftovers(grace);
    drop(tmp);
    if leftovers_stopped > 0 && matches!(end, RunEnd::OutputLimit(..)) {
        // They wrote on through the agent's descriptors after the cut.
        crate::run::process::cut_outputs(&output_spec(&spec));
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok();
    let ms = |tv: nix::sys::time::TimeVal| {
        (tv.tv_sec() as u64).saturating_mul(1000) + (tv.tv_usec() as u64) / 1000
    };
    let out = KeptOutcome {
        version: crate::model::record::PROTOCOL_VERSION,
        run_id: spec.run_id.clone(),
        end,
        started_at: crate::model::record::ts(started),
        finished_at: crate::model::record::now(),
        leftovers_stopped,
        user_ms: usage.map_or(0, |u| ms(u.user_time())),
        sys_ms: usage.map_or(0, |u| ms(u.system_time())),
        max_rss_kb: usage.map_or(0, |u| u.max_rss().max(0) as u64),
        stopped_by,
    };
    match write_json(&run_dir.join(OUTCOME_FILE), &out) {
        Ok(()) => 0,
        Err(e) => {
            log.say(&format!("cannot write {OUTCOME_FILE}: {e}"));
            EXIT_NO_OUTCOME
        }
    }
}

/// The keeper's log, `keeper.log` in the run directory: created by the first
/// thing worth saying, so that a run that goes well leaves no empty file.
#[derive(Clone)]
pub(crate) struct Log(PathBuf);

impl Log {
    /// The log of the run in `run_dir`.
    pub(crate) fn of(run_dir: &Path) -> Log {
        Log(run_dir.join(LOG_FILE))
    }

    pub(crate) fn say(&self, msg: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.0)
        {
            let _ = writeln!(f, "mailroom keeper: {msg}");
        }
    }
}

/// A slot lock the supervisor handed over as descriptor `fd` (stdout for
/// the agent's slot, stderr for the tree's), moved to a close-on-exec
/// descriptor that the agent does not inherit.
fn take_handed(slot: &Option<PathBuf>, fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    slot.as_ref()?;
    // SAFETY: F_DUPFD_CLOEXEC of a standard descriptor, owned from here on.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    (dup >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
}

/// With no slot handed over: a free one of `slot_paths`, waited for. `None`
/// for a run without slots (an older spec).
fn take_slot(spec: &KeeperSpec, log: &Log) -> Option<std::os::fd::OwnedFd> {
    if spec.slot_paths.is_empty() {
        return None;
    }
    let mut said = false;
    loop {
        for p in &spec.slot_paths {
            if let Ok(f) = crate::tree::lock::open_lock_file(p)
                && f.try_lock().is_ok()
            {
                return Some(f.into());
            }
        }
        if !said {
            log.say("every slot of the agent is held; waiting for one");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let b = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    crate::tree::fsx::write_atomic(path, &b)
}

/// The run's [`Spec`] as the keeper runs it.
fn output_spec(spec: &KeeperSpec) -> Spec {
    Spec {
        argv: spec.argv.clone(),
        // The keeper was started with exactly the agent's environment.
        env: Vec::new(),
        workdir: spec.workdir.clone(),
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        output: spec.output.clone(),
        timeout: Duration::from_millis(spec.timeout_ms),
        grace: Duration::from_millis(spec.grace_ms),
        inherit: crate::parse::config::EnvPolicy::All,
        // The agent never gets the lock: its stdin is /dev/null.
        stdin: None,
        max_output: spec.max_output,
        private_tmp: spec.private_tmp,
    }
}

/// After the agent is gone: every process it left behind (a daemon that
/// escaped its process group with `setsid` is still our child, as we are a
/// subreaper) gets SIGTERM, `grace`, then SIGKILL, and is reaped. Returns how
/// many there were.
fn stop_leftovers(grace: Duration) -> u32 {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;
    // Reaps what has exited; false once the keeper has no child at all (the
    // common case: then no /proc scan is needed).
    let reap = || loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    };
    let mut stopped = std::collections::BTreeSet::new();
    let mut sent_term_at: Option<std::time::Instant> = None;
    // A process stuck in the kernel (D state) ignores even SIGKILL: give up
    // on it eventually rather than hold the run forever.
    let give_up = std::time::Instant::now() + grace + Duration::from_secs(10);
    loop {
        if !reap() {
            return stopped.len() as u32;
        }
        let kids = children_of(std::process::id());
        if kids.is_empty() || std::time::Instant::now() >= give_up {
            return stopped.len() as u32;
        }
        let hard = sent_term_at.is_some_and(|t| t.elapsed() >= grace);
        for k in &kids {
            let pid = Pid::from_raw(*k as i32);
            let sig = if hard {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            if stopped.insert(*k) || hard {
                let _ = killpg(pid, sig);
                let _ = kill(pid, sig);
                if !hard {
                    // A stopped leftover acts on its SIGTERM once continued.
                    let _ = killpg(pid, Signal::SIGCONT);
                    let _ = kill(pid, Signal::SIGCONT);
                }
            }
        }
        sent_term_at.get_or_insert_with(std::time::Instant::now);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The children of `pid`, from /proc (a subreaper's adopted orphans included).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // Field 4 (ppid) comes after the command name's last ')'.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
