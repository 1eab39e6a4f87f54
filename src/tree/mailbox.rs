//! The mailbox: task locks, the claim, and every move between states, each
//! ordered so that a crash at any instant leaves a state recovery can finish.
//!
//! Commit points (see PROTOCOL.md): a task's state is the directory its task
//! file is in. Records are written (temp, fsync, rename, fsync dir) before the
//! task file moves; the move itself (no-replace rename, fsync of both
//! directories) is the commit.

use crate::model::Outcome;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::record::{ResultRecord, Status, TaskState};
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

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
            // The descriptor becomes the agent's stdin: an empty file, so
            // reading it is like reading /dev/null.
            // Read-write: NFS emulates flock with byte-range locks, and an
            // exclusive one needs a descriptor open for writing.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
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

    /// The descriptor (for diagnostics).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Unlinks the lock file while still holding it, then closes it.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What happened to a claim attempt.
#[derive(Debug)]
pub enum Claim {
    /// The task file is now in `assigned/`.
    Claimed,
    /// The file is gone (somebody else claimed or removed it).
    Gone,
    /// Another task file already uses this name, at this path.
    Clash(PathBuf),
}

/// Where a task of this name already exists, other than `pending/`.
pub fn existing_elsewhere(layout: &Layout, name: &str) -> Option<PathBuf> {
    [State::Assigned, State::Completed, State::Failed]
        .into_iter()
        .find_map(|s| layout.find(s, name).map(|(p, _)| p))
}

/// Moves `pending/<name>.<ext>` to `assigned/`, holding the task's lock.
pub fn claim(layout: &Layout, name: &str, ext: &str, _lock: &TaskLock) -> io::Result<Claim> {
    let from = layout.task_file(State::Pending, name, ext);
    let to = layout.task_file(State::Assigned, name, ext);
    if let Some(p) = existing_elsewhere(layout, name) {
        if layout.find(State::Pending, name).is_none() {
            return Ok(Claim::Gone);
        }
        // The same file in pending/ and assigned/ (an interrupted link +
        // unlink of a claim): finishing the move below completes that claim.
        if !(p.starts_with(&layout.assigned) && fsx::same_inode(&from, &p)) {
            return Ok(Claim::Clash(p));
        }
    }
    match fsx::rename_noreplace(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Gone),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Claim::Clash(to)),
        Err(e) => return Err(e),
    }
    fsx::fsync_dir(&layout.assigned)?;
    fsx::fsync_dir(&layout.pending)?;
    Ok(Claim::Claimed)
}

/// Reads a task's state file; a missing one is a fresh state.
pub fn read_state(layout: &Layout, name: &str) -> TaskState {
    let fresh = || TaskState {
        version: crate::model::record::PROTOCOL_VERSION,
        task: name.to_owned(),
        ..TaskState::default()
    };
    let mut st = match fs::read(layout.state_file(name)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(task = name, error = %e, "state file is unreadable; starting it afresh");
            fresh()
        }),
        Err(_) => fresh(),
    };
    // The name is the identity; never trust one read from a file.
    st.task = name.to_owned();
    st
}

/// The usage-limit cooldowns in force, from `tasks/cooldowns/<agent>.json`,
/// sorted by agent. With `prune`, the files of expired ones (or of ones
/// whose end cannot be read) are removed: the supervisor does this at its
/// rescans; readers such as `status` leave the tree alone.
pub fn cooldowns(layout: &Layout, prune: bool) -> Vec<crate::model::record::Cooldown> {
    let Ok(rd) = fs::read_dir(&layout.cooldowns) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        let json = ent
            .file_name()
            .to_str()
            .is_some_and(|f| f.ends_with(".json") && !f.starts_with('.'));
        if !json {
            continue;
        }
        let Some(c) = fsx::read_task_file(&p, 64 * 1024)
            .ok()
            .and_then(|(b, _)| serde_json::from_slice::<crate::model::record::Cooldown>(&b).ok())
        else {
            continue;
        };
        if crate::model::record::parse_ts(&c.until).is_some_and(|t| t > now) {
            out.push(c);
        } else if prune {
            let _ = fs::remove_file(&p);
        }
    }
    out.sort_by(|a, b| a.agent.cmp(&b.agent));
    out
}

/// Writes a task's state file durably. Caller holds the task's lock.
pub fn write_state(layout: &Layout, st: &TaskState) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(st).map_err(io::Error::other)?;
    fsx::write_atomic(&layout.state_file(&st.task), &bytes)
}

/// A free name in `dir` for a task that cannot keep its own: `<name>.clash-<n>`,
/// with `<name>` shortened (at a character boundary) so that the result stays a
/// valid name. The candidate's own lock is taken and returned, so that two
/// rejects can never pick the same name.
pub fn free_clash_name(layout: &Layout, dir: State, name: &str) -> io::Result<(String, TaskLock)> {
    let mut base = name.to_owned();
    let max = crate::parse::task::MAX_NAME_BYTES - ".clash-99999".len();
    if base.len() > max {
        let mut cut = max;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        base.truncate(cut);
    }
    for n in 1..100_000 {
        let cand = format!("{base}.clash-{n}");
        if layout.find(dir, &cand).is_some() || exists(&layout.record_file(dir, &cand)) {
            continue;
        }
        if let Some(lock) = TaskLock::try_acquire(layout, &cand)? {
            if layout.locate(&cand).is_none() && !exists(&layout.record_file(dir, &cand)) {
                return Ok((cand, lock));
            }
            lock.release();
        }
    }
    Err(io::Error::other(format!("no free clash name for `{name}`")))
}

/// Sends a task that never ran (invalid file, name clash, failed dependency)
/// straight from `src` (`pending/` or `assigned/`) to `failed/`, with its
/// record. Holds the task's lock. Returns the name it was filed under.
pub fn reject(
    layout: &Layout,
    src: State,
    name: &str,
    ext: &str,
    mut record: ResultRecord,
    rename: bool,
) -> io::Result<Option<String>> {
    let taken = layout.find(State::Failed, name).is_some();
    let (target, _target_lock) = if rename || taken {
        let (t, l) = free_clash_name(layout, State::Failed, name)?;
        (t, Some(l))
    } else {
        (name.to_owned(), None)
    };
    let from = layout.task_file(src, name, ext);
    if target != name {
        record.submitted_as = Some(layout.rel(&from));
    }
    record.task = target.clone();
    let rec_path = layout.record_file(State::Failed, &target);
    let bytes = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
    fsx::write_atomic(&rec_path, &bytes)?;
    let to = layout.task_file(State::Failed, &target, ext);
    match fsx::rename_noreplace(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_file(&rec_path);
            return Ok(None);
        }
        Err(e) => {
            let _ = fs::remove_file(&rec_path);
            return Err(e);
        }
    }
    fsx::fsync_dir(&layout.failed)?;
    fsx::fsync_dir(layout.dir(src))?;
    // Bookkeeping of a task that will never run again (a pending task may
    // have some from an earlier attempt, waiting for its retry).
    fsx::remove_file_if_exists(&layout.state_file(name))?;
    if src == State::Assigned {
        fsx::remove_dir_all_if_exists(&layout.run_dir(State::Assigned, name))?;
    }
    if let Some(l) = _target_lock {
        l.release();
    }
    Ok(Some(target))
}

/// Moves the run's directory next to where the task will end up.
pub fn move_run_dir(layout: &Layout, name: &str, dest: State) -> io::Result<()> {
    let from = layout.run_dir(State::Assigned, name);
    if fs::symlink_metadata(&from).is_err() {
        return Ok(());
    }
    let to = layout.run_dir(dest, name);
    fsx::remove_dir_all_if_exists(&to)?;
    fsx::rename_noreplace(&from, &to)?;
    fsx::fsync_dir(layout.dir(dest))
}

/// Step one of a terminal commit: the run directory and the result record
/// land in the destination. After this, recovery finishes the move.
pub fn prepare_commit(layout: &Layout, record: &ResultRecord) -> io::Result<State> {
    let dest = match record.status {
        Status::Completed => State::Completed,
        Status::Failed => State::Failed,
    };
    move_run_dir(layout, &record.task, dest)?;
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    fsx::write_atomic(&layout.record_file(dest, &record.task), &bytes)?;
    Ok(dest)
}

/// Step two: the task file's move out of `assigned/` — the commit point — then
/// the bookkeeping goes. Holds the task's lock.
pub fn finish_commit(layout: &Layout, name: &str, ext: &str, dest: State) -> io::Result<()> {
    let from = layout.task_file(State::Assigned, name, ext);
    let to = layout.task_file(dest, name, ext);
    match fsx::rename_noreplace(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => {}
        Err(e) => return Err(e),
    }
    fsx::fsync_dir(layout.dir(dest))?;
    fsx::fsync_dir(&layout.assigned)?;
    fsx::remove_file_if_exists(&layout.state_file(name))?;
    Ok(())
}

/// Puts a claimed task back into `pending/` with its bookkeeping updated.
/// Holds the task's lock. A newer file of the same name that appeared in
/// `pending/` meanwhile is filed in `failed/` under a clash name first.
pub fn requeue(layout: &Layout, name: &str, ext: &str, st: &TaskState) -> io::Result<()> {
    write_state(layout, st)?;
    fsx::remove_dir_all_if_exists(&layout.run_dir(State::Assigned, name))?;
    let from = layout.task_file(State::Assigned, name, ext);
    if let Some((ppath, pext)) = layout.find(State::Pending, name)
        && !fsx::same_inode(&ppath, &from)
    {
        let rec = clash_record(&format!(
            "the name `{name}` is in use by a task that is being retried; this newer file was set aside"
        ));
        reject(layout, State::Pending, name, pext, rec, true)?;
    }
    let to = layout.task_file(State::Pending, name, ext);
    fsx::rename_noreplace(&from, &to)?;
    fsx::fsync_dir(&layout.pending)?;
    fsx::fsync_dir(&layout.assigned)?;
    Ok(())
}

/// A result record for a file that never ran.
pub fn never_ran_record(outcome: Outcome, error: String) -> ResultRecord {
    ResultRecord {
        version: crate::model::record::PROTOCOL_VERSION,
        task: String::new(),
        status: Status::Failed,
        outcome,
        error: Some(error),
        error_location: None,
        agent: None,
        agent_reason: None,
        attempts: 0,
        started_at: None,
        finished_at: crate::model::record::now(),
        duration_ms: None,
        exit_code: None,
        signal: None,
        output_file: None,
        run_dir: None,
        summary: None,
        submitted_as: None,
        warnings: Vec::new(),
        followups: Vec::new(),
        withheld_followups: Vec::new(),
        children: Vec::new(),
        workspace: None,
        history: Vec::new(),
        host: hostname(),
        run_id: run_id(),
    }
}

fn clash_record(why: &str) -> ResultRecord {
    never_ran_record(
        Outcome::Clash,
        format!(
            "{why}. Rename the file and submit it again (or `mailroom retry` it under its new name)."
        ),
    )
}

/// The machine's host name, for records and for telling local runs from remote ones.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A unique id for one finished run.
pub fn run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}-{:x}-{:x}",
        t.as_nanos(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Start time of a process in clock ticks since boot, from `/proc/<pid>/stat`.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is the same process that had start time `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

/// The task files in one state directory: (name, extension), sorted by name.
pub fn list(layout: &Layout, s: State) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(layout.dir(s)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let Some(fname) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let crate::parse::task::Entry::Task { name, ext } = crate::parse::task::classify(&fname)
        {
            out.push((name.to_owned(), ext.to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// Counts the task files in one state directory without stat-ing them.
pub fn count(layout: &Layout, s: State) -> usize {
    fs::read_dir(layout.dir(s))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        matches!(
                            crate::parse::task::classify(n),
                            crate::parse::task::Entry::Task { .. }
                        )
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether a path exists without following a final symlink.
pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Like sshd's StrictModes: the tree must not be open to other users. The
/// root and every directory of the protocol must belong to this user and not
/// be writable by others; writable by a group only when it is the user's own
/// primary group (a user private group). `shared: true` lifts both rules for
/// trees that several users write to (world-writable still needs the sticky
/// bit then). Returns what is wrong and how to fix it.
pub fn check_permissions(layout: &Layout, shared: bool) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let my_group = nix::unistd::getegid().as_raw();
    let dirs = [
        &layout.root,
        &layout.tasks,
        &layout.tmp,
        &layout.pending,
        &layout.assigned,
        &layout.completed,
        &layout.failed,
        &layout.control,
        &layout.cancel,
        &layout.cooldowns,
        &layout.context,
        &layout.outputs,
    ];
    for d in dirs {
        let Ok(m) = fs::symlink_metadata(d) else {
            continue;
        };
        let shown = layout.rel(d);
        let shown = if shown.is_empty() { ".".into() } else { shown };
        if m.file_type().is_symlink() && d != &layout.root {
            return Err(format!(
                "{shown} is a symbolic link; mailroom follows none inside the tree"
            ));
        }
        let mode = m.mode();
        if shared {
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(format!(
                    "{shown} is writable by everyone without the sticky bit; \
                     run `chmod o-w {shown}` or `chmod +t {shown}`"
                ));
            }
            continue;
        }
        if m.uid() != me {
            return Err(format!(
                "{shown} belongs to uid {}, not to this user ({me}); \
                 set `shared: true` in mailroom.yaml if several users share this tree",
                m.uid()
            ));
        }
        if mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != my_group) {
            return Err(format!(
                "{shown} is writable by other users (mode {:o}); run `chmod go-w {shown}`, \
                 or set `shared: true` in mailroom.yaml if several users share this tree",
                mode & 0o7777
            ));
        }
    }
    Ok(())
}
