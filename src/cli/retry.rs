//! `mailroom retry`: a failed task back to `pending/` with fresh attempts, under its lock.

use crate::tree::fsx;
use crate::tree::layout::State;
use crate::tree::lock::TaskLock;
use crate::tree::moves;
use anyhow::{Result, bail};
use std::path::Path;

use super::*;

/// `mailroom retry`.
pub fn retry(root: &Path, name: &str) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let Some(lock) = TaskLock::try_acquire(&layout, name)? else {
        // The lock's holder is a supervisor running it (or about to).
        if layout.find(State::Assigned, name).is_some() {
            bail!("{name} is running; cancel it first (`mailroom cancel {name}`) or wait");
        }
        bail!("`{name}` is busy (a supervisor is moving it); try again in a moment");
    };
    let res = (|| -> Result<()> {
        let Some((_, ext)) = layout.find(State::Failed, name) else {
            match layout.locate(name) {
                Some((State::Assigned, _, _)) => {
                    bail!("{name} is running; cancel it first (`mailroom cancel {name}`) or wait")
                }
                Some((st, _, _)) => bail!("`{name}` is {}, not failed", st.dir_name()),
                None => bail!("no task named `{name}`"),
            }
        };
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
        // Fresh attempts: the bookkeeping and the old record go first, so that
        // a crash never pairs the requeued task with a stale record.
        fsx::remove_file_if_exists(&layout.state_file(name))?;
        fsx::remove_file_if_exists(&layout.record_file(State::Failed, name))?;
        fsx::fsync_dir(&layout.failed)?;
        moves::retry(&layout, State::Failed, name, ext)?;
        fsx::remove_dir_all_if_exists(&layout.run_dir(State::Failed, name))?;
        println!("{name}: moved back to pending with fresh attempts");
        Ok(())
    })();
    lock.release();
    res
}
