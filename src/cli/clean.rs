//! `mailroom clean`: finished tasks removed from the tree, each under its lock.

use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};
use crate::tree::lock::TaskLock;
use anyhow::{Result, bail};
use std::collections::HashMap;
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
        chosen.retain(|(s, n)| finished_at(&layout, *s, n).is_some_and(|t| t + age <= now));
    }
    if chosen.is_empty() {
        if !failed {
            println!("nothing to clean");
        }
        return Ok(exit(failed));
    }
    let waiting = waited_for(&layout);
    let mut removed = 0usize;
    for (s, n) in &chosen {
        if let Some(w) = waiting.get(n.as_str()) {
            eprintln!(
                "mailroom: kept `{n}`: `{w}` runs after it and would wait for it forever \
                 (cancel or finish `{w}` first)"
            );
            failed |= !a.names.is_empty();
            continue;
        }
        if a.dry_run {
            println!("{n}: would be removed ({})", s.dir_name());
            removed += 1;
            continue;
        }
        match remove_task(&layout, *s, n) {
            Ok(true) => {
                println!("{n}: removed ({})", s.dir_name());
                removed += 1;
            }
            // Moved meanwhile (a retry): not ours to remove any more.
            Ok(false) => {}
            Err(e) => {
                eprintln!("mailroom: {n}: {e:#}");
                failed = true;
            }
        }
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

/// The tasks that pending or running tasks wait for (`after`, and a
/// subtask parent's `children`), each with one task that waits for it.
fn waited_for(layout: &Layout) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for s in [State::Pending, State::Assigned] {
        for (name, ext) in books::list(layout, s).unwrap_or_default() {
            let path = layout.task_file(s, &name, ext.as_str());
            if let Ok((b, _)) =
                fsx::read_task_file(&path, crate::parse::task::DEFAULT_MAX_TASK_BYTES)
                && let Ok(t) = crate::parse::task::parse_as(&name, &ext, &b)
            {
                for d in t.after {
                    out.entry(d).or_insert_with(|| name.clone());
                }
            }
            if let Some(st) = books::state_if_any(layout, &name) {
                for c in st.children {
                    out.entry(c).or_insert_with(|| name.clone());
                }
            }
        }
    }
    out
}

/// Removes the finished task `name` from `s` under its lock: the task file
/// first (from then on the task is gone for every reader, as a commit's
/// move is its arrival), then its record, its run directory and its
/// history. Returns false when the task is no longer in `s`.
///
/// A crash after the task file leaves a record or run directory without a
/// task file: nothing reads those, and a later task of the name replaces
/// them at its commit.
fn remove_task(layout: &Layout, s: State, name: &str) -> Result<bool> {
    let Some(lock) = TaskLock::try_acquire(layout, name)? else {
        bail!("busy (a supervisor or `mailroom retry` is moving it); try again in a moment");
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
        std::fs::remove_file(&path)?;
        fsx::fsync_dir(layout.dir(s))?;
        fsx::remove_file_if_exists(&layout.record_file(s, name))?;
        fsx::remove_dir_all_if_exists(&layout.run_dir(s, name))?;
        fsx::remove_file_if_exists(&layout.history_file(name))?;
        let rounds = layout.history_run_dir(name, 1);
        fsx::remove_dir_all_if_exists(rounds.parent().expect("rounds are in a directory"))?;
        Ok(true)
    })();
    lock.release();
    res
}
