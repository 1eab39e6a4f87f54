//! The watcher: inotify (through notify) as a wake-up hint, never as the source
//! of truth. Events are coalesced into a set of paths plus an "everything"
//! flag (queue overflow, watcher errors) and handed over without ever blocking
//! notify's thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// Paths to look at again, shared between notify's thread and the main loop.
#[derive(Default)]
pub struct Hints {
    inner: Mutex<HintSet>,
    pub wake: Notify,
}

#[derive(Default)]
struct HintSet {
    paths: HashSet<PathBuf>,
    rescan: bool,
}

/// Above this many distinct paths, a full rescan is cheaper than the set.
const MAX_PATHS: usize = 65_536;

impl Hints {
    fn push(&self, paths: Vec<PathBuf>, rescan: bool) {
        {
            let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if rescan || h.paths.len() + paths.len() > MAX_PATHS {
                h.rescan = true;
                h.paths.clear();
            } else if !h.rescan {
                h.paths.extend(paths);
            }
        }
        self.wake.notify_one();
    }

    /// Asks for a full rescan (also used by the main loop's own timers).
    pub fn request_rescan(&self) {
        self.push(Vec::new(), true);
    }

    /// Takes what has accumulated: (paths, full rescan wanted).
    pub fn take(&self) -> (Vec<PathBuf>, bool) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let rescan = std::mem::take(&mut h.rescan);
        (h.paths.drain().collect(), rescan)
    }
}

/// Whether an event can mean a task file appeared, changed or went away.
/// Opens and read-closes (our own reads among them) and attribute changes cannot.
fn relevant(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(AccessKind::Open(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Read))
            | EventKind::Access(AccessKind::Read)
            | EventKind::Modify(ModifyKind::Metadata(_))
    )
}

/// A running inotify watch on `tasks/` and `tasks/pending/`.
pub struct Watch {
    watcher: notify::RecommendedWatcher,
    pending: PathBuf,
}

impl Watch {
    /// Starts watching. `tasks/` is watched too, so that a removed or recreated
    /// `pending/` is noticed.
    pub fn start(
        tasks: &Path,
        pending: &Path,
        extra: &[&Path],
        hints: Arc<Hints>,
    ) -> notify::Result<Watch> {
        let h = hints.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if ev.need_rescan() || ev.paths.is_empty() {
                        h.push(Vec::new(), true);
                    } else if relevant(&ev.kind) {
                        h.push(ev.paths, false);
                    }
                }
                Err(_) => h.push(Vec::new(), true),
            })?;
        watcher.watch(tasks, RecursiveMode::NonRecursive)?;
        watcher.watch(pending, RecursiveMode::NonRecursive)?;
        // Control files and the config: hints like any other (best effort).
        for p in extra {
            let _ = watcher.watch(p, RecursiveMode::NonRecursive);
        }
        Ok(Watch {
            watcher,
            pending: pending.to_path_buf(),
        })
    }

    /// Re-adds the watch on `pending/` (after it was removed and recreated).
    pub fn rewatch(&mut self) {
        let _ = self.watcher.unwatch(&self.pending);
        let _ = self
            .watcher
            .watch(&self.pending, RecursiveMode::NonRecursive);
    }
}
