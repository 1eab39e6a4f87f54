//! `mailroom list`: the tasks of one state or all.

use crate::tree::books;
use crate::tree::layout::State;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

use super::show::read_record;
use super::*;

#[derive(Serialize)]
struct ListItem {
    name: String,
    state: State,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// A pending task that failed a run and waits for its next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<String>,
    /// A pending task its own `delay:` or `not_before:` holds until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip)]
    why: Option<String>,
    /// A pending task's first dependency that has not completed, and what
    /// that means ("waiting for X (not submitted)", "dependency X failed").
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<String>,
}

/// What holds a pending task, from its file: when its own `delay:` or
/// `not_before:` lets it start (while that is still ahead, and which of the
/// two it is), and its first dependency that has not completed, said as
/// `show` says it. Only a file that names one of those keys is parsed: a
/// listing of many pending tasks reads each, but parses few.
fn own_holds(
    layout: &crate::tree::layout::Layout,
    name: &str,
    ext: &str,
) -> (Option<(String, String)>, Option<String>) {
    let path = layout.task_file(State::Pending, name, ext);
    let Ok((bytes, _)) =
        crate::tree::fsx::read_task_file(&path, crate::parse::task::DEFAULT_MAX_TASK_BYTES)
    else {
        return (None, None);
    };
    let named = |k: &str| memchr::memmem::find(&bytes, k.as_bytes()).is_some();
    let timed = named("delay") || named("not_before");
    if !timed && !named("after") && !named("dependencies") {
        return (None, None);
    }
    let Ok(t) = crate::parse::task::parse_as(name, ext, &bytes) else {
        return (None, None);
    };
    let start = timed
        .then(|| super::show::own_start(&path, &t))
        .flatten()
        .map(|(t, why)| (crate::model::record::ts(t), why));
    let wait = t
        .after
        .iter()
        .find_map(|d| super::show::dependency_note(layout, d));
    (start, wait)
}

/// When a pending task that failed a run may run again (its backoff), if
/// that is still ahead.
pub(super) fn retry_at(layout: &crate::tree::layout::Layout, name: &str) -> Option<String> {
    let st = books::read_state(layout, name);
    let nb = st.not_before.filter(|_| st.attempts > 0)?;
    let t = crate::model::record::parse_ts(&nb)?;
    (t > std::time::SystemTime::now()).then_some(nb)
}

/// Whether the task file `name` of state `st` has the label `label` (one
/// that does not parse has none).
fn has_label(
    layout: &crate::tree::layout::Layout,
    st: State,
    name: &str,
    ext: &str,
    label: &str,
) -> bool {
    let path = layout.task_file(st, name, ext);
    books::parsed_task(&path, name, ext, crate::parse::task::DEFAULT_MAX_TASK_BYTES)
        .is_some_and(|t| t.labels.iter().any(|l| l == label))
}

/// `mailroom list` (with `label`: only the tasks that have it).
pub fn list(root: &Path, state: Option<&str>, label: Option<&str>, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let states: Vec<State> = match state {
        Some(s) => vec![State::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "--state {s}: use pending, assigned (or running, active), completed or failed"
            )
        })?],
        None => State::ALL.to_vec(),
    };
    let mut items = Vec::new();
    for st in states {
        for (name, ext) in books::list(&layout, st)? {
            if let Some(l) = label
                && !has_label(&layout, st, &name, &ext, l)
            {
                continue;
            }
            let error = match st {
                State::Failed => match read_record(&layout, State::Failed, &name) {
                    Some(r) if r.task == name => r.error,
                    _ => books::unfiled_note(&layout, st, &name),
                },
                // A record that is there but is not one (an agent wrote
                // it) is no record: read, as `show` and `wait` read it.
                State::Completed => books::unfiled_note(&layout, st, &name),
                _ => None,
            };
            let retry_at = if st == State::Pending {
                retry_at(&layout, &name)
            } else {
                None
            };
            let (held, waiting) = if st == State::Pending {
                own_holds(&layout, &name, &ext)
            } else {
                (None, None)
            };
            let held = held.filter(|_| retry_at.is_none());
            items.push(ListItem {
                file: layout.rel(&layout.task_file(st, &name, &ext)),
                name,
                state: st,
                error,
                retry_at,
                starts_at: held.as_ref().map(|(t, _)| t.clone()),
                why: held.map(|(_, why)| why),
                waiting,
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for i in items {
            match (i.error, i.retry_at) {
                (Some(e), _) => println!(
                    "{:<9} {}  ({})",
                    i.state.dir_name(),
                    i.name,
                    super::show::printable(&e)
                ),
                (None, Some(t)) => println!(
                    "{:<9} {}  (waiting for a retry at {t})",
                    i.state.dir_name(),
                    i.name
                ),
                (None, None) => match (i.starts_at, i.why) {
                    (Some(t), Some(why)) => println!(
                        "{:<9} {}  (held by its {why} until {t})",
                        i.state.dir_name(),
                        i.name
                    ),
                    _ => match i.waiting {
                        Some(w) => println!("{:<9} {}  ({w})", i.state.dir_name(), i.name),
                        None => println!("{:<9} {}", i.state.dir_name(), i.name),
                    },
                },
            }
        }
    }
    Ok(())
}
