//! Reading `pending/`: full scans, single files from hints, and the per-file look (owner check, parse, brief).

use super::*;

/// What a look at one pending file found.
pub(super) enum Look {
    Gone,
    /// Same file as last time (device, inode, size, modification time).
    Unchanged,
    /// Not a regular file, a link, too large: refused without parsing.
    Refused(String),
    /// An error of the system, not of the file (out of file descriptors or
    /// memory, an I/O error): looked at again later, never filed for it.
    Transient(String),
    Read(Box<Fresh>),
}

/// A pending file just read, reduced to what scheduling keeps.
pub(super) struct Fresh {
    pub(super) id: FileId,
    pub(super) parsed: Result<Brief, Box<TaskError>>,
    pub(super) retry_at: Option<SystemTime>,
    pub(super) excluded: Vec<String>,
}

/// What scheduling keeps of a parsed task: its route is worked out now, and a
/// parent of expanded subtasks waits for its children.
fn brief(
    config: &Config,
    t: Task,
    modified: SystemTime,
    excluded: &[String],
    children: Vec<String>,
) -> Brief {
    let not_before = t.starts_at(modified);
    let route = crate::sched::routing::route(config, &t, excluded).map(|(r, _)| Arc::new(r));
    let mut after = t.after;
    for c in children {
        if !after.contains(&c) {
            after.push(c);
        }
    }
    Brief {
        priority: t.priority,
        not_before,
        after: after.into_boxed_slice(),
        route,
    }
}

/// [`look`], with a panic in the parser turned into a refusal of that one
/// file, so that neither the loop nor the other files of a scan suffer.
pub(super) fn look_guarded(
    layout: &Layout,
    config: &Config,
    name: &str,
    ext: &str,
    known: Option<FileId>,
    has_state: bool,
) -> Look {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        look(layout, config, name, ext, known, has_state)
    }))
    .unwrap_or_else(|_| {
        error!(
            task = name,
            "internal error while reading the task file; refusing it"
        );
        Look::Refused("mailroom could not parse it (internal error; please report)".into())
    })
}

/// Reads and parses `pending/<name>.<ext>` unless it is `known` (unchanged),
/// and reduces it to its [`Brief`] at once, so that a scan of 100,000 files
/// never holds their descriptions. `has_state`: the task has retry
/// bookkeeping in `assigned/`. No supervisor state: safe on several threads.
pub(super) fn look(
    layout: &Layout,
    config: &Config,
    name: &str,
    ext: &str,
    known: Option<FileId>,
    has_state: bool,
) -> Look {
    let path = layout.task_file(State::Pending, name, ext);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if fsx::system_error(&e) => {
            return Look::Transient(format!("cannot look at {}: {e}", layout.rel(&path)));
        }
        Err(_) => return Look::Gone,
    };
    let id = FileId::of(&meta);
    if known == Some(id) {
        return Look::Unchanged;
    }
    let modified = meta.modified().unwrap_or(SystemTime::now());
    let me = nix::unistd::geteuid().as_raw();
    if !config.shared && id.uid != me {
        return Look::Refused(
            ReadError::ForeignOwner { owner: id.uid, me }.to_string()
                + " (set `shared: true` in mailroom.yaml to accept other users' tasks)",
        );
    }
    let parsed = match fsx::read_task_file(&path, config.max_task_bytes) {
        Ok((bytes, _)) => task::parse_as(name, ext, &bytes),
        Err(e) if e.is_gone() => return Look::Gone,
        Err(ReadError::Io(e)) if fsx::system_error(&e) => {
            return Look::Transient(format!("cannot read {}: {e}", layout.rel(&path)));
        }
        Err(e @ (ReadError::Io(_) | ReadError::ForeignOwner { .. })) => {
            warn!(task = name, error = %e, "cannot read task file");
            Err(TaskError {
                line: None,
                column: None,
                message: format!("cannot read the file: {e}"),
                key: None,
            })
        }
        Err(e) => return Look::Refused(e.to_string()),
    };
    let (retry_at, excluded, children) = if has_state {
        let st = books::read_state(layout, name);
        (
            st.not_before.as_deref().and_then(record::parse_ts),
            st.excluded_agents,
            st.children,
        )
    } else {
        (None, Vec::new(), Vec::new())
    };
    let parsed = match parsed {
        Ok(t) => Ok(brief(config, t, modified, &excluded, children)),
        Err(e) => Err(Box::new(e)),
    };
    Look::Read(Box::new(Fresh {
        id,
        parsed,
        retry_at,
        excluded,
    }))
}

pub(super) fn list_suffix(dir: &Path, suffix: &str) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|f| f.strip_suffix(suffix).map(str::to_owned))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Supervisor {
    pub(super) fn full_scan(&mut self) {
        let layout = self.layout().clone();
        // The files are the truth: other supervisors' cooldowns, ours from
        // before a restart, and none for an agent whose file a person removed.
        self.cooldowns = books::cooldowns(&layout, true)
            .into_iter()
            .filter_map(|c| Some((c.agent, (record::parse_ts(&c.until)?, c.message))))
            .collect();
        self.stateful = list_suffix(&layout.assigned, ".state.json");
        let rd = match std::fs::read_dir(&layout.pending) {
            Ok(rd) => rd,
            Err(e) => {
                error!(dir = %layout.pending.display(), error = %e, "cannot read tasks/pending");
                return;
            }
        };
        let mut seen = HashSet::new();
        let mut files: Vec<(String, &'static str)> = Vec::new();
        self.scanning = true;
        for ent in rd.flatten() {
            let fname = ent.file_name();
            let fname = match fname.to_str() {
                Some(s) => s.to_owned(),
                None => {
                    self.reject_bad_name(&ent.path(), "the file name is not valid UTF-8");
                    continue;
                }
            };
            match task::classify(&fname) {
                Entry::Ignored => {}
                Entry::BadName(why) => self.reject_bad_name(&ent.path(), &why),
                Entry::Task { name, ext } => {
                    if seen.insert(name.to_owned()) {
                        files.push((name.to_owned(), ext));
                    } else {
                        debug!(
                            task = name,
                            "second file of the same name; handled after the first"
                        );
                    }
                }
            }
        }
        // Reading and parsing dominate a large scan (100,000 files at start-up):
        // spread them over the cores, then apply the results here, in order.
        // In chunks, so that the files read but not yet applied stay few.
        for part in files.chunks(4096) {
            let looks = self.look_all(part);
            for ((name, ext), look) in part.iter().zip(looks) {
                self.apply(name, ext, look);
            }
        }
        let gone: Vec<String> = self
            .pending
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.forget(&n);
        }
        self.scanning = false;
        // Dependencies may have finished under other supervisors, or were
        // simply read after their dependants.
        self.replace_waiting();
    }

    pub(super) fn examine_path(&mut self, p: &Path) {
        let l = self.layout();
        if p.parent() == Some(l.cancel.as_path()) || p.parent() == Some(l.control.as_path()) {
            self.control_dirty = true;
            return;
        }
        if p.parent() == Some(crate::tree::registry::dir(l).as_path()) {
            if let Some(pid) = p
                .file_name()
                .and_then(|n| crate::tree::registry::local_pid(n, &self.ctx.host))
            {
                self.peer_hinted(pid);
            }
            return;
        }
        if p == l.root.join(crate::parse::config::CONFIG_FILE) {
            self.reload_due = Some(Instant::now() + Duration::from_millis(300));
            return;
        }
        if p.parent() != Some(self.layout().pending.as_path()) {
            if p == self.layout().pending {
                self.hints.request_rescan();
            }
            return;
        }
        let Some(fname) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        match task::classify(fname) {
            Entry::Task { name, .. } => {
                let name = name.to_owned();
                self.examine_name(&name);
            }
            Entry::BadName(why) => {
                let p = p.to_path_buf();
                self.reject_bad_name(&p, &why)
            }
            Entry::Ignored => {}
        }
    }

    /// Looks at `pending/<name>.*` again, whichever extension it has now.
    pub(super) fn examine_name(&mut self, name: &str) {
        match self.layout().find(State::Pending, name) {
            Some((_, ext)) => self.examine(name, ext, false),
            None => self.forget(name),
        }
    }

    /// Forgets a pending file that left `pending/` without being claimed
    /// (filed in `failed/`, removed, moved away). It may have been all that
    /// kept the tasks waiting for its name (a name is not "completed" while
    /// a file of it is pending): they are placed again (see `schedule`).
    pub(super) fn forget(&mut self, name: &str) {
        if self.drop_pending(name) && !self.waiting.is_empty() {
            self.name_freed = true;
        }
    }

    /// Drops `name` from the scheduler's books; true when it was pending.
    /// Alone for a claimed task: its dependants wait for its run.
    pub(super) fn drop_pending(&mut self, name: &str) -> bool {
        let was = self.pending.remove(name).is_some();
        if was && !self.unrecoverable.is_empty() {
            self.unrecoverable.remove(&format!("second-file:{name}"));
        }
        self.queue.remove(name);
        self.waiting.remove(name);
        self.unsettled.remove(name);
        self.rejects.remove(name);
        self.logged_waits.remove(name);
        self.claim_errors.remove(name);
        was
    }

    /// Reads and parses one pending file unless it is unchanged since last time.
    /// In a full scan, `stateful` (one readdir of `assigned/`) says which names
    /// have retry bookkeeping; otherwise the state file is looked up directly.
    pub(super) fn examine(&mut self, name: &str, ext: &str, in_scan: bool) {
        let known = self
            .pending
            .get(name)
            .filter(|p| p.ext == ext)
            .map(|p| p.id);
        let has_state = self.has_state(name, in_scan);
        if has_state && !in_scan {
            // A task that ran before is back: if its run hit a usage limit, the
            // cooldown is already on disk, but the run's end may reach this loop
            // only after the file does (two events, either first). Read it now, so
            // the task never starts again on the cooling agent.
            self.merge_disk_cooldowns();
        }
        let look = look_guarded(self.layout(), &self.config, name, ext, known, has_state);
        self.apply(name, ext, look);
    }

    /// Adds the cooldowns on disk (this supervisor's and others') to the ones
    /// the loop knows, keeping the later end of each.
    pub(super) fn merge_disk_cooldowns(&mut self) {
        for c in books::cooldowns(self.layout(), false) {
            let Some(until) = record::parse_ts(&c.until) else {
                continue;
            };
            match self.cooldowns.get(&c.agent) {
                Some((t, _)) if *t >= until => {}
                _ => {
                    self.cooldowns.insert(c.agent, (until, c.message));
                }
            }
        }
    }

    pub(super) fn has_state(&self, name: &str, in_scan: bool) -> bool {
        if in_scan {
            self.stateful.contains(name)
        } else {
            books::exists(&self.layout().state_file(name))
        }
    }

    /// [`look`] at many files, on every core when there are enough of them.
    pub(super) fn look_all(&self, files: &[(String, &'static str)]) -> Vec<Look> {
        let (layout, config) = (self.layout(), &*self.config);
        let args = |n: &str, e: &str| {
            let known = self.pending.get(n).filter(|p| p.ext == e).map(|p| p.id);
            (known, self.has_state(n, true))
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if files.len() < 512 || threads < 2 {
            return files
                .iter()
                .map(|(n, e)| {
                    let (k, h) = args(n, e);
                    look_guarded(layout, config, n, e, k, h)
                })
                .collect();
        }
        let chunk = files.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    let part: Vec<(&str, &str, Option<FileId>, bool)> = part
                        .iter()
                        .map(|(n, e)| {
                            let (k, h) = args(n, e);
                            (n.as_str(), *e, k, h)
                        })
                        .collect();
                    sc.spawn(move || {
                        part.into_iter()
                            .map(|(n, e, k, h)| look_guarded(layout, config, n, e, k, h))
                            .collect::<Vec<Look>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("look_guarded does not panic"))
                .collect()
        })
    }

    /// Takes what [`look`] found into the pending set.
    pub(super) fn apply(&mut self, name: &str, ext: &str, look: Look) {
        let fresh = match look {
            Look::Unchanged => return,
            Look::Gone => return self.forget(name),
            Look::Refused(e) => {
                // Links, FIFOs, directories, oversized files: refused at once.
                self.forget(name);
                let rec = books::never_ran_record(Outcome::Invalid, format!("refused: {e}"));
                self.reject_pending(name, ext, rec, false);
                return;
            }
            Look::Transient(why) => return self.hold_after_error(name, why),
            Look::Read(f) => *f,
        };
        let Fresh {
            id,
            mut parsed,
            retry_at,
            excluded,
        } = fresh;
        let ext: &'static str = task::task_ext(ext).unwrap_or("yaml");
        // Intern the route: most tasks share one.
        if let Ok(b) = &mut parsed
            && let Ok(r) = &mut b.route
        {
            *r = self
                .routes
                .entry((**r).clone())
                .or_insert_with(|| r.clone())
                .clone();
        }
        self.forget(name);
        self.pending.insert(
            name.to_owned(),
            Pending {
                ext,
                id,
                parsed,
                seen: Instant::now(),
                retry_at,
                excluded,
                hold: None,
            },
        );
        self.place(name);
    }
}
