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
            let error = if st == State::Failed {
                read_record(&layout, State::Failed, &name).and_then(|r| r.error)
            } else {
                None
            };
            items.push(ListItem {
                file: layout.rel(&layout.task_file(st, &name, &ext)),
                name,
                state: st,
                error,
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for i in items {
            match i.error {
                Some(e) => println!("{:<9} {}  ({})", i.state.dir_name(), i.name, e),
                None => println!("{:<9} {}", i.state.dir_name(), i.name),
            }
        }
    }
    Ok(())
}
