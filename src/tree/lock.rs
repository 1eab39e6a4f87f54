//! Task locks: an exclusive `flock` on `tasks/assigned/<name>.lock`, taken
//! before any move of the task and released (unlinked while held) after.

use std::fs::{self, File, OpenOptions};
use std::io;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use crate::tree::layout::Layout;

/// An exclusive `flock` on `tasks/assigned/<name>.lock`: whoever holds it owns
/// the task's moves and bookkeeping. Dropped (closed) releases it; the file is
/// unlinked only by [`TaskLock::release`], while still held.
#[derive(Debug)]
pub struct TaskLock {
    file: File,
    path: PathBuf,
}

impl TaskLock {
    /// Takes the lock without waiting. `None` when somebody else holds it.
    pub fn try_acquire(layout: &Layout, name: &str) -> io::Result<Option<TaskLock>> {
        let path = layout.lock_file(name);
        for _ in 0..4 {
            let file = match open_lock_file(&path) {
                Ok(f) => f,
                // A directory, a link or a device in the lock's place (put
                // there by hand or by an agent) can be nobody's lock: it is
                // set aside, or the task could never be locked again.
                Err(e) if not_a_lock_file(&path) => {
                    let aside = crate::tree::fsx::set_aside(&path).map_err(|e2| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "{} is not a lock file ({e}) and cannot be set aside: {e2}",
                                path.display()
                            ),
                        )
                    })?;
                    tracing::warn!(
                        path = %path.display(),
                        set_aside_as = %aside.display(),
                        "the task's lock file was not a regular file; set it aside"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
            // The holder before us may have unlinked the file between our open
            // and our lock: then we locked an orphaned inode. Check and retry.
            let ours = file.metadata()?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                    return Ok(Some(TaskLock { file, path }));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    /// A duplicate of the locked descriptor, for the agent's stdin: it shares
    /// the lock, so the lock stays held as long as the agent (or anything that
    /// inherited its stdin) lives, even if the supervisor dies.
    pub fn share(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Unlinks the lock file while still holding it, then closes it. A lock
    /// file that is no longer ours (somebody removed `assigned/` meanwhile and
    /// another locker made a new one) is left to its holder.
    pub fn release(self) {
        if self.is_at_path() {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// Like [`release`](Self::release), but the lock file is moved into
    /// `dir` (a terminal commit's run directory) as `lock`, instead of being
    /// unlinked, when `dir` is there. To a locker this is the same as an
    /// unlink: the path is gone. To the file system it is cheaper: no inode
    /// is freed, and some (ext4 without a journal) scan every recently freed
    /// inode again at each new file they make.
    pub fn release_into(self, dir: &std::path::Path) {
        if self.is_at_path() {
            let _ = crate::tree::moves::park_or_remove(&self.path, dir, "lock");
        }
    }

    /// Whether the file at our path is still the one we locked (nobody removed
    /// it, or `assigned/`, meanwhile, or made a new one).
    pub fn is_at_path(&self) -> bool {
        let ours = self.file.metadata().ok();
        matches!((ours, fs::symlink_metadata(&self.path)),
            (Some(o), Ok(m)) if m.ino() == o.ino() && m.dev() == o.dev())
    }
}

/// Opens (creating) a lock file: read-write, since NFS emulates `flock` with
/// byte-range locks and an exclusive one needs a descriptor open for writing;
/// never through a symlink; mode 0600, or 0660 in a shared tree, where the
/// group must be able to take it (set past the umask; only the file's owner
/// may, and another user's file keeps the mode its owner gave it). Used for
/// task locks and slot locks.
/// Whether something other than a regular file (or nothing) is at a lock's path.
fn not_a_lock_file(path: &std::path::Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file())
}

pub(crate) fn open_lock_file(path: &std::path::Path) -> io::Result<File> {
    let shared = crate::tree::fsx::shared();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(if shared { 0o660 } else { 0o600 })
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if shared {
        let _ = file.set_permissions(fs::Permissions::from_mode(0o660));
    }
    Ok(file)
}

/// The pid of a process that holds a `flock` on `f`'s file, from
/// `/proc/locks` (a process that inherited the lock from its holder is not
/// named). None when it cannot be told.
pub fn flock_holder(f: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    let dev = m.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // `1: FLOCK  ADVISORY  WRITE 1234 08:02:131 0 EOF`
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// Takes an exclusive `flock` on `f`, waiting at most `wait`: for a lock
/// that others hold for moments (the context's, a tree's count), which a
/// process that keeps it (an agent that took it) must not turn into a hang.
/// The error says how it is held, to follow the file's name.
///
/// A busy lock is waited for in line (a blocking flock is woken when the
/// lock is let go; polling would lose every race to the waiters in line),
/// on a thread of its own so that the wait can end. That thread locks
/// through a duplicate of the descriptor (one open file description, one
/// lock): given up on, it lets go as it closes the last descriptor. Any
/// number of callers may wait at once (commits that end together); at most
/// four threads given up on are left blocked at a time, and while four are,
/// a busy lock is refused at once.
pub fn flock_within(f: &std::fs::File, wait: std::time::Duration) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    /// Waiting threads given up on that are still blocked.
    static ABANDONED: AtomicUsize = AtomicUsize::new(0);
    match f.try_lock() {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot be locked: {e}")),
    }
    let held = |why: &str| {
        let by = flock_holder(f)
            .map(|pid| format!(" (by pid {pid})"))
            .unwrap_or_default();
        format!("has been held by another process{by} {why}")
    };
    if ABANDONED.load(Ordering::SeqCst) >= 4 {
        return Err(held("through the last waits"));
    }
    let dup = f
        .try_clone()
        .map_err(|e| format!("cannot be locked: {e}"))?;
    // The waiter's fate: waiting, given up on, or done.
    const WAITING: u8 = 0;
    const GIVEN_UP: u8 = 1;
    const DONE: u8 = 2;
    let fate = Arc::new(Mutex::new(WAITING));
    let (tx, rx) = std::sync::mpsc::channel();
    let theirs = fate.clone();
    let spawned = std::thread::Builder::new()
        .name("flock-wait".into())
        .spawn(move || {
            let r = dup.lock();
            let mut fate = theirs.lock().unwrap_or_else(|e| e.into_inner());
            if *fate == GIVEN_UP {
                ABANDONED.fetch_sub(1, Ordering::SeqCst);
            }
            *fate = DONE;
            drop(fate);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot be waited for: {e}"));
    }
    let got = match rx.recv_timeout(wait) {
        Ok(r) => r,
        Err(_) => {
            let mut fate = fate.lock().unwrap_or_else(|e| e.into_inner());
            if *fate == WAITING {
                *fate = GIVEN_UP;
                ABANDONED.fetch_add(1, Ordering::SeqCst);
                return Err(held(&format!("for {wait:?}")));
            }
            // It got the lock just as the wait ran out.
            drop(fate);
            match rx.recv() {
                Ok(r) => r,
                Err(_) => return Err(held(&format!("for {wait:?}"))),
            }
        }
    };
    got.map_err(|e| format!("cannot be locked: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn lock_file(dir: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".lock"))
            .unwrap()
    }

    /// Commits that end together all wait their turn: more waiters than the
    /// cap on abandoned ones are no reason to refuse (the six runs a new
    /// supervisor adopts commit within milliseconds of each other).
    #[test]
    fn many_waiters_at_once_all_get_the_lock_in_turn() {
        let dir = crate::tree::fsx::tests::tempdir();
        let holder = lock_file(&dir);
        holder.lock().unwrap();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let f = lock_file(&dir);
                std::thread::spawn(move || {
                    let r = flock_within(&f, Duration::from_secs(20));
                    // Held for a moment, as a merge does.
                    std::thread::sleep(Duration::from_millis(5));
                    r
                })
            })
            .collect();
        // Every waiter is queued before the holder lets go.
        use std::os::unix::fs::MetadataExt;
        let ino = format!(":{} ", holder.metadata().unwrap().ino());
        let until = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("->") && l.contains(&ino))
            .count()
            < 8
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        holder.unlock().unwrap();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Ok(()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
