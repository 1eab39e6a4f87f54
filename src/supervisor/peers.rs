//! The other supervisors of this tree on this host, watched so that the
//! death of one is noticed at once. Its keepers' runs go on without it, and
//! they are adopted, or their outcomes committed, by a recovery pass: without
//! this watch that pass came only at the next rescan (`rescan_interval`, 30 s
//! by default), and until then the runs looked as if they were running, and
//! their dependants and `mailroom wait` were held.
//!
//! A peer is found in the registry at each heartbeat and watched through a
//! pidfd (opened, then checked against its start time, so a reused pid is
//! never watched). Without pidfds (a kernel before 5.3) a peer seen alive at
//! one heartbeat and gone at the next is noticed then, within 5 s.

use super::*;
use crate::tree::registry;

impl Supervisor {
    /// Watches the supervisors of this tree on this host that are not
    /// watched yet. Called at each heartbeat.
    pub(super) fn watch_peers(&mut self) {
        let host = self.ctx.host.clone();
        let me = (self.ctx.self_pid, self.ctx.self_start);
        for (hb, alive) in registry::list(self.layout()) {
            let id = (hb.pid, hb.start);
            if hb.host != host || id == me || !alive || !self.peers.insert(id) {
                continue;
            }
            debug!(pid = hb.pid, "watching a supervisor of this tree");
            let tx = self.events_tx.clone();
            tokio::spawn(async move {
                peer_ended(id).await;
                let _ = tx.send(Event::PeerGone { id });
            });
        }
    }

    /// A supervisor of this tree on this host ended: recover now what it
    /// left (runs its keepers go on with, outcomes they wrote, claims it
    /// did not finish).
    pub(super) fn peer_gone(&mut self, id: (u32, u64)) {
        self.peers.remove(&id);
        info!(
            pid = id.0,
            "a supervisor of this tree ended; recovering what it left"
        );
        let now = Instant::now();
        self.recover_due = Some(self.recover_due.map_or(now, |t| t.min(now)));
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
