//! `mailroom retry`: a failed task back to `pending/` with fresh attempts, under its lock.

use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::State;
use crate::tree::lock::TaskLock;
use crate::tree::moves;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::ExitCode;

use super::*;

/// `mailroom retry` (`completed`: named completed tasks run again too).
pub fn retry(
    root: &Path,
    names: &[String],
    outcome: Option<&str>,
    completed: bool,
) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    let mut all: Vec<String> = names.to_vec();
    if let Some(o) = outcome {
        let matching = books::list(&layout, State::Failed)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| {
                std::fs::read(layout.record_file(State::Failed, n))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|r| r["outcome"] == o)
            });
        for n in matching {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        if all.is_empty() {
            println!("no failed task has outcome `{o}`");
        }
    }
    // A task whose dependency failed would fail again at once: it goes
    // with that dependency or not at all (nor when that one is refused), and
    // after it.
    let mut failed = false;
    let deps: Vec<(String, Vec<String>)> = all
        .iter()
        .map(|n| (n.clone(), failed_deps(&layout, n)))
        .collect();
    let mut refused: Vec<&str> = Vec::new();
    loop {
        let before = refused.len();
        for (n, d) in &deps {
            if refused.contains(&n.as_str()) {
                continue;
            }
            let missing: Vec<&str> = d
                .iter()
                .map(String::as_str)
                .filter(|x| !all.iter().any(|a| a == x) || refused.contains(x))
                .collect();
            if !missing.is_empty() {
                let e = retried_alone(n, &missing);
                if all.len() == 1 {
                    return Err(e);
                }
                eprintln!("mailroom: {e}");
                failed = true;
                refused.push(n);
            }
        }
        if refused.len() == before {
            break;
        }
    }
    // Dependencies first: a supervisor may look at a task as soon as it is
    // back in pending/.
    let mut left: Vec<&(String, Vec<String>)> = deps
        .iter()
        .filter(|(n, _)| !refused.contains(&n.as_str()))
        .collect();
    let mut order: Vec<String> = Vec::new();
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|(_, d)| d.iter().all(|x| order.contains(x)))
            .unwrap_or(0);
        order.push(left.remove(ready).0.clone());
    }
    // Each on its own: one that cannot be retried does not stop the others.
    for name in &order {
        match retry_task_from(&layout, name, completed) {
            Ok(()) => {
                println!("{name}: moved back to pending with fresh attempts");
                for d in missing_deps(&layout, name) {
                    eprintln!(
                        "mailroom: warning: `{name}` runs after `{d}`, which does not exist (not \
                         submitted, or removed by `clean`): it waits until a task of that name \
                         is submitted and completes"
                    );
                }
            }
            Err(e) if all.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("mailroom: {name}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Why `name` is not retried without `missing`, the failed dependencies
/// that are not retried with it (the CLI's and the dashboard's words).
pub fn retried_alone(name: &str, missing: &[&str]) -> anyhow::Error {
    let list = missing
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>()
        .join(", ");
    anyhow::anyhow!(
        "`{name}` runs after {list}, which failed: alone it would fail again at once; retry \
         them together: mailroom retry {} {name}",
        missing.join(" ")
    )
}

/// The dependencies (`after`) of the task `name` in `state` (none when its
/// file does not parse).
fn after_of(layout: &crate::tree::layout::Layout, state: State, name: &str) -> Vec<String> {
    layout
        .find(state, name)
        .and_then(|(path, ext)| {
            books::parsed_task(&path, name, ext, crate::parse::task::DEFAULT_MAX_TASK_BYTES)
        })
        .map(|t| t.after)
        .unwrap_or_default()
}

/// The dependencies (`after`) of the pending task `name` that no state
/// directory holds.
fn missing_deps(layout: &crate::tree::layout::Layout, name: &str) -> Vec<String> {
    after_of(layout, State::Pending, name)
        .into_iter()
        .filter(|d| layout.locate(d).is_none())
        .collect()
}

/// The dependencies (`after`) of the failed task `name` that failed too.
pub fn failed_deps(layout: &crate::tree::layout::Layout, name: &str) -> Vec<String> {
    after_of(layout, State::Failed, name)
        .into_iter()
        .filter(|d| layout.find(State::Failed, d).is_some())
        .collect()
}

/// Moves a failed task back to `pending/` with fresh attempts (the CLI's
/// and the dashboard's retry).
pub fn retry_task(layout: &crate::tree::layout::Layout, name: &str) -> Result<()> {
    retry_task_from(layout, name, false)
}

/// [`retry_task`], and with `completed` a completed task too: it runs again
/// (its finished round kept in its history, as a failed one's is).
fn retry_task_from(
    layout: &crate::tree::layout::Layout,
    name: &str,
    completed: bool,
) -> Result<()> {
    let layout = layout.clone();
    check_task_name(name)?;
    let Some(lock) = TaskLock::try_acquire(&layout, name)? else {
        // The lock's holder is a supervisor running it (or about to).
        if layout.find(State::Assigned, name).is_some() {
            bail!("{name} is running; cancel it first (`mailroom cancel {name}`) or wait");
        }
        bail!("`{name}` is busy (a supervisor is moving it); try again in a moment");
    };
    let res = (|| -> Result<()> {
        let found = layout
            .find(State::Failed, name)
            .map(|(_, e)| (State::Failed, e));
        let found = found.or_else(|| {
            completed
                .then(|| {
                    layout
                        .find(State::Completed, name)
                        .map(|(_, e)| (State::Completed, e))
                })
                .flatten()
        });
        let Some((from, ext)) = found else {
            match layout.locate(name) {
                Some((State::Assigned, _, _)) => {
                    bail!("{name} is running; cancel it first (`mailroom cancel {name}`) or wait")
                }
                Some((State::Completed, _, _)) => {
                    bail!("`{name}` completed; to run it again: mailroom retry --completed {name}")
                }
                Some((st, _, _)) => bail!("`{name}` is {}, not failed", st.dir_name()),
                None => bail!("no task named `{name}`"),
            }
        };
        // A subtask parent whose children are still there would complete
        // again at once, running none of them (they are kept at expansion).
        if from == State::Completed {
            let children = books::read_record(&layout, from, name)
                .map(|r| r.children)
                .unwrap_or_default();
            let kept: Vec<&String> = children
                .iter()
                .filter(|c| layout.locate(c).is_some())
                .collect();
            if !kept.is_empty() {
                let list: Vec<&str> = kept.iter().map(|c| c.as_str()).collect();
                bail!(
                    "`{name}` is a subtask parent: run again, it would complete at once, running \
                     none of its subtasks, which are still there; remove them first to run them \
                     again (mailroom clean {}), or retry --completed them alone",
                    list.join(" ")
                );
            }
        }
        if let Some((st, p, _)) = [State::Pending, State::Assigned]
            .into_iter()
            .find_map(|s| layout.find(s, name).map(|(p, e)| (s, p, e)))
        {
            bail!(
                "cannot retry `{name}`: {} already holds a task of that name ({})",
                layout.rel(&p),
                st.dir_name()
            );
        }
        // Its round's line in completed_tasks.jsonl is written from the
        // record, which moves into the history below.
        if crate::tree::context::still_unmerged(&layout, name, MERGE_WAIT) {
            bail!(
                "`{name}` is not merged into context/ yet (its commit found context/.lock \
                 held, and it still is, or the merge fails: see the supervisor's log): retry \
                 it after that"
            );
        }
        // The round that ends here stays readable: its run directory moves
        // into the task's history, and its record (pointing there) is
        // appended to it, before anything is removed.
        history_is_writable(&layout, name)?;
        let kept = moves::run_dir_to_history(&layout, from, name)?;
        keep_round(&layout, from, name, kept.as_ref())?;
        // Fresh attempts: the bookkeeping and the old record go first, so that
        // a crash never pairs the requeued task with a stale record.
        fsx::remove_file_if_exists(&layout.state_file(name))?;
        fsx::remove_file_if_exists(&layout.record_file(from, name))?;
        fsx::fsync_dir(layout.dir(from))?;
        moves::retry(&layout, from, name, ext)?;
        Ok(())
    })();
    lock.release();
    res
}

/// Refuses, before anything moves, a history file that is not a regular
/// file: a directory, a FIFO, or a link (which an agent could point at any
/// file of the user's, for the append to write into).
fn history_is_writable(layout: &crate::tree::layout::Layout, name: &str) -> Result<()> {
    let path = layout.history_file(name);
    // The directories the round's run directory moves into: a link there
    // would take it out of the tree.
    let dir = path.parent().expect("history files are in a directory");
    let rounds = layout
        .history_run_dir(name, 1)
        .parent()
        .expect("rounds are in a directory")
        .to_path_buf();
    for d in [dir.to_path_buf(), rounds] {
        match std::fs::symlink_metadata(&d) {
            Ok(m) if !m.is_dir() => bail!(
                "cannot retry `{name}`: {} is not a directory but {}; move it away first",
                layout.rel(&d),
                fsx::kind_of(m.file_type())
            ),
            _ => {}
        }
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_file() => bail!(
            "cannot retry `{name}`: {} is not a regular file but {}; move it away first",
            layout.rel(&path),
            fsx::kind_of(m.file_type())
        ),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!(
                "cannot retry `{name}`: cannot look at {}: {e}",
                layout.rel(&path)
            )
        }
        _ => Ok(()),
    }
}

/// Appends the ended round's record to `tasks/history/<name>.jsonl`. A
/// crash between this and the removal of the record may append it twice;
/// readers drop a line whose `run_id` they already have.
fn keep_round(
    layout: &crate::tree::layout::Layout,
    from: State,
    name: &str,
    kept: Option<&(String, String)>,
) -> Result<()> {
    use std::io::Write;
    let rec = match std::fs::read(layout.record_file(from, name)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&rec) else {
        return Ok(());
    };
    if let Some((from, to)) = kept {
        repoint(&mut v, from, to);
    }
    let path = layout.history_file(name);
    let dir = path.parent().expect("history files are in a directory");
    fsx::create_dir_all(dir)?;
    let mut line = serde_json::to_string(&v)?;
    line.push('\n');
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .with_context(|| format!("cannot append to {}", layout.rel(&path)))?
    };
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", layout.rel(&path));
    }
    f.write_all(line.as_bytes())?;
    fsx::sync_data(&f)?;
    fsx::fsync_dir(dir)?;
    Ok(())
}

/// The record's `run_dir` and its attempts' `run_dir`, from under `from` to
/// under `to`.
fn repoint(v: &mut serde_json::Value, from: &str, to: &str) {
    let fix = |d: &mut serde_json::Value| {
        if let Some(s) = d.as_str()
            && let Some(rest) = s.strip_prefix(from)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            *d = serde_json::Value::String(format!("{to}{rest}"));
        }
    };
    if let Some(d) = v.get_mut("run_dir") {
        fix(d);
    }
    if let Some(h) = v.get_mut("history").and_then(|h| h.as_array_mut()) {
        for a in h {
            if let Some(d) = a.get_mut("run_dir") {
                fix(d);
            }
        }
    }
}
