//! The keeper's run, without an async runtime: one agent, watched through a
//! pidfd and a signalfd with one `poll(2)`. A keeper is a single thread; it
//! starts no runtime, no signal thread and no timer thread, so a run costs
//! little more than the agent's own spawn (see BENCHMARKS.md).
//!
//! The same rules as [`process::wait`]: a timeout, the
//! output cap (checked every 500 ms) and stop requests; SIGTERM to the whole
//! group, the grace period, then SIGKILL; the child is always awaited and its
//! group emptied.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use super::process::{self, Exit, RunEnd, Spec, Stop};
use super::spawn;

/// Stop requests as signals: SIGTERM stop gracefully, SIGUSR1 cancel,
/// SIGUSR2 or SIGINT stop at once. SIGHUP is read and ignored: a keeper has no
/// terminal and nothing to reload, and `pkill -HUP mailroom` (a reload of the
/// supervisors) matches it too. Blocked from the moment this is made (a
/// request that arrives during setup waits in the kernel, never lost) and read
/// from a signalfd. Make it before any thread starts.
pub struct Stops {
    fd: Option<SignalFd>,
    /// The hardest request seen so far.
    seen: Option<Stop>,
    /// The process that sent it (its pid, from the signal's siginfo).
    sender: Option<u32>,
}

/// The signals [`Stops`] reads. The keeper launcher blocks the same ones,
/// so that a keeper it forks has them blocked from its first instruction.
pub const STOP_SIGNALS: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGINT,
    Signal::SIGHUP,
];

impl Stops {
    pub fn new() -> Stops {
        let mut set = SigSet::empty();
        for s in STOP_SIGNALS {
            set.add(s);
        }
        let fd = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .ok()
            .and_then(|()| {
                let fd =
                    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
                if fd.is_none() {
                    // No signalfd: the signals must not stay blocked, or a stop
                    // request would never arrive. They keep their default
                    // action (the keeper dies, and its run is recovered).
                    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
                }
                fd
            });
        Stops {
            fd,
            seen: None,
            sender: None,
        }
    }

    fn raw(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Reads what has arrived; returns the hardest request so far. A later,
    /// harder request wins; a graceful one never softens a cancel or a kill.
    fn drain(&mut self) -> Option<Stop> {
        if let Some(fd) = &self.fd {
            while let Ok(Some(info)) = fd.read_signal() {
                let stop = match info.ssi_signo as i32 {
                    libc::SIGHUP => continue,
                    libc::SIGTERM => Stop::Graceful,
                    libc::SIGUSR1 => Stop::Cancel,
                    _ => Stop::Now,
                };
                let seen = match (self.seen, stop) {
                    (Some(Stop::Now), _) => Stop::Now,
                    (Some(Stop::Cancel), Stop::Graceful) => Stop::Cancel,
                    _ => stop,
                };
                if self.seen != Some(seen) || self.sender.is_none() {
                    self.sender = Some(info.ssi_pid);
                }
                self.seen = Some(seen);
            }
        }
        self.seen
    }

    /// The pid of the process whose signal made the request [`Stops`] holds
    /// (the first to ask for the hardest one), if any arrived.
    pub fn sender(&self) -> Option<u32> {
        self.seen.and(self.sender)
    }
}

impl Default for Stops {
    fn default() -> Self {
        Stops::new()
    }
}

/// A pidfd of `pid` (Linux 5.3 and later): readable once the process exits.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1), which we own from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits until the child may have exited, a stop request arrived, or
/// `timeout` passed. Without a pidfd it wakes every 10 ms to look.
fn wait_events(pidfd: Option<&OwnedFd>, stops: &Stops, timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
    for fd in [pidfd.map(|f| f.as_raw_fd()), stops.raw()]
        .into_iter()
        .flatten()
    {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let timeout = if pidfd.is_some() {
        timeout
    } else {
        timeout.min(Duration::from_millis(10))
    };
    // Round up, so that a deadline a fraction of a millisecond away is not
    // polled for with 0 in a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of pollfd of the given length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// Starts the agent and watches it to its end. Blocking.
pub fn run(spec: &mut Spec, root: &Path, stops: &mut Stops) -> RunEnd {
    let prepared = match process::prepare(spec, root) {
        Ok(p) => p,
        Err(end) => return end,
    };
    // The keeper blocks the stop signals (it reads them from a signalfd);
    // the agent starts with none blocked (see `spawn`).
    let mut child = match spawn::spawn(&prepared.launch()) {
        Ok(c) => c,
        Err(e) => return process::spawn_error(e, spec, &prepared.program),
    };
    drop(prepared);
    let pgid = Pid::from_raw(child.id() as i32);
    let pidfd = pidfd_open(child.id());
    let far = Instant::now() + Duration::from_secs(30 * 24 * 3600);
    let deadline = Instant::now().checked_add(spec.timeout).unwrap_or(far);
    let check_every = Duration::from_millis(500);
    let mut next_check = Instant::now() + check_every;
    enum Why {
        Timeout,
        Stop(Stop),
        Output(u64),
    }
    let why = loop {
        if let Ok(Some(st)) = child.try_wait() {
            reap_group(pgid, Duration::from_secs(2), true);
            let exit = process::to_exit(Ok(st));
            // Output written since the last look counts too: a fast agent
            // ends before the next check.
            let n = process::output_size(spec);
            if n > spec.max_output {
                return process::output_limit(spec, exit, n);
            }
            return RunEnd::Exited(exit);
        }
        if let Some(s) = stops.drain() {
            break Why::Stop(s);
        }
        let now = Instant::now();
        if now >= deadline {
            break Why::Timeout;
        }
        if now >= next_check {
            next_check = now + check_every;
            let n = process::output_size(spec);
            if n > spec.max_output {
                break Why::Output(n);
            }
        }
        wait_events(pidfd.as_ref(), stops, deadline.min(next_check) - now);
    };
    let exit = match why {
        Why::Stop(Stop::Now) => kill_now(&mut child, pgid),
        _ => stop_gracefully(&mut child, pgid, pidfd.as_ref(), spec.grace, stops),
    };
    match why {
        Why::Timeout => RunEnd::TimedOut(exit),
        Why::Stop(Stop::Cancel) => RunEnd::Cancelled(exit),
        Why::Stop(_) => RunEnd::Stopped(exit),
        Why::Output(n) => process::output_limit(spec, exit, n),
    }
}

/// SIGTERM to the group, the grace period, then SIGKILL; always awaits the
/// child. A request to stop at once during the grace period kills at once.
fn stop_gracefully(
    child: &mut spawn::Agent,
    pgid: Pid,
    pidfd: Option<&OwnedFd>,
    grace: Duration,
    stops: &mut Stops,
) -> Exit {
    let _ = killpg(pgid, Signal::SIGTERM);
    // A stopped agent (SIGSTOP, ^Z) would hold its SIGTERM until the grace
    // ends; continued, it can end cleanly.
    let _ = killpg(pgid, Signal::SIGCONT);
    let until = Instant::now()
        .checked_add(grace)
        .unwrap_or_else(Instant::now);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            reap_group(pgid, Duration::from_millis(500), true);
            return process::to_exit(Ok(st));
        }
        let now = Instant::now();
        if now >= until || stops.drain() == Some(Stop::Now) {
            return kill_now(child, pgid);
        }
        wait_events(pidfd, stops, until - now);
    }
}

fn kill_now(child: &mut spawn::Agent, pgid: Pid) -> Exit {
    let _ = killpg(pgid, Signal::SIGKILL);
    let exit = process::to_exit(child.wait());
    reap_group(pgid, Duration::ZERO, true);
    exit
}

/// After the leader has exited, no member of its group may outlive the run:
/// SIGTERM what is left, give it `grace`, then SIGKILL, and wait (bounded)
/// until the group is empty. In a keeper (`reap_children`), a subreaper, the
/// members it stops are its children: they are reaped here too, so that no
/// zombie keeps the group alive. A supervisor must not reap: its other
/// children belong to their own waiters.
pub(crate) fn reap_group(pgid: Pid, grace: Duration, reap_children: bool) {
    let reap = || {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        if !reap_children {
            return;
        }
        while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
    };
    if killpg(pgid, None).is_err() {
        return;
    }
    if !grace.is_zero() {
        let _ = killpg(pgid, Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            reap();
            if killpg(pgid, None).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && killpg(pgid, None).is_ok() {
        reap();
        std::thread::sleep(Duration::from_millis(5));
    }
}
