//! The other supervisors of this tree on this host, watched so that the
//! death of one is noticed at once. Its keepers' runs go on without it, and
//! they are adopted, or their outcomes committed, by a recovery pass: without
//! this watch that pass came only at the next rescan (`rescan_interval`, 30 s
//! by default), and until then the runs looked as if they were running, and
//! their dependants and `mailroom wait` were held.
//!
//! A peer is found among the registry's files named for this host (a
//! listing; only new names are read) at each heartbeat, and when the watcher
//! sees a new one written (at most every [`HINTED_LOOK_GAP`]), so that a peer
//! that starts and dies between two heartbeats is seen too. It is watched
//! through a pidfd, opened and then checked against its start time, so that
//! a reused pid is never watched. The registry is written by anyone who can write the
//! tree, an agent too: a file is believed only when its process is a
//! supervisor (`mailroom ... run`) of this very tree, at most
//! [`MAX_PEERS`] are watched, and a death brings on at most one recovery
//! pass a second, without the merge replay and the registry's pruning of a
//! full pass. Without pidfds (a kernel before 5.3) a look at `/proc` every
//! second does.

use super::*;
use crate::tree::registry;

/// At most this many peers are watched (each holds a descriptor).
pub(super) const MAX_PEERS: usize = 64;
/// At most this many new heartbeat files are read at one heartbeat.
const NEW_PER_BEAT: usize = 32;
/// A file that named no peer is read again only after this long.
const RELOOK: Duration = Duration::from_secs(60);
/// Looks for peers that the watcher brings on are at least this far apart
/// (files written into the registry by the thousand cost one listing per
/// gap, and the heartbeat's look still comes every 5 s).
pub(super) const HINTED_LOOK_GAP: Duration = Duration::from_millis(200);
/// Peer-triggered recovery passes are at least this far apart.
pub(super) const PEER_PASS_GAP: Duration = Duration::from_secs(1);

impl Supervisor {
    /// The watcher saw the heartbeat file of `pid` (this host) written: look
    /// for peers after this turn's hints, unless it is this supervisor, or
    /// one watched or found to be no peer already.
    pub(super) fn peer_hinted(&mut self, pid: u32) {
        if pid != self.ctx.self_pid
            && !self.peers.iter().any(|(p, _)| *p == pid)
            && !self.peer_misses.contains_key(&pid)
            && !self.peers_hinted.contains(&pid)
        {
            self.peers_look_wanted = true;
            if self.peers_hinted.len() < NEW_PER_BEAT {
                self.peers_hinted.push(pid);
            }
        }
    }

    /// Watches the supervisors of this tree on this host that are not
    /// watched yet. Called at each heartbeat, and when the watcher sees a
    /// new one's heartbeat.
    pub(super) fn watch_peers(&mut self) {
        self.peers_look_wanted = false;
        let now = Instant::now();
        self.peer_misses
            .retain(|_, t| now.duration_since(*t) < RELOOK);
        let me = self.ctx.self_pid;
        let watched: HashSet<u32> = self.peers.iter().map(|(pid, _)| *pid).collect();
        let mut read = 0;
        // The pids the watcher named first: junk names in the registry must
        // not keep a real peer's file from being read.
        let hinted: Vec<(u32, std::path::PathBuf)> = std::mem::take(&mut self.peers_hinted)
            .into_iter()
            .map(|pid| (pid, registry::file(self.layout(), &self.ctx.host, pid)))
            .collect();
        let listed = if hinted.is_empty() {
            registry::local(self.layout(), &self.ctx.host)
        } else {
            Vec::new()
        };
        let from_hint = hinted.len();
        for (i, (pid, path)) in hinted.into_iter().chain(listed).enumerate() {
            if self.peers.len() >= MAX_PEERS || read >= NEW_PER_BEAT {
                break;
            }
            if pid == me || watched.contains(&pid) || self.peer_misses.contains_key(&pid) {
                continue;
            }
            read += 1;
            let hb = registry::read(&path);
            let Some(id) = hb.as_ref().and_then(|hb| self.peer_of(hb)) else {
                debug!(
                    pid,
                    "a heartbeat file names no live supervisor of this tree; not watched"
                );
                self.peer_misses.insert(pid, now);
                // Written just now by a process already gone: a supervisor
                // that died before it could be watched may have left runs.
                if i < from_hint
                    && hb.is_some_and(|hb| {
                        hb.host == self.ctx.host && !books::same_process(hb.pid, hb.start)
                    })
                {
                    info!(
                        pid,
                        "a supervisor of this tree ended as it started; recovering what it left"
                    );
                    self.bring_pass_forward();
                }
                continue;
            };
            self.peers.insert(id);
            debug!(pid, "watching a supervisor of this tree");
            let tx = self.events_tx.clone();
            tokio::spawn(async move {
                peer_ended(id).await;
                let _ = tx.send(Event::PeerGone { id });
            });
        }
    }

    /// The (pid, start time) of the live supervisor of this tree that the
    /// heartbeat `hb` names, if it names one.
    fn peer_of(&self, hb: &registry::Heartbeat) -> Option<(u32, u64)> {
        if hb.host != self.ctx.host || !books::same_process(hb.pid, hb.start) {
            return None;
        }
        let here = self.layout().root.canonicalize().ok()?;
        (books::supervisor_root(hb.pid)? == here).then_some((hb.pid, hb.start))
    }

    /// A supervisor of this tree on this host ended: recover what it left
    /// (runs its keepers go on with, outcomes they wrote, claims it did not
    /// finish) at once, or a second after the last such pass.
    pub(super) fn peer_gone(&mut self, id: (u32, u64)) {
        if !self.peers.remove(&id) {
            return;
        }
        info!(
            pid = id.0,
            "a supervisor of this tree ended; recovering what it left"
        );
        self.bring_pass_forward();
    }

    /// A light recovery pass at once, or a second after the last one.
    fn bring_pass_forward(&mut self) {
        let now = Instant::now();
        let at = self
            .peer_pass_last
            .map_or(now, |t| (t + PEER_PASS_GAP).max(now));
        self.peer_pass_due = Some(self.peer_pass_due.map_or(at, |t| t.min(at)));
    }
}

/// Returns once the process `id` (pid, start time) has ended: when its pidfd
/// becomes readable, which it does before the process is reaped, or else by
/// a look at `/proc` every second.
async fn peer_ended((pid, start): (u32, u64)) {
    use std::os::fd::AsFd;
    // Opened first, checked after: the pidfd is of this very process only if
    // the pid still has its start time now.
    let pidfd = crate::run::blocking::pidfd_open(pid);
    if !books::same_process(pid, start) {
        return;
    }
    if let Some(fd) = &pidfd {
        // SAFETY: `fd` outlives `afd`, both owned by this future.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                fd.as_fd(),
                tokio::io::Interest::READABLE,
            )
        };
        if let Ok(afd) = afd
            && afd.readable().await.is_ok()
        {
            return;
        }
    }
    while books::same_process(pid, start) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
