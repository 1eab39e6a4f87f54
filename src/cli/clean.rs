//! `mailroom clean`: finished tasks removed from the tree, each under its lock.

use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};
use crate::tree::lock::TaskLock;
use anyhow::{Result, bail};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::*;

/// What `mailroom clean` takes.
pub struct CleanArgs<'a> {
    /// These tasks (completed or failed); none: every completed task.
    pub names: &'a [String],
    /// Without names: failed tasks too.
    pub failed: bool,
    /// Only tasks that finished at least this long ago.
    pub older_than: Option<Duration>,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

/// `mailroom clean`.
pub fn clean(root: &Path, a: CleanArgs) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    for n in a.names {
        check_task_name(n)?;
    }
    let states: &[State] = if a.failed || !a.names.is_empty() {
        &[State::Completed, State::Failed]
    } else {
        &[State::Completed]
    };
    let mut chosen: Vec<(State, String)> = Vec::new();
    let mut failed = false;
    if a.names.is_empty() {
        for &s in states {
            for (n, _) in books::list(&layout, s)? {
                chosen.push((s, n));
            }
        }
    } else {
        for n in a.names {
            match layout.locate(n) {
                Some((s @ (State::Completed | State::Failed), _, _)) => chosen.push((s, n.clone())),
                Some((s, p, _)) => {
                    eprintln!(
                        "mailroom: `{n}` is {} ({}), not finished: `clean` removes only completed \
                         and failed tasks{}",
                        s.dir_name(),
                        layout.rel(&p),
                        if s == State::Assigned {
                            ""
                        } else {
                            " (`mailroom cancel` takes back a pending one)"
                        }
                    );
                    failed = true;
                }
                None => {
                    eprintln!("mailroom: no task named `{n}`");
                    failed = true;
                }
            }
        }
    }
    let now = SystemTime::now();
    if let Some(age) = a.older_than {
        chosen.retain(|(s, n)| {
            let old = finished_at(&layout, *s, n)
                .is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
            if !old && !a.names.is_empty() {
                eprintln!(
                    "mailroom: kept `{n}`: it finished less than {} ago (--older-than)",
                    humantime::format_duration(age)
                );
                failed = true;
            }
            old
        });
    }
    if chosen.is_empty() {
        if !failed {
            println!("nothing to clean");
        }
        return Ok(exit(failed));
    }
    let config = crate::parse::config::Config::load(root).ok();
    let max_bytes = config
        .as_ref()
        .map_or(crate::parse::task::DEFAULT_MAX_TASK_BYTES, |c| {
            c.max_task_bytes
        });
    // A task that waits only for tasks removed in this same pass is no
    // reason to keep them.
    let removing: HashSet<(State, &str)> = chosen.iter().map(|(s, n)| (*s, n.as_str())).collect();
    let mut waiting: HashMap<String, (String, State)> = HashMap::new();
    // The chosen tasks that wait for each chosen task: it goes only once
    // they are gone, so that one of them kept (busy, not merged, moved)
    // does not lose what it waits for.
    let mut chosen_waiters: HashMap<String, Vec<(State, String)>> = HashMap::new();
    for (dep, waiters) in waited_for(&layout, max_bytes) {
        let (inside, outside): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|(w, ws)| removing.contains(&(*ws, w.as_str())));
        if let Some(w) = outside.into_iter().next() {
            waiting.insert(dep.clone(), w);
        }
        if !inside.is_empty() {
            chosen_waiters.insert(dep, inside.into_iter().map(|(w, ws)| (ws, w)).collect());
        }
    }
    let mut removed = 0usize;
    // Each chosen task, once decided: removed (true) or kept (false).
    let mut done: HashMap<(State, &str), bool> = HashMap::new();
    for (s, n) in &chosen {
        let Some((w, ws)) = waiting.get(n.as_str()) else {
            continue;
        };
        if *ws == State::Failed {
            eprintln!(
                "mailroom: kept `{n}`: the failed task `{w}` runs after it, and would wait \
                 for it forever once retried (clean `{w}` first, or together)"
            );
        } else {
            eprintln!(
                "mailroom: kept `{n}`: `{w}` runs after it and would wait for it forever \
                 (cancel or finish `{w}` first)"
            );
        }
        failed |= !a.names.is_empty();
        done.insert((*s, n.as_str()), false);
    }
    // Merges its commit could not make are made first, here, once (a
    // supervisor's rescan would; one need not be running).
    if !a.dry_run
        && chosen
            .iter()
            .any(|(_, n)| crate::tree::context::is_unmerged(&layout, n))
    {
        crate::tree::context::replay_unmerged(&layout, 256, MERGE_WAIT);
    }
    // Rounds: a task is taken up once the chosen tasks that wait for it are
    // decided. What another holds is left for later rounds, which share one
    // wait among all of them (a dozen busy tasks cost 3 s, not 36); tasks
    // that wait for each other in a circle are taken up together at the end.
    let mut deadline: Option<std::time::Instant> = None;
    let mut force = false;
    loop {
        let mut progress = false;
        for (s, n) in &chosen {
            if done.contains_key(&(*s, n.as_str())) {
                continue;
            }
            let ws = chosen_waiters
                .get(n.as_str())
                .map_or(&[][..], Vec::as_slice);
            if !force
                && ws
                    .iter()
                    .any(|(ws, w)| !done.contains_key(&(*ws, w.as_str())))
            {
                continue;
            }
            if let Some((_, w)) = ws
                .iter()
                .find(|(ws, w)| done.get(&(*ws, w.as_str())) == Some(&false))
            {
                eprintln!(
                    "mailroom: kept `{n}`: `{w}` runs after it and was kept, and would wait for \
                     it forever"
                );
                failed |= !a.names.is_empty();
                done.insert((*s, n.as_str()), false);
                progress = true;
                continue;
            }
            // Its line in completed_tasks.jsonl is written from its record:
            // not before that. (A dry run makes no merge: it says that
            // `clean` would.)
            let unmerged = crate::tree::context::is_unmerged(&layout, n);
            if unmerged && !a.dry_run {
                eprintln!("mailroom: kept `{n}`: {NOT_MERGED}");
                failed |= !a.names.is_empty();
                done.insert((*s, n.as_str()), false);
                progress = true;
                continue;
            }
            if a.dry_run {
                if unmerged {
                    println!(
                        "{n}: would be merged into context/, then removed ({})",
                        s.dir_name()
                    );
                } else {
                    println!("{n}: would be removed ({})", s.dir_name());
                }
                removed += 1;
                done.insert((*s, n.as_str()), true);
                progress = true;
                continue;
            }
            let wait = deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            let res = remove_task(&layout, *s, n, wait);
            if deadline.is_none() && matches!(res, Ok(None)) {
                continue;
            }
            let gone = said(*s, n, res, &mut removed, &mut failed);
            done.insert((*s, n.as_str()), gone);
            progress = true;
        }
        if done.len() == chosen.len() {
            break;
        }
        if !progress {
            if deadline.is_none() {
                deadline = Some(std::time::Instant::now() + BUSY_WAIT);
            } else if !force {
                force = true;
            } else {
                break;
            }
        }
    }
    // One sync per directory for the whole pass.
    if removed > 0 && !a.dry_run {
        for &s in states {
            let _ = fsx::fsync_dir(layout.dir(s));
        }
        let max_depth = config.as_ref().map_or_else(
            || crate::parse::config::Config::default().max_tree_depth,
            |c| c.max_tree_depth,
        );
        drop_dead_tree_counts(&layout, max_depth);
    }
    if chosen.len() > 1 {
        println!(
            "{} {removed} of {} task{}",
            if a.dry_run { "would remove" } else { "removed" },
            chosen.len(),
            if chosen.len() == 1 { "" } else { "s" }
        );
    }
    Ok(exit(failed))
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// When a finished task finished: its record's mtime (written at the
/// commit), else its task file's.
fn finished_at(layout: &Layout, s: State, name: &str) -> Option<SystemTime> {
    let m = match std::fs::symlink_metadata(layout.record_file(s, name)) {
        Ok(m) => m,
        Err(_) => std::fs::symlink_metadata(layout.find(s, name)?.0).ok()?,
    };
    m.modified().ok()
}

/// The tasks that pending, running or failed tasks wait for (`after`, and
/// a pending or running subtask parent's `children`), each with the tasks
/// that wait for it and their states. A failed one waits once retried. Files
/// are read up to `max_bytes`, the config's `max_task_bytes`.
fn waited_for(layout: &Layout, max_bytes: u64) -> HashMap<String, Vec<(String, State)>> {
    let mut out: HashMap<String, Vec<(String, State)>> = HashMap::new();
    for s in [State::Pending, State::Assigned, State::Failed] {
        for (name, ext) in books::list(layout, s).unwrap_or_default() {
            let path = layout.task_file(s, &name, ext.as_str());
            if let Some(t) = books::parsed_task(&path, &name, &ext, max_bytes) {
                for d in t.after {
                    out.entry(d).or_default().push((name.clone(), s));
                }
            }
            if s != State::Failed
                && let Some(st) = books::state_if_any(layout, &name)
            {
                for c in st.children {
                    out.entry(c).or_default().push((name.clone(), s));
                }
            }
        }
    }
    out
}

/// Says what [`remove_task`] did with `n`, and counts it.
/// Returns whether it was removed.
fn said(
    s: State,
    n: &str,
    res: Result<Option<bool>>,
    removed: &mut usize,
    failed: &mut bool,
) -> bool {
    match res {
        Ok(Some(true)) => {
            println!("{n}: removed ({})", s.dir_name());
            *removed += 1;
            return true;
        }
        // Moved meanwhile (a retry): not ours to remove any more.
        Ok(Some(false)) => {}
        Ok(None) => {
            eprintln!(
                "mailroom: {n}: busy for {} (a supervisor or `mailroom retry` holds it); \
                 try again in a moment",
                humantime::format_duration(BUSY_WAIT)
            );
            *failed = true;
        }
        Err(e) => {
            eprintln!("mailroom: {n}: {e:#}");
            *failed = true;
        }
    }
    false
}

/// Why a task not yet merged into context/ is kept.
const NOT_MERGED: &str = "it is not merged into context/ yet (its commit found context/.lock held, \
     and it still is, or the merge fails: see the supervisor's log); clean it after that";

/// Removes the counts in `tasks/trees/` of trees that are over: their first
/// task no longer exists (removed by this `clean` or an earlier one, or by
/// hand) and no task in `pending/`, `assigned/` or `failed/` belongs to them, so
/// nothing counts into them any more. Without this, a later task of the
/// first task's name (a job submitted under one name, cleaned between
/// runs) would inherit the old tree's count, and its follow-ups could fail
/// as `runaway`; and the directory would only grow.
fn drop_dead_tree_counts(layout: &Layout, max_depth: usize) {
    let dir = layout.tasks.join("trees");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    // (A count set aside as `NAME.set-aside-N` is kept for inspection.)
    let gone: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && !n.contains(".set-aside-") && layout.locate(n).is_none())
        .collect();
    if gone.is_empty() {
        return;
    }
    // The trees that pending, running and failed tasks count into (a
    // follow-up whose first task was removed still counts into that task's
    // tree; a failed one may be retried). `assigned/` is read before and
    // after `pending/`, so that a task claimed in between is seen; a
    // directory that cannot be read drops nothing.
    let mut live = HashSet::new();
    for s in [
        State::Assigned,
        State::Pending,
        State::Assigned,
        State::Failed,
    ] {
        let Ok(names) = books::list(layout, s) else {
            return;
        };
        for (name, _) in names {
            live.insert(crate::tree::outbox::tree_root(layout, &name, max_depth).0);
        }
    }
    for n in gone.into_iter().filter(|n| !live.contains(n)) {
        let _ = fsx::remove_file_if_exists(&dir.join(n));
    }
}

/// How long `clean` waits for a finished task's lock. Its holders keep it
/// briefly: another `clean` removing the task (which then is gone, and
/// skipped), a `retry` moving it back, a supervisor filing a clash.
const BUSY_WAIT: Duration = Duration::from_secs(3);

/// The task's lock, polled until `wait` has passed; `None` if still held.
fn lock_within(layout: &Layout, name: &str, wait: Duration) -> Result<Option<TaskLock>> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(lock) = TaskLock::try_acquire(layout, name)? {
            return Ok(Some(lock));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the finished task `name` from `s` under its lock, waiting at
/// most `wait` for it: its history, run directory and record, then its task
/// file last (the task is gone when its file is). Returns false when the
/// task is no longer in `s`, `None` when its lock stayed held.
///
/// Whatever stops it midway (a crash, a file it may not remove) leaves
/// the task file, which `clean` takes up again: nothing of the task
/// outlives it to be taken for a later task's of its name.
fn remove_task(layout: &Layout, s: State, name: &str, wait: Duration) -> Result<Option<bool>> {
    let Some(lock) = lock_within(layout, name, wait)? else {
        return Ok(None);
    };
    let res = (|| -> Result<bool> {
        let Some((path, _)) = layout.find(s, name) else {
            return Ok(false);
        };
        if let Some((other, p)) = [State::Pending, State::Assigned]
            .into_iter()
            .find_map(|o| layout.find(o, name).map(|(p, _)| (o, p)))
        {
            bail!(
                "kept: {} holds a task of the same name ({}); it would then run under this \
                 name instead of being filed as a clash",
                layout.rel(&p),
                other.dir_name()
            );
        }
        if crate::tree::context::is_unmerged(layout, name) {
            bail!("{NOT_MERGED}");
        }
        let rounds = layout.history_run_dir(name, 1);
        let rounds = rounds.parent().expect("rounds are in a directory");
        let named =
            |p: &Path, e: std::io::Error| anyhow::anyhow!("cannot remove {}: {e}", layout.rel(p));
        let history = layout.history_file(name);
        fsx::remove_file_if_exists(&history).map_err(|e| named(&history, e))?;
        fsx::remove_dir_all_if_exists(rounds).map_err(|e| named(rounds, e))?;
        let run = layout.run_dir(s, name);
        fsx::remove_dir_all_if_exists(&run).map_err(|e| named(&run, e))?;
        let record = layout.record_file(s, name);
        match std::fs::symlink_metadata(&record) {
            // (A directory put there by hand or by an agent.)
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&record),
            _ => fsx::remove_file_if_exists(&record),
        }
        .map_err(|e| named(&record, e))?;
        // Not synced one by one (see `clean`): lost in a crash, the file
        // is back, and a later `clean` removes it again.
        std::fs::remove_file(&path).map_err(|e| named(&path, e))?;
        Ok(true)
    })();
    lock.release();
    res.map(Some)
}
