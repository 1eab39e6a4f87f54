//! Budgets applied: an agent whose daily budget is used up pauses like a
//! cooldown (until the next UTC day, or until its budget is raised), and a
//! tree of follow-ups over an agent's tree budget has its tasks for that
//! agent wait (until the budget is raised, or they are cancelled). The sums
//! come from `tree::budget`.

use super::*;
use crate::tree::budget;

/// How long a task of a tree over its budget waits before it is looked at
/// again (a raised budget is seen at once through the reload).
const TREE_HOLD: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Brings the ledger up to date and pauses (or frees) agents by their
    /// daily budgets.
    pub(super) fn check_budgets(&mut self, now: SystemTime) {
        let config = self.config.clone();
        if config
            .agents
            .values()
            .all(|a| a.budget == crate::parse::config::Budget::default())
        {
            self.over_budget.clear();
            return;
        }
        self.ledger.refresh(&self.ctx.layout);
        let (day, midnight) = budget::today(now);
        for (name, a) in &config.agents {
            let spent = self.ledger.on_day(name, &day);
            match budget::daily_reason(name, &a.budget, spent) {
                Some(why) => {
                    if !self.over_budget.contains_key(name) {
                        warn!(agent = %name, "{why}; paused until the next UTC day or a raised budget");
                    }
                    self.over_budget.insert(name.clone(), (midnight, why));
                }
                None => {
                    if self.over_budget.remove(name).is_some() {
                        info!(agent = %name, "within its daily budget again");
                    }
                }
            }
        }
        self.over_budget
            .retain(|a, _| config.agents.contains_key(a));
    }

    /// Whether the tree of `name` has used up `agent`'s tree budget; if so
    /// the task is held (it stays in `pending/`) and looked at again later.
    pub(super) fn tree_over_budget(&mut self, name: &str, agent: &str) -> bool {
        let Some(a) = self.config.agents.get(agent) else {
            return false;
        };
        if a.budget.tree_usd.is_none() && a.budget.tree_tokens.is_none() {
            return false;
        }
        let layout = &self.ctx.layout;
        let (tree, _) = crate::tree::outbox::tree_root(layout, name, self.config.max_tree_depth);
        let Some(why) =
            budget::tree_reason(agent, &tree, &a.budget, self.ledger.on_tree(agent, &tree))
        else {
            return false;
        };
        if self.logged_waits.insert(format!("budget:{name}")) {
            warn!(task = %name, "{why}; the task waits until the budget is raised (or it is cancelled)");
        }
        if let Some(p) = self.pending.get_mut(name) {
            p.hold = Some(SystemTime::now() + TREE_HOLD);
        }
        self.place(name);
        true
    }
}
