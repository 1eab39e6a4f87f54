//! Runs in shared workdirs: whether another run of this supervisor worked in
//! the same directory while a run did, so that a `files_modified` read from
//! `git status` says when it may hold other runs' changes too
//! (`files_modified_exact: false`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The runs in each shared workdir, as flags that turn true once another run
/// overlaps.
#[derive(Default)]
pub(super) struct Workdirs(Mutex<HashMap<PathBuf, Vec<Arc<AtomicBool>>>>);

/// One run's use of a workdir, from its spawn to its commit; dropping it
/// leaves the workdir.
pub(super) struct WorkdirUse {
    dirs: Arc<Workdirs>,
    dir: PathBuf,
    flag: Arc<AtomicBool>,
}

impl std::fmt::Debug for WorkdirUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkdirUse")
            .field("dir", &self.dir)
            .field("overlapped", &self.overlapped())
            .finish()
    }
}

impl Workdirs {
    /// A run starts in `dir`: it and every run already there overlap.
    pub(super) fn enter(self: &Arc<Self>, dir: &Path) -> WorkdirUse {
        let flag = Arc::new(AtomicBool::new(false));
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let runs = m.entry(dir.to_path_buf()).or_default();
        if !runs.is_empty() {
            flag.store(true, Ordering::Relaxed);
            for f in runs.iter() {
                f.store(true, Ordering::Relaxed);
            }
        }
        runs.push(flag.clone());
        WorkdirUse {
            dirs: self.clone(),
            dir: dir.to_path_buf(),
            flag,
        }
    }
}

impl WorkdirUse {
    /// Whether another run worked in the workdir at any time during this one.
    pub(super) fn overlapped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl Drop for WorkdirUse {
    fn drop(&mut self) {
        let mut m = self.dirs.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runs) = m.get_mut(&self.dir) {
            runs.retain(|f| !Arc::ptr_eq(f, &self.flag));
            if runs.is_empty() {
                m.remove(&self.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_overlap_only_with_runs_in_the_same_workdir_at_the_same_time() {
        let w = Arc::new(Workdirs::default());
        let a = w.enter(Path::new("/w"));
        let other = w.enter(Path::new("/elsewhere"));
        assert!(!a.overlapped() && !other.overlapped());
        let b = w.enter(Path::new("/w"));
        assert!(a.overlapped() && b.overlapped(), "both see the overlap");
        drop(b);
        assert!(a.overlapped(), "an overlap is never forgotten");
        drop(a);
        let c = w.enter(Path::new("/w"));
        assert!(!c.overlapped(), "runs that did not meet do not overlap");
        assert!(!other.overlapped());
    }
}
