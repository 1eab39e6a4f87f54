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
}

/// When a pending task that failed a run may run again (its backoff), if
/// that is still ahead.
pub(super) fn retry_at(layout: &crate::tree::layout::Layout, name: &str) -> Option<String> {
    let st = books::read_state(layout, name);
    let nb = st.not_before.filter(|_| st.attempts > 0)?;
    let t = crate::model::record::parse_ts(&nb)?;
    (t > std::time::SystemTime::now()).then_some(nb)
}

/// `mailroom list`.
pub fn list(root: &Path, state: Option<&str>, json: bool) -> Result<()> {
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
            let error = match st {
                State::Failed => match read_record(&layout, State::Failed, &name) {
                    Some(r) if r.task == name => r.error,
                    _ => books::unfiled_note(&layout, st, &name),
                },
                // One stat for a record that is there, as a rule.
                State::Completed if !layout.record_file(st, &name).is_file() => {
                    books::unfiled_note(&layout, st, &name)
                }
                _ => None,
            };
            let retry_at = if st == State::Pending {
                retry_at(&layout, &name)
            } else {
                None
            };
            items.push(ListItem {
                file: layout.rel(&layout.task_file(st, &name, &ext)),
                name,
                state: st,
                error,
                retry_at,
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
                (None, None) => println!("{:<9} {}", i.state.dir_name(), i.name),
            }
        }
    }
    Ok(())
}
