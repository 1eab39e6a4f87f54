//! Slot locks (protocol version 2): `tasks/slots/<agent>.<n>.lock` for `n` in
//! `0..max_instances`. A run of an agent holds one of its agent's slots (an
//! exclusive `flock`) for its whole life, so `max_instances` holds across the
//! tree: every supervisor and host that shares it sees the same slots.
//!
//! The supervisor takes a free slot before it claims a task; the locked
//! descriptor goes to the run's keeper (as its stdout, which the keeper moves
//! to a descriptor of its own at once), and the keeper holds it until it
//! exits. A flock belongs to the open file description, so the lock is never
//! free between the supervisor's hold and the keeper's. Slot files are never
//! unlinked.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use crate::tree::layout::Layout;

/// A held slot: dropping it (closing the last descriptor) frees it.
#[derive(Debug)]
pub struct Slot {
    pub file: File,
    pub path: PathBuf,
}

/// `tasks/slots/<agent>.<n>.lock`.
pub fn path(layout: &Layout, agent: &str, n: usize) -> PathBuf {
    layout.slots.join(format!("{agent}.{n}.lock"))
}

/// Takes the first free slot of `agent` (of `max`) without waiting. `None`
/// when all are held: the agent is busy tree-wide.
pub fn try_take(layout: &Layout, agent: &str, max: usize) -> io::Result<Option<Slot>> {
    for n in 0..max {
        let path = path(layout, agent, n);
        let file = match open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::tree::fsx::create_dir_all(&layout.slots)?;
                open(&path)?
            }
            r => r?,
        };
        match file.try_lock() {
            Ok(()) => return Ok(Some(Slot { file, path })),
            Err(fs::TryLockError::WouldBlock) => continue,
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// How many of `agent`'s `max` slots are held right now (by anyone).
pub fn held(layout: &Layout, agent: &str, max: usize) -> usize {
    (0..max)
        .filter(|n| {
            open(&path(layout, agent, *n))
                .is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
        })
        .count()
}

fn open(path: &std::path::Path) -> io::Result<File> {
    crate::tree::lock::open_lock_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_in_turn_and_freed_on_close() {
        let dir = std::env::temp_dir().join(format!("mailroom-slots-{}", std::process::id()));
        let layout = Layout::new(&dir);
        let a = try_take(&layout, "a", 2).unwrap().unwrap();
        let b = try_take(&layout, "a", 2).unwrap().unwrap();
        assert_ne!(a.path, b.path);
        assert!(try_take(&layout, "a", 2).unwrap().is_none());
        assert_eq!(held(&layout, "a", 2), 2);
        // Another agent's slots are its own.
        assert!(try_take(&layout, "b", 1).unwrap().is_some());
        // A duplicate keeps the lock (one open file description).
        let dup = a.file.try_clone().unwrap();
        drop(a);
        assert!(try_take(&layout, "a", 2).unwrap().is_none());
        drop(dup);
        let c = try_take(&layout, "a", 2).unwrap().unwrap();
        assert_eq!(c.path, path(&layout, "a", 0));
        drop((b, c));
        fs::remove_dir_all(dir).unwrap();
    }
}
