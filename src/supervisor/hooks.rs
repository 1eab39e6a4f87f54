//! When hooks fire: a task filed in `completed/` or `failed/`, an agent that
//! cools down. The hooks themselves run in `ops::hooks`, off the loop.

use super::*;
use crate::ops::hooks::{self, HookEvent, HookKind};

impl Supervisor {
    /// A task was filed for good (`name` as filed): counted in the exit
    /// summary, then `on_complete` or `on_fail`.
    pub(super) fn task_ended(&mut self, name: &str, st: Status, outcome: Outcome, agent: &str) {
        let (kind, state) = match st {
            Status::Completed => {
                self.summary.completed += 1;
                (HookKind::Complete, State::Completed)
            }
            Status::Failed => {
                self.summary.failed += 1;
                (HookKind::Fail, State::Failed)
            }
        };
        let layout = self.layout();
        let present = |p: PathBuf| {
            if books::exists(&p) {
                p.to_string_lossy().into_owned()
            } else {
                String::new()
            }
        };
        let ev = HookEvent {
            name: name.to_owned(),
            state: state.dir_name().to_owned(),
            outcome: outcome.as_str().to_owned(),
            record: present(layout.record_file(state, name)),
            output: present(layout.output_file(name)),
            agent: agent.to_owned(),
            until: String::new(),
            root: layout.root.to_string_lossy().into_owned(),
        };
        self.fire(kind, ev);
    }

    /// An agent hit a usage limit while running `name` (back in `pending/`).
    pub(super) fn agent_limited(&mut self, name: &str, agent: &str, until: SystemTime) {
        let ev = HookEvent {
            name: name.to_owned(),
            state: State::Pending.dir_name().to_owned(),
            outcome: Outcome::Limited.as_str().to_owned(),
            agent: agent.to_owned(),
            until: record::ts(until),
            root: self.layout().root.to_string_lossy().into_owned(),
            ..HookEvent::default()
        };
        self.fire(HookKind::Limit, ev);
    }

    fn fire(&mut self, kind: HookKind, ev: HookEvent) {
        let cmd = match kind {
            HookKind::Complete => &self.config.hooks.on_complete,
            HookKind::Fail => &self.config.hooks.on_fail,
            HookKind::Limit => &self.config.hooks.on_limit,
        };
        let Some(cmd) = cmd.clone() else {
            return;
        };
        // Hooks that ended since the last one are forgotten.
        while self.hooks.try_join_next().is_some() {}
        if tokio::runtime::Handle::try_current().is_err() {
            warn!(hook = kind.key(), task = %ev.name, "no runtime to run the hook on");
            return;
        }
        let timeout = self.config.hook_timeout;
        // A free slot is taken here, so that a hook fired just before the
        // supervisor exits runs; only a hook that must wait may be dropped.
        let slot = match self.hook_slots.clone().try_acquire_owned() {
            Ok(slot) => {
                debug!(hook = kind.key(), task = %ev.name, "hook starting");
                Ok(slot)
            }
            Err(_) => {
                info!(
                    hook = kind.key(),
                    task = %ev.name,
                    "hook waits its turn: {} hooks run already",
                    hooks::MAX_RUNNING
                );
                Err(self.hook_slots.clone())
            }
        };
        self.hooks.spawn(async move {
            let _slot = match slot {
                Ok(slot) => slot,
                // Closed at exit: a hook still waiting then is not run.
                Err(slots) => match slots.acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return Some(ev.name),
                },
            };
            hooks::run(kind, cmd, ev, timeout).await;
            None
        });
    }

    /// Waits for the hooks still running (each ends by its timeout); those
    /// still waiting for their turn are not run, and said so.
    pub(super) async fn finish_hooks(&mut self) {
        self.hook_slots.close();
        // Hooks that ended are still in the set until joined: not waited for.
        while self.hooks.try_join_next().is_some() {}
        if !self.hooks.is_empty() {
            info!(hooks = self.hooks.len(), "waiting for hooks to finish");
        }
        let mut dropped = Vec::new();
        while let Some(r) = self.hooks.join_next().await {
            if let Ok(Some(task)) = r {
                dropped.push(task);
            }
        }
        if !dropped.is_empty() {
            warn!(
                hooks = dropped.len(),
                tasks = %dropped.join(" "),
                "hooks still waiting for their turn at exit were not run"
            );
        }
    }
}
