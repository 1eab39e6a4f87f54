//! inotify on a few directories, for what can change a listing: names that
//! appear, go or are written (create, delete, moves, writes and their close),
//! and the directories themselves going. Nothing else is asked of the kernel.
//!
//! A general watcher (the `notify` crate before) also asks for `IN_OPEN`: then
//! every file or directory that mailroom itself opens in a watched directory
//! (a pending task file it reads, `tasks/assigned` it lists) queues an event
//! and wakes the watching thread, only for the event to be thrown away. With
//! 100,000 pending task files read at start-up, that was 100,000 events and
//! queue overflows (each a full rescan).
//!
//! One thread per watch reads the events and hands each batch to a callback;
//! dropping the [`DirWatch`] stops the thread.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

/// What a batch of events says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// This name in a watched directory (or, for the directory itself going,
    /// the directory) appeared, changed or went.
    Path(PathBuf),
    /// Events were lost (the kernel's queue overflowed) or a watch ended:
    /// look at everything again.
    Everything,
}

/// The events asked for: what can change which names a directory holds and
/// what they hold. Not opens, reads, closes after reading, or attributes.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::EXCL_UNLINK
}

/// A running watch; see the module's documentation.
pub struct DirWatch {
    watches: Watches,
    dirs: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    /// Closing it (on drop) wakes the thread to end.
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirWatch {
    /// Starts the thread (named `name`), which calls `on` with each batch of
    /// events read. Add directories with [`DirWatch::add`].
    pub fn start(name: &str, mut on: impl FnMut(Vec<Seen>) + Send + 'static) -> io::Result<Self> {
        let mut ino = Inotify::init()?;
        let watches = ino.watches();
        let dirs: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>> = Arc::default();
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let names = dirs.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let mut fds = [
                        libc::pollfd {
                            fd: ino.as_fd().as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: stop_r.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: poll on two descriptors this thread holds open.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(error = %e, "inotify failed; no more change events");
                        on(vec![Seen::Everything]);
                        return;
                    }
                    if fds[1].revents != 0 {
                        return;
                    }
                    let events = match ino.read_events(&mut buf) {
                        Ok(e) => e,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => {
                            // The owner's periodic rescans go on without us.
                            tracing::warn!(error = %e, "inotify failed; no more change events");
                            on(vec![Seen::Everything]);
                            return;
                        }
                    };
                    let mut seen = Vec::new();
                    {
                        let mut dirs = names.lock().unwrap_or_else(|e| e.into_inner());
                        for ev in events {
                            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                                seen.push(Seen::Everything);
                                continue;
                            }
                            if ev.mask.contains(EventMask::IGNORED) {
                                // The watch ended (its directory went, or it
                                // was removed): the owner looks again.
                                if dirs.remove(&ev.wd).is_some() {
                                    seen.push(Seen::Everything);
                                }
                                continue;
                            }
                            let Some(dir) = dirs.get(&ev.wd) else {
                                continue;
                            };
                            seen.push(Seen::Path(match ev.name {
                                Some(n) => dir.join(n),
                                None => dir.clone(),
                            }));
                        }
                    }
                    if !seen.is_empty() {
                        on(seen);
                    }
                }
            })?;
        Ok(DirWatch {
            watches,
            dirs,
            stop: Some(stop_w),
            thread: Some(thread),
        })
    }

    /// Watches `dir` (again: a directory removed and made anew needs a new
    /// watch).
    pub fn add(&mut self, dir: &Path) -> io::Result<()> {
        self.add_with(dir, mask())
    }

    /// Watches `dir` for names moved into it only (and its own removal):
    /// for a directory whose files are written to a temp name and renamed,
    /// one event per file written.
    pub fn add_arrivals(&mut self, dir: &Path) -> io::Result<()> {
        self.add_with(
            dir,
            WatchMask::MOVED_TO | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF,
        )
    }

    fn add_with(&mut self, dir: &Path, mask: WatchMask) -> io::Result<()> {
        // Under the map's lock: the thread cannot take the new watch's first
        // events for an unknown one's before it is in the map.
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let wd = self.watches.add(dir, mask | WatchMask::ONLYDIR)?;
        dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Stops watching `dir`, if it is watched.
    pub fn remove(&mut self, dir: &Path) {
        let wds: Vec<WatchDescriptor> = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let wds: Vec<_> = dirs
                .iter()
                .filter(|(_, d)| d.as_path() == dir)
                .map(|(wd, _)| wd.clone())
                .collect();
            for wd in &wds {
                dirs.remove(wd);
            }
            wds
        };
        for wd in wds {
            let _ = self.watches.remove(wd);
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn next(rx: &mpsc::Receiver<Vec<Seen>>) -> Vec<Seen> {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("no event within 10 s")
    }

    /// Names that appear, are written, move and go are seen; opening and
    /// reading files, and listing the directory, are not events at all.
    #[test]
    fn changes_are_seen_and_reads_are_not() {
        let dir = std::env::temp_dir().join(format!("mailroom-dirwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("old.yaml"), "x").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = DirWatch::start("test-watch", move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        w.add(&dir).unwrap();
        // Reads first: none of them may produce an event. The write that
        // follows is then the first thing seen.
        for _ in 0..50 {
            std::fs::read(dir.join("old.yaml")).unwrap();
            std::fs::read_dir(&dir).unwrap().for_each(drop);
            std::fs::read_dir(dir.join("sub")).unwrap().for_each(drop);
        }
        std::fs::write(dir.join("new.yaml"), "y").unwrap();
        let first = next(&rx);
        assert_eq!(first[0], Seen::Path(dir.join("new.yaml")), "{first:?}");
        // (`mv`: renames in the code base are tree::moves' alone.)
        let mv = std::process::Command::new("mv")
            .arg(dir.join("new.yaml"))
            .arg(dir.join("moved.yaml"))
            .status()
            .unwrap();
        assert!(mv.success());
        let mut seen = Vec::new();
        while !seen.contains(&Seen::Path(dir.join("moved.yaml"))) {
            seen.extend(next(&rx));
        }
        assert!(seen.contains(&Seen::Path(dir.join("new.yaml"))), "{seen:?}");
        // The directory going ends its watch: look at everything.
        std::fs::remove_dir_all(&dir).unwrap();
        let mut seen = Vec::new();
        while !seen.contains(&Seen::Everything) {
            seen.extend(next(&rx));
        }
        // Dropping the watch ends its thread (join returns).
        drop(w);
    }
}
