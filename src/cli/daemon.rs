//! `mailroom start` and `mailroom stop`: a supervisor in the background, and
//! stopping this tree's supervisors on this host. Supervisors are found
//! through `/proc` (their command line, working directory and environment),
//! so `stop` also stops one started in the foreground with `run`.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::open_tree;
use crate::tree::{books, fsx};

/// Where `start` appends the supervisor's log, relative to the root. Not in
/// `tasks/` or the root itself, which the supervisor watches.
pub const LOG_FILE: &str = "logs/mailroom.log";

/// A supervisor process of a tree.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    /// Its start time (clock ticks since boot), against pid reuse.
    pub start: u64,
    /// The systemd unit it runs in, if systemd started it.
    pub unit: Option<String>,
}

/// Parses `--agents claude:2,codex:2`.
pub fn parse_agent_limits(s: &str) -> Result<Vec<(String, usize)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, n) = p
                .trim()
                .split_once(':')
                .with_context(|| format!("--agents: `{p}` is not AGENT:COUNT, e.g. claude:2"))?;
            let n: usize = n.parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("--agents: `{p}`: the count must be a whole number from 1")
            })?;
            Ok((a.to_owned(), n))
        })
        .collect()
}

/// Whether this process is a systemd service's (not a person's shell inside
/// a terminal that systemd happened to start).
fn inside_a_service() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() && !std::io::stdin().is_terminal()
}

/// The systemd unit a process runs in: set only for a process that systemd
/// started (`INVOCATION_ID` in its environment), named by its cgroup.
fn unit_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    if !env
        .split(|b| *b == 0)
        .any(|v| v.starts_with(b"INVOCATION_ID="))
    {
        return None;
    }
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let unit = cg
        .lines()
        .filter_map(|l| l.rsplit('/').find(|c| c.ends_with(".service")))
        .next_back()
        .unwrap_or("mailroom.service")
        .to_owned();
    let user = cg.contains("/user@");
    Some(if user { format!("--user {unit}") } else { unit })
}

/// This tree's supervisors on this host (the ones this user may see).
pub fn supervisors(root: &Path) -> Vec<Found> {
    let Ok(want) = root.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<Found> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| books::supervisor_root(*pid).is_some_and(|r| r == want))
        .filter_map(|pid| {
            Some(Found {
                pid,
                start: books::proc_start_time(pid)?,
                unit: unit_of(pid),
            })
        })
        .collect();
    v.sort_by_key(|f| f.pid);
    v
}

/// Takes `tasks/supervisors/.start.lock`, waiting up to a minute for
/// another `start` of this tree to finish (its supervisor's first scan of a
/// large `pending/` takes a second or two).
fn start_lock(layout: &crate::tree::layout::Layout) -> Result<std::fs::File> {
    let dir = crate::tree::registry::dir(layout);
    fsx::create_dir_all(&dir).with_context(|| format!("creating {}", layout.rel(&dir)))?;
    let path = dir.join(".start.lock");
    let f = crate::tree::lock::open_lock_file(&path)
        .with_context(|| format!("opening {}", layout.rel(&path)))?;
    crate::tree::lock::flock_within(&f, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{} {e}", layout.rel(&path)))?;
    Ok(f)
}

/// What `mailroom start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new supervisor, ready.
    New(u32),
    /// One already ran on this tree on this host: nothing was started (as
    /// `systemctl start` of a running unit).
    Already(u32),
}

/// `mailroom start`: a supervisor in the background; returns its pid once it
/// is ready (its first recovery pass and scan are done). When this tree
/// already has a supervisor on this host, started by `start` or running in
/// the foreground, it starts none and returns that one's pid: `start` is
/// safe to repeat (a second supervisor on the tree is `mailroom run`).
pub fn start(root: &Path, agents: Option<&str>, verbose: u8, quiet: u8) -> Result<Started> {
    let layout = open_tree(root)?;
    if inside_a_service() {
        bail!(
            "this runs under systemd: put `mailroom --root DIR run` in the unit's ExecStart= \
             and use `systemctl start` (start would leave a process systemd does not track)"
        );
    }
    if let Some(s) = supervisors(root).into_iter().find(|s| s.unit.is_some()) {
        let unit = s.unit.unwrap_or_default();
        bail!(
            "this tree's supervisor (pid {}) runs under systemd: use `systemctl {unit} start`, `stop` or `status`",
            s.pid
        );
    }
    // The config and the overrides are checked here, where the user sees it.
    let config = crate::parse::config::Config::load(root)
        .map_err(|e| super::ConfigUnusable(e.to_string()))?;
    if let Some(a) = agents {
        config
            .with_agent_limits(&parse_agent_limits(a)?)
            .map_err(super::UsageError)?;
    }
    // Two `start`s at once would each find none and start one: the look and
    // the start are made under one lock, held (by this process only: the
    // descriptor is not inherited) until the new supervisor is ready.
    let _one_at_a_time = start_lock(&layout)?;
    if let Some(s) = supervisors(root).first() {
        return Ok(Started::Already(s.pid));
    }
    let log_path = layout.root.join(LOG_FILE);
    std::fs::create_dir_all(log_path.parent().expect("LOG_FILE has a directory"))
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // The supervisor tells us when it is ready through the notify protocol,
    // on a socket of our own (abstract, so nothing is left on disk).
    let nonce = format!(
        "mailroom-start-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let ready = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(nonce.as_bytes())?;
        let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s
    };
    let exe = std::env::current_exe().context("finding the mailroom binary")?;
    let mut c = std::process::Command::new(exe);
    c.arg("--root").arg(&layout.root);
    for _ in 0..verbose {
        c.arg("-v");
    }
    for _ in 0..quiet {
        c.arg("-q");
    }
    c.arg("run");
    if let Some(a) = agents {
        c.arg("--agents").arg(a);
    }
    c.env("NOTIFY_SOCKET", format!("@{nonce}"))
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("MAILROOM_TASK")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C at this terminal does not reach it.
        .process_group(0);
    let mut child = c.spawn().context("starting the supervisor")?;
    let pid = child.id();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = ready.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            // Not waited for from here on; it outlives us.
            std::mem::forget(child);
            return Ok(Started::New(pid));
        }
        if let Some(st) = child.try_wait()? {
            let last = std::fs::read_to_string(&log_path)
                .ok()
                .and_then(|t| t.lines().last().map(str::to_owned))
                .unwrap_or_default();
            bail!(
                "the supervisor exited at once ({st}): {last}\n(the whole log is in {})",
                layout.rel(&log_path)
            );
        }
    }
}

/// Still there, and not a zombie waiting for its parent to reap it.
fn running(s: &Found) -> bool {
    books::same_process(s.pid, s.start)
        && std::fs::read_to_string(format!("/proc/{}/stat", s.pid)).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
}

/// `mailroom stop`: SIGTERM to this tree's supervisors here (with `now`, a
/// second request too, which stops running agents at once and puts their
/// tasks back), then waits until they are gone. Returns how many stopped.
pub fn stop(root: &Path, now: bool, timeout: Option<Duration>) -> Result<usize> {
    open_tree(root)?;
    let found = supervisors(root);
    let (systemd, ours): (Vec<Found>, Vec<Found>) =
        found.into_iter().partition(|f| f.unit.is_some());
    for s in &systemd {
        eprintln!(
            "mailroom: pid {} runs under systemd: use `systemctl {} stop`",
            s.pid,
            s.unit.as_deref().unwrap_or_default()
        );
    }
    if ours.is_empty() {
        if systemd.is_empty() {
            eprintln!("mailroom: no supervisor of this tree runs on this host");
        }
        return Ok(0);
    }
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for s in &ours {
        if running(s) {
            let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGTERM);
            // A second request means "now"; a different signal, so the
            // kernel cannot merge it with the first.
            if now {
                let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGINT);
            }
        }
    }
    let pids: Vec<String> = ours.iter().map(|s| s.pid.to_string()).collect();
    // What happens to running agents is the config's `on_shutdown`.
    let leave = crate::parse::config::Config::load(root)
        .is_ok_and(|c| c.on_shutdown == crate::parse::config::OnShutdown::LeaveRunning);
    eprintln!(
        "mailroom: stopping pid {}{}",
        pids.join(", "),
        if now {
            ""
        } else if leave {
            "; running agents carry on with their keepers, for the next supervisor \
             (on_shutdown: leave_running; stop --now stops them)"
        } else {
            "; running agents may finish (stop --now to stop them)"
        }
    );
    let until = timeout.map(|t| Instant::now() + t);
    while ours.iter().any(running) {
        if until.is_some_and(|u| Instant::now() >= u) {
            bail!("the supervisors did not stop within the timeout");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ours.len())
}
