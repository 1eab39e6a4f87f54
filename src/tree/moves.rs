//! Every move of a task file between the states of the tree, each ordered so
//! that a crash at any instant leaves a state recovery can finish. This is the
//! only module that renames task files: [`move_file`] is the one primitive
//! (no-replace rename, then an fsync of both directories), and each protocol
//! step (submit, claim, reject, set aside, commit, requeue, retry) is built on
//! it.
//!
//! Commit points (see PROTOCOL.md): a task's state is the directory its task
//! file is in. Records are written (temp, fsync, rename, fsync dir) before the
//! task file moves; the move itself is the commit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::record::{ResultRecord, Status, TaskState};
use crate::tree::books::{clash_record, exists, write_state};
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};
use crate::tree::lock::TaskLock;

/// Renames `from` to `to` without replacing anything at `to` (EEXIST on a
/// clash), then makes the rename durable in both directories.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    fsx::rename_noreplace(from, to)?;
    fsx::fsync_dir(parent(to))?;
    if parent(from) != parent(to) {
        fsx::fsync_dir(parent(from))?;
    }
    Ok(())
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

/// Submits a task file staged in `tasks/tmp/` (or anywhere on the same file
/// system) into `pending/` as `<name>.<ext>`: the Maildir rename.
/// Only `pending/` is synced: a staged file left behind by a crash is swept.
pub fn submit(layout: &Layout, staged: &Path, name: &str, ext: &str) -> io::Result<()> {
    fsx::rename_noreplace(staged, &layout.task_file(State::Pending, name, ext))?;
    fsx::fsync_dir(&layout.pending)
}

/// Files a task whose name cannot be used (sanitised to `target`, whose lock
/// the caller holds) from `path` into `failed/`, its record first.
pub fn set_aside(
    layout: &Layout,
    path: &Path,
    target: &str,
    ext: &str,
    rec: &ResultRecord,
) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    fsx::write_atomic(&layout.record_file(State::Failed, target), &bytes)?;
    let res = move_file(path, &layout.task_file(State::Failed, target, ext));
    if res.is_err() {
        let _ = fs::remove_file(layout.record_file(State::Failed, target));
    }
    res
}

/// `mailroom retry`: a finished task's file goes back from `failed/` (or
/// `completed/`) to `pending/`. Holds the task's lock.
pub fn retry(layout: &Layout, from: State, name: &str, ext: &str) -> io::Result<()> {
    move_file(
        &layout.task_file(from, name, ext),
        &layout.task_file(State::Pending, name, ext),
    )
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
    match move_file(&from, &to) {
        Ok(()) => Ok(Claim::Claimed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Gone),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Claim::Clash(to)),
        Err(e) => Err(e),
    }
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
        // Taken: a task file, a record or a run directory (or anything in
        // their places) of that name.
        let taken = |cand: &str| {
            exists(&layout.record_file(dir, cand)) || exists(&layout.run_dir(dir, cand))
        };
        if layout.find(dir, &cand).is_some() || taken(&cand) {
            continue;
        }
        if let Some(lock) = TaskLock::try_acquire(layout, &cand)? {
            if layout.locate(&cand).is_none() && !taken(&cand) {
                return Ok((cand, lock));
            }
            lock.release();
        }
    }
    Err(io::Error::other(format!("no free clash name for `{name}`")))
}

/// Sends a task that never ran (invalid file, name clash, failed dependency)
/// straight from `src` (`pending/` or `assigned/`) to `failed/`, with its
/// record. Holds the task's lock. Returns the record as filed: the name it
/// was filed under, and the attempts it had before, if any.
pub fn reject(
    layout: &Layout,
    src: State,
    name: &str,
    ext: &str,
    mut record: ResultRecord,
    rename: bool,
) -> io::Result<Option<ResultRecord>> {
    // A name is never filed in two states: when another state directory
    // holds it (a completed task, a running one, an earlier failure), this
    // file gets a clash name.
    let from = layout.task_file(src, name, ext);
    let taken = State::ALL
        .into_iter()
        .filter(|s| *s != src && *s != State::Pending)
        .any(|s| {
            layout
                .find(s, name)
                .is_some_and(|(p, _)| !fsx::same_inode(&p, &from))
        });
    let (target, _target_lock) = if rename || taken {
        let (t, l) = free_clash_name(layout, State::Failed, name)?;
        (t, Some(l))
    } else {
        (name.to_owned(), None)
    };
    if target != name {
        record.submitted_as = Some(layout.rel(&from));
    }
    record.task = target.clone();
    // A task that ran before (one waiting for its retry, say, when it is
    // cancelled) keeps its attempts in its record: the count, each one's
    // history, and what the last one ended with. A clash is another file of
    // a name in use, and the bookkeeping is that task's.
    if !rename {
        carry_earlier_attempts(layout, name, &mut record);
    }
    // The run directory of earlier attempts goes with the task, as at a
    // terminal commit.
    let runs = !rename && fs::symlink_metadata(layout.run_dir(State::Assigned, name)).is_ok();
    if runs {
        crate::tree::books::fill_run_dirs(layout, name, State::Failed, &mut record);
    }
    let rec_path = layout.record_file(State::Failed, &target);
    let bytes = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
    fsx::write_atomic(&rec_path, &bytes)?;
    if runs {
        move_run_dir_as(layout, name, State::Failed, &target)?;
    }
    let to = layout.task_file(State::Failed, &target, ext);
    let undo = || {
        let _ = fs::remove_file(&rec_path);
        if runs {
            let _ = fsx::rename_noreplace(
                &layout.run_dir(State::Failed, &target),
                &layout.run_dir(State::Assigned, name),
            );
        }
    };
    match move_file(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            undo();
            return Ok(None);
        }
        Err(e) => {
            undo();
            return Err(e);
        }
    }
    // Bookkeeping of a task that will never run again (a pending task may
    // have some from an earlier attempt, waiting for its retry): into the
    // run directory, as at a terminal commit.
    if !rename {
        park_or_remove(
            &layout.state_file(name),
            &layout.run_dir(State::Failed, &target),
            "state.json",
        )?;
    }
    if let Some(l) = _target_lock {
        l.release();
    }
    Ok(Some(record))
}

/// Fills a record of a task filed without a run with the attempts it had
/// before (from its state file), so that `attempts` still counts every run
/// begun and `history` keeps each one; the last one's error is named.
fn carry_earlier_attempts(layout: &Layout, name: &str, record: &mut ResultRecord) {
    let st = crate::tree::books::read_state(layout, name);
    if st.attempts == 0 && st.history.is_empty() {
        return;
    }
    record.attempts = record.attempts.max(st.attempts);
    if let Some(last) = st.history.last() {
        record.agent = record.agent.take().or_else(|| Some(last.agent.clone()));
        record.exit_code = record.exit_code.or(last.exit_code);
        record.signal = record.signal.or(last.signal);
    }
    if let Some(e) = &st.last_error {
        let n = st.attempts;
        let runs = if n == 1 { "run" } else { "runs" };
        let before = format!("after {n} {runs}; the last one: {e}");
        record.error = Some(match record.error.take() {
            // Not "before it ran": it did, and waited for the next attempt.
            _ if record.outcome == crate::model::outcome::Outcome::Cancelled => {
                format!("cancelled while it waited for its next attempt ({before})")
            }
            Some(own) => format!("{own} ({before})"),
            None => before,
        });
    }
    record.history = st.history;
}

/// Moves the run's directory next to where the task will end up.
pub fn move_run_dir(layout: &Layout, name: &str, dest: State) -> io::Result<()> {
    move_run_dir_as(layout, name, dest, name)
}

/// [`move_run_dir`] to `dest/<target>.run`.
fn move_run_dir_as(layout: &Layout, name: &str, dest: State, target: &str) -> io::Result<()> {
    rename_run_dir(layout, name, dest, target)?;
    fsx::fsync_dir(layout.dir(dest))
}

/// The rename of [`move_run_dir_as`] without its fsync, for a caller that
/// fsyncs `dest` itself before the move counts.
fn rename_run_dir(layout: &Layout, name: &str, dest: State, target: &str) -> io::Result<()> {
    let from = layout.run_dir(State::Assigned, name);
    if fs::symlink_metadata(&from).is_err() {
        return Ok(());
    }
    let to = layout.run_dir(dest, target);
    fsx::remove_dir_all_if_exists(&to)?;
    fsx::rename_noreplace(&from, &to)
}

/// Moves `failed/<name>.run/` (or `completed/`'s, `from`) to
/// `tasks/history/<name>.run/<round>/` (the next free round number): a
/// retry never deletes an earlier answer. Returns the old and new paths,
/// relative to the root.
pub fn run_dir_to_history(
    layout: &Layout,
    from_state: State,
    name: &str,
) -> io::Result<Option<(String, String)>> {
    let from = layout.run_dir(from_state, name);
    if std::fs::symlink_metadata(&from).is_err() {
        return Ok(None);
    }
    let mut round = 1;
    while std::fs::symlink_metadata(layout.history_run_dir(name, round)).is_ok() {
        round += 1;
    }
    let to = layout.history_run_dir(name, round);
    let dir = to.parent().expect("a round is in a directory");
    fsx::create_dir_all(dir)?;
    fsx::rename_noreplace(&from, &to)?;
    fsx::fsync_dir(dir)?;
    fsx::fsync_dir(layout.dir(from_state))?;
    Ok(Some((layout.rel(&from), layout.rel(&to))))
}

/// Step one of a terminal commit: the result record, then the run directory,
/// land in the destination. After the record, recovery finishes the commit;
/// before it, the run directory (with a keeper's outcome) is still in
/// `assigned/`, where recovery looks for it.
pub fn prepare_commit(layout: &Layout, record: &ResultRecord) -> io::Result<State> {
    prepare_commit_as(layout, &record.task, record)
}

/// [`prepare_commit`] of task `name` filed under `record.task` (a clash name
/// whose lock the caller holds too).
pub fn prepare_commit_as(layout: &Layout, name: &str, record: &ResultRecord) -> io::Result<State> {
    let dest = match record.status {
        Status::Completed => State::Completed,
        Status::Failed => State::Failed,
    };
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    fsx::write_atomic(&layout.record_file(dest, &record.task), &bytes)?;
    // Made durable by step two's fsync of `dest`, with the task file: until
    // then recovery finds the run directory in `assigned/` or in `dest`.
    rename_run_dir(layout, name, dest, &record.task)?;
    Ok(dest)
}

/// Step two: the task file's move out of `assigned/` — the commit point — then
/// the bookkeeping goes. Holds the task's lock.
pub fn finish_commit(layout: &Layout, name: &str, ext: &str, dest: State) -> io::Result<()> {
    finish_commit_as(layout, name, ext, dest, name)
}

/// [`finish_commit`] of task `name` filed as `dest/<target>`.
pub fn finish_commit_as(
    layout: &Layout,
    name: &str,
    ext: &str,
    dest: State,
    target: &str,
) -> io::Result<()> {
    let from = layout.task_file(State::Assigned, name, ext);
    let to = layout.task_file(dest, target, ext);
    match move_file(&from, &to) {
        Ok(()) => {}
        // Moved already (a repeated commit): make sure it is durable.
        Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => {
            fsx::fsync_dir(layout.dir(dest))?;
            fsx::fsync_dir(&layout.assigned)?;
        }
        Err(e) => return Err(e),
    }
    park_or_remove(
        &layout.state_file(name),
        &layout.run_dir(dest, target),
        "state.json",
    )
}

/// Moves a task's bookkeeping file out of `assigned/` into its run directory
/// (`dir/as_name`) at a terminal commit, or removes it when there is no run
/// directory. A move frees no inode (see [`TaskLock::release_into`]).
pub fn park_or_remove(file: &Path, dir: &Path, as_name: &str) -> io::Result<()> {
    if fs::symlink_metadata(file).is_err() {
        return Ok(());
    }
    if dir.is_dir() && fs::rename(file, dir.join(as_name)).is_ok() {
        return Ok(());
    }
    fsx::remove_file_if_exists(file)
}

/// What [`reclaim`] found of a running task's file after its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaimed {
    /// Still in `assigned/`.
    Intact,
    /// Found (the same file) at this path, and moved back into `assigned/`.
    MovedBack(PathBuf),
    /// Gone: written back into `assigned/` from the copy taken at the claim.
    Rewritten,
    /// Something else stood in its place (`what`: a directory, a symbolic
    /// link, another file): set aside at `kept`, and the claimed file put
    /// back (moved back from `from`, or written again from the claimed copy).
    Replaced {
        what: &'static str,
        kept: PathBuf,
        from: Option<PathBuf>,
    },
    /// The same file, its content changed: the claimed content written back
    /// (the changed one set aside at `kept`).
    Edited { kept: PathBuf },
}

/// Makes sure the task file of a run that just ended is in `assigned/`,
/// whatever its agent did to it: the claimed file (device and inode `id`),
/// found in another state directory, is moved back; a vanished one is put
/// back from the run directory's link to it, else written again from
/// `bytes`, the content read at the claim (through `tasks/tmp/` and a
/// no-replace rename). Something else in its place, or the claimed file with
/// other content, is set aside in the run directory first. Returns what it
/// found and the identity of the file now in `assigned/`, which the next
/// check must compare with. Holds the task's lock.
pub fn reclaim(
    layout: &Layout,
    name: &str,
    ext: &str,
    id: (u64, u64),
    bytes: &[u8],
) -> io::Result<(Reclaimed, (u64, u64))> {
    let at = layout.task_file(State::Assigned, name, ext);
    let mut replaced = None;
    if let Ok(m) = fs::symlink_metadata(&at) {
        if id_of(&m) == Some(id) {
            if same_content(&at, m.len(), bytes) {
                return Ok((Reclaimed::Intact, id));
            }
            // Edited in place: the claimed content goes back, the edit is kept.
            let kept = set_aside_in_run_dir(layout, name, &at)?;
            let now = restore(layout, name, ext, id, bytes)?;
            return Ok((Reclaimed::Edited { kept }, now));
        }
        // Another file with the very content claimed (an editor's save, a
        // `sed -i` that changed nothing): the same task, no tampering.
        if m.is_file() && same_content(&at, m.len(), bytes) {
            let now = file_id(&at).unwrap_or(id);
            return Ok((Reclaimed::Intact, now));
        }
        replaced = Some((what_is(&m), set_aside_in_run_dir(layout, name, &at)?));
    }
    let from = claimed_elsewhere(layout, name, id);
    if let Some(p) = &from {
        move_file(p, &at)?;
    }
    let now = match from {
        Some(_) => id,
        None => restore(layout, name, ext, id, bytes)?,
    };
    let found = match (replaced, from) {
        (Some((what, kept)), from) => Reclaimed::Replaced { what, kept, from },
        (None, Some(p)) => Reclaimed::MovedBack(p),
        (None, None) => Reclaimed::Rewritten,
    };
    Ok((found, now))
}

/// The claimed file (device and inode `id`) in `pending/`, `completed/` or
/// `failed/`, under any task-file extension, where an agent may have moved it.
fn claimed_elsewhere(layout: &Layout, name: &str, id: (u64, u64)) -> Option<PathBuf> {
    [State::Pending, State::Completed, State::Failed]
        .into_iter()
        .flat_map(|s| crate::parse::task::TASK_EXTS.map(|e| layout.task_file(s, name, e)))
        .find(|p| file_id(p) == Some(id))
}

/// Device and inode of the regular file at `p` (not followed), if it is one.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    id_of(&fs::symlink_metadata(p).ok()?)
}

/// Device and inode of `m`, if it is a regular file's.
fn id_of(m: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    m.is_file().then(|| (m.dev(), m.ino()))
}

/// What a file system object is, in words.
fn what_is(m: &fs::Metadata) -> &'static str {
    if m.is_dir() {
        "a directory"
    } else if m.file_type().is_symlink() {
        "a symbolic link"
    } else if m.is_file() {
        "another file"
    } else {
        "a special file"
    }
}

/// Makes the run directory's second name for the claimed task file
/// (`<name>.run/claimed-task.<ext>.copy`), replacing one an earlier attempt made
/// (the file may have been replaced between attempts): a hard link, or a
/// copy of `bytes` where the link is refused (`fs.protected_hardlinks` and a
/// file of another user). Other extensions' copies go.
pub fn keep_claimed_copy(layout: &Layout, name: &str, ext: &str, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let at = layout.task_file(State::Assigned, name, ext);
    let copy = layout.claimed_copy(State::Assigned, name, ext);
    let linked = file_id(&copy);
    if linked.is_some() && linked == file_id(&at) {
        return Ok(());
    }
    // An earlier attempt's copy goes first: a crash in between leaves none,
    // which recovery reports rather than guesses. Like the run directory, the
    // copy is not fsynced: it guards against the agent, not the host.
    for e in crate::parse::task::TASK_EXTS {
        fsx::remove_file_if_exists(&layout.claimed_copy(State::Assigned, name, e))?;
    }
    if fs::hard_link(&at, &copy).is_err() {
        let mode = fs::symlink_metadata(&at).map_or(0o644, |m| m.mode() & 0o777);
        fsx::write_file_mode(&copy, bytes, mode)?;
    }
    Ok(())
}

/// Puts the claimed file back at `assigned/<name>.<ext>`: linked back from
/// the run directory's copy when that is the claimed file with the claimed
/// content (the same file again), else written anew from `bytes` with the
/// copy's mode (0644 without one). Returns the identity of the file put back.
fn restore(
    layout: &Layout,
    name: &str,
    ext: &str,
    id: (u64, u64),
    bytes: &[u8],
) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let at = layout.task_file(State::Assigned, name, ext);
    let copy = layout.claimed_copy(State::Assigned, name, ext);
    let m = fs::symlink_metadata(&copy).ok();
    if let Some(m) = &m
        && m.is_file()
        && (m.dev(), m.ino()) == id
        && same_content(&copy, m.len(), bytes)
    {
        fs::hard_link(&copy, &at)?;
        fsx::fsync_dir(&layout.assigned)?;
        return Ok(id);
    }
    let mode = m.map_or(0o644, |m| m.mode() & 0o777);
    let staged = layout.tmp.join(fsx::tmp_name(&format!("{name}.{ext}")));
    fsx::write_file_mode(&staged, bytes, mode)?;
    let res = move_file(&staged, &at);
    if res.is_err() {
        let _ = fs::remove_file(&staged);
    }
    res?;
    file_id(&at).ok_or_else(|| io::Error::other("the restored task file vanished"))
}

/// What recovery found of a task file against the run directory's copy of
/// the claimed file, and what it will do about it (nothing is done yet: the
/// state file says it first).
#[derive(Debug)]
pub enum Verified {
    /// The claimed file is in `assigned/`, unchanged as far as can be told.
    Intact,
    /// The claimed file is in `assigned/` but its content is not what was
    /// claimed (edited in place): the claimed content is lost.
    Changed,
    /// To be put back: `what` stands in its place (set aside first), or
    /// nothing does; `from`, where the claimed file is now, if anywhere.
    PutBack {
        what: Option<&'static str>,
        from: Option<PathBuf>,
    },
}

/// Recovery's look at `assigned/<name>.<ext>` after a run no supervisor saw
/// end, against the run directory's copy `copy` of the claimed file and the
/// hash of its content recorded at the start of the run (`task_hash`).
pub fn verify_against_copy(
    layout: &Layout,
    name: &str,
    ext: &str,
    copy: &Path,
    task_hash: Option<&str>,
) -> io::Result<Verified> {
    let id = file_id(copy).ok_or_else(|| io::Error::other("no copy of the claimed file"))?;
    let at = layout.find(State::Assigned, name);
    let changed = || task_hash.is_some_and(|h| fs::read(copy).is_ok_and(|b| content_hash(&b) != h));
    match at {
        Some((p, e)) if e == ext && file_id(&p) == Some(id) => {
            return Ok(if changed() {
                Verified::Changed
            } else {
                Verified::Intact
            });
        }
        // The claimed content in another file (an editor's save that changed
        // nothing): the same task.
        Some((p, e))
            if e == ext
                && fs::symlink_metadata(&p).is_ok_and(|m| {
                    m.is_file() && fs::read(copy).is_ok_and(|b| same_content(&p, m.len(), &b))
                })
                && !changed() =>
        {
            return Ok(Verified::Intact);
        }
        Some((p, _)) => {
            let what = fs::symlink_metadata(&p).map_or("another file", |m| what_is(&m));
            return Ok(Verified::PutBack {
                what: Some(what),
                from: None,
            });
        }
        None => {}
    }
    Ok(Verified::PutBack {
        what: None,
        from: claimed_elsewhere(layout, name, id),
    })
}

/// Carries out [`Verified::PutBack`]: sets aside what stands in the task
/// file's place, then moves the claimed file back from `from` or links it
/// back from `copy`. Holds the task's lock.
pub fn put_back(
    layout: &Layout,
    name: &str,
    ext: &str,
    copy: &Path,
    from: Option<&Path>,
) -> io::Result<()> {
    if let Some((p, _)) = layout.find(State::Assigned, name) {
        set_aside_in_run_dir(layout, name, &p)?;
    }
    let at = layout.task_file(State::Assigned, name, ext);
    match from {
        Some(p) if file_id(p) == file_id(copy) => move_file(p, &at),
        _ => {
            fs::hard_link(copy, &at)?;
            fsx::fsync_dir(&layout.assigned)
        }
    }
}

/// A stable hash of a task file's content (FNV-1a, 64 bits, hex), recorded
/// in the state file when a run starts: what recovery compares a task file
/// with to tell an edit made in place during a run it did not watch.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether the file at `p` (of length `len`) holds exactly `bytes`.
fn same_content(p: &Path, len: u64, bytes: &[u8]) -> bool {
    len == bytes.len() as u64 && fs::read(p).is_ok_and(|b| b == bytes)
}

/// Moves what stands at a task file's place in `assigned/` (not the claimed
/// file, or the claimed file changed) into the task's run directory as
/// `task-file.replaced` (`-2`, `-3`, … when taken), where it is kept with the
/// run's files instead of being filed as the task. Returns where it went.
fn set_aside_in_run_dir(layout: &Layout, name: &str, at: &Path) -> io::Result<PathBuf> {
    let dir = layout.run_dir(State::Assigned, name);
    fsx::create_dir_all(&dir)?;
    for n in 1..1000 {
        let kept = if n == 1 {
            dir.join("task-file.replaced")
        } else {
            dir.join(format!("task-file.replaced-{n}"))
        };
        match fsx::rename_noreplace(at, &kept) {
            Ok(()) => {
                fsx::fsync_dir(&dir)?;
                fsx::fsync_dir(&layout.assigned)?;
                return Ok(kept);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no free name in {} to keep what replaced the task file",
        dir.display()
    )))
}

/// Puts a claimed task back into `pending/` with its bookkeeping updated.
/// Holds the task's lock. A newer file of the same name that appeared in
/// `pending/` meanwhile is filed in `failed/` under a clash name first.
pub fn requeue(layout: &Layout, name: &str, ext: &str, st: &TaskState) -> io::Result<()> {
    // The run directory (every attempt's files) stays in `assigned/` for
    // the next attempt: a requeue never deletes an earlier answer.
    write_state(layout, st)?;
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
    move_file(&from, &to)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every rename of a task file goes through this module: no other source
    /// file calls the no-replace rename or `std::fs::rename` (fsx's temp-file
    /// write, which renames its own temp file, is the one exception).
    #[test]
    fn only_moves_renames_task_files() {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 20, "found the sources");
        let mut offenders = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                let renames = code.contains("rename_noreplace(") || code.contains("fs::rename(");
                let allowed = rel == "tree/moves.rs" || rel == "tree/fsx.rs";
                if renames && !allowed {
                    offenders.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "renames outside tree/moves.rs:\n{}",
            offenders.join("\n")
        );
    }
}
