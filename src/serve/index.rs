//! Cached listings of the state directories: which task files each holds and
//! when each was submitted (its mtime), read from the directory listing and
//! one `lstat` per new name, never from the files' contents.
//!
//! A listing is reused while its directory's identity and mtime are
//! unchanged and that mtime is old enough to be trusted: the kernel stamps
//! directory mtimes from a coarse clock, so a change in the same tick as an
//! earlier read would leave the stamp as it was ("racy" stamps, as git calls
//! them). Entry mtimes are kept by name across re-reads, because a task
//! file's mtime survives its moves (rename keeps it) and so one task is
//! `lstat`ed once however often it moves.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::parse::task::{Entry as FileEntry, classify};
use crate::tree::layout::{Layout, State};

/// A directory stamp younger than this is re-read at every request.
const RACY: Duration = Duration::from_secs(2);

/// One task file found in a state directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub ext: &'static str,
    /// The task file's mtime: when it was submitted (moves keep it).
    pub mtime: SystemTime,
}

/// The task files of one state directory, newest first (name breaks ties).
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// For `assigned/`: the names that have a state file there (tasks that
    /// ran, including pending ones waiting for a retry).
    pub state_files: HashSet<String>,
}

#[derive(Clone, PartialEq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: SystemTime,
}

/// A cached [`Meta`]: the state and stamp of the file it was read from.
type MetaEntry = (State, FileStamp, Arc<Meta>);

/// What says a task file is the one read before.
#[derive(Clone, Copy, PartialEq)]
struct FileStamp {
    mtime: SystemTime,
    size: u64,
    ino: u64,
}

struct Cached {
    stamp: Stamp,
    listing: Arc<Listing>,
    /// Every name listed, with its mtime and the pass that last saw it:
    /// kept from read to read, so a re-read looks names up instead of
    /// building a map of 100,000 names again.
    mtimes: HashMap<String, (SystemTime, u64), Fnv>,
    pass: u64,
}

/// FNV-1a with a final mix: names are short and a collision only costs
/// time, and SipHash was a tenth of a re-read of 100,000 names.
#[derive(Default, Clone, Copy)]
pub struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        // FNV's high bits are weak for short keys, and hashbrown groups
        // by them: mix (murmur3's finaliser).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Fnv = std::hash::BuildHasherDefault<FnvHasher>;

/// What the task list filters on from a task file's contents.
#[derive(Debug, Default)]
pub struct Meta {
    /// The description's first [`SEARCHED`] bytes, lowercased.
    pub description: String,
    pub labels: Vec<String>,
}

/// How much of a description the search looks at.
pub const SEARCHED: usize = 16 * 1024;

/// The listings of the four state directories, and the filter fields of the
/// task files read so far. Synchronous: callers run it on the blocking
/// pool, and its mutexes are never held across an `.await`.
#[derive(Default)]
pub struct Index {
    cache: Mutex<HashMap<State, Cached>>,
    /// By name: the file's state and stamp when read, and what it said. A
    /// task file that moved or was rewritten is read again.
    metas: Mutex<HashMap<String, MetaEntry, Fnv>>,
    /// inotify reports changes to pending files ([`Index::forget`]), so
    /// they need no `lstat` before their cached fields are used.
    watched: std::sync::atomic::AtomicBool,
}

impl Index {
    /// The listing of `state`, from the cache when the directory has not changed.
    pub fn listing(&self, layout: &Layout, state: State) -> Arc<Listing> {
        let dir = layout.dir(state);
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return Arc::default();
        };
        if !meta.is_dir() {
            // A symlink or a file where a state directory belongs: show nothing.
            return Arc::default();
        }
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let trusted = SystemTime::now()
            .duration_since(stamp.mtime)
            .is_ok_and(|age| age > RACY);
        if let Some(c) = cache.get(&state)
            && c.stamp == stamp
            && trusted
        {
            return c.listing.clone();
        }
        let c = cache.entry(state).or_insert_with(|| Cached {
            stamp: stamp.clone(),
            listing: Arc::default(),
            mtimes: HashMap::default(),
            pass: 0,
        });
        c.pass += 1;
        let listing = Arc::new(read(dir, state, &mut c.mtimes, c.pass));
        let pass = c.pass;
        // Names gone from the directory are dropped from the map too.
        c.mtimes.retain(|_, (_, p)| *p == pass);
        c.stamp = stamp;
        c.listing = listing.clone();
        listing
    }

    /// The filter fields of a listed task file, from the cache while its
    /// state and stamp are the same. Only pending files are `lstat`ed for
    /// that: people edit those in place, while the files in the other
    /// states are mailroom's and change only by moving.
    pub fn meta(&self, layout: &Layout, state: State, e: &Entry) -> Arc<Meta> {
        let p = layout.task_file(state, &e.name, e.ext);
        let watched = self.watched.load(std::sync::atomic::Ordering::Relaxed);
        let stamp = if state == State::Pending && !watched {
            match std::fs::symlink_metadata(&p) {
                Ok(m) => FileStamp {
                    mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    size: m.size(),
                    ino: m.ino(),
                },
                Err(_) => return Arc::default(),
            }
        } else {
            FileStamp {
                mtime: e.mtime,
                size: 0,
                ino: 0,
            }
        };
        {
            let metas = self.metas.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((s, t, m)) = metas.get(&e.name)
                && *s == state
                && *t == stamp
            {
                return m.clone();
            }
        }
        let m = Arc::new(
            crate::tree::fsx::read_task_file(&p, 1024 * 1024)
                .ok()
                .and_then(|(b, _)| crate::parse::task::parse(&e.name, &b).ok())
                .map(|t| {
                    let mut d = t.description;
                    if d.len() > SEARCHED {
                        let mut cut = SEARCHED;
                        while !d.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        d.truncate(cut);
                    }
                    Meta {
                        description: d.to_lowercase(),
                        labels: t.labels,
                    }
                })
                .unwrap_or_default(),
        );
        let mut metas = self.metas.lock().unwrap_or_else(|e| e.into_inner());
        metas.insert(e.name.clone(), (state, stamp, m.clone()));
        m
    }

    /// From now on, changes to pending files are reported through
    /// [`Index::forget`] (an inotify watch is up).
    pub fn set_watched(&self, on: bool) {
        self.watched.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A task file changed: its filter fields are read again. None: any
    /// may have (the watch overflowed or failed).
    pub fn forget(&self, name: Option<&str>) {
        let mut metas = self.metas.lock().unwrap_or_else(|e| e.into_inner());
        match name {
            Some(n) => {
                metas.remove(n);
            }
            None => metas.clear(),
        }
    }

    /// All four listings.
    pub fn all(&self, layout: &Layout) -> [(State, Arc<Listing>); 4] {
        State::ALL.map(|s| (s, self.listing(layout, s)))
    }
}

fn read(
    dir: &std::path::Path,
    state: State,
    known: &mut HashMap<String, (SystemTime, u64), Fnv>,
    pass: u64,
) -> Listing {
    let mut out = Listing::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for ent in rd.flatten() {
        let fname = ent.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        if state == State::Assigned
            && let Some(n) = fname.strip_suffix(".state.json")
        {
            out.state_files.insert(n.to_owned());
            continue;
        }
        let FileEntry::Task { name, ext } = classify(fname) else {
            continue;
        };
        let mtime = match known.get_mut(name) {
            Some((t, p)) => {
                *p = pass;
                *t
            }
            None => match ent.metadata() {
                Ok(m) => {
                    let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    known.insert(name.to_owned(), (t, pass));
                    t
                }
                // Gone since the listing was read: it moved on; skip it.
                Err(_) => continue,
            },
        };
        out.entries.push(Entry {
            name: name.to_owned(),
            ext,
            mtime,
        });
    }
    // Names are unique, so an unstable sort gives the one order.
    out.entries
        .sort_unstable_by(|a, b| b.mtime.cmp(&a.mtime).then_with(|| a.name.cmp(&b.name)));
    out
}
