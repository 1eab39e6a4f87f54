//! The watcher: inotify (see [`crate::ops::dirwatch`]) as a wake-up hint, never as the source
//! of truth. Events are coalesced into a set of paths plus an "everything"
//! flag (queue overflow, a watch that ended, watcher errors) and handed over
//! without ever blocking the watching thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ops::dirwatch::{DirWatch, Seen};

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

/// A running inotify watch on `tasks/` and `tasks/pending/` (and the extra
/// directories given), through [`DirWatch`], which asks only for events that
/// can change a listing: mailroom's own reads are no events.
pub struct Watch {
    watch: DirWatch,
    /// Every directory watched, `tasks/` and `pending/` first.
    dirs: Vec<PathBuf>,
    /// Watched for arrivals only ([`DirWatch::add_arrivals`]).
    arrivals: Option<PathBuf>,
}

impl Watch {
    /// Starts watching. `tasks/` is watched too, so that a removed or recreated
    /// `pending/` is noticed.
    /// `arrivals`: a directory watched for names moved into it only, and a
    /// path there that is no hint (this supervisor's own heartbeat, which
    /// would otherwise wake its loop every few seconds).
    pub fn start(
        tasks: &Path,
        pending: &Path,
        extra: &[&Path],
        arrivals: Option<(&Path, PathBuf)>,
        hints: Arc<Hints>,
    ) -> std::io::Result<Watch> {
        let own = arrivals.as_ref().map(|(_, own)| own.clone());
        let mut watch = DirWatch::start("mailroom-watch", move |seen| {
            let mut paths = Vec::with_capacity(seen.len());
            let mut rescan = false;
            for s in seen {
                match s {
                    Seen::Path(p) if Some(&p) == own.as_ref() => {}
                    Seen::Path(p) => paths.push(p),
                    Seen::Everything => rescan = true,
                }
            }
            if !paths.is_empty() || rescan {
                hints.push(paths, rescan);
            }
        })?;
        watch.add(tasks)?;
        watch.add(pending)?;
        // Control files and the config: hints like any other (best effort).
        for p in extra {
            let _ = watch.add(p);
        }
        let arrivals = arrivals.map(|(d, _)| d.to_path_buf());
        if let Some(d) = &arrivals {
            let _ = watch.add_arrivals(d);
        }
        let mut dirs = vec![tasks.to_path_buf(), pending.to_path_buf()];
        dirs.extend(extra.iter().map(|p| p.to_path_buf()));
        Ok(Watch {
            watch,
            dirs,
            arrivals,
        })
    }

    /// Re-adds every watch (after a rescan found directories removed and
    /// recreated: `pending/`, `tasks/control/cancel/`, ...). One that is
    /// still there keeps its watch.
    pub fn rewatch(&mut self) {
        for d in &self.dirs {
            self.watch.remove(d);
            let _ = self.watch.add(d);
        }
        if let Some(d) = &self.arrivals {
            self.watch.remove(d);
            let _ = self.watch.add_arrivals(d);
        }
    }
}
