//! `/metrics`: the Prometheus text format for scraping, the same families as
//! the supervisor's textfile (`metrics_file`, `ops::metrics`), computed from
//! the tree so that it works with no supervisor running and on any host that
//! sees the tree: tasks by state, what runs now, cooldowns, the oldest
//! pending task, the pause, and from `context/completed_tasks.jsonl` the
//! finished tasks by agent and outcome, their durations, tokens and cost.

use crate::ops::metrics::{Metrics, Snapshot};
use crate::tree::layout::Layout;

use super::index::Index;
use super::ledger::Ledger;

/// The whole exposition.
pub fn render(index: &Index, ledger: &Ledger, layout: &Layout) -> String {
    let ov = super::view::overview(index, ledger, layout);
    let mut m = Metrics::default();
    let usage = ledger.with(layout, |sums| {
        for (agent, a) in &sums.agents {
            // By outcome, as the supervisor's textfile counts them.
            for (outcome, n) in &a.outcomes {
                m.add_runs(agent, outcome, *n);
            }
            for ms in &a.durations_ms {
                m.observe(agent, *ms as f64 / 1000.0);
            }
        }
        sums.agents
            .iter()
            .map(|(a, s)| (a.clone(), s.usage.clone()))
            .collect()
    });
    let now = std::time::SystemTime::now();
    // All time, as the textfile's: entries in completed/ and failed/ go
    // down with `clean`, and a counter must not.
    let (completed, failed) = crate::tree::context::log_totals(layout);
    let snap = Snapshot {
        pending: ov.counts.pending,
        running: ov.counts.assigned,
        completed,
        failed,
        running_by_agent: ov
            .agents
            .iter()
            .map(|a| (a.name.clone(), a.running))
            .collect(),
        cooldowns: crate::tree::books::cooldowns(layout, false)
            .into_iter()
            .filter_map(|c| Some((c.agent, crate::model::record::parse_ts(&c.until)?)))
            .filter(|(_, t)| *t > now)
            .collect(),
        oldest_pending_age: ov.oldest_pending.as_ref().map(|o| o.age_secs as f64),
        paused: ov.paused,
        usage,
    };
    m.render(&snap)
}
