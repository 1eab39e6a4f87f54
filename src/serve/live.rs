//! Change notices for the pages: inotify ([`crate::ops::dirwatch`]) on the state
//! directories, `tasks/cooldowns/` and `tasks/control/`, with a polling
//! fallback, turned into a generation number that is broadcast to every
//! `/events` stream.
//!
//! Like the supervisor's watcher, this is a hint only: a notice says "look
//! again", and the page then reads the tree itself. Events are coalesced
//! (one notice per burst), and our own reads (opens, closes, accesses) are
//! not events (the kernel is not even asked for them), or every page load
//! would trigger the next.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast};

use crate::ops::dirwatch::{DirWatch, Seen};

use crate::tree::layout::Layout;

/// How long a burst of events is gathered into one notice.
const COALESCE: Duration = Duration::from_millis(60);
/// How often the directories' stamps are compared, with or without inotify
/// (it also covers other hosts' changes on a shared file system).
const POLL: Duration = Duration::from_millis(500);

/// The live feed: subscribe for change notices.
pub struct Live {
    tx: broadcast::Sender<u64>,
    /// Kept alive for as long as the feed is.
    _watcher: Option<DirWatch>,
    /// Whether inotify is in use (false: polling only).
    pub inotify: bool,
}

impl Live {
    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.tx.subscribe()
    }
}

fn dirs(layout: &Layout) -> Vec<PathBuf> {
    vec![
        layout.tasks.clone(),
        layout.pending.clone(),
        layout.assigned.clone(),
        layout.completed.clone(),
        layout.failed.clone(),
        layout.cooldowns.clone(),
        layout.control.clone(),
        layout.cancel.clone(),
    ]
}

/// What the poller compares: each directory's identity, mtime and size.
fn stamps(dirs: &[PathBuf]) -> Vec<Option<(u64, SystemTime, u64)>> {
    use std::os::unix::fs::MetadataExt;
    dirs.iter()
        .map(|d| {
            std::fs::symlink_metadata(d).ok().map(|m| {
                (
                    m.ino(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.size(),
                )
            })
        })
        .collect()
}

/// Tells the index which pending task files changed (or that any may
/// have), so that a search reads them again.
fn forget(index: &super::index::Index, pending: &std::path::Path, seen: &[Seen]) {
    for s in seen {
        match s {
            Seen::Path(p) => {
                if p.parent() == Some(pending)
                    && let Some(f) = p.file_name().and_then(|f| f.to_str())
                    && let crate::parse::task::Entry::Task { name, .. } =
                        crate::parse::task::classify(f)
                {
                    index.forget(Some(name));
                }
            }
            // Events were lost, or a watch ended (pending/ removed and made
            // anew, which this feed does not watch again): the index can no
            // longer trust the watch to tell it of edits in place, and
            // stamps pending files itself from now on.
            Seen::Everything => {
                index.set_watched(false);
                index.forget(None);
            }
        }
    }
}

/// Starts the feed on the current tokio runtime. With `inotify` false (the
/// tree's `watch: poll`), or when the watch cannot be set up, it polls.
pub fn start(layout: &Layout, inotify: bool, index: Arc<super::index::Index>) -> Arc<Live> {
    let (tx, _) = broadcast::channel(16);
    let wake = Arc::new(Notify::new());
    let dirs = dirs(layout);
    let watcher = if inotify {
        let w = wake.clone();
        let idx = index.clone();
        let pending = layout.pending.clone();
        match DirWatch::start("mailroom-live", move |seen| {
            forget(&idx, &pending, &seen);
            w.notify_one();
        }) {
            Ok(mut watcher) => {
                for d in &dirs {
                    // A directory that is missing now is covered by the poller.
                    let _ = watcher.add(d);
                }
                // Without a watch on pending/ itself, searches keep `lstat`ing.
                index.set_watched(watcher.add(&layout.pending).is_ok());
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no inotify watch; polling the tree instead");
                None
            }
        }
    } else {
        None
    };
    let live = Arc::new(Live {
        tx: tx.clone(),
        inotify: watcher.is_some(),
        _watcher: watcher,
    });
    tokio::spawn(async move {
        let mut generation = 0u64;
        let mut last = stamps(&dirs);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = tokio::select! {
                _ = wake.notified() => {
                    tokio::time::sleep(COALESCE).await;
                    true
                }
                _ = tick.tick() => false,
            };
            let now = tokio::task::spawn_blocking({
                let dirs = dirs.clone();
                move || stamps(&dirs)
            })
            .await
            .unwrap_or_default();
            if changed || now != last {
                last = now;
                generation += 1;
                // No subscribers is fine: nobody is watching right now.
                let _ = tx.send(generation);
            }
        }
    });
    live
}
